"""The cross-session profile (DESIGN.md §11): event and session figures, open sessions folded in,
epochs merged so a returning user never resets, and the document's derived fields."""
from __future__ import annotations

from datetime import datetime, timezone

from app.profiles.profile import (OpenSession, ProfileTotals, epoch_totals, new_epoch, profile_document,
                                  profile_update)
from app.profiles.rules import DEFAULT_PROFILE_RULES, load_profile_rules

RULES = load_profile_rules(DEFAULT_PROFILE_RULES)
DAY = 86_400_000
T0 = 1_570_000_000_000  # 2019-10-02


def _two_sessions() -> ProfileTotals:
    totals = new_epoch(T0, "e1")
    totals.open_session()
    totals.add_event(T0, "view", 10.0, "mobile", "PL", "electronics.smartphone")
    totals.add_event(T0 + 60_000, "cart", 10.0, "mobile", "PL", "electronics.smartphone")
    totals.add_event(T0 + 120_000, "purchase", 10.0, "desktop", "PL", "electronics.audio")
    totals.close_session(2.0, "engaged_shopper", T0 + 120_000)
    totals.open_session()
    totals.add_event(T0 + DAY, "view", None, "mobile", "DE", "apparel.shoes")
    return totals


def test_events_and_closed_sessions_add_up():
    totals = _two_sessions()
    assert (totals.sessions, totals.total_events, totals.view_count, totals.cart_count, totals.purchase_count) == \
        (2, 4, 2, 1, 1)
    assert totals.total_revenue == 10.0 and totals.closed_duration_minutes == 2.0
    assert totals.devices == {"mobile": 3, "desktop": 1} and totals.categories == {"electronics": 3, "apparel": 1}
    assert (totals.first_seen, totals.last_seen) == (T0, T0 + DAY)


def test_open_sessions_are_folded_in_without_changing_the_state():
    totals = _two_sessions()
    figures = epoch_totals(totals, [OpenSession(0.0, "bouncer", T0 + DAY)])
    assert figures["duration_minutes"] == 2.0
    assert figures["segment_counts"] == {"engaged_shopper": 1, "bouncer": 1}
    assert figures["last_segment"] == "bouncer"
    assert totals.segment_counts == {"engaged_shopper": 1}  # untouched


def test_a_returning_user_continues_from_the_stored_totals_and_a_replay_writes_the_same():
    first = profile_update("u1", _two_sessions(), [OpenSession(0.0, "bouncer", T0 + DAY)])
    assert first["base"] is None and first["first_write"]  # nothing stored: inserted
    stored = {k: first[k] for k in ("epoch", "base", "totals")}

    def returning(stored_doc):
        later = new_epoch(T0 + 40 * DAY, "e9", stored_doc)
        later.open_session()
        later.add_event(T0 + 40 * DAY, "purchase", 99.5, "tablet", "DE", "apparel.shoes")
        return profile_update("u1", later, [OpenSession(0.0, "engaged_shopper", T0 + 40 * DAY)])

    update = returning(stored)
    totals = update["totals"]
    assert update["base"] == first["totals"] and not update["first_write"]  # a document exists: replaced
    assert (totals["first_seen"], totals["last_seen"]) == (T0, T0 + 40 * DAY)  # never reset
    assert (totals["sessions"], totals["total_events"], totals["purchase_count"]) == (3, 5, 2)
    assert totals["total_revenue"] == 109.5
    assert totals["countries"] == {"PL": 3, "DE": 2}
    assert totals["last_segment"] == "engaged_shopper"
    # the same batch again finds the document it wrote (same epoch): the same base, the same totals
    assert returning({k: update[k] for k in ("epoch", "base", "totals")}) == update


