"""The one structlog configuration: JSON lines off a terminal, key=value on one."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure(service: str, level: str | None = None) -> structlog.stdlib.BoundLogger:
    level_name = (level or os.environ.get("C2CQ_LOG_LEVEL") or "info").upper()
    lvl = getattr(logging, level_name, logging.INFO)
    renderer = (
        structlog.dev.ConsoleRenderer(colors=False)
        if sys.stderr.isatty()
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service, pid=os.getpid())
    return structlog.get_logger()


def get(**kw) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger().bind(**kw)
