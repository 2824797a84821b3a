"""`nbdfork serve`: run nbdkit with the nbdfork plugin in the foreground on a unix socket."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from nbdfork.config import PARAMS, parse_params
from nbdfork.device.paths import validate_paths
from nbdfork.errors import ConfigError
from nbdfork.harness import nbdkit as launch

__all__ = ["nbdkit_argv", "register"]


_EPILOG = """\
examples:
  nbdfork serve --size 1G --report out/
  nbdfork serve --socket /tmp/nbd.sock --size 512M --write-latency 2ms --seed 7 --report out/
  then, as root:  nbd-client -unix /tmp/nbd.sock /dev/nbd0 -b 4096
  or:             nbdinfo 'nbd+unix:///?socket=/tmp/nbd.sock'
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `serve` subcommand."""
    parser = sub.add_parser(
        "serve",
        help="serve the emulated device with its oracle (nbdkit, foreground)",
        description="Start nbdkit with the nbdfork plugin on a unix socket, in the foreground. "
        "Events and the summary go to --report DIR when the client disconnects or nbdkit stops.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--socket", type=Path, default=Path("nbdfork.sock"), help="unix socket")
    parser.add_argument("--socket-mode", default="0600", help="permissions of the socket (octal)")
    parser.add_argument("--threads", type=int, default=16, help="nbdkit worker threads")
    parser.add_argument("--verbose", action="store_true", help="nbdkit -v (debug messages)")
    parser.add_argument("--dry-run", action="store_true", help="print the nbdkit command only")
    for param in PARAMS:
        parser.add_argument(
            f"--{param.key}", metavar=param.metavar, help=param.help, required=param.required
        )
    parser.set_defaults(handler=_handle)


def _params_from(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs = []
    for param in PARAMS:
        value = getattr(args, param.key.replace("-", "_"))
        if value is not None:
            if param.key in ("report", "file"):
                value = os.path.abspath(value)
            pairs.append((param.key, str(value)))
    return pairs


def nbdkit_argv(
    socket: Path, params: list[tuple[str, str]], *, threads: int = 16, verbose: bool = False
) -> list[str]:
    """The nbdkit command line serving the plugin with `params` on `socket`."""
    nbdkit = shutil.which("nbdkit")
    if nbdkit is None:
        raise ConfigError("nbdkit", "not found on PATH (run scripts/setup)")
    argv = launch.plugin_argv(dict(params), unix=socket.absolute(), threads=threads, nbdkit=nbdkit)
    if verbose:
        argv.insert(1, "--verbose")
    return argv


def _socket_mode(mode: str) -> int:
    try:
        value = int(mode, 8)
    except ValueError:
        raise ConfigError("--socket-mode", f"{mode!r} is not an octal mode like 0600") from None
    if not 0 <= value <= 0o777:
        raise ConfigError("--socket-mode", f"{mode!r} is not a mode between 0000 and 0777")
    return value


def _serve(argv: list[str], socket: Path, mode: int) -> int:
    """Run nbdkit, restrict the socket once it exists, pass SIGINT/SIGTERM on, wait."""
    proc = subprocess.Popen(argv, env=launch.plugin_env())

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        launch.wait_ready(proc, socket, log=Path("/dev/null"), timeout=60)
    except launch.NbdkitError as exc:
        proc.terminate()
        raise ConfigError("nbdkit", str(exc).removeprefix("nbdkit: ")) from None
    # nbdkit creates the socket with its own umask: tighten it before any client can use it.
    os.chmod(socket, mode)
    print(f"nbdfork: serving on {socket} (mode {mode:04o}); connect with")
    print(f"  nbd-client -unix {socket} /dev/nbd0 -b 4096")
    print(f"  nbdinfo 'nbd+unix:///?socket={socket}'")
    sys.stdout.flush()
    try:
        return proc.wait()
    finally:
        socket.unlink(missing_ok=True)  # nbdkit leaves it behind


def _handle(args: argparse.Namespace) -> int:
    params = _params_from(args)
    _socket_mode(args.socket_mode)
    # The same validation the plugin does in config_complete, before anything starts.
    validate_paths(parse_params(params))
    if args.threads < 1:
        raise ConfigError("--threads", f"{args.threads} must be at least 1")
    argv = nbdkit_argv(args.socket, params, threads=args.threads, verbose=args.verbose)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    mode = _socket_mode(args.socket_mode)
    if args.socket.exists():
        raise ConfigError("--socket", f"{args.socket} exists (another server, or a stale socket?)")
    return _serve(argv, args.socket.absolute(), mode)
