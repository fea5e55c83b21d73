"""The test-data generator: sessions land in their segment, malformed records have one problem."""
import argparse
import csv
import json
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from app.events import contract as c
from app.generator.behaviors import SESSION_BUILDERS
from app.generator.cli import DEFAULT_MIX, allocate_segments, main, parse_mix, plan_sessions
from app.generator.malformed import MALFORMED_KINDS, interleave_malformed, malformed_record
from app.generator.replay import paced, parse_event_time, read_rees46_events

SAMPLE_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "rees46_2019oct_first1000.csv"
BASE_TIME = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
NOW = datetime(2024, 5, 2, 0, 0, 0, tzinfo=timezone.utc)
SEEDS = range(150)


def session_metrics(events):
    times = [parse_event_time(e["event_time"]) for e in events]
    types = [e["event_type"] for e in events]
    return {"total": len(events), "minutes": (max(times) - min(times)).total_seconds() / 60,
            "carts": types.count("cart"), "purchases": types.count("purchase")}


def segment_of(m):
    """DESIGN §7, top-down, first match wins."""
    if m["total"] >= 30 and m["minutes"] >= 30 and m["purchases"] >= 1:
        return "power_user"
    if m["purchases"] >= 1 or (m["total"] >= 10 and m["minutes"] >= 10 and m["carts"] >= 1):
        return "engaged_shopper"
    if m["total"] >= 3 or m["minutes"] >= 1 or m["carts"] >= 1:
        return "browser"
    return "bouncer"


def quarantine_reasons(value: bytes, now: datetime) -> set:
    """A reference reading of DESIGN §4, to prove each malformed record has ONE problem."""
    if len(value) > c.MAX_VALUE_BYTES:  # then judge the rest without the bulk
        rest = {k: v for k, v in json.loads(value).items() if k != "properties"}
        return {c.VALUE_TOO_LARGE} | quarantine_reasons(json.dumps(rest).encode(), now)
    try:
        record = json.loads(value)
    except ValueError:
        return {c.INVALID_JSON}
    if not isinstance(record, dict):
        return {c.NOT_AN_OBJECT}
    reasons = {f"missing_{f}" for f in c.REQUIRED_FIELDS if record.get(f) in (None, "")}
    if record.get("event_time") not in (None, ""):
        try:
            if parse_event_time(str(record["event_time"])) > now + timedelta(seconds=c.MAX_FUTURE_SECONDS):
                reasons.add(c.EVENT_TIME_IN_FUTURE)
        except ValueError:
            reasons.add(c.UNPARSEABLE_EVENT_TIME)
    price = record.get("price")
    if price is not None and not isinstance(price, (int, float)):
        reasons.add(c.PRICE_NOT_A_NUMBER)
    elif price is not None and price < 0:
        reasons.add(c.NEGATIVE_PRICE)
    elif price is not None and price > c.MAX_PRICE:
        reasons.add(c.PRICE_TOO_LARGE)
    if record.get("event_type") == "purchase" and price is None:
        reasons.add(c.PURCHASE_WITHOUT_PRICE)
    return reasons


@pytest.mark.parametrize("segment", list(SESSION_BUILDERS))
def test_every_session_lands_in_its_segment(segment):
    for seed in SEEDS:
        events = SESSION_BUILDERS[segment](42, f"s-{seed}", BASE_TIME, random.Random(seed))
        assert segment_of(session_metrics(events)) == segment, (seed, session_metrics(events))


@pytest.mark.parametrize("segment", list(SESSION_BUILDERS))
def test_sessions_keep_clear_of_thresholds(segment):
    for seed in SEEDS:
        m = session_metrics(SESSION_BUILDERS[segment](42, "s", BASE_TIME, random.Random(seed)))
        if segment == "power_user":
            assert m["total"] >= 35 and m["minutes"] >= 35 and m["purchases"] >= 1
        elif segment == "engaged_shopper":
            assert 5 <= m["total"] <= 20 and 3 <= m["minutes"] <= 20 and m["carts"] >= 1 and m["purchases"] == 1
        elif segment == "browser":
            assert 3 <= m["total"] <= 8 and 2 <= m["minutes"] <= 9 and m["carts"] <= 1 and m["purchases"] == 0
        else:
            assert m["total"] <= 2 and m["minutes"] < 40 / 60 and m["carts"] == m["purchases"] == 0


