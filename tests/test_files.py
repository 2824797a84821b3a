"""Report and trace files cannot be hijacked: links planted in a report directory are never
followed, nothing outside it is created, appended or replaced, and files are not world-readable.

Each planted-link case runs as root (which permissions do not stop) and as `nobody`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import nbd
import pytest

from nbdfork.oracle.stamp import encode_page
from tests.conftest import PLUGIN, Server, disconnect, nbdkit_env
from tests.test_hardening import nbdkit_error

USERS = ["root", "nobody"]


def _scratch(tmp_path: Path, user: str) -> Path:
    """A directory `user` owns and can reach (pytest's tmp_path is root's, 0700)."""
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o055)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    shutil.chown(scratch, user)
    return scratch


def _make(path: Path, user: str, *, text: str | None = None) -> Path:
    """A directory (or a file with `text`) owned by `user`."""
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    shutil.chown(path, user)
    return path


def _fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), os.stat(path).st_mtime_ns


@pytest.fixture(params=USERS)
def user(request: pytest.FixtureRequest) -> str:
    """The user nbdkit runs as."""
    if os.geteuid() != 0:
        pytest.skip("needs root (to plant for root, and to switch to nobody)")
    name: str = request.param
    return name


@pytest.mark.parametrize("planted", ["nbdfork.log", "summary.json", "events.jsonl"])
def test_planted_link_to_a_file_is_refused_untouched(
    tmp_path: Path, user: str, planted: str
) -> None:
    """A report entry linked to a victim: one line naming it; the victim's bytes and mtime stay."""
    scratch = _scratch(tmp_path, user)
    victim = _make(scratch / "victim", user, text="precious\n")
    report = _make(scratch / "report", user)
    (report / planted).symlink_to(victim)
    before = _fingerprint(victim)
    line = nbdkit_error(["size=1M", f"report={report}"], user=user)
    link = report / planted
    assert line == f"report: {link} is a symbolic link: refusing to follow it (remove it)"
    assert _fingerprint(victim) == before


@pytest.mark.parametrize("planted", ["events.jsonl", "nbdfork.log", "summary.json"])
def test_dangling_link_target_is_never_created(tmp_path: Path, user: str, planted: str) -> None:
    """A dangling link in the report directory does not make its target appear."""
    scratch = _scratch(tmp_path, user)
    report = _make(scratch / "report", user)
    (report / planted).symlink_to(scratch / "created-by-server")
    nbdkit_error(["size=1M", f"report={report}"], user=user)
    assert not (scratch / "created-by-server").exists()


def test_previous_linked_outside_receives_nothing(tmp_path: Path, user: str) -> None:
    """`previous` linked to another directory: refused; that directory stays empty and the old
    run's files stay where they were."""
    scratch = _scratch(tmp_path, user)
    outside = _make(scratch / "outside", user)
    report = _make(scratch / "report", user)
    old = _make(report / "events.jsonl", user, text='{"event":"torn_write"}\n')
    (report / "previous").symlink_to(outside)
    line = nbdkit_error(["size=1M", f"report={report}"], user=user)
    link = report / "previous"
    assert line == f"report: {link} is a symbolic link: refusing to follow it (remove it)"
    assert list(outside.iterdir()) == [] and old.read_text() == '{"event":"torn_write"}\n'


@pytest.mark.parametrize("dangling", [False, True])
def test_trace_link_is_not_followed(tmp_path: Path, user: str, dangling: bool) -> None:
    """trace= naming a link: refused; its target is neither truncated nor created."""
    scratch = _scratch(tmp_path, user)
    victim = scratch / "victim"
    if not dangling:
        _make(victim, user, text="precious\n")
    before = _fingerprint(victim) if not dangling else None
    (scratch / "t").symlink_to(victim)
    line = nbdkit_error(["size=1M", f"trace={scratch / 't'}"], user=user)
    assert line == f"trace: {scratch / 't'} is a symbolic link: refusing to follow it (remove it)"
    if dangling:
        assert not victim.exists()
    else:
        assert _fingerprint(victim) == before


def test_hard_linked_log_is_refused(tmp_path: Path) -> None:
    """nbdfork.log hard-linked to a file elsewhere is refused, the other file unchanged."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    report = tmp_path / "report"
    report.mkdir()
    os.link(victim, report / "nbdfork.log")
    before = _fingerprint(victim)
    line = nbdkit_error(["size=1M", f"report={report}"])
    assert line == f"report: {report / 'nbdfork.log'} is not a regular file of its own (remove it)"
    assert _fingerprint(victim) == before


def test_summary_temporary_name_cannot_be_planted(server: type[Server], tmp_path: Path) -> None:
    """A link planted at the old predictable `.summary.json.<pid>.tmp` is never written
    through: the victim is unchanged and summary.json is a real file with the counts."""
    report = tmp_path / "report"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    before = _fingerprint(victim)
    srv = server("size=16M", f"report={report}")
    (report / f".summary.json.{srv.proc.pid}.tmp").symlink_to(victim)
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    h.pwrite(encode_page(1, 0, 1), 0)
    h.shutdown()
    assert srv.stop() == 0
    assert _fingerprint(victim) == before
    assert not (report / "summary.json").is_symlink()
    assert json.loads((report / "summary.json").read_text())["writes"] == 1


def test_files_are_not_world_readable(connect: type[nbd.NBD], tmp_path: Path) -> None:
    """The report directory is made 0750, its files 0640 and a trace 0600 (umask 022)."""
    report, trace = tmp_path / "report", tmp_path / "t.trace"
    old = os.umask(0o022)
    try:
        h = connect("size=1M", f"report={report}", f"trace={trace}")
        h.pwrite(bytes(4096), 0)
        disconnect(h)
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in (report, trace, *report.iterdir())}
    assert (mode.pop("report"), mode.pop("t.trace")) == (0o750, 0o600)
    assert {"events.jsonl", "summary.json", "nbdfork.log"} <= set(mode)
    assert set(mode.values()) == {0o640}


def test_world_writable_report_dir_needs_sticky_and_ours(tmp_path: Path) -> None:
    """A 0777 report directory is refused; a sticky 1777 one of ours is accepted."""
    report = tmp_path / "report"
    report.mkdir()
    os.chmod(report, 0o777)
    line = nbdkit_error(["size=1M", f"report={report}"])
    assert line == f"report: {report} is writable by others (chmod go-w, or use another)"
    os.chmod(report, 0o1777)
    subprocess.run(
        ["nbdkit", "--run", "true", "python", str(PLUGIN), "size=1M", f"report={report}"],
        env=nbdkit_env(), check=True, timeout=60, capture_output=True,
    )  # fmt: skip
    assert (report / "summary.json").is_file()


def test_trace_replaces_an_earlier_trace(connect: type[nbd.NBD], tmp_path: Path) -> None:
    """trace= over an earlier trace replaces it (a new inode: a hard link elsewhere keeps
    the old bytes)."""
    trace, elsewhere = tmp_path / "t.trace", tmp_path / "kept.trace"
    h = connect("size=1M", f"trace={trace}")
    h.pwrite(bytes(4096), 0)
    disconnect(h)
    os.link(trace, elsewhere)
    before = _fingerprint(elsewhere)
    h = connect("size=1M", f"trace={trace}")
    disconnect(h)
    assert _fingerprint(elsewhere) == before
    assert os.stat(trace).st_ino != os.stat(elsewhere).st_ino
