"""The rollups the API reads (app/rollups.py), the event path of a session, and the analytics
arithmetic over them (app/api/analytics.py)."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from app import aggregates as A2, rollups as R
from app.api import analytics as A
from app.sessions.metrics import PATH_STEPS, SessionAccumulator, event_path
from app.sinks import exactly_once
from tests.unit.test_api_edges import FakeStore

T0 = datetime(2019, 10, 1, tzinfo=timezone.utc)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_event_path_collapses_runs_and_keeps_the_first_steps():
    acc = SessionAccumulator(0, 0)
    for event_type in ["view", "view", "cart", "view", "cart", "purchase", "purchase"]:
        acc.add(0, event_type, None, None, 1.0)
    assert event_path(acc) == "view>cart>view>cart>purchase"
    for i in range(20):
        acc.add(0, "view" if i % 2 else "cart", None, None, None)
    assert len(acc.path) == PATH_STEPS


def test_event_path_survives_the_state_round_trip_and_old_state_without_one():
    acc = SessionAccumulator(0, 0)
    acc.add(0, "view", "p", "c", None)
    assert SessionAccumulator.from_state(acc.to_state()).path == ["view"]
    old = acc.to_state()
    del old["path"]
    assert SessionAccumulator.from_state(old).path == []


def test_event_counts_group_by_hour_type_and_country_with_unknown_for_none():
    hour = _ms(T0)
    deltas = R.event_count_deltas([(hour, "view", "DE", 3), (hour, "view", None, 2), (hour, "view", "DE", 1)])
    assert deltas == {"2019-10-01T00:00:00Z|view|DE": {"hour_ms": hour, "event_type": "view", "country": "DE",
                                                        "events": 4},
                      "2019-10-01T00:00:00Z|view|unknown": {"hour_ms": hour, "event_type": "view",
                                                             "country": "unknown", "events": 2}}
    assert R.hour_start_ms(hour + 3_599_999) == hour


def test_path_deltas_count_sessions_conversions_and_revenue_per_segment_and_path():
    closed = [{"behavior_segment": "browser", "event_path": "view>cart", "purchase_count": 0, "total_amount": None},
              {"behavior_segment": "browser", "event_path": "view>cart", "purchase_count": 0, "total_amount": None},
              {"behavior_segment": "engaged_shopper", "event_path": "view>cart>purchase", "purchase_count": 2,
               "total_amount": 30.5}]
    deltas = R.path_deltas(closed)
    assert deltas["browser|view>cart"]["sessions"] == 2 and deltas["browser|view>cart"]["conversions"] == 0
    shopper = deltas["engaged_shopper|view>cart>purchase"]
    assert (shopper["sessions"], shopper["conversions"], shopper["total_revenue"]) == (1, 1, 30.5)


@pytest.mark.parametrize("day, expected", [("2019-09-30", 0), ("2019-10-06", 0), ("2019-10-07", 1), ("2019-10-20", 2),
                                           ("2020-01-01", 13)])
def test_week_offset_counts_iso_weeks_from_the_cohort_monday(day, expected):
    event = datetime.fromisoformat(day).replace(hour=23, tzinfo=timezone.utc)
    assert R.week_offset("2019-W40", _ms(event)) == expected


def test_retention_members_are_one_per_user_cohort_and_week():
    start = _ms(T0)
    closed = [{"user_id": "u1", "user_cohort_week": "2019-W40", "session_start_ms": start},
              {"user_id": "u1", "user_cohort_week": "2019-W40", "session_start_ms": start + 3600_000},
              {"user_id": "u1", "user_cohort_week": "2019-W40", "session_start_ms": start + 8 * 86400_000},
              {"user_id": "u2", "user_cohort_week": None, "session_start_ms": start}]
    assert R.retention_members(closed) == {"2019-W40|0|u1": ("2019-W40", 0), "2019-W40|1|u1": ("2019-W40", 1)}


def test_retention_table_shares_are_of_the_week_zero_users():
    docs = [{"cohort_week": "2019-W40", "week": 0, "users": 4}, {"cohort_week": "2019-W40", "week": 2, "users": 1},
            {"cohort_week": "2019-W41", "week": 0, "users": 2}, {"cohort_week": "2019-W40", "week": 9, "users": 1}]
    table = A.retention(docs, max_weeks=2)
    first = table["cohorts"][0]
    assert first["users"] == 4
    assert [(w["week"], w["users"], w["retention_pct"]) for w in first["weeks"]] == [(0, 4, 100.0), (1, 0, 0.0),
                                                                                     (2, 1, 25.0)]
    assert [c["cohort_week"] for c in table["cohorts"]] == ["2019-W40", "2019-W41"]


def test_patterns_rank_by_sessions_across_segments_then_by_path():
    docs = [{"behavior_segment": "browser", "event_path": "view", "sessions": 3, "conversions": 0, "total_revenue": 0},
            {"behavior_segment": "bouncer", "event_path": "view", "sessions": 2, "conversions": 0, "total_revenue": 0},
            {"behavior_segment": "engaged_shopper", "event_path": "view>purchase", "sessions": 5, "conversions": 5,
             "total_revenue": 50.0},
            {"behavior_segment": "browser", "event_path": "cart", "sessions": 1, "conversions": 0, "total_revenue": 0}]
    result = A.patterns(docs, min_sessions=2, limit=10)
    assert [(p["event_path"], p["sessions"]) for p in result["patterns"]] == [("view", 5), ("view>purchase", 5)]
    assert result["patterns"][0]["segments"] == {"bouncer": 2, "browser": 3}
    assert result["total_sessions"] == 11 and result["patterns"][1]["conversion_rate"] == 100.0


def test_anomalies_flag_an_hour_far_from_a_baseline_with_missing_hours_as_zero():
    hours = {T0 + timedelta(hours=h): {"events": 10 + (h % 2)} for h in range(0, 24)}
    del hours[T0 + timedelta(hours=5)]  # an hour with nothing counts as 0 in the baseline
    hours[T0 + timedelta(hours=25)] = {"events": 100}
    result = A.anomalies(hours, T0 + timedelta(hours=24), T0 + timedelta(hours=26), T0, threshold=3.0,
                         metrics=("events",))
    base = [10 + (h % 2) for h in range(24)]
    base[5] = 0
    mean = sum(base) / 24
    std = (sum((v - mean) ** 2 for v in base) / 23) ** 0.5
    events = result["metrics"][0]
    assert events["baseline_hours"] == 24 and events["baseline_mean"] == round(mean, 2)
    assert events["baseline_std"] == round(std, 2)
    assert [h["hour"] for h in events["anomalous_hours"]] == [T0 + timedelta(hours=24), T0 + timedelta(hours=25)]
    assert events["anomalous_hours"][1]["z_score"] == round((100 - mean) / std, 2)


def test_anomalies_give_no_z_score_for_a_flat_or_missing_baseline():
    flat = {T0 + timedelta(hours=h): {"events": 5} for h in range(3)}
    result = A.anomalies(flat, T0 + timedelta(hours=2), T0 + timedelta(hours=3), T0, 3.0, ("events",))
    assert result["metrics"][0]["z_score"] is None and result["anomalies"] == 0
    none = A.anomalies({}, T0, T0 + timedelta(hours=1), T0, 3.0, ("events",))
    assert none["metrics"][0]["baseline_mean"] is None


def test_session_metrics_weight_durations_by_sessions():
    windows = [{"behavior_segment": "browser", "session_count": 1, "total_revenue": 0.0, "sum_duration_minutes": 10.0,
                "avg_session_duration": 10.0},
               {"behavior_segment": "browser", "session_count": 3, "total_revenue": 5.0, "sum_duration_minutes": 2.0,
                "avg_session_duration": 0.67}]
    result = A.session_metrics(windows)
    assert result["segments"] == [{"behavior_segment": "browser", "sessions": 4, "share_pct": 100.0,
                                   "total_revenue": 5.0, "avg_session_duration": 3.0,
                                   "avg_revenue_per_session": 1.25}]


_count = st.tuples(st.integers(0, 24 * 3), st.sampled_from(["view", "cart", "purchase"]),
                   st.sampled_from([None, "US", "DE"]), st.integers(1, 5))
_closed = st.tuples(st.integers(0, 3 * 24 * 60), st.sampled_from(["bouncer", "browser"]),
                    st.sampled_from([None, 0.0, 9.99, 120.5, 0.1, 0.2]), st.sampled_from([0.0, 1 / 3, 2.5, 0.1]))


def _fold(batches: list[dict]) -> dict:
    """Each batch's deltas added to the documents, as exactly_once._apply_daily_once does."""
    docs: dict = {}
    for deltas in batches:
        for doc_id, delta in deltas.items():
            field = "hours" if "hours" in delta else "windows"
            docs[doc_id] = R.add_nested(docs.get(doc_id), delta[field])
    return docs


