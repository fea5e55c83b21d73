"""The dashboard in a real headless browser (DESIGN.md §15): the job writes FerretDB from generated
traffic, the API runs as its own process, chromium opens the page, and every figure the page shows
(its data-* attributes, the raw numbers) is checked against what MongoDB holds."""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from app.api.analytics import METRICS
from app.experiments.design import EXAMPLE_EXPERIMENTS
from tests.conftest import ROOT, eventually
from tests.e2e.jobrun import generate, job_env, run_job

pytestmark = pytest.mark.e2e

API_KEY = "e2e-dashboard-" + secrets.token_hex(12)
SECTIONS = ("health", "segment-mix", "funnel", "act-now", "alerts", "anomalies", "experiments")
SHOTS = ROOT / ".local"
HOUR = timedelta(hours=1)


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
def database(stack, mongo, tmp_path_factory):
    """A fresh database written by the real job from generated traffic (bots, fraud, an experiment)."""
    name = "e2e_dashboard_" + uuid.uuid4().hex[:10]
    tmp = tmp_path_factory.mktemp("dashboard")
    try:
        generate(stack["bootstrap"], name, "--sessions", "80", "--bots", "0.05", "--fraud", "0.05", "--seed", "5")
        run_job(job_env(stack, name, name, tmp / "ckpt", EXPERIMENTS_FILE=str(EXAMPLE_EXPERIMENTS)))
        yield mongo[name]
    finally:
        mongo.drop_database(name)


@pytest.fixture(scope="module")
def api(stack, database, tmp_path_factory):
    with api_server(stack["mongodb_uri"], database.name, "/readyz",
                    tmp_path_factory.mktemp("api") / "api.log") as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))  # no Selenium Manager
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


