"""Logging for the `protobase` command: text lines or JSON lines on stderr.

``protobase --log-format text|json --log-level debug|info|warning|error
COMMAND ...`` (global options, before the command) apply to every command,
`protobase node` included. Without them, the environment decides:

- ``PROTOBASE_LOG_FORMAT``: ``text`` (the default) or ``json``;
- ``PROTOBASE_LOG_LEVEL``: ``debug``, ``info``, ``warning`` or ``error``;
  the default is ``info`` for `protobase node` and ``warning`` for the
  other commands, which print their results themselves.

Text: ``2026-12-06 10:00:00,123 protobase.node INFO node 1 of cluster ...``.

JSON: one object per line, for log shippers (Loki, Elasticsearch,
CloudWatch): ``time`` (ISO 8601, UTC, milliseconds), ``level``
(``debug`` ... ``critical``), ``logger``, ``message``; ``exc_info`` (the
formatted traceback) and ``stack_info`` when present; and every field
given with ``extra=`` (values JSON cannot hold are written as ``str()``)::

    {"time": "2026-12-06T10:00:00.123+00:00", "level": "info",
     "logger": "protobase.node", "message": "node 1 of cluster 'c' serves ..."}

Records go to whatever ``sys.stderr`` is when they are written, so that a
progress bar, which swaps in a proxy for it, prints them above the bar.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMAT_VARIABLE = "PROTOBASE_LOG_FORMAT"
LEVEL_VARIABLE = "PROTOBASE_LOG_LEVEL"
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"

# Every attribute a LogRecord has on its own; the others came from ``extra=``.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler writing to the current ``sys.stderr`` (or a fixed stream)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self._fixed = stream

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._fixed is None else self._fixed

    @stream.setter
    def stream(self, value: TextIO) -> None:
        self._fixed = value


def configure_logging(
    log_format: str | None = None,
    log_level: str | None = None,
    *,
    default_level: str = "warning",
    stream: TextIO | None = None,
) -> None:
    """Send the root logger's records to stderr as text or JSON lines.

    Calling it again replaces the handler it installed before (and only
    that one: handlers others added, such as pytest's, stay).

    Args:
        log_format: ``text`` or ``json``; None: ``PROTOBASE_LOG_FORMAT``,
            else ``text``.
        log_level: ``debug``, ``info``, ``warning`` or ``error``; None:
            ``PROTOBASE_LOG_LEVEL``, else `default_level`.
        default_level: the level when neither is given.
        stream: where to write (default: the current ``sys.stderr``).

    Raises:
        ValueError: a value, given or from the environment, that is none of
            those; the message names where it came from.
    """
    chosen_format = _choose(log_format, FORMAT_VARIABLE, "text", FORMATS, "log format")
    chosen_level = _choose(log_level, LEVEL_VARIABLE, default_level, tuple(LEVELS), "log level")
    handler = _StderrHandler(stream)
    handler.setFormatter(
        JsonFormatter() if chosen_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[chosen_level])


def _choose(
    given: str | None, variable: str, default: str, allowed: tuple[str, ...], what: str
) -> str:
    if given is not None:
        source, value = "", given
    else:
        source, value = f"{variable}=", os.environ.get(variable) or default
    if value.lower() not in allowed:
        raise ValueError(f"{source}{value!r} is not a {what}; choose one of {', '.join(allowed)}")
    return value.lower()