@pytest.mark.parametrize("segment", list(SESSION_BUILDERS))
def test_events_are_ordered_valid_and_json_ready(segment):
    for seed in SEEDS:
        events = SESSION_BUILDERS[segment](42, "sess-1", BASE_TIME, random.Random(seed))
        times = [parse_event_time(e["event_time"]) for e in events]
        assert times[0] == BASE_TIME
        assert all(timedelta(0) < b - a <= timedelta(minutes=3) for a, b in zip(times, times[1:]))
        for event in events:
            assert quarantine_reasons(json.dumps(event).encode(), NOW) == set()
            assert event["event_type"] in c.CANONICAL_TYPES
            assert isinstance(event["price"], float) and event["price"] >= 0
            assert event["user_id"] == 42 and event["user_session"] == "sess-1"
            assert event["category_code"] == "" or "." in event["category_code"]
            assert uuid.UUID(event["event_id"]).version == 4
            assert all(isinstance(event[f], str) for f in ("ip_address", "country", "city", "device_type",
                                                           "user_agent", "page_url", "referrer_url"))
        assert len({e["event_id"] for e in events}) == len(events)
        assert len({(e["ip_address"], e["user_agent"]) for e in events}) == 1  # one profile per session (and user)


def test_same_rng_seed_gives_the_same_session():
    build = SESSION_BUILDERS["power_user"]
    assert build(1, "s", BASE_TIME, random.Random(7)) == build(1, "s", BASE_TIME, random.Random(7))
    assert build(1, "s", BASE_TIME, random.Random(7)) != build(1, "s", BASE_TIME, random.Random(8))


def test_naive_base_time_is_read_as_utc_and_rng_is_optional():
    events = SESSION_BUILDERS["browser"](1, "s", BASE_TIME.replace(tzinfo=None))
    assert events[0]["event_time"] == "2024-05-01 12:00:00 UTC"


def test_about_forty_percent_of_browsers_abandon_a_cart():
    with_cart = sum(session_metrics(SESSION_BUILDERS["browser"](1, "s", BASE_TIME, random.Random(s)))["carts"]
                    for s in range(500))
    assert 0.3 * 500 < with_cart < 0.5 * 500


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_record_has_exactly_its_one_problem(kind):
    for seed in range(30):
        value, reason = malformed_record(kind, random.Random(seed), NOW)
        assert isinstance(value, bytes) and reason == kind
        assert quarantine_reasons(value, NOW) == {kind}, value[:300]


def test_malformed_records_have_the_advertised_characteristics():
    rng = random.Random(1)
    record = {kind: malformed_record(kind, rng, NOW)[0] for kind in MALFORMED_KINDS}
    with pytest.raises(ValueError):
        json.loads(record["invalid_json"])
    assert b"malformed-invalid_json-" in record["invalid_json"]
    assert not isinstance(json.loads(record["not_an_object"]), dict)
    assert len(record["value_too_large"]) > 65536
    future = parse_event_time(json.loads(record["event_time_in_future"])["event_time"])
    assert future >= NOW + timedelta(hours=1)
    for kind in set(MALFORMED_KINDS) - {"invalid_json", "not_an_object"}:
        assert json.loads(record[kind])["event_id"].startswith(f"malformed-{kind}-")


def test_unknown_malformed_kind_is_refused():
    with pytest.raises(ValueError, match="unknown malformed kind"):
        malformed_record("too_pretty", random.Random(1), NOW)


def test_malformed_records_are_interleaved_cycling_every_kind():
    out = list(interleave_malformed(range(240), 0.1, random.Random(1), NOW))
    kinds = [kind for _, kind in out if kind]
    assert [r for r, kind in out if kind is None] == list(range(240))
    assert kinds == list(MALFORMED_KINDS) * 2
    positions = [i for i, (_, kind) in enumerate(out) if kind]
    assert all(8 <= b - a <= 12 for a, b in zip(positions, positions[1:]))  # spread evenly


def test_replay_of_the_sample_yields_1000_events_in_time_order():
    events = list(read_rees46_events(SAMPLE_CSV))
    times = [parse_event_time(e["event_time"]) for e in events]
    assert len(events) == 1000 and times == sorted(times)
    first = events[0]
    assert first == {"event_time": "2019-10-01 00:00:00 UTC", "event_type": "view", "product_id": 44600062,
                     "category_id": 2103807459595387724, "category_code": "", "brand": "shiseido",
                     "price": 35.79, "user_id": 541312140,
                     "user_session": "72d76fde-8bb3-4e00-8c23-a032dfed738c"}
    assert all("event_id" not in e for e in events)


def test_replay_sorts_an_unsorted_file_stably(tmp_path):
    rows = list(csv.reader(SAMPLE_CSV.open()))[:21]
    shuffled = tmp_path / "shuffled.csv"
    with shuffled.open("w", newline="") as handle:
        csv.writer(handle).writerows([rows[0]] + list(reversed(rows[1:])))
    events = list(read_rees46_events(shuffled))
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    same_second = [e["user_session"] for e in events if e["event_time"] == "2019-10-01 00:00:00 UTC"]
    assert same_second == [r[8] for r in reversed(rows[1:]) if r[0] == "2019-10-01 00:00:00 UTC"]


