"""structlog set-up: JSON lines when stderr is not a terminal, colours when it is."""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    json_out = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_out else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


class _StructlogHandler(logging.Handler):
    """Forwards librdkafka's log lines (via confluent-kafka's ``logger``) as structlog events."""

    def emit(self, record: logging.LogRecord) -> None:
        log = structlog.get_logger("pktstream.librdkafka")
        level = record.levelname.lower()
        meth = getattr(log, level if level in ("debug", "info", "warning", "error") else "info")
        meth("librdkafka_log", message=record.getMessage())


def librdkafka_logger() -> logging.Logger:
    """A stdlib logger to pass as confluent-kafka's ``logger`` so its lines are structured too."""
    lg = logging.getLogger("pktstream.librdkafka")
    if not lg.handlers:
        lg.addHandler(_StructlogHandler())
        lg.propagate = False
        lg.setLevel(logging.INFO)
    return lg
