"""Per-connection reports through real nbdkit: each client's counters and events, by export."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import nbd

from nbdfork.harness import nbdkit as launch
from nbdfork.harness.guestdevice import collect_run, connection_report
from nbdfork.oracle.stamp import encode_page
from tests.conftest import Server, close_handle


def _client(socket: Path, export: str) -> nbd.NBD:
    h = nbd.NBD()
    h.set_export_name(export)
    h.connect_unix(str(socket))
    return h


def _wait(path_glob: Callable[[], list[Path]], count: int) -> None:
    deadline = time.monotonic() + 10
    while len(path_glob()) < count:
        assert time.monotonic() < deadline, "connection reports did not appear"
        time.sleep(0.05)


def test_each_connection_reports_its_own_counters(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    """Two clients with their export names: each connection-<n>.json counts only its writes."""
    report = tmp_path / "r"
    srv = server("size=16M", f"report={report}")
    first = _client(srv.socket, "ext4-sw0-pwrite")
    first.pwrite(encode_page(1, 0, 2), 0)
    first.pwrite(encode_page(1, 0, 1), 0)  # stale
    first.shutdown()
    close_handle(first)
    second = _client(srv.socket, "xfs-sw1-pwrite")
    for i in range(3):
        second.pwrite(encode_page(2, i, 1), (i + 8) * 4096)
    second.flush()
    second.shutdown()
    close_handle(second)
    _wait(lambda: sorted(report.glob("connection-*.json")), 2)
    one = connection_report(report, "ext4-sw0-pwrite")
    two = connection_report(report, "xfs-sw1-pwrite")
    assert one is not None and two is not None
    assert (one.connection, one.writes, one.counts["stale_write"]) == (1, 2, 1)
    assert (two.connection, two.writes, two.flushes, two.stamped_pages) == (2, 3, 1, 3)
    assert two.write_sizes == {"4096": 3} and one.write_sizes == {"4096": 2}
    assert two.counts == {"torn_write": 0, "stale_write": 0, "overlapping_write": 0}
    assert 0 <= one.opened_s <= one.closed_s <= two.opened_s
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    summary = collect_run(report, "ext4-sw0-pwrite", run_dir, 100.0, 100.5, timeout=1)
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["stale_write"] and summary.run_split is not None
    assert summary.run_split.events == 1
    assert events[0]["run_time_s"] == round(events[0]["time"] - one.opened_s - 0.5, 6)
    assert srv.stop() == 0


def test_launcher_builds_one_argv_for_every_caller(tmp_path: Path) -> None:
    """plugin_argv: a unix socket in the foreground, or -s; --threads; refuses neither."""
    argv = launch.plugin_argv({"size": "1M"}, unix=tmp_path / "s", threads=2)
    assert argv[:6] == ["nbdkit", "--exit-with-parent", "--unix", str(tmp_path / "s"),
                        "--foreground", "--threads"]  # fmt: skip
    assert argv[-1] == "size=1M" and argv[-2] == str(launch.PLUGIN)
    assert launch.plugin_argv({}, single=True)[:3] == ["nbdkit", "--exit-with-parent", "-s"]
    try:
        launch.plugin_argv({})
    except ValueError as exc:
        assert "unix socket" in str(exc)
    else:
        raise AssertionError("plugin_argv accepted no transport")


def test_launcher_reports_why_nbdkit_did_not_start(tmp_path: Path) -> None:
    """A bad parameter: wait_ready raises with nbdkit's one-line error, not a timeout."""
    log = tmp_path / "nbdkit.log"
    argv = launch.plugin_argv({"size": "12q"}, unix=tmp_path / "s")
    proc = launch.start(argv, log=log)
    try:
        launch.wait_ready(proc, tmp_path / "s", log=log, timeout=30)
    except launch.NbdkitError as exc:
        assert "size" in str(exc) and "exited" in str(exc)
    else:
        raise AssertionError("nbdkit started with size=12q")
    finally:
        launch.stop(proc)


def test_private_server_serves_then_cleans_up(tmp_path: Path) -> None:
    """private_server listens in a fresh 0700 directory, serves the plugin, and on exit stops
    nbdkit (final summary written) and removes the directory."""
    report = tmp_path / "r"
    with launch.private_server({"size": "1M", "report": str(report)},
                               log=tmp_path / "nbdkit.log") as (socket, started):  # fmt: skip
        assert started >= 0 and (socket.parent.stat().st_mode & 0o777) == 0o700
        h = nbd.NBD()
        h.connect_unix(str(socket))
        h.pwrite(encode_page(1, 0, 1), 0)
        h.shutdown()
        close_handle(h)
    assert not socket.parent.exists()
    assert json.loads((report / "summary.json").read_text())["writes"] == 1
