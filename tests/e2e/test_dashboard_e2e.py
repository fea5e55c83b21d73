"""The dashboard in a real headless browser (DESIGN.md §15): the job has written FerretDB from
generated traffic (the quick tier's shared run), the API runs as its own process, chromium opens
the page, and every figure the page shows (its data-* attributes, the raw numbers) is checked
against what MongoDB holds."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from app.api.analytics import METRICS
from tests.conftest import ROOT, eventually

pytestmark = pytest.mark.e2e

API_KEY = "e2e-dashboard-" + secrets.token_hex(12)
SECTIONS = ("health", "segment-mix", "funnel", "act-now", "alerts", "anomalies", "experiments")
SHOTS = ROOT / ".local"
HOUR = timedelta(hours=1)
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's, from setup.sh browser


def utc(value: datetime | str) -> datetime:
    """A stored date (naive UTC) or an ISO string the API sent -> an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def number(text: str) -> float | None:
    return None if text == "" else float(text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextmanager
def api_server(mongodb_uri: str, database: str, ready_path: str, log_path):
    """`python -m app.api` as its own process; yields its base URL once ready_path answers 200."""
    port = free_port()
    env = {**os.environ, "MONGODB_URI": mongodb_uri, "MONGODB_DATABASE": database, "API_KEY": API_KEY}
    env.pop("JOB_STATUS_URL", None)
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.api", "--port", str(port)], cwd=ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: process.poll() is not None or http_status(base + ready_path) == 200, timeout_s=60,
                   what=f"the API's {ready_path}")
        assert process.poll() is None, f"the API exited {process.returncode}: {log_path.read_text()[-2000:]}"
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def database(shared_run, mongo):
    """The quick tier's shared job run (tests/e2e/shared_run.py): generated traffic with bots, fraud
    and an experiment, written by the real job."""
    return mongo[shared_run.database]


@pytest.fixture(scope="module")
def api(stack, database, tmp_path_factory):
    with api_server(stack["mongodb_uri"], database.name, "/readyz",
                    tmp_path_factory.mktemp("api") / "api.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    assert not missing, f"{', '.join(missing)} missing: run ./deploy/local/setup.sh browser (part of make setup)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # a path: Selenium Manager stays idle
    try:
        yield driver
    finally:
        driver.quit()


def datasets(driver, css: str) -> list[dict]:
    """The data-* attributes (camelCase keys, string values) of every element matching css."""
    return driver.execute_script("return [...document.querySelectorAll(arguments[0])].map(e => ({...e.dataset}))", css)


def text_of(driver, css: str) -> str:
    """One element's visible text, read in one call (the page redraws its sections every 5 s)."""
    return driver.execute_script("return document.querySelector(arguments[0]).innerText", css)


def section_states(driver) -> dict:
    return {s: driver.find_element("id", s).get_attribute("data-state") for s in SECTIONS}


def wait_for(driver, condition, timeout_s: float, what: str) -> None:
    """WebDriverWait, failing with what the page shows (section states, banner) rather than an empty message."""
    try:
        WebDriverWait(driver, timeout_s).until(condition)
    except TimeoutException:
        banner = driver.find_element("id", "error")
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; sections {section_states(driver)}; "
                             f"banner {banner.text if banner.is_displayed() else '(hidden)'!r}") from None


def full_page_screenshot(driver, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, chrome = driver.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(1440, height + chrome)
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)


def newest(docs: list[dict], time_field: str, n: int) -> list[datetime]:
    """The times of the n newest documents, newest first (documents of the same time may come in any order)."""
    return sorted((utc(d[time_field]) for d in docs), reverse=True)[:n]


@pytest.fixture
def page(api, browser):
    """The dashboard, opened with the key, once every section has data (and its screenshot taken)."""
    browser.get(f"{api}/#key={API_KEY}")
    try:
        wait_for(browser, lambda d: set(section_states(d).values()) == {"ok"}, 60, "every section to have data")
    finally:
        full_page_screenshot(browser, SHOTS / "dashboard.png")
    return browser


def test_every_section_has_data_and_no_error_shows(page):
    assert set(section_states(page).values()) == {"ok"}
    assert not page.find_element("id", "error").is_displayed()
    assert "key=" not in page.current_url  # the key left the address bar, for sessionStorage only
    assert page.execute_script("return sessionStorage.getItem('behavior-dashboard-api-key')") == API_KEY
    assert page.execute_script("return localStorage.length") == 0


