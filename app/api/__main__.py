"""python -m app.api [--host H] [--port P]: serves the query API (docs at /docs) and the dashboard (/).

It refuses to start without API_KEY unless it binds to loopback or API_ALLOW_NO_KEY=1 (one line, exit 2).
Logs: one access line per request (behavior.api.access: id, method, path without its query string,
status, duration) and the causes of errors under the request id the client was given."""
from __future__ import annotations

import logging
import sys

import uvicorn
from pymongo.errors import PyMongoError

from app.api.app import create_app, mongo_client
from app.api.edge import store_hosts
from app.api.settings import api_config
from app.config import InvalidConfigError


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = api_config(argv)
        client = mongo_client(config)
        app = create_app(config, client)
    except InvalidConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        client.admin.command("ping")
    except PyMongoError as exc:  # serve anyway: /readyz says not ready until the store is back
        print(f"warning: MongoDB at {store_hosts(config.mongodb_uri)} is unreachable ({type(exc).__name__}); "
              "start it (locally: make up); the API answers 503 until then", file=sys.stderr)
    key = ("X-API-Key required" if config.api_key else
           f"NO API KEY required: {'API_ALLOW_NO_KEY=1' if config.allow_no_key else 'loopback only'}")
    print(f"api: http://{config.host}:{config.port}/ (dashboard), /docs (OpenAPI); database "
          f"{config.mongodb_database} at {store_hosts(config.mongodb_uri)}; {key}", flush=True)
    # uvicorn's own access log would keep query strings: ours (app/api/edge.py) does not; no Server header.
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
