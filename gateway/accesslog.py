"""One JSON line per request on stdout. Never an API key, token or cookie: only what is here."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass

import orjson


@dataclass(slots=True)
class AccessRecord:
    request_id: str
    method: str
    path: str
    client_ip: str
    route: str | None = None
    status: int = 0
    bytes: int = 0
    duration: float = 0.0
    upstream: str | None = None
    upstream_duration: float | None = None
    cache: str | None = None
    ratelimit: str | None = None
    error: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["time"] = time.time()
        data["duration"] = round(self.duration, 6)
        if self.upstream_duration is not None:
            data["upstream_duration"] = round(self.upstream_duration, 6)
        return orjson.dumps({k: v for k, v in data.items() if v is not None}).decode()


def access_logger(enabled: bool) -> logging.Logger | None:
    if not enabled:
        return None
    logger = logging.getLogger("gateway.access")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger
