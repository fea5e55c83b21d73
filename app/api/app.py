"""The read-only HTTP API and the dashboard (DESIGN.md §15): FastAPI over the job's collections.

Routes validate their parameters (a bad one is a 422 naming it) and call app/api/queries.py; the
edge (app/api/edge.py) checks the key, ids and logs every request; the dashboard is a static page
(app/api/static) that calls the same routes. Exposed surfaces fail closed (DESIGN.md §16): probes
answer status only, errors are generic with a request id, every read is bounded (app/api/bounds.py).
"""
from __future__ import annotations

import json
import logging
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from app.api import queries as Q
from app.api.analytics import METRICS
from app.api.bounds import ParameterError, TimedDatabase, instant, time_range, window_range
from app.api.edge import KEY_HEADER, Json, KeyCheck, RequestLog, install_error_handlers, store_hosts
from app.api.settings import MAX_LIMIT, ApiConfig
from app.segments.rules import parse_rules, read_rules_document

log = logging.getLogger("behavior.api")
STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_UI = STATIC / "swagger-ui"  # swagger-ui-dist, pinned and vendored: /docs works offline, no CDN
EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase", "other")
SEVERITIES = ("low", "medium", "high")
OPEN_PATHS = ("/healthz", "/readyz", "/", "/dashboard", "/docs", "/openapi.json")
OPEN_PREFIXES = ("/docs/static/",)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most this many items (1-{MAX_LIMIT})")]
Start = Annotated[datetime | None, Query(description="from this time (ISO-8601; naive = UTC), inclusive")]
End = Annotated[datetime | None, Query(description="up to this time (ISO-8601; naive = UTC), exclusive")]
UserId = Annotated[str | None, Query(min_length=1, max_length=200, description="one user")]
Country = Annotated[str | None, Query(min_length=1, max_length=100)]
EventType = Annotated[Literal[EVENT_TYPES] | None, Query(description="canonical event type")]


def mongo_client(config: ApiConfig) -> MongoClient:
    """Every wait bounded: server selection, connecting, and a socket read (a query's maxTimeMS,
    set on each read by bounds.TimedDatabase, plus 2 s for the answer to arrive)."""
    return MongoClient(config.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
                       socketTimeoutMS=config.query_timeout_ms + 2000, appname="behavior-api")


