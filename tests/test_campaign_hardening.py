"""Hardening, second round (issue 18, part A): every bad campaign spec, journal line, results
path and report file is one line through the real commands, exit status 2, no traceback; a
campaign never touches what it did not make for a cell, and a cell killed with its campaign is
stopped by the resume, never run twice at once.

Each table row drives `nbdfork ...` (or the campaign test driver) in a subprocess; $TMP is a
directory laid out by `layout` (a file, a FIFO, an endless and a deep file, ...).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.campaign_driver import describe
from tests.conftest import ROOT, nbdkit_env

NBDFORK = str(Path(sys.executable).parent / "nbdfork")
DRIVER = [sys.executable, "-m", "tests.campaign_driver"]

GROUP = '[[cells]]\nkind = "model"\n'
RULE = ": 1 to 64 characters of A-Z a-z 0-9 . _ , : + = @ % -, the first a letter or digit"
MODEL = GROUP + 'name = "m"\n[cells.axes]\npolicy = ["stable", "fork"]\n'


def _env() -> dict[str, str]:
    return nbdkit_env() | {"PYTHONPATH": str(ROOT)}


def _run(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `argv` from the checkout; a hang fails the test (TimeoutExpired)."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=_env(), stdin=subprocess.DEVNULL, check=False)  # fmt: skip


def one_line(argv: list[str]) -> str:
    """Run `argv`: exit status 2, exactly one stderr line, no traceback; return the line."""
    proc = _run(argv)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$TMP: a file, FIFOs, endless, deep, cut, tampered and non-UTF-8 reports and specs."""
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "file").write_text("x")
    os.mkfifo(tmp / "fifo")
    (tmp / "dir").mkdir()
    (tmp / "fifodir").mkdir()
    os.mkfifo(tmp / "fifodir" / "report.json")
    with (tmp / "endless.json").open("wb") as f:
        f.truncate(100 << 20)
    deep = b'{"schema": "nbdfork.campaign/1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (tmp / "deep.json").write_bytes(deep)
    (tmp / "truncated.json").write_text('{"schema": "nbdfork.campaign/1", "cells": [')
    (tmp / "tampered").mkdir()
    (tmp / "latin1").mkdir()
    (tmp / "tampered" / "report.json").write_text(json.dumps({
        "schema": "nbdfork.campaign/1", "name": "n", "seed": 1, "spec_hash": "h",
        "executor": "local", "jobs": "two", "wall_s": 1.0, "cells": []}))  # fmt: skip
    latin1 = b"{\"schema\": \"nbdfork.campaign/1\", \"name\": \"\xe9\"}"
    (tmp / "latin1" / "report.json").write_bytes(latin1)
    (tmp / "empty.json").write_bytes(b"")
    (tmp / "big.toml").write_text("# x\n" * 300_000)
    (tmp / "latin1.toml").write_bytes(b'[campaign]\nname = "\xe9"\n')
    (tmp / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp / "truncated.toml").write_text('[[cells]]\nkind = "mod')
    return tmp


# ------------------------------------------------------------------------- the campaign spec

