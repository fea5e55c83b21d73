"""open_sessions (app/sinks/open_sessions.py): /v1/act-now's answer from the open-session buckets.

Whatever open sessions there are, and however they got there (moves, closes), the buckets give
what the collection's query gives over all open sessions: those within `hours` of the newest
one's end, the most urgent priority first, then the newest (ties by id)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings as hsettings, strategies as st

from app.sinks import open_sessions
from tests.unit.bson_store import BsonStore

T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _user_doc(user: str, sessions: dict) -> dict:
    return {"_id": user, "sessions": [{"session_id": sid, "status": "active", "action_priority": p,
                                       "session_end": T0 + timedelta(seconds=end)} for sid, (p, end) in sessions.items()]}


session_state = st.tuples(st.sampled_from([None, 0, 1, 2]), st.integers(0, 3 * 3600))


@hsettings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["u1", "u2", "u3"]),
                                st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), session_state, max_size=4)),
                      min_size=1, max_size=12),
       hours=st.sampled_from([0.01, 0.5, 1.0, 2.0]), limit=st.integers(1, 8))
def test_act_now_from_the_buckets_is_the_query_over_all_open_sessions(steps, hours, limit):
    store, docs = BsonStore(), {}
    for user, sessions in steps:  # each step: the user's open sessions now (moved, new, closed)
        after = _user_doc(user, {f"{user}-{sid}": s for sid, s in sessions.items()})
        changes = open_sessions.Changes()
        changes.user(docs.get(user), after)
        changes.apply(store.read, store.write, store.delete)
        docs[user] = after
    everything = [(open_sessions.priority_of(s), s["session_end"], s["session_id"])
                  for d in docs.values() for s in d["sessions"]]
    since, ids = open_sessions.act_now(store, hours, limit)
    if not everything:
        assert (since, ids) == (None, []) and not store.docs
        return
    want_since = max(end for _, end, _ in everything) - timedelta(hours=hours)
    want = sorted((e for e in everything if e[1] >= want_since), key=lambda e: (e[0], -e[1].timestamp(), e[2]))
    assert since == want_since
    # ties in (priority, end) may come in either id order: compare what is ranked, then the ids
    got = {sid: (p, end) for p, end, sid in everything}
    assert [(got[i][0], got[i][1]) for i in ids] == [(p, end) for p, end, _ in want[:limit]]
    assert set(ids) <= {sid for _, _, sid in want}