def test_an_epoch_is_named_by_its_first_final_event_and_carries_the_earlier_live_pointers():
    """An event is final once, so its (time, id) names one epoch; the document the same epoch
    wrote (a replayed batch) gives its own base, another epoch's document its totals, with the
    latest session and alerts of the epochs before."""
    earlier = _two_sessions()
    earlier.saw_session("s9", T0 + DAY)
    earlier.saw_alert("HIGH_VALUE_PURCHASE:u1:1", "HIGH_VALUE_PURCHASE", "medium", T0)
    stored = profile_update("u1", earlier, [])
    again = new_epoch(T0 + 31 * DAY, "e1", {k: stored[k] for k in ("epoch", "base", "totals")})
    assert again.epoch == f"{T0 + 31 * DAY}:e1" != stored["epoch"]
    assert again.base == stored["totals"]
    assert (again.latest_session_id, [a["alert_id"] for a in again.recent_alerts]) == (
        "s9", ["HIGH_VALUE_PURCHASE:u1:1"])
    replay = new_epoch(T0 + 31 * DAY, "e1", {"epoch": again.epoch, "base": again.base, "totals": {}})
    assert replay.base == again.base


def test_the_state_carries_the_base_so_later_writes_read_nothing():
    stored = {"epoch": "old", "base": None, "totals": epoch_totals(_two_sessions(), [])}
    totals = new_epoch(T0 + 40 * DAY, "e9", stored)
    assert ProfileTotals.from_state(totals.to_state()) == totals  # base and `stored` survive the state store
    assert totals.base == stored["totals"] and totals.stored


def test_profile_document_fields():
    figures = epoch_totals(_two_sessions(), [OpenSession(0.0, "bouncer", T0 + DAY)])
    doc = profile_document("u1", figures, RULES)
    assert doc["_id"] == doc["user_id"] == "u1"
    assert doc["first_seen"] == datetime(2019, 10, 2, 7, 6, 40, tzinfo=timezone.utc)
    assert doc["cohort_week"] == "2019-W40"
    assert (doc["sessions"], doc["avg_session_duration"], doc["avg_events_per_session"]) == (2, 1.0, 2.0)
    assert (doc["preferred_device"], doc["top_country"], doc["top_category"]) == ("mobile", "PL", "electronics")
    assert doc["segment_counts"] == {"bouncer": 1, "engaged_shopper": 1} and doc["last_segment"] == "bouncer"
    assert all(0 <= doc[s] <= 100 for s in ("engagement_score", "interest_score", "intent_score",
                                            "conversion_probability"))
    assert doc["interest_score"] == 16  # 0.5 * 2/50 + 0.2 * 2/5 + 0.3 * 1/5
    assert doc["behavior_pattern"] == "exploring" and doc["rule_version"] == "profiles-v1"


def test_ties_pick_the_smallest_key_whatever_the_order():
    totals = new_epoch(T0, "e")
    for country in ("PL", "DE", "DE", "PL"):
        totals.add_event(T0, "view", None, country=country)
    assert profile_document("u", epoch_totals(totals, []), RULES)["top_country"] == "DE"


def test_stored_profiles_are_read_ahead_once_and_forgotten_at_a_tasks_start(monkeypatch):
    from app.sinks.mongo import Store
    from app.sinks import profiles as P
    from app.sinks.profiles import StoredProfiles
    reads = []
    monkeypatch.setattr(StoredProfiles, "_read", lambda self, user: reads.append(user) or {"epoch": user})
    lookup = StoredProfiles(Store("mongodb://unused/", "db"))
    lookup.prefetch(["a", "b", "a"])
    assert lookup("a") == {"epoch": "a"} and lookup("b") == {"epoch": "b"}
    assert sorted(reads) == ["a", "b"]  # each read once, ahead
    assert lookup("c") == {"epoch": "c"} and reads[-1] == "c"  # not prefetched: read when asked
    lookup.prefetch(["d"])
    P._prefetched["d"].result()
    lookup.forget()
    assert lookup("d") == {"epoch": "d"} and reads.count("d") == 2  # the early answer was dropped