def test_the_funnel_shows_conversion_funnel(page, database):
    fields = ("sessions", "views", "carts", "purchases", "revenue", "viewToCart", "cartToPurchase", "conversion")
    stored_fields = ("total_sessions", "total_views", "total_carts", "total_purchases", "total_revenue",
                     "view_to_cart_rate", "cart_to_purchase_rate", "overall_conversion_rate")
    shown = {r["segment"]: tuple(number(r[f]) for f in fields) for r in datasets(page, "#funnel tr.funnel-row")}
    stored = {d["_id"]: tuple(float(d[f]) for f in stored_fields) for d in database.conversion_funnel.find()}
    assert len(stored) == 4 and shown == stored
    power_user = text_of(page, '#funnel tr[data-segment="power_user"]')  # and the text says the same, formatted
    assert f"{int(stored['power_user'][0]):,}" in power_user and f"{stored['power_user'][4]:,.2f}" in power_user


def test_the_segment_mix_sums_segment_distribution_over_the_6_hours_shown(page, database):
    mix = datasets(page, "#segment-mix")[0]
    end = utc(database.segment_distribution.find_one(sort=[("window_start", -1)])["window_end"])
    assert (utc(mix["start"]), utc(mix["end"])) == (end - 6 * HOUR, end)
    windows = list(database.segment_distribution.find({"window_start": {"$gte": end - 6 * HOUR, "$lt": end}}))
    expected = Counter()
    for w in windows:
        expected[w["behavior_segment"]] += w["session_count"]
    totals = {r["segment"]: int(r["sessions"]) for r in datasets(page, "#segment-mix .segment-total")}
    assert sum(expected.values()) > 0 and totals == expected
    bars = {(utc(r["windowStart"]), r["segment"]): int(r["sessions"]) for r in datasets(page, "#segment-mix rect.bar")}
    assert bars == {(utc(w["window_start"]), w["behavior_segment"]): w["session_count"] for w in windows}


def test_the_alerts_feed_is_the_15_newest_behavior_alerts(page, database):
    alerts = datasets(page, "#alerts li.alert")
    stored = {a["_id"]: a for a in database.behavior_alerts.find()}
    assert len(stored) > 15 and int(datasets(page, "#alerts")[0]["count"]) == len(alerts) == 15
    assert [utc(a["time"]) for a in alerts] == newest(list(stored.values()), "first_event_time", 15)
    assert [(a["type"], a["severity"], a["user"], utc(a["time"])) for a in alerts] == [
        (s["alert_type"], s["severity"], s["user_id"], utc(s["first_event_time"]))
        for s in (stored[a["alertId"]] for a in alerts)]


def test_act_now_lists_the_most_urgent_open_sessions_of_the_last_hour(page, database):
    active = {s["_id"]: s for s in database.user_behavior_segments.find({"status": "active"})}
    since = max(utc(s["session_end"]) for s in active.values()) - HOUR
    urgent = sorted((s for s in active.values() if utc(s["session_end"]) >= since),
                    key=lambda s: (s.get("action_priority") or 99, -utc(s["session_end"]).timestamp()))[:15]
    rows = datasets(page, "#act-now tr.act-row")
    assert len(urgent) > 0 and len(rows) == len(urgent)
    assert [(int(r["priority"]), utc(active[r["session"]]["session_end"])) for r in rows] == [
        (s["action_priority"], utc(s["session_end"])) for s in urgent]
    assert {(r["session"], r["user"], r["segment"], int(r["cartCount"]), r["recommendation"]) for r in rows} == {
        (s["_id"], s["user_id"], s["behavior_segment"], s["cart_count"], s["recommendations"][0]) for s in urgent}


def test_act_now_lists_the_10_newest_trigger_executions(page, database):
    executions = datasets(page, "#act-now tr.execution-row")
    stored = {x["_id"]: x for x in database.trigger_executions.find()}
    assert len(stored) > 10 and len(executions) == 10
    assert [utc(x["eventTime"]) for x in executions] == newest(list(stored.values()), "event_time", 10)
    assert [(x["trigger"], x["user"]) for x in executions] == [
        (stored[x["executionId"]]["trigger"], stored[x["executionId"]]["user_id"]) for x in executions]


def test_the_experiments_show_experiment_results(page, database):
    shown = {(r["experiment"], r["variant"]): (int(r["exposed"]), int(r["conversions"]), number(r["pValue"]),
                                               r["significant"] == "true")
             for r in datasets(page, "#experiments tr.variant-row")}
    stored = {(d["experiment"], d["variant"]): (d["exposed_sessions"], d["conversions"], d["p_value"], d["significant"])
              for d in database.experiment_results.find()}
    assert len(stored) == 3 and shown == stored


def test_the_health_is_the_newest_stream_progress(page, database):
    progress = database.stream_progress.find_one({"query": "sessions"}, sort=[("timestamp", -1)])
    health = datasets(page, "#health")[0]
    assert (int(health["batchId"]), int(health["inputRows"]), int(health["openSessions"]), int(health["stateUsers"]),
            int(health["kafkaLag"])) == (progress["batch_id"], progress["input_rows"], progress["open_sessions"],
                                         progress["state_users"], progress["kafka_lag"])
    assert f"#{progress['batch_id']}" in text_of(page, "#health")


def test_the_anomalies_show_every_metric_over_the_last_3_hours_and_highlight_flagged_ones(page, database):
    anomalies = datasets(page, "#anomalies")[0]
    recent_start, end = utc(anomalies["recentStart"]), utc(anomalies["end"])
    latest_hour = utc(database.event_counts_hourly.find_one(sort=[("hour", -1)])["hour"])

    def default_end(now):  # the API compares complete hours only: the hour still filling is left out
        return latest_hour + HOUR if latest_hour + HOUR <= now else latest_hour
    now = datetime.now(timezone.utc)
    assert end in {default_end(now), default_end(now - timedelta(seconds=15))}  # the page shows data <= 5 s old
    assert recent_start == end - 3 * HOUR  # recent_days=0.125
    metrics = {r["metric"]: r for r in datasets(page, "#anomalies tr.anomaly-row")}
    assert tuple(metrics) == METRICS
    events = sum(d["events"] for d in database.event_counts_hourly.find({"hour": {"$gte": recent_start, "$lt": end}}))
    assert float(metrics["events"]["recentMean"]) == round(events / 3, 2)
    highlighted = page.execute_script("""return [...document.querySelectorAll('#anomalies tr.anomaly-row')].map(r =>
        [r.dataset.metric, r.classList.contains('anomalous'), r.querySelectorAll('.chip').length])""")
    assert highlighted == [[m, int(r["flaggedHours"]) > 0 or r["anomalous"] == "true", int(r["flaggedHours"])]
                           for m, r in metrics.items()]
    assert int(anomalies["anomalies"]) == sum(int(m["flaggedHours"]) for m in metrics.values())


def test_the_page_refreshes_itself(page):
    seen = int(datasets(page, "#last-refresh")[0]["refreshes"])
    wait_for(page, lambda d: int(datasets(d, "#last-refresh")[0]["refreshes"]) > seen, 20, "the page's next refresh")
    assert datasets(page, "#last-refresh")[0]["state"] == "ok"


def test_a_wrong_key_shows_the_error_banner(api, browser):
    browser.get(f"{api}/#key=not-the-key-{secrets.token_hex(8)}")
    banner = browser.find_element("id", "error")
    try:
        wait_for(browser, lambda d: banner.is_displayed() and banner.get_attribute("data-status") == "401", 30,
                 "the error banner with the API's 401")
    finally:
        full_page_screenshot(browser, SHOTS / "dashboard-error.png")
    assert "missing or wrong API key" in banner.text  # the API's own error text
    assert browser.find_element("id", "key-form").is_displayed()
    assert set(section_states(browser).values()) == {"error"}
    assert all("No data: missing or wrong API key" in text_of(browser, "#" + s) for s in SECTIONS)


def test_an_unreachable_store_shows_the_api_error_not_a_blank_page(browser, tmp_path):
    nothing_there = f"mongodb://127.0.0.1:{free_port()}/"
    with api_server(nothing_there, "e2e_dashboard_down", "/healthz", tmp_path / "api.log") as base:
        browser.get(f"{base}/#key={API_KEY}")
        banner = browser.find_element("id", "error")
        wait_for(browser, lambda d: banner.is_displayed() and banner.get_attribute("data-status") == "503", 60,
                 "the error banner with the API's 503")
        assert "the data store is unavailable" in banner.text and nothing_there not in banner.text
        assert not browser.find_element("id", "key-form").is_displayed()
        assert set(section_states(browser).values()) == {"error"}
        assert all("the data store is unavailable" in text_of(browser, "#" + s) for s in SECTIONS)
