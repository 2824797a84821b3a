"""The CLI: serve builds the nbdkit command from the same parameter table; verify summarises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbd
import pytest

from nbdfork.cli import main


def test_serve_dry_run_builds_nbdkit_argv(capsys: pytest.CaptureFixture[str]) -> None:
    """serve --dry-run prints the nbdkit command with the plugin and each given parameter."""
    status = main(
        ["serve", "--dry-run", "--socket", "/tmp/x.sock", "--size", "1G", "--write-latency", "2ms"]
    )
    out = capsys.readouterr().out
    assert status == 0
    assert "--unix /tmp/x.sock" in out and "plugin/nbdfork_plugin.py" in out
    assert out.rstrip().endswith("size=1G write-latency=2ms")


def test_serve_rejects_bad_values_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad device parameter is one error line naming it, exit 2, nothing started."""
    assert main(["serve", "--dry-run", "--size", "12q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "size: '12q' is not a size" in err[0]


def test_serve_rejects_bad_socket_mode(capsys: pytest.CaptureFixture[str]) -> None:
    """--socket-mode must be octal."""
    assert main(["serve", "--size", "1M", "--socket-mode", "rw"]) == 2
    assert "--socket-mode" in capsys.readouterr().err


def test_verify_counts_events(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """verify prints the count of each verdict and fails on violations when asked."""
    lines = [{"event": "torn_write", "stream": 1}, {"event": "torn_write", "stream": 1},
             {"event": "stale_write", "stream": 2}]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "torn_write         2" in out and "stale_write        1" in out
    assert main(["verify", str(tmp_path), "--fail-on-violation"]) == 1


def test_verify_missing_events_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify on a directory without events.jsonl names the missing file."""
    assert main(["verify", str(tmp_path)]) == 2
    assert "events.jsonl: no events file" in capsys.readouterr().err


def test_serve_runs_nbdkit_with_a_private_socket(tmp_path: Path) -> None:
    """serve starts real nbdkit, makes the socket 0600, serves, and stops on SIGTERM."""
    socket = tmp_path / "s.sock"
    report = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbdfork.cli", "serve", "--socket", str(socket), "--size", "16M",
         "--report", str(report)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("nbdfork: serving on")  # printed after chmod
    assert socket.stat().st_mode & 0o777 == 0o600
    h = nbd.NBD()
    h.connect_unix(str(socket))
    h.pwrite(b"\x01" * 4096, 0)
    h.shutdown()
    del h
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert json.loads((report / "summary.json").read_text())["writes"] == 1
    assert not os.path.exists(socket)


def test_sigterm_stops_a_command_cleanly_with_its_nbdkit(tmp_path: Path) -> None:
    """SIGTERM to a running `nbdfork model` is a clean stop: its nbdkit is stopped (context
    managers run), one line on stderr, exit status 143 (not Python's abrupt default)."""
    env = dict(os.environ, VIRTUAL_ENV=sys.prefix)
    argv = [str(Path(sys.executable).parent / "nbdfork"), "model", "--policy", "stable",
            "--latency", "1ms", "--seconds", "60", "--out", str(tmp_path / "m")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    nbdkit: list[int] = []
    deadline = time.monotonic() + 60
    while not nbdkit and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid), "-x", "nbdkit"],
                                  capture_output=True, text=True, check=False).stdout  # fmt: skip
        nbdkit = [int(p) for p in children.split()]
    assert nbdkit, proc.stderr.read() if proc.stderr else ""
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines()[-1] == "nbdfork model: terminated"
    for pid in nbdkit:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