SPECS = [
    # names that would become paths
    pytest.param(MODEL.replace('"m"', '"."'), "cells[0].name: '.' is not a group name" + RULE,
                 id="name-dot"),
    pytest.param(MODEL.replace('"m"', '".."'), "cells[0].name: '..' is not a group name" + RULE,
                 id="name-dotdot"),
    pytest.param(MODEL.replace('"m"', '"a/b"'), "cells[0].name: 'a/b' is not a group name" + RULE,
                 id="name-slash"),
    pytest.param(MODEL.replace('"m"', '""'), "cells[0].name: '' is not a group name" + RULE,
                 id="name-empty"),
    pytest.param(MODEL.replace('"m"', '"a\\u0000b"'), "cells[0].name: 'a\\x00b' is not a "
                 "group name" + RULE, id="name-nul"),
    pytest.param(MODEL.replace('"m"', '"-rf"'), "cells[0].name: '-rf' is not a group name" + RULE,
                 id="name-option"),
    pytest.param(MODEL.replace('"m"', f'"{"a" * 65}"'), "cells[0].name: 'aaaaaaaaaaaaaaaaaaaaaaa"
                 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa... is not a group name" + RULE,
                 id="name-overlong"),
    pytest.param(MODEL.replace('"m"', "7"), "cells[0].name: 7 is not a group name" + RULE,
                 id="name-number"),
    # kinds
    pytest.param(GROUP.replace('"model"', '"exec"') + '[cells.options]\nargv = ["rm", "-rf"]\n',
                 "cells[0].kind: 'exec' is not one of crash, run, model", id="kind-exec"),
    pytest.param(GROUP.replace('"model"', '"shell"'),
                 "cells[0].kind: 'shell' is not one of crash, run, model", id="kind-unknown"),
    pytest.param(GROUP.replace('"model"', "3"), "cells[0].kind: 3 is not one of crash, run, "
                 "model", id="kind-number"),
    # numbers
    pytest.param(GROUP + "timeout = nan\n", "cells[0].timeout: nan must be a number of seconds "
                 "in (0, 604800] (a week)", id="timeout-nan"),
    pytest.param(GROUP + "timeout = inf\n", "cells[0].timeout: inf must be a number of seconds "
                 "in (0, 604800] (a week)", id="timeout-inf"),
    pytest.param(GROUP + "timeout = 1e300\n", "cells[0].timeout: 1e+300 must be a number of "
                 "seconds in (0, 604800] (a week)", id="timeout-absurd"),
    pytest.param(GROUP + "timeout = -1\n", "cells[0].timeout: -1 must be a number of seconds "
                 "in (0, 604800] (a week)", id="timeout-negative"),
    pytest.param(GROUP + "timeout = true\n", "cells[0].timeout: True must be a number of "
                 "seconds in (0, 604800] (a week)", id="timeout-bool"),
    pytest.param(GROUP + "[cells.options]\nseconds = nan\n",
                 "cells[0].options.seconds: nan is not a finite number", id="seconds-nan"),
    pytest.param(GROUP + "[cells.options]\nseconds = -inf\n",
                 "cells[0].options.seconds: -inf is not a finite number", id="seconds-inf"),
    pytest.param(GROUP + "[cells.options]\nseconds = 1e300\n", "cells[0].options.seconds: "
                 "1e+300 must be a number in [0.1, 3600]", id="seconds-absurd"),
    pytest.param(GROUP + "[cells.axes]\nseconds = [1, nan]\n",
                 "cells[0].axes.seconds: nan is not a finite number", id="axis-nan"),
    pytest.param(GROUP + "seeds = 100000\n",
                 "cells[0].seeds: 100000 must be an integer from 1 to 10000", id="seeds-huge"),
    pytest.param("[campaign]\nseed = nan\n" + GROUP,
                 "campaign.seed: nan must be an integer from 0 to 2**63-1", id="seed-nan"),
    pytest.param("[campaign]\nseed = 99999999999999999999\n" + GROUP,
                 "campaign.seed: 99999999999999999999 must be an integer from 0 to 2**63-1",
                 id="seed-huge"),
    pytest.param(f'[campaign]\nname = "{"n" * 201}"\n' + GROUP, "campaign.name: must be a "
                 "string of 1 to 200 printable characters", id="campaign-name-long"),
    pytest.param('[campaign]\nname = "a\\u001b[2J"\n' + GROUP, "campaign.name: must be a "
                 "string of 1 to 200 printable characters", id="campaign-name-escape"),
    pytest.param(GROUP + "[cells.resources]\nkvm = nan\n",
                 "cells[0].resources.kvm: nan must be a finite number of at least 0.0001",
                 id="resource-nan"),
    # bounded work: counted before any cell is made
    pytest.param(GROUP + "seeds = 10000\n[cells.axes]\n" + "".join(
        f"a{i} = [{', '.join(map(str, range(40)))}]\n" for i in range(4)),
        "cells: the spec makes 25,600,000,000 cells or more, over the maximum of 10,000 "
        "(--max-cells N allows more)", id="cells-billions"),
    pytest.param(GROUP + "seeds = 10000\n" + GROUP.replace('"model"', '"crash"') + "seeds = 1\n",
                 "cells: the spec makes 10,001 cells or more, over the maximum of 10,000 "
                 "(--max-cells N allows more)", id="cells-over-max"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "line"), SPECS)
def test_a_bad_spec_is_one_line(tmp_path: Path, spec: str, line: str) -> None:
    """Each bad spec value is one line naming its key, exit 2, and nothing is created."""
    path = tmp_path / "spec.toml"
    path.write_text(spec)
    out = tmp_path / "out"
    got = one_line([NBDFORK, "campaign", "run", str(path), "--out", str(out)])
    assert got == f"nbdfork campaign: error: {line}"
    assert not out.exists()


