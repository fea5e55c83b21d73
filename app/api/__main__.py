"""python -m app.api [--host H] [--port P]: serves the query API (docs at /docs) and the dashboard (/)."""
from __future__ import annotations

import logging
import sys

import uvicorn
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from app.api.app import create_app
from app.api.settings import api_config
from app.config import InvalidConfigError
from app.sinks.mongo import redact


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = api_config(argv)
        client = MongoClient(config.mongodb_uri, tz_aware=True, serverSelectionTimeoutMS=2000,
                             connectTimeoutMS=2000, appname="behavior-api")
        app = create_app(config, client)
    except InvalidConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        client.admin.command("ping")
    except PyMongoError as exc:  # serve anyway: /readyz says not ready until the store is back
        print(f"warning: MongoDB at {redact(config.mongodb_uri)} is unreachable ({type(exc).__name__}); "
              "start it (locally: make up); the API answers 503 until then", file=sys.stderr)
    key = "X-API-Key required" if config.api_key else "no API key required (set API_KEY to require one)"
    print(f"api: http://{config.host}:{config.port}/ (dashboard), /docs (OpenAPI); database "
          f"{config.mongodb_database} at {redact(config.mongodb_uri)}; {key}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