def _windows(sessions: list[dict]) -> dict:
    """A batch's segment_distribution deltas by window, as exactly_once.apply_closed_sessions has them."""
    by_window: dict = {}
    for (window, segment), delta in A2.distribution_deltas(sessions).items():
        by_window.setdefault(window, {})[segment] = {**delta, "unique_users": 0}  # (from a member collection)
    return R.daily_window_deltas(by_window)


@settings(max_examples=200, deadline=None)
@given(counts=st.lists(_count, max_size=30), closed=st.lists(_closed, max_size=30), data=st.data())
def test_daily_metrics_are_the_hourly_rollups_by_day_however_the_batches_are_cut(counts, closed, data):
    """The day documents are the same for any batch cut, and hold what event_counts_hourly and
    segment_distribution hold (sums of the same deltas)."""
    rows = [(_ms(T0) + h * R.HOUR_MS, t, c, n) for h, t, c, n in counts]
    sessions = [{"session_end_ms": _ms(T0) + m * 60_000 + 59_000, "behavior_segment": seg, "total_amount": a,
                 "session_duration_minutes": d} for m, seg, a, d in closed]
    cut = data.draw(st.integers(1, 30), label="batch size")
    batches = [R.daily_event_deltas(rows[i:i + cut]) for i in range(0, len(rows), cut)] + \
        [_windows(sessions[i:i + cut]) for i in range(0, len(sessions), cut)]
    docs = _fold(batches)
    assert docs == _fold([R.daily_event_deltas(rows), _windows(sessions)])
    got: dict = {}
    for doc_id, sums in docs.items():
        day, part, *country = doc_id.split("|")
        midnight = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
        for slot, values in sums.items():
            at = midnight + (timedelta(hours=int(slot)) if part == "events" else
                             timedelta(hours=int(slot[:2]), minutes=int(slot[2:])))
            for name, value in values.items():
                got[(at, part, *country, name)] = value
    want: dict = {}
    for d in R.event_count_deltas(rows).values():
        for place in (d["country"], R.ALL_COUNTRIES):
            key = (A.utc(R.to_datetime(d["hour_ms"])), "events", place, d["event_type"])
            want[key] = want.get(key, 0) + d["events"]
    for (window_ms, segment), d in A2.distribution_deltas(sessions).items():
        want[(R.to_datetime(window_ms), "windows", segment)] = {**d, "unique_users": 0}
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, dict):
            assert got[key] == {n: pytest.approx(v) for n, v in value.items()}
        else:
            assert got[key] == value


