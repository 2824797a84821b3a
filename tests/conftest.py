"""Shared fixtures: start the real nbdkit with our plugin (libnbd connect_command or a socket)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import nbd
import pytest

from nbdfork.harness import nbdkit as launch

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugin" / "nbdfork_plugin.py"


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: run scripts/setup")
    return path


def nbdkit_env() -> dict[str, str]:
    """The environment nbdkit needs to find our venv from its embedded interpreter."""
    return dict(os.environ, VIRTUAL_ENV=sys.prefix)


def plugin_argv(*params: str, single: bool = True) -> list[str]:
    """nbdkit argv serving the plugin on stdin/stdout (-s) with `params`."""
    if single:
        return launch.server_argv(["python", str(PLUGIN), *params], single=True,
                                  nbdkit=_require("nbdkit"))  # fmt: skip
    # Without a transport: the caller adds its own (e.g. `--run true` to test config errors).
    return [_require("nbdkit"), "--exit-with-parent", "python", str(PLUGIN), *params]


@pytest.fixture
def connect() -> Iterator[Callable[..., object]]:
    """Open libnbd handles on real nbdkit processes; closed (and so nbdkit ended) at teardown."""
    handles: list[nbd.NBD] = []
    saved = dict(os.environ)
    os.environ["VIRTUAL_ENV"] = sys.prefix

    def _connect(*params: str) -> nbd.NBD:
        handle = nbd.NBD()
        handle.connect_command(plugin_argv(*params))
        handles.append(handle)
        return handle

    yield _connect
    for handle in handles:
        close_handle(handle)
    os.environ.clear()
    os.environ.update(saved)


def close_handle(handle: Any) -> None:
    """Close a libnbd handle now (libnbd 1.14's Python binding closes only in __del__); a
    connect_command child is waited for, so nbdkit has exited when this returns."""
    if hasattr(handle, "_o"):
        handle.__del__()
        del handle._o


def disconnect(handle: Any) -> None:
    """Shut the NBD connection down and wait for nbdkit to exit (so its report is written)."""
    handle.shutdown()
    close_handle(handle)


class Server:
    """nbdkit with the plugin listening on a unix socket, run as a separate process."""

    def __init__(self, socket: Path, params: list[str]) -> None:
        argv = launch.server_argv(["python", str(PLUGIN), *params], unix=socket,
                                  nbdkit=_require("nbdkit"))  # fmt: skip
        self.socket = socket
        self.proc = subprocess.Popen(argv, env=nbdkit_env(), stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nbdkit did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]
            time.sleep(0.05)

    def rss(self) -> int:
        """Resident set size of the nbdkit process in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM nbdkit and wait for it."""
        self.proc.terminate()
        return self.proc.wait(timeout)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start nbdkit+plugin on a unix socket; killed at teardown if still running."""
    servers: list[Server] = []

    def _start(*params: str) -> Server:
        srv = Server(tmp_path / f"nbd{len(servers)}.sock", list(params))
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        if srv.proc.poll() is None:
            srv.proc.kill()
            srv.proc.wait()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Fast tests first: the `vm` tier (which boots kernels) runs last."""
    items.sort(key=lambda item: item.get_closest_marker("vm") is not None)