SPEC_FILES = [
    ("$TMP/fifo", "$TMP/fifo: is a FIFO, not a regular file"),
    ("/dev/null", "/dev/null: is a device, not a regular file"),
    ("$TMP/dir", "$TMP/dir: is a directory, not a regular file"),
    ("$TMP/missing", "$TMP/missing: cannot read: No such file or directory"),
    ("$TMP/big.toml", "$TMP/big.toml: is 1,200,000 bytes, more than the limit of 1,048,576"),
    ("$TMP/latin1.toml", "$TMP/latin1.toml: not UTF-8 text (byte 19)"),
    ("$TMP/deep.toml", "$TMP/deep.toml: not TOML: maximum recursion depth exceeded"),
    ("$TMP/truncated.toml", "$TMP/truncated.toml: not TOML: Unterminated string (at end of "
     "document)"),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "line"), SPEC_FILES, ids=[s for s, _ in SPEC_FILES])
def test_a_bad_spec_file_is_one_line(layout: Path, tmp_path: Path, spec: str, line: str) -> None:
    """A spec that is a FIFO, a device, too big, deep, not UTF-8 or cut: one line, no hang."""
    given = spec.replace("$TMP", str(layout))
    got = one_line([NBDFORK, "campaign", "run", given, "--out", str(tmp_path / "out")])
    assert got == "nbdfork campaign: error: " + line.replace("$TMP", str(layout))


OPTIONS = [
    (["--max-cells", "0"], "--max-cells: 0 must be in [1, 10000000]"),
    (["--max-cells", "nan"], "--max-cells: 'nan' is not an integer"),
    (["--max-cells", "99999999999"], "--max-cells: 99999999999 must be in [1, 10000000]"),
    (["--jobs", "0"], "--jobs: 0 must be in [1, 4096]"),
    (["--jobs", "1e9"], "--jobs: '1e9' is not an integer"),
    (["--jobs", "9" * 5000], "--jobs: " + "9" * 30 + "... must be in [1, 4096]"),
    (["--cpus", "-1"], "--cpus: -1 must be in [1, 4096]"),
    (["--memory", "9" * 5000], "--memory: '" + "9" * 30 + "'... is not a size"),
    (["--grace", "nan"], "--grace: nan must be a number in [0, 3600]"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "line"), OPTIONS, ids=[" ".join(e)[:20] for e, _ in OPTIONS])
def test_a_bad_campaign_option_is_one_line(tmp_path: Path, extra: list[str], line: str) -> None:
    """--max-cells, --jobs, --cpus, --memory and --grace are bounded: one line each."""
    spec = tmp_path / "spec.toml"
    spec.write_text(MODEL)
    got = one_line([NBDFORK, "campaign", "run", str(spec), "--out", str(tmp_path / "o"), *extra])
    assert got == f"nbdfork campaign: error: {line}"


# ----------------------------------------------------------------- --out and --cache paths