def test_daily_revenue_and_minutes_are_kept_so_the_grouping_of_sessions_does_not_show():
    sessions = [{"session_end_ms": _ms(T0), "behavior_segment": "browser", "total_amount": a,
                 "session_duration_minutes": d} for a, d in ((0.1, 0.1), (0.2, 0.2), (0.3, 1 / 3))]
    apart = _fold([_windows(sessions[:1]), _windows(sessions[1:])])
    together = _fold([_windows(sessions)])
    assert apart == together and together["2019-10-01|windows"]["0000"]["browser"]["total_revenue"] == 0.6


class _Range:
    """A collection as exactly_once._widen_range uses it: find_one and replace_one by _id."""

    def __init__(self):
        self.docs: dict = {}

    def find_one(self, query):
        return self.docs.get(query["_id"])

    def replace_one(self, query, doc, upsert=False):
        assert upsert and query["_id"] == doc["_id"]
        self.docs[doc["_id"]] = doc


@settings(max_examples=100, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 24 * 5), max_size=5), min_size=1, max_size=6), again=st.booleans())
def test_the_range_document_is_the_first_and_last_hour_and_the_days_however_often_applied(batches, again):
    coll = _Range()
    hours = [[_ms(T0) + h * R.HOUR_MS for h in batch] for batch in batches]
    for batch in hours + (hours if again else []):  # a store batch applied again: a replay
        exactly_once._widen_range(coll, R.DAILY_RANGE_ID, batch, "last_hour", "first_hour")
    every = [h for batch in hours for h in batch]
    if not every:
        assert coll.docs == {}
        return
    assert coll.docs[R.DAILY_RANGE_ID] == {
        "_id": R.DAILY_RANGE_ID, "first_hour": R.to_datetime(min(every)), "last_hour": R.to_datetime(max(every)),
        "days": sorted({R.to_datetime(h - h % (24 * R.HOUR_MS)) for h in every})}


