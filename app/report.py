"""Prints what the job wrote: sessions per segment and status, the funnel, recent distribution.

    python -m app.report            (MONGODB_URI / MONGODB_DATABASE as for the job)
"""
from __future__ import annotations

import os
import sys

from pymongo import MongoClient

from app.sinks import collections as C

SEGMENT_ORDER = ("power_user", "engaged_shopper", "browser", "bouncer")


def segment_summary(db) -> list[str]:
    rows = {}
    for doc in db[C.SEGMENTS].find({}, {"behavior_segment": 1, "status": 1, "segment_color": 1, "total_amount": 1}):
        row = rows.setdefault(doc["behavior_segment"], {"color": doc.get("segment_color", ""), "active": 0,
                                                        "closed": 0, "revenue": 0.0})
        row[doc["status"]] += 1
        row["revenue"] += doc.get("total_amount") or 0.0
    lines = [f"{'segment':<18}{'active':>8}{'closed':>8}{'revenue':>12}"]
    for name in sorted(rows, key=lambda s: SEGMENT_ORDER.index(s) if s in SEGMENT_ORDER else 99):
        r = rows[name]
        lines.append(f"{r['color']} {name:<16}{r['active']:>8}{r['closed']:>8}{r['revenue']:>12.2f}")
    return lines


def funnel(db) -> list[str]:
    lines = [f"{'segment':<18}{'sessions':>9}{'users':>7}{'views':>7}{'carts':>7}{'buys':>6}"
             f"{'view>cart%':>11}{'cart>buy%':>10}{'conv%':>7}{'revenue':>11}{'AOV':>9}"]
    for d in sorted(db[C.FUNNEL].find(), key=lambda d: SEGMENT_ORDER.index(d["_id"]) if d["_id"] in SEGMENT_ORDER else 99):
        lines.append(f"{d['_id']:<18}{d['total_sessions']:>9}{d['unique_users']:>7}{d['total_views']:>7}"
                     f"{d['total_carts']:>7}{d['total_purchases']:>6}{d['view_to_cart_rate']:>11.2f}"
                     f"{d['cart_to_purchase_rate']:>10.2f}{d['overall_conversion_rate']:>7.2f}"
                     f"{d['total_revenue']:>11.2f}{d['avg_order_value']:>9.2f}")
    return lines


def actions(db, limit: int = 5) -> list[str]:
    """The sessions a growth team acts on first: highest priority, most recent."""
    lines = []
    query = {"status": "active", "behavior_segment": {"$in": ["power_user", "browser"]}}
    for d in db[C.SEGMENTS].find(query).sort([("action_priority", 1), ("session_end", -1)]).limit(limit):
        lines.append(f"{d['segment_color']} {d['_id'][:18]:<18} user {d['user_id']:<10} {d['behavior_segment']:<15}"
                     f"-> {d['recommendations'][0] if d['recommendations'] else '-'}")
    return lines


def top_profiles(db, limit: int = 5) -> list[str]:
    """The users most likely to buy now (user_profiles, by intent)."""
    lines = [f"{'user':<12}{'sessions':>9}{'events':>7}{'intent':>7}{'engage':>7}{'convert':>8}  pattern"]
    for d in db["user_profiles"].find().sort([("intent_score", -1), ("_id", 1)]).limit(limit):
        lines.append(f"{d['_id']:<12}{d['sessions']:>9}{d['total_events']:>7}{d['intent_score']:>7}"
                     f"{d['engagement_score']:>7}{d['conversion_probability']:>8}  {d['behavior_pattern']}")
    return lines if len(lines) > 1 else []


def alerts(db, limit: int = 8) -> list[str]:
    """Risk alerts by type, then the latest high-severity ones with their evidence."""
    counts = {}
    for d in db["behavior_alerts"].find({}, {"alert_type": 1, "severity": 1}):
        counts[(d["severity"], d["alert_type"])] = counts.get((d["severity"], d["alert_type"]), 0) + 1
    lines = [f"{severity:<7}{alert_type:<22}{n:>5}" for (severity, alert_type), n in sorted(counts.items())]
    for d in db["behavior_alerts"].find({"severity": "high"}).sort("first_event_time", -1).limit(limit):
        lines.append(f"  {d['alert_type']:<20} user {d['user_id']:<10} {d['first_event_time']:%H:%M:%S} {d['evidence']}")
    return lines


def fired(db, limit: int = 6) -> list[str]:
    """Trigger executions by trigger, then the latest ones (what the actions topic carried)."""
    counts = {}
    for d in db[C.EXECUTIONS].find({}, {"trigger": 1, "priority": 1}):
        counts[(d["priority"], d["trigger"])] = counts.get((d["priority"], d["trigger"]), 0) + 1
    lines = [f"{priority:>2}  {trigger:<22}{n:>5}" for (priority, trigger), n in sorted(counts.items())]
    for d in db[C.EXECUTIONS].find().sort("event_time", -1).limit(limit):
        todo = ", ".join(f"{a['channel']}/{a['template']}" for a in d["actions"])
        lines.append(f"  {d['event_time']:%H:%M:%S} {d['trigger']:<22} user {d['user_id']:<10} -> {todo}")
    return lines


def experiments(db) -> list[str]:
    """experiment_results: rate, 95% interval, lift and p-value per variant."""
    lines = []
    for d in db[C.EXPERIMENT_RESULTS].find().sort([("experiment", 1), ("is_control", -1), ("variant", 1)]):
        rate = "-" if d["conversion_rate"] is None else (f"{100 * d['conversion_rate']:.1f}% "
                                                        f"[{100 * d['ci95_low']:.1f}, {100 * d['ci95_high']:.1f}]")
        lift = "control" if d["is_control"] else ("-" if d["lift_abs"] is None else
                                                  f"{100 * d['lift_abs']:+.1f} pts, p={d['p_value']:.3g}"
                                                  f"{' significant' if d['significant'] else ''}"
                                                  if d["p_value"] is not None else f"{100 * d['lift_abs']:+.1f} pts")
        lines.append(f"{d['experiment']:<16}{d['variant']:<17}{d['exposed_sessions']:>7} exposed  {rate:<22} {lift}"
                     f"{'  SAMPLE RATIO MISMATCH' if d['sample_ratio_mismatch'] else ''}")
    return lines


def main() -> int:
    uri = os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/")
    db = MongoClient(uri, serverSelectionTimeoutMS=5000)[os.environ.get("MONGODB_DATABASE", "bigdata")]
    print("\n== sessions per segment (user_behavior_segments) ==")
    print("\n".join(segment_summary(db)))
    print("\n== conversion funnel, closed sessions (conversion_funnel) ==")
    print("\n".join(funnel(db)))
    print("\n== act now: open sessions by action priority ==")
    print("\n".join(actions(db)) or "(none)")
    print("\n== top users by intent (user_profiles) ==")
    print("\n".join(top_profiles(db)) or "(none: profiles off?)")
    print("\n== risk alerts (behavior_alerts) ==")
    print("\n".join(alerts(db)) or "(none)")
    print("\n== actions fired (trigger_executions; on the behavior_actions topic) ==")
    print("\n".join(fired(db)) or "(none: triggers off?)")
    print("\n== experiments (experiment_results) ==")
    print("\n".join(experiments(db)) or "(none: EXPERIMENTS_FILE not set)")
    print(f"\nenriched_events: {db[C.EVENTS].estimated_document_count()}, "
          f"quarantined_events: {db[C.QUARANTINE].estimated_document_count()}, "
          f"segment_distribution windows: {db[C.DISTRIBUTION].estimated_document_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
