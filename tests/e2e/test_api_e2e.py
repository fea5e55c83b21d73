"""The query API end to end (DESIGN.md §15): the real job has written MongoDB from real Kafka (the
quick tier's shared run, tests/e2e/shared_run.py: the REES46 sample, generated sessions with bots,
fraud, returning users and 5% redelivered events, a user who comes back a week later), the API runs
as its own process, and every endpoint's numbers are checked against a computation made here from
the records read back from the topic."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter, defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import httpx
import pytest
from pymongo import MongoClient

from app.sessions.tracker import session_id_of
from app.sinks import leaderboard, live_feed, open_sessions
from app.sinks.mongo import is_ferretdb
from app.sinks.user_activity import EVENTS_KEPT
from tests.conftest import ROOT, eventually
from tests.e2e.shared_run import SESSION_GAP, WATERMARK_DELAY

pytestmark = pytest.mark.e2e

KEY = "e2e-api-key-" + "x" * 16
GAP_MS, DELAY_MS, WINDOW_MS, HOUR_MS = 5 * 60_000, 10 * 60_000, 5 * 60_000, 3_600_000
assert (SESSION_GAP, WATERMARK_DELAY) == ("5m", "10m"), "GAP_MS and DELAY_MS are the shared run's settings"
MAX_MS = 24 * HOUR_MS
PRIORITY = {"power_user": 1, "browser": 2, "engaged_shopper": 3, "bouncer": 4}


def _ms(value: str | datetime) -> int:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace(" UTC", "+00:00").replace("Z", "+00:00"))
    return round(value.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


@dataclass
class Session:
    user_id: str
    events: list = field(default_factory=list)   # (ms, event_id, type, price)

    @property
    def start(self) -> int:
        return min(e[0] for e in self.events)

    @property
    def end(self) -> int:
        return max(e[0] for e in self.events)

    def count(self, event_type: str) -> int:
        return sum(1 for e in self.events if e[2] == event_type)

    @property
    def revenue(self) -> float:
        return sum(e[3] or 0 for e in self.events if e[2] == "purchase")

    @property
    def segment(self) -> str:
        """DESIGN.md §7, written out again here."""
        n, minutes = len(self.events), (self.end - self.start) / 60_000
        carts, buys = self.count("cart"), self.count("purchase")
        if n >= 30 and minutes >= 30 and buys >= 1:
            return "power_user"
        if buys >= 1 or (n >= 10 and minutes >= 10 and carts >= 1):
            return "engaged_shopper"
        if n >= 3 or minutes >= 1 or carts >= 1:
            return "browser"
        return "bouncer"

    @property
    def path(self) -> str:
        steps = []
        for _, _, event_type, _ in sorted(self.events):
            if len(steps) < 8 and (not steps or steps[-1] != event_type):
                steps.append(event_type)
        return ">".join(steps)


class Input:
    """The topic's records, counted the way DESIGN.md says: an event_id once, sessions by user_session."""

    def __init__(self, records):
        self.events, seen, newest = [], set(), {}
        for r in records:
            value = json.loads(r.value)
            newest[r.partition] = max(newest.get(r.partition, 0), _ms(value["event_time"]))
            event_id = value.get("event_id") or f"{r.topic}:{r.partition}:{r.offset}"
            if event_id in seen:
                continue
            seen.add(event_id)
            price = value.get("price")
            self.events.append({"event_id": event_id, "user_id": str(value["user_id"]), "ms": _ms(value["event_time"]),
                                "type": value["event_type"], "country": value.get("country") or "unknown",
                                "session": value["user_session"], "price": float(price) if price not in (None, "") else None})
        # DESIGN §5: a user_session's events, in event-time order, split where the gap between two
        # exceeds SESSION_GAP or the session reaches SESSION_MAX: `S`, then `S#2`, ...
        self.sessions: dict[str, Session] = {}
        by_key = defaultdict(list)
        for e in self.events:
            by_key[(e["user_id"], e["session"])].append(e)
        for (user, key), events in by_key.items():
            generation, current = 0, None
            for e in sorted(events, key=lambda e: (e["ms"], e["event_id"])):
                if current is None or e["ms"] - current.end > GAP_MS or e["ms"] - current.start >= MAX_MS:
                    generation, current = generation + 1, Session(user)
                    self.sessions[session_id_of(key, generation)] = current
                current.events.append((e["ms"], e["event_id"], e["type"], e["price"]))
        self.watermark = watermark = min(newest.values()) - DELAY_MS  # the slowest partition's (event_time_source)
        self.closed = {sid: s for sid, s in self.sessions.items()
                       if min(s.end + GAP_MS, s.start + MAX_MS - 1) < watermark}
        self.active = {sid: s for sid, s in self.sessions.items() if sid not in self.closed}
        self.first_seen = {}
        for e in self.events:
            self.first_seen[e["user_id"]] = min(e["ms"], self.first_seen.get(e["user_id"], e["ms"]))

    def hourly(self) -> Counter:
        return Counter((e["ms"] - e["ms"] % HOUR_MS, e["type"]) for e in self.events)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def api_run(stack, shared_run, tmp_path_factory):
    """The API as its own process over the quick tier's shared job run (tests/e2e/shared_run.py)."""
    tmp = tmp_path_factory.mktemp("api")
    port = _free_port()
    env = {**os.environ, "MONGODB_URI": stack["mongodb_uri"], "MONGODB_DATABASE": shared_run.database, "API_KEY": KEY}
    log = open(tmp / "api.log", "w")
    api = subprocess.Popen([sys.executable, "-m", "app.api", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": KEY}, timeout=30)
    mongo = MongoClient(stack["mongodb_uri"])
    try:
        eventually(lambda: _ready(client), timeout_s=60, what="the API's /readyz")
        yield {"api": client, "db": mongo[shared_run.database], "input": Input(shared_run.records),
               "intent": shared_run.intent, "log": tmp / "api.log"}
    finally:
        client.close()
        api.terminate()
        api.wait(timeout=30)
        log.close()
        mongo.close()


def _ready(client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def _get(run, path: str, **params) -> dict:
    response = run["api"].get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_job_closed_exactly_the_sessions_the_watermark_passed(api_run):
    """The premise of the closed-session figures below: the same sessions are closed here and there."""
    db, data = api_run["db"], api_run["input"]
    stored = {d["_id"]: d["status"] for d in db.user_behavior_segments.find({}, {"status": 1})}
    assert data.closed and data.active
    assert stored == {sid: "closed" if sid in data.closed else "active" for sid in data.sessions}


@contextmanager
def _daily(db, complete: bool, months: bool = True):
    """daily_metrics marked complete (the API reads it by _id: its month documents, or with months
    off its day documents only) or not (event_counts_hourly)."""
    status = db.stream_progress.find_one({"_id": "daily_metrics"})
    assert status["complete"] is True and status["months"] is True
    db.stream_progress.update_one({"_id": "daily_metrics"}, {"$set": {"complete": complete, "months": months}})
    try:
        yield
    finally:
        db.stream_progress.update_one({"_id": "daily_metrics"}, {"$set": {"complete": True, "months": True}})


@pytest.mark.parametrize("daily", [True, False], ids=["daily_metrics", "hourly"])
def test_event_frequency_equals_the_input_per_hour_and_type_with_filters(api_run, daily):
    with _daily(api_run["db"], daily):
        _event_frequency_equals_the_input(api_run)


def _event_frequency_equals_the_input(api_run):
    data = api_run["input"]
    body = _get(api_run, "/v1/events/frequency")
    got = {(_ms(b["bucket"]), t): n for b in body["series"] for t, n in b["by_event_type"].items()}
    assert got == dict(data.hourly())
    assert body["total_events"] == len(data.events)
    country = Counter(e["country"] for e in data.events if e["country"] != "unknown").most_common(1)[0][0]
    views = _get(api_run, "/v1/events/frequency", event_type="view", country=country, interval="day")
    assert views["total_events"] == sum(1 for e in data.events if e["type"] == "view" and e["country"] == country)
    cut = sorted({e["ms"] - e["ms"] % HOUR_MS for e in data.events})[-2]
    recent = _get(api_run, "/v1/events/frequency", start=_iso(cut))
    assert recent["total_events"] == sum(1 for e in data.events if e["ms"] >= cut)


def test_behavior_patterns_are_the_closed_sessions_event_paths(api_run):
    data = api_run["input"]
    body = _get(api_run, "/v1/patterns", limit=1000)
    assert {p["event_path"]: p["sessions"] for p in body["patterns"]} == dict(Counter(s.path for s in data.closed.values()))
    counts = [p["sessions"] for p in body["patterns"]]
    assert counts == sorted(counts, reverse=True)
    browsers = _get(api_run, "/v1/patterns", segment="browser", limit=1000)
    assert {p["event_path"]: p["sessions"] for p in browsers["patterns"]} == dict(
        Counter(s.path for s in data.closed.values() if s.segment == "browser"))
    top = body["patterns"][0]
    assert top["conversions"] == sum(1 for s in data.closed.values() if s.path == top["event_path"] and s.count("purchase"))


def test_retention_cohorts_count_each_user_once_per_week_of_its_cohort(api_run):
    data = api_run["input"]
    expected = defaultdict(set)
    for s in data.closed.values():
        first = datetime.fromtimestamp(data.first_seen[s.user_id] / 1000, timezone.utc)
        year, week, _ = first.isocalendar()
        start = datetime.fromtimestamp(s.start / 1000, timezone.utc).date()
        k = ((start - timedelta(days=start.weekday())) - (first.date() - timedelta(days=first.weekday()))).days // 7
        expected[(f"{year}-W{week:02d}", k)].add(s.user_id)
    body = _get(api_run, "/v1/retention", max_weeks=3)
    got = {(c["cohort_week"], w["week"]): w["users"] for c in body["cohorts"] for w in c["weeks"] if w["users"]}
    assert got == {key: len(users) for key, users in expected.items() if key[1] <= 3}
    assert any(week == 1 for _, week in got), "the returning user's week-1 session is missing"


def test_funnel_session_metrics_and_distribution_equal_the_closed_sessions(api_run):
    data = api_run["input"]
    by_segment = defaultdict(list)
    for s in data.closed.values():
        by_segment[s.segment].append(s)
    funnel = {f["behavior_segment"]: f for f in _get(api_run, "/v1/funnel")["segments"]}
    assert set(funnel) == set(by_segment)
    for segment, sessions in by_segment.items():
        f = funnel[segment]
        assert f["total_sessions"] == len(sessions)
        assert f["unique_users"] == len({s.user_id for s in sessions})
        assert (f["total_views"], f["total_carts"], f["total_purchases"]) == (
            sum(s.count("view") for s in sessions), sum(s.count("cart") for s in sessions),
            sum(s.count("purchase") for s in sessions))
        assert f["total_revenue"] == pytest.approx(sum(s.revenue for s in sessions), abs=0.01)
    metrics = {m["behavior_segment"]: m for m in _get(api_run, "/v1/sessions/metrics")["segments"]}
    for segment, sessions in by_segment.items():
        assert metrics[segment]["sessions"] == len(sessions)
        assert metrics[segment]["avg_session_duration"] == pytest.approx(
            sum((s.end - s.start) / 60_000 for s in sessions) / len(sessions), abs=0.01)
    last_end = max(s.end for s in data.closed.values())
    end = last_end - last_end % WINDOW_MS + WINDOW_MS
    body = _get(api_run, "/v1/segments/distribution", hours=2)
    expected = Counter(s.segment for s in data.closed.values() if end - 2 * HOUR_MS <= s.end - s.end % WINDOW_MS)
    assert body["totals"] == dict(expected)
    for window in body["windows"]:
        start = _ms(window["window_start"])
        assert {seg: w["session_count"] for seg, w in window["segments"].items()} == dict(
            Counter(s.segment for s in data.closed.values() if s.end - s.end % WINDOW_MS == start))


def test_personalization_gives_each_users_latest_session_segment_and_alerts(api_run):
    data, intent = api_run["input"], api_run["intent"]
    latest = {}
    for sid, s in data.sessions.items():
        if s.user_id not in latest or s.end >= data.sessions[latest[s.user_id]].end:
            latest[s.user_id] = sid
    risky = defaultdict(set)
    for session in intent:
        risky[str(session["user_id"])].update(session["alerts"])
    users = sorted(risky, key=lambda u: -len(risky[u]))[:6] + sorted(latest)[:10]
    for user in users:
        body = _get(api_run, f"/v1/users/{user}/personalization")
        sid = latest[user]
        session = data.sessions[sid]
        assert body["segment"]["session_id"] == sid
        assert body["segment"]["behavior_segment"] == session.segment
        assert body["segment"]["status"] == ("closed" if sid in data.closed else "active")
        assert body["segment"]["total_events"] == len(session.events)
        assert set(body["scores"]) == {"engagement_score", "interest_score", "intent_score", "conversion_probability"}
        assert all(0 <= v <= 100 for v in body["scores"].values())
        assert body["recommendations"], user
        types = {a["alert_type"] for a in body["open_alerts"]}
        assert risky[user] - {"HIGH_VALUE_PURCHASE"} <= types, (user, types)
        big = any(e["price"] and e["price"] >= 500 for e in data.events if e["user_id"] == user and e["type"] == "purchase")
        assert ("HIGH_VALUE_PURCHASE" in types) == big, user
    stored = api_run["db"].user_behavior_segments.find_one({"_id": latest[users[0]]})
    assert _get(api_run, f"/v1/users/{users[0]}/personalization")["experiments"] == (stored.get("experiments") or {})
    missing = api_run["api"].get("/v1/users/no-such-user/personalization")
    assert missing.status_code == 404 and "no-such-user" in missing.json()["error"]
    # A user none of whose events is final yet has no profile: the latest session comes from the
    # user's user_activity document (by _id), as the same session does through the profile.
    user, profiles = sorted(latest)[0], api_run["db"].user_profiles
    kept = profiles.find_one({"_id": user})
    profiles.delete_one({"_id": user})
    try:
        body = _get(api_run, f"/v1/users/{user}/personalization")
    finally:
        profiles.insert_one(kept)
    assert body["profile"] is None and body["segment"]["session_id"] == latest[user]
    assert body["segment"]["behavior_segment"] == data.sessions[latest[user]].segment
    assert body["recommendations"] == _get(api_run, f"/v1/users/{user}/personalization")["recommendations"]


def test_user_activity_lists_the_users_events_newest_first_with_filters(api_run):
    """From the user's user_activity document (its newest EVENTS_KEPT events; the cut itself is
    tested in tests/unit/test_user_activity.py)."""
    data = api_run["input"]
    user = Counter(e["user_id"] for e in data.events).most_common(1)[0][0]
    mine = sorted((e for e in data.events if e["user_id"] == user), key=lambda e: -e["ms"])
    body = _get(api_run, "/v1/activity", user_id=user, limit=1000)
    kept = body["kept"]
    assert kept == EVENTS_KEPT
    assert [_ms(e["event_timestamp"]) for e in body["events"]] == [e["ms"] for e in mine][:kept]  # ties: any order
    assert {e["event_id"] for e in body["events"]} <= {e["event_id"] for e in mine}
    assert len(body["events"]) == min(kept, len(mine))
    assert body["complete"] == (len(mine) < kept)
    assert body["by_event_type"] == dict(sorted(Counter(e["event_type"] for e in body["events"]).items()))
    assert body["summary"]["total_events"] == len(mine)
    stored = {d["_id"]: d["session_id"] for d in api_run["db"].enriched_events.find({"user_id": user})}
    assert all(e["session_id"] == stored[e["event_id"]] for e in body["events"])  # with their corrections
    views = _get(api_run, "/v1/activity", user_id=user, event_type="view", limit=3)
    assert [_ms(e["event_timestamp"]) for e in views["events"]] == [e["ms"] for e in mine[:kept]
                                                                    if e["type"] == "view"][:3]
    assert all(e["event_type"] == "view" for e in views["events"])
    middle = mine[kept // 2]["ms"]
    late = _get(api_run, "/v1/activity", user_id=user, start=_iso(middle), limit=1000)
    assert late["count"] == sum(1 for e in mine[:kept] if e["ms"] >= middle)


def test_without_a_complete_user_activity_the_per_user_endpoints_read_the_collections(api_run):
    """A job on a checkpoint from before user_activity marks it incomplete: the API answers from
    enriched_events and user_behavior_segments, the same events and sessions."""
    db, data = api_run["db"], api_run["input"]
    assert db.stream_progress.find_one({"_id": "activity"})["complete"] is True
    user = Counter(e["user_id"] for e in data.events).most_common(1)[0][0]
    kept = _get(api_run, "/v1/activity", user_id=user, limit=1000)
    sessions = _get(api_run, "/v1/sessions/metrics", user_id=user)
    db.stream_progress.update_one({"_id": "activity"}, {"$set": {"complete": False}})
    try:
        scanned = _get(api_run, "/v1/activity", user_id=user, limit=1000)
        scanned_sessions = _get(api_run, "/v1/sessions/metrics", user_id=user)
    finally:
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"complete": True}})
    assert "kept" not in scanned and "kept" not in scanned_sessions
    assert sorted(e["event_id"] for e in scanned["events"]) == sorted(e["event_id"] for e in kept["events"])
    assert sorted(s["session_id"] for s in scanned_sessions["sessions"]) == \
        sorted(s["session_id"] for s in sessions["sessions"])


def test_a_users_session_metrics_are_the_users_session_documents(api_run):
    db = api_run["db"]
    user = Counter(d["user_id"] for d in db.user_behavior_segments.find({}, {"user_id": 1})).most_common(1)[0][0]
    sessions = sorted(db.user_behavior_segments.find({"user_id": user}),
                      key=lambda d: (d["session_end"], d["_id"]), reverse=True)
    body = _get(api_run, "/v1/sessions/metrics", user_id=user)
    assert [s["session_id"] for s in body["sessions"]] == [d["_id"] for d in sessions][:100]
    closed = [d for d in sessions if d["status"] == "closed"][:100]
    assert body["total_sessions"] == len(closed) and body["active_sessions"] == len(sessions) - len(closed)
    assert body["total_revenue"] == pytest.approx(sum(d.get("total_amount") or 0 for d in closed), abs=0.01)
    by_segment = _get(api_run, "/v1/sessions/metrics", user_id=user, segment=sessions[0]["behavior_segment"])
    assert [s["session_id"] for s in by_segment["sessions"]] == [
        d["_id"] for d in sessions if d["behavior_segment"] == sessions[0]["behavior_segment"]][:100]


@pytest.mark.parametrize("daily", [True, False], ids=["daily_metrics", "hourly"])
def test_anomalies_compare_the_recent_hours_with_the_baseline_computed_from_the_input(api_run, daily):
    with _daily(api_run["db"], daily):
        _anomalies_compare_with_the_input(api_run)


@pytest.mark.parametrize("path, params", [
    ("/v1/anomalies", {}), ("/v1/anomalies", {"metric": "revenue", "recent_days": 0.5, "z_score_threshold": 1}),
    ("/v1/anomalies", {"metric": "sessions_closed", "recent_days": 2 / 24, "z_score_threshold": 1}),
    ("/v1/events/frequency", {"interval": "day"}), ("/v1/events/frequency", {"event_type": "cart"}),
    ("/v1/events/frequency", {"country": "unknown", "end": "2030-01-01T00:00:00Z"}),
    ("/v1/segments/distribution", {}), ("/v1/segments/distribution", {"hours": 24 * 7, "segment": "browser"}),
    ("/v1/sessions/metrics", {}), ("/v1/sessions/metrics", {"limit": 3, "segment": "browser"}),
    ("/v1/sessions/metrics", {"limit": 12})])
def test_daily_metrics_answer_as_the_hourly_rollups(api_run, path, params):
    """By _id from daily_metrics (its month documents, or its day documents), or by range from
    event_counts_hourly and segment_distribution: the same answer (anomalies, frequency,
    distribution and session metrics, with filters)."""
    answers = []
    for complete, months in ((True, True), (True, False), (False, False)):
        with _daily(api_run["db"], complete, months):
            answers.append(_get(api_run, path, **params))
    assert answers[0] == answers[1] == answers[2]
    assert any(answers[0].get(k) for k in ("metrics", "series", "windows", "segments")), "nothing to compare"


def _anomalies_compare_with_the_input(api_run):
    data = api_run["input"]
    hourly = Counter()
    for (hour, _), n in data.hourly().items():
        hourly[hour] += n
    last = max(h for h in hourly)
    end = last + HOUR_MS
    recent_start = end - 2 * HOUR_MS
    # no earlier than the first hour counted (here the REES46 sample's, in 2019): hours without events are 0
    baseline_start = max(recent_start - 7 * 24 * HOUR_MS, min(hourly))
    base = [hourly.get(h, 0) for h in range(baseline_start, recent_start, HOUR_MS)]
    mean = sum(base) / len(base)
    std = (sum((v - mean) ** 2 for v in base) / (len(base) - 1)) ** 0.5
    body = _get(api_run, "/v1/anomalies", recent_days=2 / 24, baseline_days=7, z_score_threshold=1.5, end=_iso(end))
    events = next(m for m in body["metrics"] if m["metric"] == "events")
    assert events["baseline_hours"] == len(base)
    assert events["baseline_mean"] == pytest.approx(mean, abs=0.01)
    assert events["baseline_std"] == pytest.approx(std, abs=0.01)
    recent = [hourly.get(h, 0) for h in range(recent_start, end, HOUR_MS)]
    assert events["recent_mean"] == pytest.approx(sum(recent) / len(recent), abs=0.01)
    flagged = [h for h in range(recent_start, end, HOUR_MS) if std and abs((hourly.get(h, 0) - mean) / std) >= 1.5]
    assert [_ms(h["hour"]) for h in events["anomalous_hours"]] == flagged


def test_alerts_executions_experiments_and_user_segments_equal_what_the_job_stored(api_run):
    db = api_run["db"]
    high = _get(api_run, "/v1/alerts", severity="high", limit=1000)
    stored = sorted(db.behavior_alerts.find({"severity": "high"}), key=lambda a: a["first_event_time"], reverse=True)
    assert [a["first_event_time"] for a in high["alerts"]] == [a["first_event_time"].replace(
        tzinfo=timezone.utc).isoformat() for a in stored]
    assert {a["alert_id"] for a in high["alerts"]} == {a["_id"] for a in stored}
    intended = {(str(s["user_id"]), t) for s in api_run["intent"] for t in s["alerts"] if t != "HIGH_VALUE_PURCHASE"}
    got = {(a["user_id"], a["alert_type"]) for a in _get(api_run, "/v1/alerts", limit=1000)["alerts"]
           if a["alert_type"] != "HIGH_VALUE_PURCHASE"}
    assert got == intended
    emails = _get(api_run, "/v1/trigger-executions", trigger="abandoned_cart_email", limit=1000)
    assert {e["execution_id"] for e in emails["executions"]} == {
        d["_id"] for d in db.trigger_executions.find({"trigger": "abandoned_cart_email"})}
    data = api_run["input"]
    carts = {sid: s for sid, s in data.closed.items() if s.segment == "browser" and s.count("cart")}
    fired, last = set(), {}  # one email per user per 24 h of event time (the trigger's cooldown)
    for sid, s in sorted(carts.items(), key=lambda item: item[1].end):
        if s.user_id not in last or s.end - last[s.user_id] >= 24 * HOUR_MS:
            fired.add(sid)
            last[s.user_id] = s.end
    assert {e["session_id"] for e in emails["executions"]} == fired
    experiments = _get(api_run, "/v1/experiments")["experiments"]
    assert experiments, "no experiment results"
    for experiment in experiments:
        exposed = Counter(d["experiments"][experiment["experiment"]] for d in db.user_behavior_segments.find(
            {"status": "closed"}) if experiment["experiment"] in (d.get("experiments") or {}))
        assert {v["variant"]: v["exposed_sessions"] for v in experiment["variants"] if v["exposed_sessions"]} == \
            dict(exposed)
    engaged = _get(api_run, "/v1/users/segments", min_engagement=30, limit=1000)["users"]
    profiles = sorted(db.user_profiles.find({"engagement_score": {"$gte": 30}}),
                      key=lambda p: (-p["engagement_score"], p["_id"]))
    assert [u["user_id"] for u in engaged] == [p["_id"] for p in profiles]
    final_users = {e["user_id"] for e in data.events if e["ms"] < data.watermark}  # profiles: final events
    assert len(db.user_profiles.distinct("_id")) == len(final_users)


@pytest.mark.parametrize("feed, filters", [
    (live_feed.ALERTS, {}), (live_feed.ALERTS, {"severity": "high"}), (live_feed.ALERTS, {"pair": True}),
    (live_feed.ALERTS, {"user": True, "severity": True}), (live_feed.ALERTS, {"range": True}),
    (live_feed.EXECUTIONS, {}), (live_feed.EXECUTIONS, {"user": True}),
    (live_feed.EXECUTIONS, {"trigger": "abandoned_cart_email", "range": True})])
def test_alerts_and_executions_from_live_feed_equal_the_collections_answers(api_run, feed, filters):
    """With the activity query complete the API reads live_feed's hour buckets by _id (the feed
    answers itself: not None); marked incomplete, it reads the collection: the same items, newest first."""
    db = api_run["db"]
    assert db.stream_progress.find_one({"_id": "activity"})["feed_complete"] is True
    path, field = ("/v1/alerts", "alerts") if feed is live_feed.ALERTS else ("/v1/trigger-executions", "executions")
    coll = db.behavior_alerts if feed is live_feed.ALERTS else db.trigger_executions
    params = {k: v for k, v in filters.items() if isinstance(v, str)}
    if filters.get("pair"):  # the commonest alert_type with severity
        params["alert_type"], params["severity"] = Counter((d["alert_type"], d["severity"])
                                                           for d in coll.find()).most_common(1)[0][0]
    if filters.get("severity") is True:  # the user's commonest severity, of the user with most alerts
        params["user_id"] = Counter(d["user_id"] for d in coll.find()).most_common(1)[0][0]
        params["severity"] = Counter(d["severity"] for d in coll.find({"user_id": params["user_id"]})).most_common(
            1)[0][0]
    elif filters.get("user"):
        params["user_id"] = Counter(d["user_id"] for d in coll.find(params)).most_common(1)[0][0]
    if filters.get("range"):  # the items of the last 80 days (the API takes 92 at most): the first to the middle one
        times = sorted({d[feed.time] for d in coll.find(params)})
        times = [t for t in times if t >= times[-1] - timedelta(days=80)]
        params["start"] = times[0].replace(tzinfo=timezone.utc).isoformat()
        params["end"] = (times[len(times) // 2] + timedelta(milliseconds=1)).replace(tzinfo=timezone.utc).isoformat()
    direct = live_feed.read(db.live_feed, feed, {k: v for k, v in params.items() if k not in ("start", "end")},
                            *(params.get(k) and datetime.fromisoformat(params[k]) for k in ("start", "end")), 1000)
    assert direct, f"live_feed could not answer {params} itself"
    answers = []
    for complete in (True, False):
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": complete}})
        try:
            answers.append([_get(api_run, path, **params, limit=limit)[field] for limit in (1000, 3)])
        finally:
            db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": True}})
    (feed_all, feed_3), (coll_all, coll_3) = answers
    assert feed_all and len(feed_all) < 1000, f"{len(feed_all)} items for {params}"
    assert [d[feed.id] for d in feed_all] == [d[feed.id] for d in direct]
    assert {d[feed.id] for d in feed_all} == {d[feed.id] for d in coll_all}
    assert [d[feed.time] for d in feed_all] == [d[feed.time] for d in coll_all]  # newest first (ties: any order)
    assert [d[feed.time] for d in feed_3] == [d[feed.time] for d in coll_3]
    wall_clock = ("detected_at", "executed_at")  # when the activity query / the store query filed it
    by_id = {d[feed.id]: d for d in coll_all}
    assert all({k: v for k, v in d.items() if k not in wall_clock} ==
               {k: v for k, v in by_id[d[feed.id]].items() if k not in wall_clock} for d in feed_all)


@pytest.mark.parametrize("filters", [{}, {"event_type": "view"}, {"country": True}, {"event_type": "cart", "country": True},
                                     {"range": True}, {"event_type": "purchase", "range": True}],
                         ids=["all", "type", "country", "type+country", "range", "type+range"])
def test_activity_without_a_user_from_live_feed_equals_the_collections_answer(api_run, filters):
    """With the activity query complete, /v1/activity without user_id reads live_feed's event
    hours by _id (`kept` in the answer): the collection's newest events, newest first, with the
    same fields; past what a truncated hour kept, a prefix of them marked `complete: false`."""
    db = api_run["db"]
    assert db.stream_progress.find_one({"_id": "activity"})["events_complete"] is True
    params = {k: v for k, v in filters.items() if isinstance(v, str)}
    if filters.get("country"):  # the commonest country (its hours overflow)
        params["country"] = Counter(d["country"] for d in db.enriched_events.find(
            {"country": {"$ne": None}}, {"country": 1})).most_common(1)[0][0]
    if filters.get("range"):  # a start and an end inside hours, within the last 80 days (the API takes 92)
        times = sorted(e["ms"] for e in api_run["input"].events)
        times = [t for t in times if t >= times[-1] - 80 * 24 * HOUR_MS]
        params["start"], params["end"] = _iso(times[len(times) // 4] + 1), _iso(times[len(times) // 2] + 1)
    answers = {}
    for complete in (True, False):
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"events_complete": complete}})
        try:
            answers[complete] = {limit: _get(api_run, "/v1/activity", **params, limit=limit) for limit in (3, 100, 1000)}
        finally:
            db.stream_progress.update_one({"_id": "activity"}, {"$set": {"events_complete": True}})
    overflowed = False
    for limit in (3, 100, 1000):
        feed, coll = answers[True][limit], answers[False][limit]
        assert feed["kept"] == live_feed.EVENTS_KEPT and "kept" not in coll
        got, want = feed["events"], coll["events"]
        assert want, f"no events for {params}"
        if limit <= live_feed.EVENTS_KEPT and "range" not in filters:
            assert feed["complete"] is True, f"limit {limit} of {params} is within every hour's kept events"
        if feed["complete"]:
            assert [e["event_timestamp"] for e in got] == [e["event_timestamp"] for e in want]
            last = want[-1]["event_timestamp"]  # ties at the cut: either may be listed
            assert {e["event_id"] for e in got if e["event_timestamp"] > last} == \
                {e["event_id"] for e in want if e["event_timestamp"] > last}
        else:
            overflowed = True
            assert [e["event_timestamp"] for e in got] == [e["event_timestamp"] for e in want[:len(got)]]
        by_id = {e["event_id"]: e for e in want}
        assert all(e == by_id[e["event_id"]] for e in got if e["event_id"] in by_id), "a field differs"
        assert feed["by_event_type"] == dict(sorted(Counter(e["event_type"] for e in got).items()))
    if filters == {}:
        assert overflowed, "the run's hours hold more than EVENTS_KEPT events: 1000 of them cannot be complete"


@pytest.mark.parametrize("rank_complete", [True, False], ids=["live_feed", "collection"])
def test_user_segments_lists_the_most_engaged_users_as_user_profiles_ranks_them(api_run, rank_complete):
    """From live_feed's leaderboard (the activity query complete) and from the engagement_score
    index: the profiles' order (score, then id), with each filter."""
    db = api_run["db"]
    assert db.stream_progress.find_one({"_id": "activity"})["rank_complete"] is True
    assert db.live_feed.find_one({"_id": leaderboard.index_id(leaderboard.ALL)})["scores"], "no leaderboard"
    profiles = sorted(db.user_profiles.find(), key=lambda p: (-p["engagement_score"], p["_id"]))
    segment = Counter(p["last_segment"] for p in profiles).most_common(1)[0][0]
    middle = profiles[len(profiles) // 2]["engagement_score"]
    db.stream_progress.update_one({"_id": "activity"}, {"$set": {"rank_complete": rank_complete}})
    try:
        for params in ({}, {"limit": 3}, {"min_engagement": middle}, {"segment": segment},
                       {"segment": segment, "min_engagement": middle, "limit": 5}):
            got = _get(api_run, "/v1/users/segments", **{"limit": 1000, **params})["users"]
            want = [p for p in profiles if p["engagement_score"] >= params.get("min_engagement", 0)
                    and p["last_segment"] == params.get("segment", p["last_segment"])][:params.get("limit", 1000)]
            assert [u["user_id"] for u in got] == [p["_id"] for p in want], params
            assert [u["engagement_score"] for u in got] == [p["engagement_score"] for p in want]
    finally:
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"rank_complete": True}})


