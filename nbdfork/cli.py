"""The `nbdfork` command line: argument parsing only; each subcommand lives in nbdfork.commands."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from nbdfork import __version__
from nbdfork.commands import register_all
from nbdfork.errors import NbdforkError

__all__ = ["build_parser", "main"]

_EPILOG = """\
examples:
  nbdfork run                       the default stable_writes matrix under a real kernel
  nbdfork serve --size 1G --report out/   serve the device on a unix socket
  nbdfork verify out/               summarise a report directory's events
  nbdfork report out/               re-render report.md/html and plots from saved files
  nbdfork model --out results/model the page-forking model: none/stable/fork policies
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="nbdfork",
        description="Measure what a real Linux kernel sends to a block device while pages are "
        "under writeback: torn, stale and overlapping writes, stable pages vs page forking.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nbdfork {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that every `finally` and context manager runs:
    the VM's process group and nbdkit are stopped, reports flushed (Python's default would
    exit on the spot and leave qemu running)."""


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; an NbdforkError becomes one line on stderr and exit status 2; SIGINT and
    SIGTERM stop the command cleanly (exit status 130 and 143)."""
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()  # signals go there only
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        status: int = args.handler(args)
    except NbdforkError as exc:
        print(f"nbdfork {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"nbdfork {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"nbdfork {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status


if __name__ == "__main__":
    sys.exit(main())
