"""`make security`: issue 20's probes 1-8, run again against a running API, one line each.

    API_URL (default http://127.0.0.1:$API_PORT, port 8000) and API_KEY as the API has them;
    API_CORS_ORIGINS as the API has it (its first origin is the preflight's Origin).

Each check returns (passed, what it saw); the run prints PASS or FAIL per check and exits 1 on any
FAIL. CHECKS is the list it goes through: the chart's checks (probe 9, a rendered chart instead of
a running API) are functions of the same shape, appended to CHART_CHECKS.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parent.parent
LEAKS = re.compile(r"mongodb(\+srv)?://|replicaSet|[Pp]assword|\b\d{1,3}(\.\d{1,3}){3}:\d+"  # URIs, host:port
                   r"|Errno|\$clusterTime|Traceback")  # driver and server text
EXTREME = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00")


@dataclass
class Api:
    http: httpx.Client
    key: str
    origin: str
    query_timeout_s: float

    def get(self, path: str, key: bool = True, **params) -> httpx.Response:
        return self.http.get(path, params=params, headers={"X-API-Key": self.key if key else ""})


def probe_1_bounded_reads(api: Api) -> tuple[bool, str]:
    old = api.get("/v1/segments/distribution", hours=1, start="2000-01-01T00:00:00")
    windows = len(old.json().get("windows", [])) if old.status_code == 200 else None
    wide = api.get("/v1/segments/distribution", start="2000-01-01T00:00:00", end="2026-01-01T00:00:00")
    metrics = api.get("/v1/sessions/metrics", limit=1)
    body = metrics.json() if metrics.status_code == 200 else {}
    # limit=1 reads from the latest window on: a start is set whenever there is a window
    # (a 504 is bounded too: the read stopped at the API's time limit)
    honoured = metrics.status_code == 504 or (
        body.get("limit") == 1 and (body.get("total_sessions") == 0 or body.get("start") is not None))
    ok = ((old.status_code == 200 and windows <= 12) or old.status_code in (422, 504)) and wide.status_code == 422 \
        and honoured
    return ok, (f"distribution hours=1&start=2000: {old.status_code}, {windows} windows, {len(old.content):,} B; "
                f"start=2000&end=2026: {wide.status_code} {wide.json().get('parameter')}; "
                f"sessions/metrics?limit=1: {metrics.status_code}, {body.get('total_sessions')} sessions "
                f"from {body.get('start')}")


def probe_2_no_key_no_start(api: Api) -> tuple[bool, str]:
    anonymous = api.get("/v1/funnel", key=False)
    env = {**os.environ, "API_KEY": "", "API_HOST": "0.0.0.0", "API_PORT": str(_free_port())}
    env.pop("API_ALLOW_NO_KEY", None)
    try:
        done = subprocess.run([sys.executable, "-m", "app.api"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=30)
        code, lines = done.returncode, done.stderr.strip().splitlines()
    except subprocess.TimeoutExpired:
        code, lines = None, ["still serving after 30 s"]
    ok = anonymous.status_code == 401 and code not in (0, None) and len(lines) == 1
    hint = " (serving data without a key: start it with API_KEY set)" if anonymous.status_code == 200 else ""
    return ok, (f"running API without a key: {anonymous.status_code}{hint}; "
                f"`API_KEY= API_HOST=0.0.0.0 python -m app.api`: exit {code}, {len(lines)} line(s): "
                f"{lines[-1][:90] if lines else ''}")


def probe_3_probes_status_only(api: Api) -> tuple[bool, str]:
    seen = {path: api.get(path, key=path.startswith("/v1")) for path in ("/healthz", "/readyz", "/v1/health")}
    leaks = {path: m.group(0) for path, r in seen.items() if (m := LEAKS.search(r.text))}
    return not leaks, ", ".join(f"{p} {r.status_code} {len(r.content)} B" for p, r in seen.items()) + (
        f"; leaks: {leaks}" if leaks else "; no address, URI option or driver text")


def probe_4_errors_generic_with_id(api: Api) -> tuple[bool, str]:
    answers = [api.get("/v1/users/no-such-user-probe/personalization"), api.get("/v1/funnel", key=False),
               api.get("/v1/activity", limit=0), api.get("/v1/no-such-endpoint")]
    bad = [r.status_code for r in answers if not r.headers.get("X-Request-ID")
           or r.json().get("request_id") != r.headers["X-Request-ID"] or LEAKS.search(r.text)]
    return not bad, (f"{'/'.join(str(r.status_code) for r in answers)}: "
                     + (f"without a matching request id or with driver text: {bad}" if bad else
                        "each with X-Request-ID = body's request_id, no driver text (a store error itself is "
                        "checked by the unit tests)"))


def probe_5_scans_bounded(api: Api) -> tuple[bool, str]:
    limit_s = api.query_timeout_s + 5
    seen = []
    for path, params in (("/v1/activity", {"country": "ZZ"}), ("/v1/alerts", {"alert_type": "NOPE"}),
                         ("/v1/users/segments", {"segment": "power_user", "min_engagement": 99.9})):
        started = time.monotonic()
        response = api.get(path, **params)
        seen.append((path, response.status_code, time.monotonic() - started))
    ok = all(s in (200, 422, 504) and t <= limit_s for _, s, t in seen)
    return ok, ", ".join(f"{p} {s} in {t:.2f} s" for p, s, t in seen) + f" (bound {limit_s:g} s)"


def probe_6_cors_preflight(api: Api) -> tuple[bool, str]:
    response = api.http.options("/v1/funnel", headers={"Origin": api.origin, "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "x-api-key", "X-API-Key": ""})
    allowed = response.headers.get("access-control-allow-origin")
    configured = bool(os.environ.get("API_CORS_ORIGINS"))
    ok = response.status_code != 401 and (allowed == api.origin if configured else True)
    return ok, (f"OPTIONS without a key, Origin {api.origin}: {response.status_code}, allow-origin {allowed}"
                + ("" if configured else " (API_CORS_ORIGINS unset here: only 'not a 401' is checked)"))


def probe_7_key_does_not_leak(api: Api) -> tuple[bool, str]:
    in_query = api.http.get("/v1/funnel", params={"key": api.key or "x" * 16})
    page = api.get("/", key=False).text
    docs = api.get("/docs", key=False).text
    external = re.findall(r'(?:src|href)=["\']?(https?://[^"\' >]+)', docs)
    bundle = api.get("/docs/static/swagger-ui-bundle.js", key=False)
    ok = (in_query.status_code in (400, 401) and "sessionStorage" in page and "localStorage.setItem" not in page
          and "location.hash" in page and not external and bundle.status_code == 200)
    return ok, (f"?key= -> {in_query.status_code}; dashboard: sessionStorage {'sessionStorage' in page}, "
                f"localStorage.setItem {'localStorage.setItem' in page}, #key= {'location.hash' in page}; /docs "
                f"external URLs {external or 'none'}, local bundle {bundle.status_code} ({len(bundle.content):,} B)")


def probe_8_extreme_dates(api: Api) -> tuple[bool, str]:
    seen = [(path, name, api.get(path, **{name: value}).status_code)
            for path in ("/v1/activity", "/v1/segments/distribution", "/v1/alerts")
            for name, value in zip(("start", "end"), EXTREME)]
    seen.append(("/v1/anomalies", "end", api.get("/v1/anomalies", end=EXTREME[1]).status_code))
    return all(s == 422 for *_, s in seen), ", ".join(f"{p}?{n}= {s}" for p, n, s in seen)


CHECKS: list[Callable[[Api], tuple[bool, str]]] = [
    probe_1_bounded_reads, probe_2_no_key_no_start, probe_3_probes_status_only, probe_4_errors_generic_with_id,
    probe_5_scans_bounded, probe_6_cors_preflight, probe_7_key_does_not_leak, probe_8_extreme_dates]
# Probe 9 (the chart) runs before these in `make security`: tests/helm/chart_checks.py renders the
# chart and prints its own PASS/FAIL lines. Functions of this shape appended here run like the others.
CHART_CHECKS: list[Callable[[Api], tuple[bool, str]]] = []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    url = os.environ.get("API_URL") or f"http://127.0.0.1:{os.environ.get('API_PORT', '8000')}"
    origins = [o.strip() for o in os.environ.get("API_CORS_ORIGINS", "").split(",") if o.strip()]
    api = Api(httpx.Client(base_url=url, timeout=60), os.environ.get("API_KEY", "").strip(),
              origins[0] if origins else "https://probe.example",
              int(os.environ.get("API_QUERY_TIMEOUT_MS", "5000")) / 1000)
    try:
        api.http.get("/healthz")
    except httpx.TransportError as exc:
        print(f"FAIL  the API at {url} did not answer ({type(exc).__name__}): start it (make api), set API_URL")
        return 1
    failed = 0
    for check in CHECKS + CHART_CHECKS:
        try:
            passed, saw = check(api)
        except Exception as exc:  # a probe that breaks is a FAIL, with what broke it
            passed, saw = False, f"{type(exc).__name__}: {exc}"
        failed += not passed
        print(f"{'PASS' if passed else 'FAIL'}  {check.__name__}: {saw}", flush=True)
    print(f"{len(CHECKS + CHART_CHECKS) - failed} passed, {failed} failed ({url})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
