"""The sessions batch's aggregate inputs (pipeline.aggregate_inputs): what the store query adds to
conversion_funnel, segment_distribution, experiment_results and the event counts."""
from __future__ import annotations

import json

from app.pipeline import aggregate_inputs
from app.sessions.stateful import OUTPUT_SCHEMA


def test_the_aggregate_inputs_are_the_closed_sessions_and_the_counted_events(spark):
    """aggregate_inputs (one Spark job) gives the row count, the closed sessions' figures and the counted events
    per hour x type x country: events in a session, not late-and-unsessionized ones, duplicates,
    corrections or open sessions."""
    hour = 3_600_000
    def ev(eid, ms, kind="view", country="DE", session="S"):
        return ("event", eid, json.dumps({"event_ms": ms, "event_type": kind, "country": country}), session,
                None, session is None, None, None)
    session = {"_id": "S", "behavior_segment": "browser", "user_id": 1, "session_end": 5 * hour, "session_start": hour,
               "session_duration_minutes": 3.5, "view_count": 2, "cart_count": 0, "purchase_count": 0,
               "total_amount": 0.0}
    rows = [ev("a", hour + 1), ev("b", hour + 2), ev("c", 2 * hour, "cart"), ev("d", hour + 5, country=None),
            ev("late", hour + 3, session=None),
            ("duplicate", "a", None, "S", None, None, None, None),
            ("event_fix", "e", json.dumps({"event_ms": hour, "event_type": "view", "country": "DE"}), "S", None, None,
             None, None),
            ("session", "S", json.dumps(session), None, None, None, "closed", True),
            ("session", "T", json.dumps({**session, "_id": "T"}), None, None, None, "active", True)]
    total, closed, counts = aggregate_inputs(spark.createDataFrame(rows, OUTPUT_SCHEMA).repartition(3))
    assert total == len(rows)
    assert [c["session_id"] for c in closed] == ["S"] and closed[0]["session_end_ms"] == 5 * hour
    assert sorted(counts, key=repr) == sorted([(hour, "view", "DE", 2), (2 * hour, "cart", "DE", 1),
                                               (hour, "view", None, 1)], key=repr)
    assert aggregate_inputs(spark.createDataFrame([], OUTPUT_SCHEMA)) == (0, [], [])
