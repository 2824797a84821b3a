"""The single structlog configuration: JSON lines to a file, or readable lines on a console."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

__all__ = ["configure", "get_logger"]

_open_files: list[TextIO] = []


def configure(
    *, json_path: Path | None = None, json_fd: int | None = None, verbose: bool = False
) -> None:
    """Send logs as JSON lines to `json_fd` (a file the caller opened, which it now owns) or
    `json_path` (appended, created 0640, never through a link), else to stderr (console style
    on a terminal)."""
    level = logging.DEBUG if verbose else logging.INFO
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    stream: TextIO
    if json_path is not None and json_fd is None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        json_fd = os.open(json_path, flags, 0o640)
    if json_fd is not None:
        stream = os.fdopen(json_fd, "a", buffering=1, encoding="utf-8")
        _open_files.append(stream)
        processors.append(structlog.processors.JSONRenderer())
    else:
        stream = sys.stderr
        if stream.isatty():
            processors.append(structlog.dev.ConsoleRenderer())
        else:
            processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> FilteringBoundLogger:
    """A bound logger carrying the module name."""
    logger: FilteringBoundLogger = structlog.get_logger().bind(logger=name)
    return logger
