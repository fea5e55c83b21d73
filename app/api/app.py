"""The read-only HTTP API and the dashboard (DESIGN.md §15): FastAPI over the job's collections.

Routes validate their parameters (a bad one is a 422 naming it), check the API key, and call
app/api/queries.py; the dashboard is a static page (app/api/static) that calls the same routes.
"""
from __future__ import annotations

import hmac
import json
import logging
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from pymongo import MongoClient
from pymongo.errors import ConnectionFailure, PyMongoError

from app.api import queries as Q
from app.api.analytics import METRICS, utc
from app.api.settings import MAX_LIMIT, ApiConfig
from app.segments.rules import parse_rules, read_rules_document
from app.sinks.mongo import redact

log = logging.getLogger("behavior.api")
STATIC = Path(__file__).resolve().parent / "static"
EVENT_TYPES = ("view", "cart", "remove_from_cart", "purchase", "other")
SEVERITIES = ("low", "medium", "high")
OPEN_PATHS = ("/healthz", "/readyz", "/", "/dashboard", "/docs", "/openapi.json", "/docs/oauth2-redirect")

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most this many items (1-{MAX_LIMIT})")]
Start = Annotated[datetime | None, Query(description="from this time (ISO-8601; naive = UTC), inclusive")]
End = Annotated[datetime | None, Query(description="up to this time (ISO-8601; naive = UTC), exclusive")]
UserId = Annotated[str | None, Query(min_length=1, max_length=200, description="one user")]
Country = Annotated[str | None, Query(min_length=1, max_length=100)]
EventType = Annotated[Literal[EVENT_TYPES] | None, Query(description="canonical event type")]