def known_parameters(request: Request) -> None:
    """A misspelt parameter would be ignored silently: refuse it, naming it."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None:
        return
    allowed = {p.alias for p in _query_params(dependant)}
    for name in request.query_params:
        if name not in allowed:
            raise ParameterError(name, f"unknown parameter (this endpoint takes: {', '.join(sorted(allowed)) or 'none'})")


def segment_param(request: Request,
                  segment: Annotated[str | None, Query(description="a segment of the rules file")] = None) -> str | None:
    names = request.app.state.segment_names
    if segment is not None and segment not in names:
        raise ParameterError("segment", f"unknown segment {segment!r} (the rules have: {', '.join(names)})")
    return segment


Segment = Annotated[str | None, Depends(segment_param)]


def create_app(config: ApiConfig, client: MongoClient | None = None) -> FastAPI:
    client = client or mongo_client(config)
    db = TimedDatabase(client[config.mongodb_database], config.query_timeout_ms)
    segment_names = tuple(s.name for s in parse_rules(read_rules_document(config.rules_file, "RULES_FILE"),
                                                      config.rules_file).segments)
    app = FastAPI(title="Behavior segmentation API", version="1", docs_url=None, redoc_url=None,
                  description="Read-only: live segments, profiles, alerts, actions, experiments and analytics "
                              f"that the streaming job keeps in MongoDB. Send the key in the `{KEY_HEADER}` "
                              "header (Authorize, above), never in the query string.")
    # Added innermost first: RequestLog wraps CORS, which answers a preflight before KeyCheck.
    app.add_middleware(KeyCheck, api_key=config.api_key, open_paths=OPEN_PATHS, open_prefixes=OPEN_PREFIXES)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET"],
                           allow_headers=[KEY_HEADER], expose_headers=["X-Request-ID"])
    app.add_middleware(RequestLog)
    install_error_handlers(app, config.query_timeout_ms, store_hosts(config.mongodb_uri))

    app.state.segment_names = segment_names
    # The key is checked by KeyCheck; this only tells OpenAPI (and Swagger UI's Authorize) about it.
    v1 = dict(dependencies=[Depends(known_parameters), Depends(APIKeyHeader(name=KEY_HEADER, auto_error=False))])

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz(request: Request):
        try:
            client.admin.command("ping")
        except PyMongoError as exc:  # the cause stays in the log: a probe answers status only
            log.warning("request %s: /readyz: MongoDB at %s unreachable: %s: %s", request.state.request_id,
                        store_hosts(config.mongodb_uri), type(exc).__name__, exc)
            return JSONResponse(status_code=503, content={"status": "not ready"})
        return {"status": "ready"}

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    def dashboard():
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    app.mount("/docs/static", StaticFiles(directory=SWAGGER_UI), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: docs",
                                   swagger_js_url="/docs/static/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/static/swagger-ui.css",
                                   swagger_favicon_url="/docs/static/favicon-32x32.png")

    @app.get("/v1/users/{user_id}/personalization", tags=["users"], **v1)
    def personalization(user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
                        open_alert_hours: Annotated[float, Query(gt=0, le=720)] = 24.0):
        """What we know about this user right now: the live segment of the open (or else the latest)
        session with its recommendations and experiment variants, the four scores, the behaviour
        pattern, and the alerts of the last `open_alert_hours` of the user's activity."""
        found = Q.personalization(db, user_id, open_alert_hours)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no profile or session for user {user_id!r}")
        return Json(found)

    @app.get("/v1/activity", tags=["users"], **v1)
    def activity(user_id: UserId = None, event_type: EventType = None, country: Country = None,
                 start: Start = None, end: End = None, limit: Limit = 100):
        """The latest events, newest first. With user_id: from the user's newest 100 events (`kept`),
        kept by the job in one document (user_activity), filters applied to those. Without: with
        USER_ACTIVITY on, from the newest 100 events (`kept`) of each hour of event time, per
        type, country and both, which the job keeps (live_feed); `complete` is false when a later
        hour's kept events ran out before `limit` and older ones of it may match too."""
        return Json(Q.activity(db, user_id, event_type, country, *time_range(start, end), limit))

    @app.get("/v1/users/segments", tags=["users"], **v1)
    def user_segments(segment: Segment, min_engagement: Annotated[float, Query(ge=0, le=100)] = 0.0,
                      limit: Limit = 100):
        """Users whose engagement score is at least min_engagement, most engaged first (then by
        user_id), with their last segment, scores and pattern."""
        return Json(Q.user_segments(db, min_engagement, segment, limit))

    @app.get("/v1/sessions/metrics", tags=["analytics"], **v1)
    def session_metrics(segment: Segment, user_id: UserId = None, start: Start = None, end: End = None,
                        limit: Annotated[int | None, Query(ge=1, le=MAX_LIMIT, description=(
                            f"the newest this many 5-minute windows (1-{MAX_LIMIT}; default all in start..end); "
                            "with user_id, sessions (default 100)"))] = None):
        """Closed sessions per segment (count, share, revenue, average duration) by session end;
        for one user, the user's own sessions too: the user's open sessions and newest 100 closed
        ones (`kept`), kept by the job in one document (user_activity)."""
        return Json(Q.session_metrics(db, user_id, segment, *time_range(start, end), limit))

    @app.get("/v1/events/frequency", tags=["analytics"], **v1)
    def event_frequency(event_type: EventType = None, country: Country = None, start: Start = None,
                        end: End = None, interval: Literal["hour", "day"] = "hour"):
        """Counted events (no duplicates) per hour or day of event time and per type."""
        return Json(Q.event_frequency(db, event_type, country, *time_range(start, end), interval))

    @app.get("/v1/patterns", tags=["analytics"], **v1)
    def behavior_patterns(segment: Segment, min_sessions: Annotated[int, Query(ge=1)] = 1, limit: Limit = 20):
        """The most frequent event paths of closed sessions (event types in order, a run of one type
        as one step, the first 8 steps), with their conversion."""
        return Json(Q.behavior_patterns(db, segment, min_sessions, limit))

    @app.get("/v1/retention", tags=["analytics"], **v1)
    def retention(max_weeks: Annotated[int, Query(ge=0, le=104)] = 8,
                  cohort: Annotated[str | None, Query(pattern=r"^\d{4}-W\d{2}$")] = None):
        """Weekly cohorts (ISO week of each user's first event): users with a closed session in each
        week after."""
        return Json(Q.retention(db, max_weeks, cohort))

    @app.get("/v1/anomalies", tags=["analytics"], **v1)
    def anomalies(z_score_threshold: Annotated[float, Query(gt=0, le=100)] = 3.0,
                  recent_days: Annotated[float, Query(gt=0, le=Q.MAX_RECENT_DAYS)] = 1.0,
                  baseline_days: Annotated[float, Query(gt=0, le=Q.MAX_BASELINE_DAYS)] = 7.0,
                  metric: Literal[METRICS] | None = None, end: End = None):
        """Hourly metrics of the recent days against the baseline days before them (z-scores)."""
        return Json(Q.anomalies(db, z_score_threshold, recent_days, baseline_days, instant("end", end), metric))

    @app.get("/v1/funnel", tags=["analytics"], **v1)
    def funnel():
        """The conversion funnel per segment over all closed sessions."""
        return Json(Q.funnel(db, segment_names))

    @app.get("/v1/segments/distribution", tags=["analytics"], **v1)
    def segment_distribution(segment: Segment, hours: Annotated[float | None, Query(gt=0, le=168, description=(
                                 "the last this many hours (default 24), or this many from start"))] = None,
                             start: Start = None, end: End = None):
        """5-minute windows of closed sessions by segment: the last `hours` hours of event time (up
        to `end`, or the latest window), `hours` from `start`, or [start, end); 7 days at most."""
        return Json(Q.segment_distribution(db, *window_range(hours, start, end), segment))

    @app.get("/v1/alerts", tags=["live"], **v1)
    def alerts(user_id: UserId = None, alert_type: Annotated[str | None, Query(pattern=r"^[A-Z_]+$")] = None,
               severity: Literal[SEVERITIES] | None = None, start: Start = None, end: End = None, limit: Limit = 100):
        """Risk alerts, newest first."""
        return Json(Q.alerts(db, user_id, alert_type, severity, *time_range(start, end), limit))

    @app.get("/v1/trigger-executions", tags=["live"], **v1)
    def trigger_executions(user_id: UserId = None, trigger: Annotated[str | None, Query(min_length=1)] = None,
                           start: Start = None, end: End = None, limit: Limit = 100):
        """Actions fired (one per trigger x user x cooldown window), newest first."""
        return Json(Q.trigger_executions(db, user_id, trigger, *time_range(start, end), limit))

    @app.get("/v1/experiments", tags=["analytics"], **v1)
    def experiments(experiment: Annotated[str | None, Query(min_length=1)] = None):
        """Per experiment and variant: exposed sessions, conversions, rate with its 95% interval,
        lift, p-value, sample-ratio check. conversion_rate, ci95_low/high and lift_abs are fractions
        (0-1); lift_pct is a percentage."""
        return Json(Q.experiment_results(db, experiment))

    @app.get("/v1/act-now", tags=["live"], **v1)
    def act_now(hours: Annotated[float, Query(gt=0, le=168)] = 1.0, limit: Limit = 20):
        """Open sessions of the last `hours` of event time, the most urgent segment first."""
        return Json(Q.act_now(db, hours, limit))

    @app.get("/v1/health", tags=["live"], **v1)
    def job_health():
        """The job's latest batch (stream_progress) and, with JOB_STATUS_URL, its live health."""
        return Json({"last_batch": Q.job_progress(db), "job": _job_status(config.job_status_url)})

    return app


def _query_params(dependant):
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)


_JOB_QUERY_FIELDS = ("name", "state", "batches", "kafka_lag", "seconds_since_batch", "seconds_since_tick")


def _job_status(url: str) -> dict | None:
    """The job's live health, status only: verdict, the reason without its cause (an error text
    may name hosts), and per query its state and progress."""
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            status = json.loads(response.read())
        return {"live": bool(status["live"]), "ready": bool(status["ready"]),
                "reason": str(status.get("reason", "")).split(":", 1)[0],
                "queries": [{k: q.get(k) for k in _JOB_QUERY_FIELDS} for q in status.get("queries", [])]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("job health at %s did not answer: %s: %s", url, type(exc).__name__, exc)
        return {"error": "the job's health endpoint did not answer"}
