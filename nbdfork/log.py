"""The single structlog configuration: JSON lines to a file, or readable lines on a console."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog
from structlog.typing import FilteringBoundLogger

__all__ = ["configure", "get_logger"]

_open_files: list[TextIO] = []


def configure(*, json_path: Path | None = None, verbose: bool = False) -> None:
    """Send logs to `json_path` as JSON lines, else to stderr (console style on a terminal)."""
    level = logging.DEBUG if verbose else logging.INFO
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    stream: TextIO
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        stream = json_path.open("a", buffering=1, encoding="utf-8")
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