BAD_DIRS = [
    ("$TMP/file", "$TMP/file is not a directory"),
    ("$TMP/file/sub", "cannot create $TMP/file/sub: $TMP/file is not a directory"),
    ("/proc/self", "/proc/self is in /proc, a kernel pseudo filesystem (proc): choose a "
     "directory on disk"),
    ("/proc/nbdfork", "/proc/nbdfork is in /proc, a kernel pseudo filesystem (proc): choose a "
     "directory on disk"),
    ("/sys/kernel/nbdfork", "/sys/kernel/nbdfork is in /sys, a kernel pseudo filesystem "
     "(sysfs): choose a directory on disk"),
]  # fmt: skip
COMMANDS = {
    "campaign": (["campaign", "run", "$SPEC", "--out"], "--out"),
    "kernel": (["kernel", "fetch", "7", "--cache"], "--cache"),
    "model": (["model", "--seconds", "0.1", "--out"], "--out"),
    "run": (["run", "--seconds", "1", "--out"], "--out"),
    "crash": (["crash", "--out"], "--out"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize(("where", "problem"), BAD_DIRS, ids=[w for w, _ in BAD_DIRS])
def test_a_bad_results_directory_is_one_line(
    layout: Path, tmp_path: Path, command: str, where: str, problem: str
) -> None:
    """A results directory that is a file, under a file, or in /proc or /sys: one line."""
    spec = tmp_path / "spec.toml"
    spec.write_text(MODEL)
    head, option = COMMANDS[command]
    argv = [a.replace("$SPEC", str(spec)) for a in head]
    got = one_line([NBDFORK, *argv, where.replace("$TMP", str(layout))])
    shown = problem.replace("$TMP", str(layout))
    assert got == f"nbdfork {command}: error: {option}: {shown}"


# ---------------------------------------------------------------------------- nbdfork report

REPORTS = [
    ("$TMP/fifo", "$TMP/fifo: is a FIFO, not a regular file"),
    ("$TMP/fifodir", "$TMP/fifodir/report.json: is a FIFO, not a regular file"),
    ("/dev/null", "/dev/null: is a device, not a regular file"),
    ("/dev/zero", "/dev/zero: is a device, not a regular file"),
    ("$TMP/endless.json", "$TMP/endless.json: is 104,857,600 bytes, more than the limit of "
     "67,108,864"),
    ("$TMP/deep.json", "$TMP/deep.json: nests arrays and objects more than 64 deep"),
    ("$TMP/truncated.json", "$TMP/truncated.json: not JSON: Input data was truncated"),
    ("$TMP/tampered", "$TMP/tampered/report.json: jobs: expected `int`, got `str`"),
    ("$TMP/latin1", "$TMP/latin1/report.json: not JSON: Invalid UTF-8 encoded string"),
    ("$TMP/empty.json", "$TMP/empty.json: not JSON: Input data was truncated"),
    ("$TMP/dir", "$TMP/dir/report.json: cannot read: No such file or directory"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "line"), REPORTS, ids=[p for p, _ in REPORTS])
def test_a_bad_report_file_is_one_line(layout: Path, path: str, line: str) -> None:
    """`nbdfork report` on a FIFO, device, endless, deep, cut or tampered file: one line."""
    got = one_line([NBDFORK, "report", path.replace("$TMP", str(layout))])
    assert got == "nbdfork report: error: " + line.replace("$TMP", str(layout))


# ------------------------------------------------------------------------------ the journal

JOURNAL_LINES = [
    ('{"t":"soon","cell":"t-n=1","event":"done","key":"K"}', "t: expected `float`, got `str`"),
    ('{"t":1,"cell":"t-n=1","event":"finished","key":"K"}', "event: invalid enum value "
     "'finished'"),
    ('{"t":1,"cell":7,"event":"done","key":"K"}', "cell: expected `str`, got `int`"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":"K","exit_status":"0"}',
     "exit_status: expected `int | null`, got `str`"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":"K","exit_status":99999999999}',
     "exit_status: expected `int` <= 2147483647"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":"K","duration_s":"1"}',
     "duration_s: expected `float | null`, got `str`"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":"K","duration_s":-1}',
     "duration_s: expected `float` >= 0.0"),
    ('{"t":1e999,"cell":"t-n=1","event":"done","key":"K"}', "t: number out of range"),
    ('{"t":1e13,"cell":"t-n=1","event":"done","key":"K"}',
     "t: expected `float` <= 1000000000000.0"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":["K"]}', "key: expected `str | null`, got "
     "`array`"),
    ('{"t":1,"cell":"t-n=1","event":"done","key":"K","error":{"a":1}}',
     "error: expected `str | null`, got `object`"),
    ('{"t":1,"cell":"t-n=1","event":"done"', "not a JSON line (cut by a kill?)"),
    ("\x00\x01garbage", "not a JSON line (cut by a kill?)"),
    ('["t-n=1","done"]', "top level: expected `object`, got `array`"),
    ('{"t":1,"cell":"t-n=1","event":"done","x":' + "[" * 200 + "]" * 200 + "}",
     "not a JSON line (cut by a kill?)"),
]  # fmt: skip


@pytest.mark.parametrize(("bad", "problem"), JOURNAL_LINES, ids=range(len(JOURNAL_LINES)))
def test_a_bad_journal_line_is_skipped_with_one_warning(
    tmp_path: Path, bad: str, problem: str
) -> None:
    """A bad journal line: one warning naming it, the cell reruns, the report reads back."""
    spec, out = tmp_path / "cells.json", tmp_path / "out"
    spec.write_text(describe("pass", [1]))
    argv = [*DRIVER, "campaign", "run", str(spec), "--out", str(out)]
    assert _run(argv).returncode == 0
    journal = out / "journal.jsonl"
    key = json.loads(journal.read_text().splitlines()[0])["key"]
    journal.write_text(journal.read_text().splitlines()[0] + "\n" + bad.replace('"K"', json.dumps(
        key)) + "\n")  # fmt: skip
    proc = _run(argv)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warnings == [f"nbdfork campaign: warning: journal.jsonl line 2: {problem}: skipped"]
    assert [json.loads(x)["event"] for x in journal.read_text().splitlines()[2:]] == [
        "start", "done"]  # fmt: skip
    report = _run([NBDFORK, "report", str(out)])
    assert report.returncode == 0, report.stderr


def test_a_journal_that_is_a_fifo_is_one_line(tmp_path: Path) -> None:
    """A journal.jsonl that is a FIFO: one line, exit 2, no hang."""
    spec, out = tmp_path / "cells.json", tmp_path / "out"
    spec.write_text(describe("pass", [1]))
    out.mkdir()
    os.mkfifo(out / "journal.jsonl")
    got = one_line([*DRIVER, "campaign", "run", str(spec), "--out", str(out)])
    assert got == (f"nbdfork campaign: error: {out}/journal.jsonl: is a FIFO, not a "
                   "regular file")  # fmt: skip


# ----------------------------------------------------------- confinement and one owner


def test_a_planted_link_at_a_cell_folder_is_refused_and_its_target_untouched(
    tmp_path: Path,
) -> None:
    """A link planted at cells/<id>: one error line, and its target keeps its files."""
    spec, out, victim = tmp_path / "cells.json", tmp_path / "out", tmp_path / "victim"
    spec.write_text(describe("import sys; sys.exit(1)", [1]))
    argv = [*DRIVER, "campaign", "run", str(spec), "--out", str(out)]
    assert _run(argv).returncode == 1
    victim.mkdir()
    (victim / "precious").write_text("keep")
    cell = out / "cells" / "t-n=1"
    os.rename(cell, tmp_path / "moved")
    cell.symlink_to(victim)
    proc = _run(argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1] == (f"nbdfork campaign: error: {cell}: is a symbolic "
                                            "link: refusing to follow it (remove it)")  # fmt: skip
    assert (victim / "precious").read_text() == "keep" and cell.is_symlink()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_a_resume_stops_the_cell_a_killed_campaign_left_running(tmp_path: Path) -> None:
    """After a SIGKILLed campaign, the resume stops its orphan cell (one line), then reruns."""
    block = tmp_path / "block"
    block.touch()
    code = ("import os, pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "out = pathlib.Path('{out}'); (out / 'pid').write_text(str(os.getpid())); "
            f"slow = os.path.exists({str(block)!r}); "
            "[((out / 'ticks').open('a').write('.'), time.sleep(0.05)) "
            "for _ in range(1200 if slow else 1)]")  # fmt: skip
    spec, out = tmp_path / "cells.json", tmp_path / "out"
    spec.write_text(describe(code, [1]))
    argv = [*DRIVER, "campaign", "run", str(spec), "--out", str(out), "--grace", "1"]
    campaign = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                cwd=ROOT, env=_env())  # fmt: skip
    _wait_for(lambda: any(p.read_text() for p in out.glob(".running/t-n_1-*/pid")))
    orphan = int(next(out.glob(".running/t-n_1-*/pid")).read_text())
    campaign.send_signal(signal.SIGKILL)
    campaign.wait(10)
    ticks = next(out.glob(".running/t-n_1-*/ticks"))
    size = ticks.stat().st_size
    _wait_for(lambda: ticks.stat().st_size > size, 10)
    assert _alive(orphan)  # the cell outlived its campaign

    block.unlink()
    proc = _run(argv)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "process group" in line]
    assert said == [f"nbdfork campaign: warning: cell t-n=1: stopped its process group "
                    f"{orphan} (SIGKILL after 1 s), left running by campaign process "
                    f"{campaign.pid}, which was killed"]  # fmt: skip
    assert not _alive(orphan)
    kept = out / "previous" / "t-n=1" / "ticks"  # the killed attempt's output, set aside
    size = kept.stat().st_size
    time.sleep(0.3)
    assert kept.stat().st_size == size
    assert (out / "cells" / "t-n=1" / "ticks").read_text() == "."
    assert not list(out.glob(".running/*"))
    events = [json.loads(x)["event"] for x in (out / "journal.jsonl").read_text().splitlines()]
    assert events == ["start", "start", "done"]


def test_a_stale_owner_record_signals_nobody(tmp_path: Path) -> None:
    """An owner record whose pid now leads another process is dropped, nothing signalled."""
    spec, out = tmp_path / "cells.json", tmp_path / "out"
    spec.write_text(describe("pass", [1]))
    argv = [*DRIVER, "campaign", "run", str(spec), "--out", str(out)]
    (out / ".running").mkdir(parents=True)
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    record = {"cell": "t-n=1", "pgid": os.getpid(), "start": 1, "boot": boot, "campaign": 1}
    (out / ".running" / "t-n_1-x.owner").write_text(json.dumps(record))
    proc = _run(argv)
    assert proc.returncode == 0 and "process group" not in proc.stderr, proc.stderr
    assert _alive(os.getpid()) and not list(out.glob(".running/*"))