# ---- the month documents: the API's answers from them equal its answers from the day documents ----
from app.api import queries as Q  # noqa: E402
from app.sinks import collections as C  # noqa: E402

T_MONTH_END = datetime(2019, 10, 30, tzinfo=timezone.utc)  # three days: a month's last two and the next's first


class _Docs(_Range):
    def find_one(self, query, projection=None):
        return self.docs.get(query["_id"])


def _by_window(sessions: list[dict]) -> dict:
    by_window: dict = {}
    for (window, segment), delta in A2.distribution_deltas(sessions).items():
        by_window.setdefault(window, {})[segment] = {**delta, "unique_users": 0}
    return by_window


def _daily_store(rows: list[tuple], sessions: list[dict], cut: int) -> _Docs:
    """daily_metrics as exactly_once's apply_event_counts and apply_closed_sessions leave it, batch
    by batch (`cut` rows or sessions a batch): day and month documents and the two range documents."""
    store = _Docs()
    batches = [("events", rows[i:i + cut]) for i in range(0, len(rows), cut)] + \
        [("windows", sessions[i:i + cut]) for i in range(0, len(sessions), cut)]
    for kind, batch in batches:
        if kind == "events":
            parts = [(R.daily_event_deltas(batch), "hours"), (R.monthly_event_deltas(batch), "hours")]
            exactly_once._widen_range(store, R.DAILY_RANGE_ID, [R.hour_start_ms(h) for h, *_ in batch],
                                      "last_hour", "first_hour")
        else:
            by_window = _by_window(batch)
            hours, days = R.monthly_window_deltas(by_window)
            parts = [(R.daily_window_deltas(by_window), "windows"), (hours, "hours"), (days, "days")]
            exactly_once._widen_range(store, R.WINDOWS_RANGE_ID, list(by_window), "last_window")
        for deltas, field in parts:
            for doc_id, delta in deltas.items():
                sums = R.added_daily_sums(store.docs.get(doc_id), delta, field)
                store.docs[doc_id] = R.daily_document(doc_id, delta, field, sums)
    return store


class _Db(dict):
    def __init__(self, daily: _Docs, months: bool):
        progress = _Docs()
        progress.docs[R.DAILY_STATUS_ID] = {"_id": R.DAILY_STATUS_ID, "complete": True, "months": months}
        super().__init__({C.DAILY: daily, C.PROGRESS: progress})


