"""Logs: one JSON object a line, ids only (handlers never log identity values)."""

from __future__ import annotations

import json
import logging


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line; handlers log ids only, never identity values."""

    _skip = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        body = {
            "at": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        body.update({k: v for k, v in record.__dict__.items() if k not in self._skip})
        if record.exc_info:
            body["error"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


# Libraries whose INFO lines are the service's business to write, or not at all: httpx logs
# every request with its full URL, and a connector's URL may carry a token in its query
# string (the registry refuses only user:password@). Each call's outcome is in its job's row
# and the audit trail, and failures are logged by job id. (A line per call was also a cost on
# the fan-out's hot path.)
QUIET_LIBRARIES = ("httpx", "httpcore")


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonLogFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