def test_user_segments_from_the_leaderboards_head_equal_the_profiles_fields(api_run):
    """At most HEAD (100) users come from the head with the fields it keeps: the same answer,
    field by field, as user_profiles'."""
    db = api_run["db"]
    segment = Counter(p["last_segment"] for p in db.user_profiles.find()).most_common(1)[0][0]
    for params in ({}, {"limit": 7, "segment": segment}, {"min_engagement": 20, "limit": 100}):
        answers = []
        for complete in (True, False):
            db.stream_progress.update_one({"_id": "activity"}, {"$set": {"rank_complete": complete}})
            try:
                answers.append(_get(api_run, "/v1/users/segments", **params))
            finally:
                db.stream_progress.update_one({"_id": "activity"}, {"$set": {"rank_complete": True}})
        assert answers[0] == answers[1] and answers[0]["users"], params


@pytest.mark.parametrize("feed_complete", [True, False], ids=["live_feed", "collection"])
def test_act_now_lists_the_open_sessions_most_urgent_first(api_run, feed_complete):
    """From live_feed's open-session buckets (the activity query complete) and from the
    collection's (status, session_end) index: the same answer, from the input."""
    data, db = api_run["input"], api_run["db"]
    assert db.stream_progress.find_one({"_id": "activity"})["feed_complete"] is True
    assert db.live_feed.find_one({"_id": open_sessions.INDEX_ID})["buckets"], "no open-session buckets"
    latest = max(s.end for s in data.active.values())
    recent = [(sid, s) for sid, s in data.active.items() if s.end >= latest - HOUR_MS]
    db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": feed_complete}})
    try:
        body = _get(api_run, "/v1/act-now", hours=1, limit=1000)
        first = _get(api_run, "/v1/act-now", hours=1, limit=3)
    finally:
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": True}})
    assert {s["session_id"] for s in body["sessions"]} == {sid for sid, _ in recent}
    assert [(PRIORITY[s["behavior_segment"]], -_ms(s["session_end"])) for s in body["sessions"]] == sorted(
        (PRIORITY[s.segment], -s.end) for _, s in recent)  # most urgent first; ties in any order
    assert [(s["behavior_segment"], s["session_end"]) for s in first["sessions"]] == [
        (s["behavior_segment"], s["session_end"]) for s in body["sessions"][:3]]
    assert _ms(body["since"]) == latest - HOUR_MS


def test_act_now_from_live_feed_gives_each_session_as_user_behavior_segments_has_it(api_run):
    """The open-session buckets carry each session's fields (as the activity query's user
    documents have them): field by field what the (status, session_end) read of the collection
    gives, after the run."""
    db = api_run["db"]
    answers = []
    for complete in (True, False):
        db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": complete}})
        try:
            answers.append(_get(api_run, "/v1/act-now", hours=24, limit=1000))
        finally:
            db.stream_progress.update_one({"_id": "activity"}, {"$set": {"feed_complete": True}})
    by_id = [sorted(a["sessions"], key=lambda s: s["session_id"]) for a in answers]
    assert by_id[0] and by_id[0] == by_id[1]
    assert {"user_id", "behavior_segment", "total_events", "recommendations"} <= set(by_id[0][0])


def test_health_reports_the_jobs_last_batch(api_run):
    last = api_run["db"].stream_progress.find_one({"query": "sessions"}, sort=[("batch_id", -1)])
    body = _get(api_run, "/v1/health")
    assert body["last_batch"]["batch_id"] == last["batch_id"]
    assert body["last_batch"]["open_sessions"] == len(api_run["input"].active)


@pytest.mark.parametrize("path, parameter", [
    ("/v1/activity?limit=100000", "limit"), ("/v1/users/segments?segment=whales", "segment"),
    ("/v1/anomalies?z_score_threshold=-2", "z_score_threshold"), ("/v1/retention?max_weeks=x", "max_weeks"),
    ("/v1/alerts?start=2026-13-01", "start"), ("/v1/patterns?segmnt=browser", "segmnt"),
])
def test_the_running_api_answers_a_bad_parameter_with_a_422_naming_it(api_run, path, parameter):
    response = api_run["api"].get(path)
    assert response.status_code == 422 and response.json()["parameter"] == parameter


