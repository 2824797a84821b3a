"""The CLI: serve builds the nbdkit command from the same parameter table; verify summarises."""

from __future__ import annotations

import json
from pathlib import Path

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
