"""leaderboard (app/sinks/leaderboard.py): /v1/users/segments' answer from the rank pages.

Whatever the users' ranks, and however they got there (moves in any grouping, a group of moves
made twice), the pages give what the user_profiles query gives: the users of a segment at or
above a score, the most engaged first, then by _id; and the documents are those that filing the
final ranks at once leaves."""
from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from app.sinks import leaderboard
from tests.unit.bson_store import BsonStore

USERS = ["1", "10", "101", "11", "12", "2", "20", "3", "a", "ab", "abc"]  # several share a page prefix
rank = st.one_of(st.none(), st.tuples(st.integers(0, 4), st.sampled_from([None, "bouncer", "browser"])))


def _doc(user: str, r) -> dict:
    return {"_id": user, **({} if r is None else {"rank": {"score": r[0], "segment": r[1]}})}


def _file(store: BsonStore, groups: list, docs: dict, twice: bool = False) -> None:
    """Each group: users' new ranks, filed as one merger chunk (a chunk made twice when `twice`)."""
    for group in groups:
        changes = leaderboard.Changes()
        for user, r in group.items():
            changes.user(docs.get(user), _doc(user, r))
        moves = (dict(changes.removed), dict(changes.added))
        changes.apply(store.read, store.write, store.delete)
        if twice:  # a replay: the same moves again
            changes.removed, changes.added = moves
            changes.apply(store.read, store.write, store.delete)
        docs.update({user: _doc(user, r) for user, r in group.items()})


@hsettings(max_examples=300, deadline=None)
@given(groups=st.lists(st.dictionaries(st.sampled_from(USERS), rank, max_size=6), min_size=1, max_size=8),
       twice=st.booleans(), min_score=st.integers(0, 5), segment=st.sampled_from([None, "bouncer", "browser"]),
       limit=st.integers(1, 12))
def test_the_pages_answer_as_the_profiles_query_and_depend_on_the_final_ranks_alone(groups, twice, min_score,
                                                                                     segment, limit):
    store, docs = BsonStore(), {}
    _file(store, groups, docs, twice)
    final = {u: leaderboard.rank_of(d) for u, d in docs.items() if leaderboard.rank_of(d) is not None}
    want = sorted(((s, u) for u, (s, seg) in final.items() if s >= min_score and (segment is None or seg == segment)),
                  key=lambda e: (-e[0], e[1]))
    assert leaderboard.top(store, min_score, segment, limit) == [u for _, u in want[:limit]]
    at_once = BsonStore()
    _file(at_once, [{u: final.get(u) for u in USERS}], {})
    assert store.decoded() == at_once.decoded()