def test_replay_pacing_follows_event_time_gaps_divided_by_speedup():
    clock, slept = [100.0], []

    def sleep(seconds):
        slept.append(round(seconds, 3))
        clock[0] += seconds

    events = [{"event_time": f"2019-10-01 00:00:{s:02d} UTC"} for s in (0, 10, 10, 30)]
    assert list(paced(events, 10, clock=lambda: clock[0], sleep=sleep)) == events
    assert slept == [1.0, 2.0]
    assert list(paced(events, 0, clock=lambda: clock[0], sleep=sleep)) == events and len(slept) == 2


def test_mix_parsing_and_exact_allocation():
    mix = parse_mix("bouncer=0.3,browser=0.4,engaged_shopper=0.2,power_user=0.1")
    assert sorted(allocate_segments(20, mix)) == sorted(["bouncer"] * 6 + ["browser"] * 8 +
                                                         ["engaged_shopper"] * 4 + ["power_user"] * 2)
    assert len(allocate_segments(7, mix)) == 7
    for bad in ("shopper=1", "bouncer=x", "bouncer=-1", "bouncer=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mix(bad)


def test_planned_sessions_are_in_the_past_in_their_segment_and_repeatable():
    now = datetime.now(timezone.utc)
    mix = parse_mix("bouncer=1,browser=1,engaged_shopper=1,power_user=1")
    sessions = plan_sessions(80, mix, random.Random(3), now, start_minutes_ago=60, spread_minutes=60,
                             user_pool=10)
    assert len({s.user_id for s in sessions}) == 10
    for session in sessions:
        assert segment_of(session_metrics(session.events)) == session.segment
        assert parse_event_time(session.events[-1]["event_time"]) <= now - timedelta(minutes=1)
        assert session.intent()["events"] == len(session.events)
    again = plan_sessions(80, mix, random.Random(3), now, start_minutes_ago=60, spread_minutes=60, user_pool=10)
    assert again == sessions


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # kafka-python's own importlib use
def test_cli_says_clearly_when_kafka_is_unreachable(capsys):
    assert main(["127.0.0.1:1", "t", "--sessions", "1", "--connect-timeout", "1"]) == 2
    assert "error: cannot reach Kafka at 127.0.0.1:1 (start it with: make up)" in capsys.readouterr().err


def test_redeliveries_repeat_about_the_ratio_of_events_soon_after_the_original():
    from app.generator.cli import with_redeliveries
    events = [{"event_id": f"e{i}"} for i in range(10_000)]
    out = with_redeliveries(events, 0.1, random.Random(3))
    ids = [e["event_id"] for e in out]
    assert set(ids) == {e["event_id"] for e in events}
    assert 900 <= len(out) - len(events) <= 1100
    firsts = {}
    for position, event_id in enumerate(ids):
        if event_id in firsts:
            assert 0 < position - firsts[event_id] <= 40
        firsts.setdefault(event_id, position)
    assert with_redeliveries(events, 0.0, random.Random(3)) == events


def test_the_generator_uses_the_jobs_kafka_security_settings():
    from app.generator.cli import kafka_security
    assert kafka_security({}) == {"security_protocol": "PLAINTEXT"}
    assert kafka_security({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "KAFKA_SASL_USERNAME": "gen", "KAFKA_SASL_PASSWORD": "pw"}) == {
        "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "gen", "sasl_plain_password": "pw"}


@pytest.mark.parametrize("seed", range(4))
def test_bots_fraud_and_returning_users_raise_exactly_the_recorded_alerts(seed):
    """The alert rules (app/profiles/alerts.py, default thresholds) over the generated events, user by
    user: the (user, alert type) pairs raised are the ones the intent records, on clean traffic too."""
    from app.profiles.alerts import AlertEvent, AlertState, detect
    from app.profiles.rules import DEFAULT_PROFILE_RULES, load_profile_rules
    rules = load_profile_rules(DEFAULT_PROFILE_RULES)
    sessions = plan_sessions(300, parse_mix(DEFAULT_MIX), random.Random(seed), BASE_TIME + timedelta(days=1),
                             bots=0.05, fraud=0.05, returning=0.3)
    assert sum(s.scenario == "bot" for s in sessions) == sum(s.scenario == "fraud" for s in sessions) == 15
    assert len({s.user_id for s in sessions}) < len(sessions)  # some users came back
    by_user: dict = {}
    for session in sessions:
        by_user.setdefault(session.user_id, []).extend((e, session.user_session) for e in session.events)
    raised = set()
    for user, events in by_user.items():
        events.sort(key=lambda item: item[0]["event_time"])
        alerts = detect(AlertState(), str(user), [
            AlertEvent(int(parse_event_time(e["event_time"]).timestamp() * 1000), e["event_type"], session,
                       e["ip_address"], e["country"], e["price"]) for e, session in events], rules)
        raised |= {(str(user), a.alert_type) for a in alerts}
    intended = {(str(s.user_id), alert) for s in sessions for alert in s.intent()["alerts"]}
    assert raised == intended
    assert {s.segment for s in sessions if s.scenario == "bot"} == {"browser"}
