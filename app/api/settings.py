"""The API's typed configuration (DESIGN.md §10, §15), from environment variables and flags, built once."""
from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from app.config import DEFAULT_RULES_FILE, InvalidConfigError

MAX_LIMIT = 1000
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""               # "" = no key: refused unless host is loopback or allow_no_key
    allow_no_key: bool = False      # API_ALLOW_NO_KEY=1: serve without a key on any address, explicitly
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "bigdata"
    rules_file: str = str(DEFAULT_RULES_FILE)  # the segment names a `segment` parameter may take
    job_status_url: str = ""        # the job's health endpoint (…:8090/status); "" = stream_progress only
    cors_origins: tuple = ()
    query_timeout_ms: int = 5000    # maxTimeMS of every MongoDB read (API_QUERY_TIMEOUT_MS)

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise InvalidConfigError(f"API_PORT={self.port} is not a TCP port (1-65535)")
        if not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise InvalidConfigError(f"MONGODB_URI={self.mongodb_uri!r} must start with mongodb:// or mongodb+srv://")
        if not self.mongodb_database or any(c in self.mongodb_database for c in "/\\. \"$"):
            raise InvalidConfigError(f"MONGODB_DATABASE={self.mongodb_database!r} is not a database name")
        if self.api_key and len(self.api_key) < 16:
            raise InvalidConfigError("API_KEY is shorter than 16 characters (use e.g. `openssl rand -hex 24`)")
        if not self.api_key and not self.allow_no_key and not is_loopback(self.host):
            raise InvalidConfigError(f"API_KEY is empty or unset and API_HOST={self.host} is not loopback: set API_KEY "
                                     "(e.g. `openssl rand -hex 24`), or API_ALLOW_NO_KEY=1 to serve without one")
        if not 100 <= self.query_timeout_ms <= 120_000:
            raise InvalidConfigError(f"API_QUERY_TIMEOUT_MS={self.query_timeout_ms} is not within 100-120000")
        if self.job_status_url and not self.job_status_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"JOB_STATUS_URL={self.job_status_url!r} must be an http:// or https:// URL")

    def __repr__(self) -> str:  # the key never reaches a log
        return (f"ApiConfig(host={self.host!r}, port={self.port}, api_key={'set' if self.api_key else 'unset'}, "
                f"mongodb_database={self.mongodb_database!r}, job_status_url={self.job_status_url!r})")


def _number(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidConfigError(f"{name}={value!r} is not a number") from None


def _flag(name: str, value: str) -> bool:
    if value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidConfigError(f"{name}={value!r} is not 1 or 0")


def api_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> ApiConfig:
    """Flags win over environment variables, which win over the defaults. The key comes from the
    environment only (API_KEY), never from a flag that `ps` would show."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m app.api", description="The read-only query API and dashboard.")
    parser.add_argument("--host", default=env.get("API_HOST", ApiConfig.host))
    parser.add_argument("--port", default=env.get("API_PORT", str(ApiConfig.port)))
    parser.add_argument("--mongodb-uri", default=env.get("MONGODB_URI", ApiConfig.mongodb_uri))
    parser.add_argument("--mongodb-database", default=env.get("MONGODB_DATABASE", ApiConfig.mongodb_database))
    parser.add_argument("--rules-file", default=env.get("RULES_FILE", ApiConfig.rules_file))
    parser.add_argument("--job-status-url", default=env.get("JOB_STATUS_URL", ""))
    args = parser.parse_args(argv)
    origins = tuple(o.strip() for o in env.get("API_CORS_ORIGINS", "").split(",") if o.strip())
    # A key of blanks (a Secret written with a newline, say) is no key.
    return ApiConfig(host=args.host, port=_number("API_PORT", args.port), api_key=env.get("API_KEY", "").strip(),
                     allow_no_key=_flag("API_ALLOW_NO_KEY", env.get("API_ALLOW_NO_KEY", "")),
                     mongodb_uri=args.mongodb_uri, mongodb_database=args.mongodb_database,
                     rules_file=args.rules_file, job_status_url=args.job_status_url, cors_origins=origins,
                     query_timeout_ms=_number("API_QUERY_TIMEOUT_MS",
                                              env.get("API_QUERY_TIMEOUT_MS", str(ApiConfig.query_timeout_ms))))
