"""leaderboard (app/sinks/leaderboard.py): /v1/users/segments' answer from the rank pages.

Whatever the users' ranks, and however they got there (moves in any grouping, a group of moves
made twice), the pages give what the user_profiles query gives: the users of a segment at or
above a score, the most engaged first, then by _id; the head gives the first HEAD of them with
their latest fields; and the documents are those that filing the final ranks at once leaves."""
from __future__ import annotations

from unittest import mock

from hypothesis import given, settings as hsettings, strategies as st

from app.sinks import leaderboard
from tests.unit.bson_store import BsonStore

USERS = ["1", "10", "101", "11", "12", "2", "20", "3", "a", "ab", "abc"]  # several share a page prefix
rank = st.one_of(st.none(), st.tuples(st.integers(0, 4), st.sampled_from([None, "bouncer", "browser"]),
                                      st.integers(0, 2)))  # (score, segment, another field)


def _doc(user: str, r) -> dict:
    return {"_id": user, **({} if r is None else {"rank": {"score": r[0], "segment": r[1], "fields": {
        "engagement_score": r[0], "last_segment": r[1], "sessions": r[2]}}})}


def _file(store: BsonStore, groups: list, docs: dict, twice: bool = False) -> None:
    """Each group: users' new ranks, filed as one merger chunk (a chunk made twice when `twice`)."""
    for group in groups:
        changes = leaderboard.Changes()
        for user, r in group.items():
            changes.user(docs.get(user), _doc(user, r))
        moves = (dict(changes.removed), dict(changes.added), dict(changes.fields), set(changes.keys))
        fields_of = lambda u: docs[u]["rank"]["fields"]  # noqa: E731 (a user the group leaves as it was)
        changes.apply(store.read, store.write, store.delete, fields_of)
        if twice:  # a replay: the same moves again
            changes.removed, changes.added, changes.fields, changes.keys = moves
            changes.apply(store.read, store.write, store.delete, fields_of)
        docs.update({user: _doc(user, r) for user, r in group.items()})


@hsettings(max_examples=300, deadline=None)
@given(groups=st.lists(st.dictionaries(st.sampled_from(USERS), rank, max_size=6), min_size=1, max_size=8),
       twice=st.booleans(), min_score=st.integers(0, 5), segment=st.sampled_from([None, "bouncer", "browser"]),
       limit=st.integers(1, 12))
@mock.patch.object(leaderboard, "HEAD", 4)
def test_the_pages_answer_as_the_profiles_query_and_depend_on_the_final_ranks_alone(groups, twice, min_score,
                                                                                     segment, limit):
    store, docs = BsonStore(), {}
    _file(store, groups, docs, twice)
    final = {u: d["rank"] for u, d in docs.items() if d.get("rank") is not None}
    want = sorted((u for u, r in final.items() if r["score"] >= min_score and segment in (None, r["segment"])),
                  key=lambda u: (-final[u]["score"], u))[:limit]
    assert leaderboard.top(store, min_score, segment, limit) == [(u, final[u]["score"]) for u in want]
    head = leaderboard.head(store, min_score, segment, limit)
    if limit > leaderboard.HEAD:
        assert head is None
    else:  # the head answers with each user's latest fields
        assert head == [{"user_id": u, **final[u]["fields"]} for u in want]
    at_once = BsonStore()
    _file(at_once, [{u: (r["score"], r["segment"], r["fields"]["sessions"]) for u, r in final.items()}], {})
    assert store.decoded() == at_once.decoded()


def test_a_head_stored_nested_by_an_earlier_version_answers_and_is_packed_at_its_next_change():
    """Heads are stored packed (one JSON string a member); one an earlier version stored nested
    still answers, and the next change of its key writes it packed."""
    store, docs = BsonStore(), {}
    _file(store, [{"1": (3, "browser", 1), "2": (2, "browser", 0)}], docs)
    head = store.read(leaderboard.head_id("browser"))
    assert all(isinstance(m, str) for m in head["members"])
    nested = [leaderboard.unpack_item(m) for m in head["members"]]
    store.write([{**head, "members": nested}])  # as an earlier version stored it
    assert leaderboard.head(store, 0, "browser", 10) == nested
    assert [m["user_id"] for m in leaderboard.head(store, 3, "browser", 10)] == ["1"]  # min_score: a prefix
    _file(store, [{"3": (1, "browser", 0)}], docs)
    assert all(isinstance(m, str) for m in store.read(leaderboard.head_id("browser"))["members"])
    assert [m["user_id"] for m in leaderboard.head(store, 0, "browser", 10)] == ["1", "2", "3"]


def test_a_head_member_without_fields_is_left_out_and_the_users_after_it_are_not():
    """A rank stored before ranks carried their fields gives a head member of its id alone: it is
    left out, and the users ranked below it still answer."""
    store = BsonStore()
    members = [{"user_id": "1", "engagement_score": 9}, {"user_id": "2"}, {"user_id": "3", "engagement_score": 1}]
    store.write([{"_id": leaderboard.head_id(leaderboard.ALL), "members": leaderboard.pack_items(members)}])
    assert [m["user_id"] for m in leaderboard.head(store, 0, None, 10)] == ["1", "3"]
    assert [m["user_id"] for m in leaderboard.head(store, 2, None, 10)] == ["1"]
    assert [m["user_id"] for m in leaderboard.head(store, 0, None, 1)] == ["1"]
