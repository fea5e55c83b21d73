"""The API's typed configuration (DESIGN.md §10, §15), from environment variables and flags, built once."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from app.config import DEFAULT_RULES_FILE, InvalidConfigError

MAX_LIMIT = 1000


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""               # "" = no key required (local development only)
    mongodb_uri: str = "mongodb://127.0.0.1:27017/"
    mongodb_database: str = "bigdata"
    rules_file: str = str(DEFAULT_RULES_FILE)  # the segment names a `segment` parameter may take
    job_status_url: str = ""        # the job's health endpoint (…:8090/status); "" = stream_progress only
    cors_origins: tuple = ()

    def __post_init__(self):
        if not 0 < self.port < 65536:
            raise InvalidConfigError(f"API_PORT={self.port} is not a TCP port (1-65535)")
        if not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise InvalidConfigError(f"MONGODB_URI={self.mongodb_uri!r} must start with mongodb:// or mongodb+srv://")
        if not self.mongodb_database or any(c in self.mongodb_database for c in "/\\. \"$"):
            raise InvalidConfigError(f"MONGODB_DATABASE={self.mongodb_database!r} is not a database name")
        if self.api_key and len(self.api_key) < 16:
            raise InvalidConfigError("API_KEY is shorter than 16 characters (use e.g. `openssl rand -hex 24`)")
        if self.job_status_url and not self.job_status_url.startswith(("http://", "https://")):
            raise InvalidConfigError(f"JOB_STATUS_URL={self.job_status_url!r} must be an http:// or https:// URL")

    def __repr__(self) -> str:  # the key never reaches a log
        return (f"ApiConfig(host={self.host!r}, port={self.port}, api_key={'set' if self.api_key else 'unset'}, "
                f"mongodb_database={self.mongodb_database!r}, job_status_url={self.job_status_url!r})")


def _port(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidConfigError(f"API_PORT={value!r} is not a number") from None


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
    return ApiConfig(host=args.host, port=_port(args.port), api_key=env.get("API_KEY", ""),
                     mongodb_uri=args.mongodb_uri, mongodb_database=args.mongodb_database,
                     rules_file=args.rules_file, job_status_url=args.job_status_url, cors_origins=origins)
