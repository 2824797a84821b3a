"""`nbdfork serve`: run nbdkit with the nbdfork plugin in the foreground on a unix socket."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

from nbdfork.config import PARAMS, parse_int, parse_params
from nbdfork.device.paths import validate_paths
from nbdfork.errors import ConfigError
from nbdfork.harness import nbdkit as launch

__all__ = ["MAX_SOCKET_PATH", "MAX_THREADS", "nbdkit_argv", "register"]

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL (unix(7))
MAX_THREADS = 1024
_PATH_KEYS = ("file", "report", "trace", "error-trigger")


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
    parser.add_argument(
        "--threads", default="16", help=f"nbdkit worker threads (1 .. {MAX_THREADS}, default 16)"
    )
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
            # Absolute for nbdkit; an empty path stays empty, for parse_params to refuse.
            if param.key in _PATH_KEYS and value:
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


def _check_socket(socket: Path) -> None:
    """The socket path nbdkit will bind: short enough, in a writable directory, not there."""
    length = len(os.fsencode(socket))
    if length > MAX_SOCKET_PATH:
        raise ConfigError("--socket", f"{socket} is {length} bytes long; a unix socket path "
                          f"holds at most {MAX_SOCKET_PATH}")  # fmt: skip
    parent = socket.parent
    if not parent.is_dir():
        problem = "is not a directory" if parent.exists() else "does not exist"
        raise ConfigError("--socket", f"directory {parent} {problem}")
    if not os.access(parent, os.W_OK | os.X_OK, effective_ids=True):
        raise ConfigError("--socket", f"cannot create {socket}: {parent} is not writable")
    if socket.exists() or socket.is_symlink():
        raise ConfigError("--socket", f"{socket} exists (another server, or a stale socket?)")


class _HeldStderr:
    """nbdkit's stderr, held back until it listens: a failure to start becomes one error line
    of ours with nbdkit's reason in it; once it serves, every line is passed through."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._held: list[str] = []
        self._live = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            with self._lock:
                if self._live:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                else:
                    self._held.append(line)

    def pass_through(self) -> None:
        """nbdkit listens: show what it said so far, and all it says from now on."""
        with self._lock:
            sys.stderr.write("".join(self._held))
            sys.stderr.flush()
            self._live = True

    def reason(self) -> str:
        """What nbdkit said before it exited, as one line."""
        self._thread.join(timeout=5)
        with self._lock:
            said = [line.strip() for line in self._held if line.strip()]
        return "; ".join(said) or "no message"


def _start_failed(socket: Path, status: int, reason: str) -> ConfigError:
    if reason.startswith(f"{socket}: "):  # nbdkit's bind()/listen() perror
        return ConfigError("--socket", f"nbdkit cannot listen on {reason}")
    return ConfigError("nbdkit", f"exited with status {status} before listening: {reason}")


def _serve(argv: list[str], socket: Path, mode: int) -> int:
    """Run nbdkit, restrict the socket once it exists, pass SIGINT/SIGTERM on, wait."""
    proc = subprocess.Popen(argv, env=launch.plugin_env(), stderr=subprocess.PIPE)
    assert proc.stderr is not None
    stderr = _HeldStderr(proc.stderr)

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, forward)
    try:
        launch.wait_ready(proc, socket, log=Path("/dev/null"), timeout=60)
    except launch.NbdkitError as exc:
        exited = proc.poll() is not None
        proc.terminate()
        proc.wait()
        if exited:
            raise _start_failed(socket, proc.returncode, stderr.reason()) from None
        raise ConfigError("nbdkit", str(exc).removeprefix("nbdkit: ")) from None
    stderr.pass_through()
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
    mode = _socket_mode(args.socket_mode)
    # The same validation the plugin does in config_complete, before anything starts.
    validate_paths(parse_params(params))
    threads = parse_int("--threads", args.threads, 1, MAX_THREADS)
    socket = args.socket.absolute()
    _check_socket(socket)
    argv = nbdkit_argv(socket, params, threads=threads, verbose=args.verbose)
    if args.dry_run:
        print(" ".join(argv))
        return 0
    return _serve(argv, socket, mode)
