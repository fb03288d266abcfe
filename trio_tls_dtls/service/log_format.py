"""Log formats for ``trio-tlsd serve --log-format text|json``.

``json`` writes one object per line: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message``, plus ``conn`` (the fields of the per-connection
close record, see :mod:`trio_tls_dtls.core.close_record`) when the record has them, and
``exception`` when one was logged.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["TEXT_FORMAT", "JSONFormatter", "make_formatter", "status_line"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        conn = getattr(record, "conn", None)
        if isinstance(conn, dict):
            entry["conn"] = conn
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def make_formatter(kind: str) -> logging.Formatter:
    """The formatter for ``text`` or ``json``."""
    if kind == "json":
        return JSONFormatter()
    if kind == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {kind!r}: expected text or json")


def status_line(
    message: str, *, level: int = logging.INFO, logger: str = "trio_tls_dtls.cli"
) -> str:
    """*message* as ``serve`` should print it on stderr.

    As is, unless the root logger writes JSON: then as a JSON record too, so
    that stderr under ``--log-format json`` is one object per line throughout
    (the status lines are printed, not logged, so ``--log-level`` never hides
    them).
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, JSONFormatter):
            record = logging.LogRecord(logger, level, __file__, 0, message, None, None)
            return handler.formatter.format(record)
    return message