def test_the_dashboard_shows_what_mongodb_holds(database, api, browser):
    db = database
    browser.get(f"{api}/?key={API_KEY}")
    try:
        WebDriverWait(browser, 60).until(lambda d: set(section_states(d).values()) == {"ok"})
    finally:
        full_page_screenshot(browser, SHOTS / "dashboard.png")
    assert not browser.find_element("id", "error").is_displayed()
    assert "key=" not in browser.current_url  # the key left the address bar

    # funnel: per segment, the stored conversion_funnel documents
    funnel_fields = ("sessions", "views", "carts", "purchases", "revenue", "viewToCart", "cartToPurchase", "conversion")
    stored_fields = ("total_sessions", "total_views", "total_carts", "total_purchases", "total_revenue",
                     "view_to_cart_rate", "cart_to_purchase_rate", "overall_conversion_rate")
    shown = {r["segment"]: tuple(number(r[f]) for f in funnel_fields) for r in datasets(browser, "#funnel tr.funnel-row")}
    stored = {d["_id"]: tuple(float(d[f]) for f in stored_fields) for d in db.conversion_funnel.find()}
    assert len(stored) == 4 and shown == stored
    power_row = text_of(browser, '#funnel tr[data-segment="power_user"]')
    assert f"{int(stored['power_user'][0]):,}" in power_row and f"{stored['power_user'][4]:,.2f}" in power_row

    # segment mix: the 6 h of windows up to the latest one, per window and segment, and the totals
    mix = browser.find_element("id", "segment-mix")
    end = utc(db.segment_distribution.find_one(sort=[("window_start", -1)])["window_end"])
    assert (utc(mix.get_attribute("data-start")), utc(mix.get_attribute("data-end"))) == (end - 6 * HOUR, end)
    windows = list(db.segment_distribution.find({"window_start": {"$gte": utc(end - 6 * HOUR), "$lt": end}}))
    expected_totals = Counter()
    for w in windows:
        expected_totals[w["behavior_segment"]] += w["session_count"]
    totals = {r["segment"]: int(r["sessions"]) for r in datasets(browser, "#segment-mix .segment-total")}
    assert sum(expected_totals.values()) > 0 and totals == expected_totals
    bars = {(utc(r["windowStart"]), r["segment"]): int(r["sessions"]) for r in datasets(browser, "#segment-mix rect.bar")}
    assert bars == {(utc(w["window_start"]), w["behavior_segment"]): w["session_count"] for w in windows}

    # alerts: the 15 newest behavior_alerts, newest first, each as stored
    alerts = datasets(browser, "#alerts li.alert")
    stored_alerts = {a["_id"]: a for a in db.behavior_alerts.find()}
    assert len(stored_alerts) > 0 and int(datasets(browser, "#alerts")[0]["count"]) == len(alerts)
    assert [utc(a["time"]) for a in alerts] == newest(list(stored_alerts.values()), "first_event_time", 15)
    assert [(a["type"], a["severity"], a["user"], utc(a["time"])) for a in alerts] == [
        (s["alert_type"], s["severity"], s["user_id"], utc(s["first_event_time"]))
        for s in (stored_alerts[a["alertId"]] for a in alerts)]

    # act now: the open sessions of the last hour of event time, most urgent (action_priority) first
    active = [s for s in db.user_behavior_segments.find({"status": "active"})]
    since = max(utc(s["session_end"]) for s in active) - HOUR
    urgent = sorted((s for s in active if utc(s["session_end"]) >= since),
                    key=lambda s: (s.get("action_priority") or 99, -utc(s["session_end"]).timestamp()))[:15]
    rows = datasets(browser, "#act-now tr.act-row")
    by_session = {s["_id"]: s for s in active}
    assert len(urgent) > 0 and len(rows) == len(urgent)
    assert [(int(r["priority"]), utc(by_session[r["session"]]["session_end"])) for r in rows] == [
        (s["action_priority"], utc(s["session_end"])) for s in urgent]
    assert {(r["session"], r["user"], r["segment"], int(r["cartCount"]), r["recommendation"]) for r in rows} == {
        (s["_id"], s["user_id"], s["behavior_segment"], s["cart_count"], s["recommendations"][0]) for s in urgent}

    # act now: the 10 newest trigger executions
    executions = datasets(browser, "#act-now tr.execution-row")
    stored_executions = {x["_id"]: x for x in db.trigger_executions.find()}
    assert [utc(x["eventTime"]) for x in executions] == newest(list(stored_executions.values()), "event_time", 10)
    assert [(x["trigger"], x["user"]) for x in executions] == [
        (stored_executions[x["executionId"]]["trigger"], stored_executions[x["executionId"]]["user_id"]) for x in executions]

    # experiments: exposed sessions, conversions, p-value and verdict per variant
    variants = {(r["experiment"], r["variant"]): (int(r["exposed"]), int(r["conversions"]), number(r["pValue"]),
                                                  r["significant"] == "true")
                for r in datasets(browser, "#experiments tr.variant-row")}
    results = {(d["experiment"], d["variant"]): (d["exposed_sessions"], d["conversions"], d["p_value"], d["significant"])
               for d in db.experiment_results.find()}
    assert len(results) == 3 and variants == results

    # health: the newest stream_progress document of the query
    progress = db.stream_progress.find_one({"query": "sessions"}, sort=[("timestamp", -1)])
    health = datasets(browser, "#health")[0]
    assert (int(health["batchId"]), int(health["inputRows"]), int(health["openSessions"]), int(health["stateUsers"]),
            int(health["kafkaLag"])) == (progress["batch_id"], progress["input_rows"], progress["open_sessions"],
                                         progress["state_users"], progress["kafka_lag"])
    assert f"#{progress['batch_id']}" in text_of(browser, "#health")

    # anomalies: every metric; the recent events per hour from event_counts_hourly; flagged hours highlighted
    anomalies = datasets(browser, "#anomalies")[0]
    recent_start, end = utc(anomalies["recentStart"]), utc(anomalies["end"])
    latest_hour = utc(db.event_counts_hourly.find_one(sort=[("hour", -1)])["hour"])
    assert (recent_start, end) == (latest_hour - 2 * HOUR, latest_hour + HOUR)  # the last 3 h (recent_days=0.125)
    metrics = {r["metric"]: r for r in datasets(browser, "#anomalies tr.anomaly-row")}
    assert tuple(metrics) == METRICS
    events = sum(d["events"] for d in db.event_counts_hourly.find({"hour": {"$gte": recent_start, "$lt": end}}))
    assert float(metrics["events"]["recentMean"]) == round(events / 3, 2)
    highlighted = browser.execute_script("""return [...document.querySelectorAll('#anomalies tr.anomaly-row')].map(r =>
        [r.dataset.metric, r.classList.contains('anomalous'), r.querySelectorAll('.chip').length])""")
    assert highlighted == [[m, int(r["flaggedHours"]) > 0 or r["anomalous"] == "true", int(r["flaggedHours"])]
                           for m, r in metrics.items()]
    assert int(anomalies["anomalies"]) == sum(int(m["flaggedHours"]) for m in metrics.values())

    # it refreshes itself
    stamp = browser.find_element("id", "last-refresh")
    seen = int(stamp.get_attribute("data-refreshes"))
    WebDriverWait(browser, 20).until(lambda d: int(stamp.get_attribute("data-refreshes")) > seen)
    assert stamp.get_attribute("data-state") == "ok"


def test_a_wrong_key_shows_the_error_banner(api, browser):
    browser.get(f"{api}/?key=not-the-key-{secrets.token_hex(8)}")
    banner = browser.find_element("id", "error")
    try:
        WebDriverWait(browser, 30).until(lambda d: banner.is_displayed() and banner.get_attribute("data-status") == "401")
    finally:
        full_page_screenshot(browser, SHOTS / "dashboard-error.png")
    assert "missing or wrong API key" in banner.text  # the API's own error text
    assert browser.find_element("id", "key-form").is_displayed()
    assert set(section_states(browser).values()) == {"error"}
    assert all("No data: missing or wrong API key" in text_of(browser, "#" + s) for s in SECTIONS)


def test_an_unreachable_store_shows_the_api_error_not_a_blank_page(browser, tmp_path):
    nothing_there = f"mongodb://127.0.0.1:{free_port()}/"
    with api_server(nothing_there, "e2e_dashboard_down", "/healthz", tmp_path / "api.log") as base:
        browser.get(f"{base}/?key={API_KEY}")
        banner = browser.find_element("id", "error")
        WebDriverWait(browser, 60).until(lambda d: banner.is_displayed() and banner.get_attribute("data-status") == "503")
        assert f"MongoDB at {nothing_there} is unreachable" in banner.text
        assert not browser.find_element("id", "key-form").is_displayed()
        assert set(section_states(browser).values()) == {"error"}
        assert all("is unreachable" in text_of(browser, "#" + s) for s in SECTIONS)