class ParameterError(Exception):
    """A parameter that passed its type check but not the endpoint's own (422, naming it)."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter, self.message = parameter, message


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("?",), "msg": "invalid request"}
    parameter = str(first["loc"][-1]) if first.get("loc") else "?"
    return JSONResponse(status_code=422, content={
        "error": f"invalid parameter '{parameter}': {first['msg']}", "parameter": parameter,
        "detail": [{"parameter": str(e["loc"][-1]) if e.get("loc") else None, "message": e["msg"]} for e in errors]})


def _time_range(start: datetime | None, end: datetime | None) -> tuple[datetime | None, datetime | None]:
    start, end = start and utc(start), end and utc(end)
    if start is not None and end is not None and start >= end:
        raise ParameterError("start", f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    return start, end


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
    client = client or MongoClient(config.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=2000,
                                   connectTimeoutMS=2000, appname="behavior-api")
    db = client[config.mongodb_database]
    segment_names = tuple(s.name for s in parse_rules(read_rules_document(config.rules_file, "RULES_FILE"),
                                                      config.rules_file).segments)
    app = FastAPI(title="Behavior segmentation API", version="1",
                  description="Read-only: live segments, profiles, alerts, actions, experiments and analytics "
                              "that the streaming job keeps in MongoDB. Send the key as `X-API-Key`.")
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET"],
                           allow_headers=["X-API-Key"])

    @app.exception_handler(RequestValidationError)
    async def invalid_parameter(request: Request, exc: RequestValidationError):
        return _validation_response(exc)

    @app.exception_handler(HTTPException)
    async def not_found(request: Request, exc: HTTPException):
        return JSONResponse(status_code=exc.status_code, content={"error": exc.detail})

    @app.exception_handler(ParameterError)
    async def bad_parameter(request: Request, exc: ParameterError):
        return JSONResponse(status_code=422, content={"error": f"invalid parameter '{exc.parameter}': {exc.message}",
                                                      "parameter": exc.parameter})

    @app.exception_handler(ConnectionFailure)
    async def store_down(request: Request, exc: ConnectionFailure):
        return JSONResponse(status_code=503, content={
            "error": f"MongoDB at {redact(config.mongodb_uri)} is unreachable ({type(exc).__name__}); "
                     "start it (locally: make up) or check MONGODB_URI"})

    @app.exception_handler(PyMongoError)
    async def store_error(request: Request, exc: PyMongoError):
        log.warning("MongoDB error on %s: %s", request.url.path, exc)
        return JSONResponse(status_code=502, content={"error": f"MongoDB error: {type(exc).__name__}: {exc}"})

    @app.middleware("http")
    async def api_key(request: Request, call_next):
        if config.api_key and request.url.path not in OPEN_PATHS:
            given = request.headers.get("x-api-key", "")
            if not hmac.compare_digest(given.encode(), config.api_key.encode()):
                return JSONResponse(status_code=401, content={
                    "error": "missing or wrong API key: send it in the X-API-Key header"})
        return await call_next(request)

    app.state.segment_names = segment_names
    v1 = dict(dependencies=[Depends(known_parameters)])

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    def readyz():
        try:
            client.admin.command("ping")
        except PyMongoError as exc:
            return JSONResponse(status_code=503, content={"status": "not ready", "error": (
                f"MongoDB at {redact(config.mongodb_uri)} is unreachable ({type(exc).__name__}); "
                "start it (locally: make up) or check MONGODB_URI")})
        return {"status": "ready"}

    @app.get("/", include_in_schema=False)
    @app.get("/dashboard", include_in_schema=False)
    def dashboard():
        return FileResponse(STATIC / "dashboard.html", media_type="text/html")

    @app.get("/v1/users/{user_id}/personalization", tags=["users"], **v1)
    def personalization(user_id: Annotated[str, PathParam(min_length=1, max_length=200)],
                        open_alert_hours: Annotated[float, Query(gt=0, le=720)] = 24.0):
        """What we know about this user right now: the live segment of the open (or else the latest)
        session with its recommendations and experiment variants, the four scores, the behaviour
        pattern, and the alerts of the last `open_alert_hours` of the user's activity."""
        found = Q.personalization(db, user_id, open_alert_hours)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no profile or session for user {user_id!r}")
        return found

    @app.get("/v1/activity", tags=["users"], **v1)
    def activity(user_id: UserId = None, event_type: EventType = None, country: Country = None,
                 start: Start = None, end: End = None, limit: Limit = 100):
        """The latest events, newest first (one user's: the user_id + event_timestamp index)."""
        return Q.activity(db, user_id, event_type, country, *_time_range(start, end), limit)

    @app.get("/v1/users/segments", tags=["users"], **v1)
    def user_segments(segment: Segment, min_engagement: Annotated[float, Query(ge=0, le=100)] = 0.0,
                      limit: Limit = 100):
        """Users whose engagement score is at least min_engagement, most engaged first, with their
        last segment, scores and pattern."""
        return Q.user_segments(db, min_engagement, segment, limit)

    @app.get("/v1/sessions/metrics", tags=["analytics"], **v1)
    def session_metrics(segment: Segment, user_id: UserId = None, start: Start = None, end: End = None,
                        limit: Limit = 100):
        """Closed sessions per segment (count, share, revenue, average duration) by session end;
        for one user, the user's own sessions too."""
        return Q.session_metrics(db, user_id, segment, *_time_range(start, end), limit)

    @app.get("/v1/events/frequency", tags=["analytics"], **v1)
    def event_frequency(event_type: EventType = None, country: Country = None, start: Start = None,
                        end: End = None, interval: Literal["hour", "day"] = "hour"):
        """Counted events (no duplicates) per hour or day of event time and per type."""
        return Q.event_frequency(db, event_type, country, *_time_range(start, end), interval)

    @app.get("/v1/patterns", tags=["analytics"], **v1)
    def behavior_patterns(segment: Segment, min_sessions: Annotated[int, Query(ge=1)] = 1, limit: Limit = 20):
        """The most frequent event paths of closed sessions (event types in order, a run of one type
        as one step, the first 8 steps), with their conversion."""
        return Q.behavior_patterns(db, segment, min_sessions, limit)

    @app.get("/v1/retention", tags=["analytics"], **v1)
    def retention(max_weeks: Annotated[int, Query(ge=0, le=104)] = 8,
                  cohort: Annotated[str | None, Query(pattern=r"^\d{4}-W\d{2}$")] = None):
        """Weekly cohorts (ISO week of each user's first event): users with a closed session in each
        week after."""
        return Q.retention(db, max_weeks, cohort)

    @app.get("/v1/anomalies", tags=["analytics"], **v1)
    def anomalies(z_score_threshold: Annotated[float, Query(gt=0, le=100)] = 3.0,
                  recent_days: Annotated[float, Query(gt=0, le=90)] = 1.0,
                  baseline_days: Annotated[float, Query(gt=0, le=365)] = 7.0,
                  metric: Literal[METRICS] | None = None, end: End = None):
        """Hourly metrics of the recent days against the baseline days before them (z-scores)."""
        return Q.anomalies(db, z_score_threshold, recent_days, baseline_days, end and utc(end), metric)

    @app.get("/v1/funnel", tags=["analytics"], **v1)
    def funnel():
        """The conversion funnel per segment over all closed sessions."""
        return Q.funnel(db, segment_names)

    @app.get("/v1/segments/distribution", tags=["analytics"], **v1)
    def segment_distribution(segment: Segment, hours: Annotated[float, Query(gt=0, le=24 * 90)] = 24.0,
                             start: Start = None, end: End = None):
        """5-minute windows of closed sessions by segment: the last `hours` hours of event time, or
        [start, end)."""
        return Q.segment_distribution(db, hours, *_time_range(start, end), segment)

    @app.get("/v1/alerts", tags=["live"], **v1)
    def alerts(user_id: UserId = None, alert_type: Annotated[str | None, Query(pattern=r"^[A-Z_]+$")] = None,
               severity: Literal[SEVERITIES] | None = None, start: Start = None, end: End = None, limit: Limit = 100):
        """Risk alerts, newest first."""
        return Q.alerts(db, user_id, alert_type, severity, *_time_range(start, end), limit)

    @app.get("/v1/trigger-executions", tags=["live"], **v1)
    def trigger_executions(user_id: UserId = None, trigger: Annotated[str | None, Query(min_length=1)] = None,
                           start: Start = None, end: End = None, limit: Limit = 100):
        """Actions fired (one per trigger x user x cooldown window), newest first."""
        return Q.trigger_executions(db, user_id, trigger, *_time_range(start, end), limit)

    @app.get("/v1/experiments", tags=["analytics"], **v1)
    def experiments(experiment: Annotated[str | None, Query(min_length=1)] = None):
        """Per experiment and variant: exposed sessions, conversions, rate with its 95% interval,
        lift, p-value, sample-ratio check. conversion_rate, ci95_low/high and lift_abs are fractions
        (0-1); lift_pct is a percentage."""
        return Q.experiment_results(db, experiment)

    @app.get("/v1/act-now", tags=["live"], **v1)
    def act_now(hours: Annotated[float, Query(gt=0, le=168)] = 1.0, limit: Limit = 20):
        """Open sessions of the last `hours` of event time, the most urgent segment first."""
        return Q.act_now(db, hours, limit)

    @app.get("/v1/health", tags=["live"], **v1)
    def job_health():
        """The job's latest batch (stream_progress) and, with JOB_STATUS_URL, its live health."""
        return {"last_batch": Q.job_progress(db), "job": _job_status(config.job_status_url)}

    return app


def _query_params(dependant):
    yield from dependant.query_params
    for sub in dependant.dependencies:
        yield from _query_params(sub)


def _job_status(url: str) -> dict | None:
    if not url:
        return None
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return json.loads(response.read())
    except (OSError, ValueError) as exc:
        return {"error": f"job health at {url} unreachable: {exc}"}
