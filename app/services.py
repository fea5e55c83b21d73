"""Start-up checks for the external services, so a dead one gives a message that names it."""
from __future__ import annotations

import socket

from app.config import AppConfig
from app.sinks.mongo import redact


class ServiceUnavailableError(RuntimeError):
    """A service the job needs does not answer; the message says which and how to start it."""


def check_kafka(config: AppConfig, timeout_s: float = 3.0) -> None:
    for server in config.kafka_bootstrap_servers.split(","):
        host, port = server.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return
        except OSError:
            continue
    raise ServiceUnavailableError(
        f"Kafka is not reachable at {config.kafka_bootstrap_servers} "
        "(local stack: run 'make up'; or set KAFKA_BOOTSTRAP_SERVERS)")


def check_mongodb(config: AppConfig, timeout_s: float = 3.0) -> None:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client = MongoClient(config.mongodb_uri, serverSelectionTimeoutMS=int(timeout_s * 1000))
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        raise ServiceUnavailableError(
            f"the MongoDB-compatible server is not reachable at {redact(config.mongodb_uri)} "
            f"(local stack: run 'make up' to start FerretDB; or set MONGODB_URI): {type(exc).__name__}") from None
    finally:
        client.close()