def _collections(daily: _Docs) -> FakeStore:
    """segment_distribution as the store query writes it (exactly_once._apply_window) for the
    windows the day documents hold, and no daily_metrics status: the API reads the collection."""
    docs = []
    for doc_id, doc in daily.docs.items():
        if doc_id.endswith("|windows") and doc_id != R.WINDOWS_RANGE_ID:
            for hhmm, stored in doc["windows"].items():
                segments = R.window_segments(stored)
                window_ms = _ms(doc["day"]) + (int(hhmm[:2]) * 60 + int(hhmm[2:])) * 60_000
                shares = A2.share_pct({segment: sums["session_count"] for segment, sums in segments.items()})
                docs += [{**A2.distribution_document(window_ms, segment, sums), "share_pct": shares[segment]}
                         for segment, sums in segments.items()]
    return FakeStore({C.DISTRIBUTION: docs})


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(_count, max_size=30), closed=st.lists(_closed, min_size=1, max_size=30), data=st.data())
def test_answers_from_the_month_documents_equal_the_day_documents_answers(counts, closed, data):
    """/v1/sessions/metrics, /v1/events/frequency and /v1/anomalies read whole days or hours from
    the month documents: for any batch cut, range (cut inside a day or not), segment and limit, they
    answer exactly as from the day documents (revenue to the cent, minutes to the millisecond)."""
    rows = [(_ms(T_MONTH_END) + h * R.HOUR_MS, t, c, n) for h, t, c, n in counts]
    sessions = [{"session_end_ms": _ms(T_MONTH_END) + m * 60_000 + 59_000, "behavior_segment": seg,
                 "total_amount": a, "session_duration_minutes": d} for m, seg, a, d in closed]
    cut = data.draw(st.integers(1, 30), label="batch size")
    store = _daily_store(rows, sessions, cut)
    assert store.docs == _daily_store(rows, sessions, 10 ** 6).docs  # the same however the batches are cut
    assert any(k.endswith("|window_days") for k in store.docs)
    months, days = _Db(store, True), _Db(store, False)
    minute = st.integers(-60, 4 * 24 * 60).map(lambda m: T_MONTH_END + timedelta(minutes=m))
    start = data.draw(st.none() | minute, label="start")
    end = data.draw(st.none() | minute, label="end")
    segment = data.draw(st.sampled_from([None, "bouncer", "browser"]), label="segment")
    limit = data.draw(st.none() | st.integers(1, 600), label="limit")
    assert Q.session_metrics(months, None, segment, start, end, limit) == \
        Q.session_metrics(days, None, segment, start, end, limit)
    hours = data.draw(st.sampled_from([1, 24, 72]), label="distribution hours")
    assert Q.segment_distribution(months, hours, start, end, segment) == \
        Q.segment_distribution(_collections(store), hours, start, end, segment)
    built = [w for w in Q._daily_windows(days, None, None, "start")  # every window, as the answers have them
             if (segment is None or w["behavior_segment"] == segment) and (end is None or w["window_start"] < end)]
    assert Q._latest_window_end(days, True, segment, end) == (built[-1]["window_start"] + Q.WINDOW if built else None)
    assert Q.event_frequency(months, None, None, start, end, "hour") == \
        Q.event_frequency(days, None, None, start, end, "hour")
    if rows:
        end_hour = T_MONTH_END + timedelta(hours=data.draw(st.integers(1, 4 * 24), label="anomalies end hour"))
        recent = data.draw(st.sampled_from([1 / 24, 0.5, 1.0]), label="recent_days")
        assert Q.anomalies(months, 2.0, recent, 2.0, end_hour, None) == Q.anomalies(days, 2.0, recent, 2.0, end_hour, None)


def test_day_windows_are_packed_and_a_store_written_before_them_answers_the_same():
    """`<day>|windows` keeps each window as one string (FerretDB's cost is per value); a store whose
    documents hold the nested fields (written before) is read, and added to, as the same sums."""
    sessions = [{"session_end_ms": _ms(T_MONTH_END) + m * 60_000 + 59_000, "behavior_segment": seg,
                 "total_amount": a, "session_duration_minutes": d}
                for m, seg, a, d in [(0, "browser", 0.1, 1 / 3), (3, "bouncer", None, 0.0),
                                     (2 * 24 * 60, "browser", 9.99, 2.5)]]
    packed = _daily_store([], sessions, 2)
    nested = _Docs()
    for doc_id, doc in packed.docs.items():
        windowed = doc_id.endswith("|" + R.WINDOWS) and doc_id != R.WINDOWS_RANGE_ID
        if windowed:
            assert all(isinstance(v, str) for v in doc[R.WINDOWS].values())
        nested.docs[doc_id] = {**doc, R.WINDOWS: {h: R.window_segments(v) for h, v in doc[R.WINDOWS].items()}} \
            if windowed else doc
    day = R.day_id(T_MONTH_END, R.WINDOWS)
    assert nested.docs[day][R.WINDOWS]["0000"]["browser"] == {"session_count": 1, "unique_users": 0,
                                                               "total_revenue": 0.1, "sum_duration_minutes": 1 / 3}
    delta = R.daily_window_deltas(_by_window(sessions[:1]))[day]
    assert R.added_daily_sums(nested.docs[day], delta, R.WINDOWS) == \
        R.added_daily_sums(packed.docs[day], delta, R.WINDOWS)
    for months in (True, False):
        a, b = _Db(packed, months), _Db(nested, months)
        assert Q.segment_distribution(a, 72, None, None, None) == Q.segment_distribution(b, 72, None, None, None)
        assert Q.session_metrics(a, None, "browser", None, None, 3) == \
            Q.session_metrics(b, None, "browser", None, None, 3)
    assert Q.segment_distribution(a, 72, None, None, None)["totals"] == {"bouncer": 1, "browser": 2}