def test_the_running_api_refuses_a_request_without_the_key(api_run):
    response = httpx.get(str(api_run["api"].base_url) + "/v1/funnel")
    assert response.status_code == 401


def test_the_running_api_fails_closed(api_run):
    """Issue 20 on the real store: bounded windows counted from the input, the key never in a query
    string, status-only probes, request ids, and an access log without query strings."""
    data, api = api_run["input"], api_run["api"]
    window = {sid: s.end - s.end % WINDOW_MS for sid, s in data.closed.items()}
    latest = max(window.values())
    newest = _get(api_run, "/v1/sessions/metrics", limit=1)  # the newest 5-minute window only
    assert newest["total_sessions"] == sum(1 for w in window.values() if w == latest)
    start = latest - 2 * HOUR_MS
    hour = _get(api_run, "/v1/segments/distribution", start=_iso(start), hours=1)  # an hour from start
    assert hour["totals"] == dict(Counter(data.closed[sid].segment for sid, w in window.items()
                                          if start <= w < start + HOUR_MS))
    wide = api.get("/v1/segments/distribution", params={"start": _iso(start - 30 * 24 * HOUR_MS), "end": _iso(start)})
    assert wide.status_code == 422 and wide.json()["parameter"] == "start"
    assert api.get("/v1/activity", params={"end": "9999-12-31T23:30:00"}).status_code == 422
    in_query = httpx.get(str(api.base_url) + "/v1/funnel", params={"key": KEY})
    assert in_query.status_code == 400 and in_query.headers["X-Request-ID"] == in_query.json()["request_id"]
    assert api.get("/readyz").json() == {"status": "ready"}
    probe = api.get("/v1/activity", params={"country": "ZZ-probe"})
    assert probe.status_code == 200
    line = f"{probe.headers['X-Request-ID']} GET /v1/activity 200 "  # written once the answer is out: wait
    log = eventually(lambda: line in api_run["log"].read_text() and api_run["log"].read_text(),
                     timeout_s=10, what="the access log line of /v1/activity")
    assert "ZZ-probe" not in log and KEY not in log
    assert "refused a key in the query string of /v1/funnel" in log


def test_the_local_store_gets_no_index_it_would_not_read(api_run):
    """FerretDB uses an index for _id equality only, yet keeps every declared index on each write:
    the job leaves out the indexes only MongoDB's planner would use (app/sinks/collections.py)."""
    db = api_run["db"]
    assert is_ferretdb(db)
    assert [("user_id", 1), ("event_timestamp", -1)] in [v["key"] for v in db.enriched_events.index_information().values()]
    assert [("event_type", 1), ("event_timestamp", -1)] not in [
        v["key"] for v in db.enriched_events.index_information().values()]
