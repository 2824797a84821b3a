"""Hardening (issues 10 and 18): every bad parameter is one line through real nbdkit, the
same in `nbdfork serve`; every bad trace, report or path given to `nbdfork verify` is one
line; only errnos NBD carries are accepted, and an injected error is one log line.

BAD is the table of docs/parameters.md: the parameters given, then the exact line nbdkit
prints after `nbdkit: nbdfork: error: `. $TMP is a directory laid out by `layout`; $LONG is
5000 nines, more digits than Python's int() converts (sys.set_int_max_str_digits, 4300).
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import nbd
import pytest

from nbdfork.cli import main as nbdfork_main
from nbdfork.config import parse_params
from nbdfork.errors import ConfigError
from nbdfork.oracle.stamp import encode_page
from tests.conftest import PLUGIN, ROOT, Server, close_handle, disconnect, nbdkit_env

PREFIX = "nbdkit: nbdfork: error: "
# What NBD carries for WRITE/FLUSH/TRIM/READ (nbdkit server/protocol.c nbd_errno()).
NBD_ERRNOS = ("EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN")
_NBD = "use EPERM, EIO, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN"
LONG = "9" * 5000
_LONG = "'99999999999999999999'... (5000 characters)"  # how an error line shows $LONG
NOBODY = 65534
_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's link")
_REDIRECT = "another user could redirect it"

BAD = [
    # size
    pytest.param(["oracle=on"], "size: is required, e.g. size=64M", id="size-missing"),
    pytest.param(["size=12x"], "size: '12x' is not a size (use e.g. 4096, 64M, 1G)",
                 id="size-word"),
    pytest.param(["size=٤٠٩٦"], "size: '٤٠٩٦' is not a size (use e.g. 4096, 64M, 1G)",
                 id="size-non-ascii-digits"),
    pytest.param(["size=1000"], "size: '1000' must be a positive multiple of 512 bytes",
                 id="size-unaligned"),
    pytest.param(["size=65T"], "size: '65T' is larger than the maximum of 64T", id="size-huge"),
    pytest.param(["size=1M", "size=2M"], "size: given twice", id="size-twice"),
    pytest.param(["size=64T", "file=$TMP/big"],
                 "file: cannot set up the device's media: File too large", id="file-too-large"),
    pytest.param(["size=$LONG"], f"size: {_LONG} is larger than the maximum of 64T",
                 id="size-long-int"),
    pytest.param(["size=1M", "cache-size=$LONG"],
                 f"cache-size: {_LONG} is larger than the maximum of 64T", id="cache-size-long"),
    pytest.param(["size=1M", "bandwidth=$LONG"],
                 f"bandwidth: {_LONG} is larger than the maximum of 64T", id="bandwidth-long"),
    pytest.param(["size=1M", "error-op=write", "error-range=0-$LONG"],
                 f"error-range: {_LONG} is larger than the maximum of 64T",
                 id="error-range-long-int"),
    # keys
    pytest.param(["size=1M", "colour=red"], "colour: unknown parameter (allowed: size, file, "
                 "report, seed, oracle, latency, read-latency, write-latency, flush-latency, "
                 "trim-latency, bandwidth, stall-probability, stall, trace, cache, cache-size, "
                 "ignore-flush, reorder-window, error-op, error-probability, error-range, "
                 "error-errno, error-trigger, formats, corrupt-op, corrupt-probability, "
                 "corrupt-range, corrupt-trigger)", id="unknown-key"),
    pytest.param(["size=1M", "formats=stamp,zfs"],
                 "formats: unknown format 'zfs' (known: stamp,btrfs,ext4,fio,xfs)",
                 id="formats-unknown"),
    pytest.param(["size=1M", "corrupt-range=0-4K"],
                 "corrupt-range: needs corrupt-op=write (only WRITEs are corrupted)",
                 id="corrupt-without-op"),
    # seed, switches, integers
    pytest.param(["size=1M", "seed=²"], "seed: '²' must be an integer from 0 to 2**64-1",
                 id="seed-superscript"),
    pytest.param(["size=1M", "seed=18446744073709551616"],
                 "seed: '18446744073709551616' must be an integer from 0 to 2**64-1",
                 id="seed-2**64"),
    pytest.param(["size=1M", "seed=$LONG"], f"seed: {_LONG} must be an integer from 0 to 2**64-1",
                 id="seed-long-int"),
    pytest.param(["size=1M", "reorder-window=$LONG"],
                 f"reorder-window: {_LONG} must be an integer from 0 to 4096",
                 id="reorder-long-int"),
    pytest.param(["size=1M", "oracle=maybe"], "oracle: 'maybe' must be on or off", id="oracle"),
    pytest.param(["size=1M", "ignore-flush=sometimes"],
                 "ignore-flush: 'sometimes' must be on or off", id="ignore-flush"),
    pytest.param(["size=1M", "cache=write-back"], "cache: 'write-back' must be off or volatile",
                 id="cache"),
    pytest.param(["size=1M", "cache-size=1.5G"],
                 "cache-size: '1.5G' is not a size (use e.g. 4096, 64M, 1G)", id="cache-size"),
    pytest.param(["size=1M", "reorder-window=4097"],
                 "reorder-window: '4097' must be an integer from 0 to 4096", id="reorder-big"),
    pytest.param(["size=1M", "reorder-window=²"],
                 "reorder-window: '²' must be an integer from 0 to 4096", id="reorder-superscript"),
    # durations and latency
    pytest.param(["size=1M", "latency=99999999999999999999999s"], "latency: "
                 "'99999999999999999999999s' is longer than the maximum of 3600s (one hour)",
                 id="latency-overflow"),
    pytest.param(["size=1M", "write-latency=9"], "write-latency: '9' needs a unit: ns, us, ms or s",
                 id="latency-no-unit"),
    pytest.param(["size=1M", "read-latency=uniform:5ms:1ms"],
                 "read-latency: uniform:5ms:1ms has its maximum below its minimum",
                 id="latency-inverted"),
    pytest.param(["size=1M", "flush-latency=lognormal:1s:2"], "flush-latency: 'lognormal:1s:2' "
                 "can draw delays over 3600s (median x e^(8.58 sigma)): lower the median or sigma",
                 id="latency-lognormal-tail"),
    pytest.param(["size=1M", "latency=lognormal:2ms:nan"], "latency: 'nan' is not a number",
                 id="latency-nan"),
    pytest.param(["size=1M", "trim-latency=normal:1ms"], "trim-latency: 'normal:1ms' is not a "
                 "latency (use 2ms, uniform:1ms:5ms or lognormal:2ms:0.5)", id="latency-kind"),
    pytest.param(["size=1M", "latency=inf"],
                 "latency: 'inf' is not a duration (use e.g. 2ms, 500us, 1s)", id="latency-inf"),
    pytest.param(["size=1M", "stall=nan"], "stall: 'nan' is not a duration (use e.g. 2ms, 500us, "
                 "1s)", id="stall-nan"),
    pytest.param(["size=1M", "stall=$LONGs"], "stall: '99999999999999999999'... (5001 "
                 "characters) is longer than the maximum of 3600s (one hour)", id="stall-long"),
    pytest.param(["size=1M", "stall=3601s"],
                 "stall: '3601s' is longer than the maximum of 3600s (one hour)", id="stall"),
    pytest.param(["size=1M", "bandwidth=1k"],
                 "bandwidth: '1k' is below the minimum of 32K (64M per hour)", id="bandwidth"),
    # probabilities
    pytest.param(["size=1M", "stall-probability=nan"], "stall-probability: 'nan' is not a number",
                 id="probability-nan"),
    pytest.param(["size=1M", "stall-probability=1e999"],
                 "stall-probability: '1e999' must be between 0 and 1", id="probability-inf"),
    pytest.param(["size=1M", "stall-probability=$LONG"],
                 f"stall-probability: {_LONG} must be between 0 and 1", id="probability-long"),
    pytest.param(["size=1M", "error-op=write", "error-probability=inf"],
                 "error-probability: 'inf' is not a number", id="probability-inf-word"),
    pytest.param(["size=1M", "error-op=write", "error-probability=-0.1"],
                 "error-probability: '-0.1' must be between 0 and 1", id="probability-negative"),
    # error injection
    pytest.param(["size=1M", "error-probability=0.5"],
                 "error-probability: needs error-op= (read, write, flush, trim, zero, all)",
                 id="error-without-op"),
    pytest.param(["size=1M", "error-op=explode"],
                 "error-op: 'explode': use read, write, flush, trim, zero or all", id="error-op"),
    pytest.param(["size=1M", "error-op=write", "error-range=1M-4k"],
                 "error-range: '1M-4k' ends before it starts", id="error-range"),
    pytest.param(["size=1M", "error-op=write", "error-errno=EROFS"],
                 f"error-errno: 'EROFS' is not an errno NBD can carry ({_NBD})",
                 id="errno-erofs"),
    pytest.param(["size=1M", "error-op=write", "error-errno=EAGAIN"],
                 f"error-errno: 'EAGAIN' is not an errno NBD can carry ({_NBD})",
                 id="errno-eagain"),
    pytest.param(["size=1M", "error-op=write", "error-trigger=/nonexistent/x"],
                 "error-trigger: directory /nonexistent does not exist", id="trigger-dir"),
    # file
    pytest.param(["size=1M", "file=$TMP/dir"], "file: $TMP/dir is not a regular file",
                 id="file-directory"),
    pytest.param(["size=1M", "file=/nonexistent/x"],
                 "file: directory /nonexistent does not exist", id="file-missing-dir"),
    pytest.param(["size=1M", "file="], "file: needs a path", id="file-empty"),
    # report
    pytest.param(["size=1M", "report="], "report: needs a path", id="report-empty"),
    pytest.param(["size=1M", "report=$TMP/file"], "report: $TMP/file is not a directory",
                 id="report-file"),
    pytest.param(["size=1M", "report=$TMP/file/sub"],
                 "report: cannot create $TMP/file/sub: $TMP/file is not a directory",
                 id="report-under-file"),
    pytest.param(["size=1M", "report=/proc/self"],
                 "report: /proc/self is a symbolic link (give the directory it points to)",
                 id="report-proc-self"),
    pytest.param(["size=1M", "report=$TMP/open"],
                 "report: $TMP/open is writable by others (chmod go-w, or use another)",
                 id="report-world-writable"),
    pytest.param(["size=1M", "report=$TMP/prevfile"],
                 "report: $TMP/prevfile/previous is not a directory (remove it)",
                 id="report-previous-file"),
    pytest.param(["size=1M", "report=$TMP/linked"], "report: $TMP/linked/events.jsonl is a "
                 "symbolic link: refusing to follow it (remove it)", id="report-planted-link"),
    # trace
    pytest.param(["size=1M", "trace="], "trace: needs a path", id="trace-empty"),
    pytest.param(["size=1M", "trace=/nonexistent/t"],
                 "trace: directory /nonexistent does not exist", id="trace-missing-dir"),
    pytest.param(["size=1M", "trace=$TMP/dir"], "trace: $TMP/dir is a directory",
                 id="trace-directory"),
    pytest.param(["size=1M", "trace=$TMP/text"],
                 "trace: $TMP/text exists and is not one of ours: refusing to replace it",
                 id="trace-foreign-file"),
    pytest.param(["size=1M", "trace=$TMP/link"],
                 "trace: $TMP/link is a symbolic link: refusing to follow it (remove it)",
                 id="trace-link"),
    # links and directories another user controls ($TMP/shared is 1777 and ours; its `img`
    # and `sub` are links of uid 65534, `theirs.img` a file of theirs, `hard` a second name
    # of $TMP/precious; $TMP/theirs is a directory of theirs)
    pytest.param(["size=1M", "file=$TMP/shared/img"],
                 "file: $TMP/shared/img is a symbolic link (give the file it points to)",
                 id="link-file-planted", marks=_ROOT),
    pytest.param(["size=1M", "trace=$TMP/shared/img"], "trace: $TMP/shared/img is a symbolic "
                 "link: refusing to follow it (remove it)", id="link-trace-planted", marks=_ROOT),
    pytest.param(["size=1M", "report=$TMP/shared/img"], "report: $TMP/shared/img is a symbolic "
                 "link (give the directory it points to)", id="link-report-planted", marks=_ROOT),
    pytest.param(["size=1M", "file=$TMP/shared/sub/img"], "file: $TMP/shared/sub/img: "
                 "$TMP/shared/sub is a symbolic link owned by another user (uid 65534): refusing "
                 "to follow it", id="link-file-through", marks=_ROOT),
    pytest.param(["size=1M", "trace=$TMP/shared/sub/t"], "trace: $TMP/shared/sub/t: "
                 "$TMP/shared/sub is a symbolic link owned by another user (uid 65534): refusing "
                 "to follow it", id="link-trace-through", marks=_ROOT),
    pytest.param(["size=1M", "report=$TMP/shared/sub/r"], "report: $TMP/shared/sub/r: "
                 "$TMP/shared/sub is a symbolic link owned by another user (uid 65534): refusing "
                 "to follow it", id="link-report-through", marks=_ROOT),
    pytest.param(["size=1M", "file=$TMP/theirs/img"], "file: $TMP/theirs/img: $TMP/theirs is "
                 f"owned by another user (uid 65534): {_REDIRECT}", id="link-file-their-dir",
                 marks=_ROOT),
    pytest.param(["size=1M", "trace=$TMP/theirs/t"], "trace: $TMP/theirs/t: $TMP/theirs is "
                 f"owned by another user (uid 65534): {_REDIRECT}", id="link-trace-their-dir",
                 marks=_ROOT),
    pytest.param(["size=1M", "report=$TMP/theirs/r"], "report: $TMP/theirs/r: $TMP/theirs is "
                 f"owned by another user (uid 65534): {_REDIRECT}", id="link-report-their-dir",
                 marks=_ROOT),
    pytest.param(["size=1M", "report=$TMP/theirs"], "report: $TMP/theirs is owned by another "
                 "user (uid 65534): they could redirect its files", id="link-report-theirs",
                 marks=_ROOT),
    pytest.param(["size=1M", "file=$TMP/open/img"], "file: $TMP/open/img: $TMP/open is writable "
                 f"by others and not sticky: {_REDIRECT}", id="link-file-open-dir"),
    pytest.param(["size=1M", "trace=$TMP/open/t"], "trace: $TMP/open/t: $TMP/open is writable "
                 f"by others and not sticky: {_REDIRECT}", id="link-trace-open-dir"),
    pytest.param(["size=1M", "report=$TMP/open/r"], "report: $TMP/open/r: $TMP/open is writable "
                 f"by others and not sticky: {_REDIRECT}", id="link-report-open-dir"),
    pytest.param(["size=1M", "file=$TMP/shared/theirs.img"], "file: $TMP/shared/theirs.img is "
                 "in a shared directory and not a file of our own (another owner, or another "
                 "name): refusing to write to it", id="link-file-their-file", marks=_ROOT),
    pytest.param(["size=1M", "file=$TMP/shared/hard"], "file: $TMP/shared/hard is in a shared "
                 "directory and not a file of our own (another owner, or another name): refusing "
                 "to write to it", id="link-file-hard-link", marks=_ROOT),
]  # fmt: skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$TMP: a file, a directory, a world-writable one, a report dir whose `previous` is a
    file, one with a planted events.jsonl link, a foreign file and a link; as root also a
    sticky shared directory holding another user's links, file and a hard link, and a
    directory of another user."""
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "file").write_text("x")
    (tmp / "dir").mkdir()
    if os.geteuid() == 0:
        _plant_foreign(tmp)
    (tmp / "open").mkdir()
    os.chmod(tmp / "open", 0o777)
    (tmp / "prevfile").mkdir()
    (tmp / "prevfile" / "previous").write_text("x")
    (tmp / "linked").mkdir()
    (tmp / "linked" / "events.jsonl").symlink_to(tmp / "victim")
    (tmp / "text").write_text("hello")
    (tmp / "link").symlink_to(tmp / "victim")
    return tmp


def _plant_foreign(tmp: Path) -> None:
    """What another user (uid 65534) can leave where we look: links in a sticky directory of
    ours, a file of theirs, a second name of our file, and a directory of their own."""
    (tmp / "dir").mkdir(exist_ok=True)
    shared = tmp / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    (tmp / "precious").write_text("precious\n")
    for name, target in (("img", tmp / "precious"), ("sub", tmp / "dir")):
        (shared / name).symlink_to(target)
        os.lchown(shared / name, NOBODY, NOBODY)
    (shared / "theirs.img").write_bytes(bytes(512))
    os.chown(shared / "theirs.img", NOBODY, NOBODY)
    os.link(tmp / "precious", shared / "hard")
    (tmp / "theirs").mkdir()
    os.chown(tmp / "theirs", NOBODY, NOBODY)


def _expand(text: str, tmp: Path) -> str:
    return text.replace("$TMP", str(tmp)).replace("$LONG", LONG)


def nbdkit_error(params: list[str], *, user: str | None = None) -> str:
    """Start nbdkit with `params` (as `user`); assert it failed with one line and no
    traceback, and return that line without its prefix."""
    argv = ["nbdkit", "--run", "true", "python", str(PLUGIN), *params]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    result = subprocess.run(
        argv, env=nbdkit_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(PREFIX), lines[0]
    return lines[0][len(PREFIX) :]


@pytest.mark.parametrize(("params", "line"), BAD)
def test_bad_parameter_is_one_line(layout: Path, params: list[str], line: str) -> None:
    """Each bad value stops nbdkit, non-zero, with exactly this line and no traceback."""
    given = [_expand(p, layout) for p in params]
    assert nbdkit_error(given) == _expand(line, layout)


def test_docs_table_shows_every_bad_value() -> None:
    """docs/parameters.md shows every row of the table with its exact line."""
    text = (ROOT / "docs" / "parameters.md").read_text()
    for case in BAD:
        params, line = case.values
        assert f"`{' '.join(params)}`" in text, params  # type: ignore[arg-type]
        assert f"`{line}`" in text, line


@pytest.mark.parametrize(
    ("option", "line"),
    [("--seed=²", "seed: '²' must be an integer from 0 to 2**64-1"),
     ("--report=$TMP/file", "report: $TMP/file is not a directory"),
     ("--report=/proc/self",
      "report: /proc/self is a symbolic link (give the directory it points to)"),
     ("--report=$TMP/prevfile", "report: $TMP/prevfile/previous is not a directory (remove it)"),
     ("--trace=/nonexistent/t", "trace: directory /nonexistent does not exist"),
     ("--trace=$TMP/dir", "trace: $TMP/dir is a directory"),
     ("--latency=99999999999999999999999s",
      "latency: '99999999999999999999999s' is longer than the maximum of 3600s (one hour)")],
)  # fmt: skip
def test_serve_dry_run_refuses_what_nbdkit_refuses(
    layout: Path, capsys: pytest.CaptureFixture[str], option: str, line: str
) -> None:
    """`nbdfork serve --dry-run` checks paths and bounds as the plugin does: same line."""
    status = nbdfork_main(["serve", "--dry-run", "--size=1M", option.replace("$TMP", str(layout))])
    assert status == 2
    assert capsys.readouterr().err == f"nbdfork serve: error: {line}\n".replace("$TMP", str(layout))


def _public_dir(tmp_path: Path, name: str, mode: int = 0o755) -> Path:
    """A root-owned directory that `nobody` can enter (pytest's tmp_path is 0700)."""
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o055)
    path = tmp_path / name
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    ("param", "line"),
    [("report=$DIR", "report: $DIR is not writable"),
     ("report=$DIR/new", "report: cannot create $DIR/new: $DIR is not writable"),
     ("trace=$DIR/t", "trace: cannot create $DIR/t: $DIR is not writable"),
     ("file=$DIR/f", "file: cannot create $DIR/f: $DIR is not writable")],
)  # fmt: skip
def test_unwritable_paths_are_one_line_as_nobody(tmp_path: Path, param: str, line: str) -> None:
    """As an unprivileged user, a directory it cannot write is one line naming the key."""
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody")
    directory = _public_dir(tmp_path, "root-only")
    given = param.replace("$DIR", str(directory))
    assert nbdkit_error(["size=1M", given], user="nobody") == line.replace("$DIR", str(directory))


def test_only_errnos_nbd_carries_are_accepted() -> None:
    """error-errno accepts exactly the errnos NBD carries for these requests, no other."""
    accepted = set()
    for name in sorted(set(errno.errorcode.values())):
        try:
            parse_params([("size", "1M"), ("error-op", "write"), ("error-errno", name)])
        except ConfigError:
            continue
        accepted.add(name)
    assert accepted == set(NBD_ERRNOS)


@pytest.mark.parametrize("name", NBD_ERRNOS)
def test_injected_errno_reaches_the_client_unchanged(name: str) -> None:
    """Every accepted error-errno is what a libnbd client sees on the failed WRITE."""
    os.environ["VIRTUAL_ENV"] = nbdkit_env()["VIRTUAL_ENV"]
    h = nbd.NBD()
    argv = ["nbdkit", "--exit-with-parent", "-s", "python", str(PLUGIN)]
    h.connect_command([*argv, "size=1M", "error-op=write", f"error-errno={name}"])
    with pytest.raises(nbd.Error) as failure:
        h.pwrite(bytes(4096), 0)
    close_handle(h)
    assert failure.value.errno == name  # libnbd names it


def test_dump_plugin_lists_every_parameter() -> None:
    """`nbdkit python plugin --dump-plugin` prints one nbdfork_param_KEY line per parameter."""
    result = subprocess.run(
        ["nbdkit", "python", str(PLUGIN), "--dump-plugin"], env=nbdkit_env(),
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    keys = [line.split("=", 1)[0] for line in result.stdout.splitlines()]
    params = [k.removeprefix("nbdfork_param_") for k in keys if k.startswith("nbdfork_param_")]
    assert params[0] == "size" and "error-errno" in params and len(params) == 28
    assert "nbdfork_param_size=SIZE (required): device size" in result.stdout


# --- issue 18: another user's links, `nbdfork serve` and `nbdfork verify` as commands, the
# report directory set aside whole, injected errors as one log line.


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant another user's link")
@pytest.mark.parametrize("key", ["file", "trace", "report"])
@pytest.mark.parametrize("route", ["img", "sub/img"])
def test_another_users_link_reaches_nothing(tmp_path: Path, key: str, route: str) -> None:
    """Another user's link in a sticky dir, as the path or on its way, is refused untouched."""
    _plant_foreign(tmp_path)
    precious = tmp_path / "precious"
    before = (precious.read_bytes(), os.stat(precious).st_mtime_ns)
    line = nbdkit_error(["size=1M", f"{key}={tmp_path / 'shared' / route}"])
    assert line.startswith(f"{key}: {tmp_path / 'shared'}/")
    assert (precious.read_bytes(), os.stat(precious).st_mtime_ns) == before
    assert list((tmp_path / "dir").iterdir()) == []


def command_error(args: list[str], *, timeout: float = 60) -> str:
    """Run `nbdfork ARGS` (this checkout) as a subprocess; assert exit status 2 with exactly one
    stderr line and no traceback, and return the line without `nbdfork CMD: error: `."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "nbdfork.cli", *args], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert result.returncode == 2, result.stderr
    prefix = f"nbdfork {args[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


_LONG_SOCKET = "/tmp/" + "a" * 110 + ".sock"
_DRY = ["serve", "--dry-run", "--size=1M", "--socket=$TMP/s.sock"]
SERVE = [
    pytest.param([*_DRY, "--size=$LONG"], f"size: {_LONG} is larger than the maximum of 64T",
                 id="size-long-int"),
    pytest.param([*_DRY, "--cache-size=$LONG"],
                 f"cache-size: {_LONG} is larger than the maximum of 64T", id="cache-size-long"),
    pytest.param([*_DRY, "--seed=$LONG"], f"seed: {_LONG} must be an integer from 0 to 2**64-1",
                 id="seed-long-int"),
    pytest.param([*_DRY, "--reorder-window=$LONG"],
                 f"reorder-window: {_LONG} must be an integer from 0 to 4096", id="reorder-long"),
    pytest.param([*_DRY, "--threads=$LONG"], f"--threads: {_LONG} must be an integer from 1 to "
                 "1024", id="threads-long-int"),
    pytest.param([*_DRY, "--threads=0"], "--threads: '0' must be an integer from 1 to 1024",
                 id="threads-zero"),
    pytest.param([*_DRY, "--threads=1025"], "--threads: '1025' must be an integer from 1 to 1024",
                 id="threads-huge"),
    pytest.param([*_DRY, "--socket-mode=$LONG"], f"--socket-mode: '{LONG}' is not an octal "
                 "mode like 0600", id="socket-mode-long"),
    pytest.param([*_DRY, "--latency=inf"],
                 "latency: 'inf' is not a duration (use e.g. 2ms, 500us, 1s)", id="latency-inf"),
    pytest.param([*_DRY, "--stall-probability=nan"], "stall-probability: 'nan' is not a number",
                 id="probability-nan"),
    pytest.param([*_DRY, "--report="], "report: needs a path", id="report-empty"),
    pytest.param([*_DRY, "--file="], "file: needs a path", id="file-empty"),
    pytest.param([*_DRY, "--trace="], "trace: needs a path", id="trace-empty"),
    pytest.param([*_DRY, "--file=$TMP/shared/img"], "file: $TMP/shared/img is a symbolic link "
                 "(give the file it points to)", id="file-planted-link", marks=_ROOT),
    pytest.param([*_DRY, "--report=$TMP/theirs/r"], "report: $TMP/theirs/r: $TMP/theirs is "
                 f"owned by another user (uid 65534): {_REDIRECT}", id="report-their-dir",
                 marks=_ROOT),
    pytest.param([*_DRY, f"--socket={_LONG_SOCKET}"], f"--socket: {_LONG_SOCKET} is 120 bytes "
                 "long; a unix socket path holds at most 107", id="socket-too-long"),
    pytest.param([*_DRY, "--socket=/nonexistent/s.sock"],
                 "--socket: directory /nonexistent does not exist", id="socket-missing-dir"),
    pytest.param([*_DRY, "--socket=$TMP/file/s.sock"],
                 "--socket: directory $TMP/file is not a directory", id="socket-under-file"),
    pytest.param([*_DRY, "--socket=$TMP/file"],
                 "--socket: $TMP/file exists (another server, or a stale socket?)",
                 id="socket-exists"),
    pytest.param(["serve", "--size=1M", "--socket=/proc/nbd.sock"], "--socket: nbdkit cannot "
                 "listen on /proc/nbd.sock: No such file or directory", id="socket-cannot-bind"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), SERVE)
def test_serve_bad_input_is_one_line(layout: Path, args: list[str], line: str) -> None:
    """`nbdfork serve` as a subprocess: exit status 2, exactly this line, no traceback."""
    assert command_error([_expand(a, layout) for a in args]) == _expand(line, layout)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trace and report directory of one real run (16M device): stamped writes, one torn
    page, a flush, a trim; the trace's first record is a WRITE of 4096 bytes, request id 1."""
    tmp = tmp_path_factory.mktemp("recorded")
    trace, report = tmp / "run.trace", tmp / "report"
    os.environ["VIRTUAL_ENV"] = nbdkit_env()["VIRTUAL_ENV"]
    h = nbd.NBD()
    argv = ["nbdkit", "--exit-with-parent", "-s", "python", str(PLUGIN)]
    h.connect_command([*argv, "size=16M", f"trace={trace}", f"report={report}"])
    for generation in (1, 2):
        for page in range(4):
            h.pwrite(encode_page(1, page, generation), page * 4096)
    h.flush()
    h.pwrite(encode_page(1, 0, 3)[:2048] + encode_page(1, 0, 4)[2048:], 0)
    h.trim(4096, 8192)
    h.shutdown()
    close_handle(h)
    return trace, report


_RECORD = 24  # the first record's head, after the header


def _patched(data: bytes, at: int, fmt: str, value: float) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def _trace_case(good: bytes, name: str) -> bytes:
    """The tampered or truncated trace `name`, made from the good one."""
    first = good[_RECORD : _RECORD + 64 + 4096]
    cases: dict[str, bytes] = {
        "empty": b"", "cut-4": good[:4], "cut-12": good[:12], "cut-20": good[:20],
        "bad-magic": b"XBDFTRC1" + good[8:],
        "version-3": _patched(good, 8, "<I", 3), "sector-4096": _patched(good, 12, "<I", 4096),
        "size-0": _patched(good, 16, "<Q", 0), "size-1000": _patched(good, 16, "<Q", 1000),
        "size-2**63": _patched(good, 16, "<Q", 1 << 63),
        "op-9": _patched(good, _RECORD, "<B", 9), "op-0": _patched(good, _RECORD, "<B", 0),
        "flags": _patched(good, _RECORD + 1, "<B", 0x80),
        "write-2G": _patched(good, _RECORD + 4, "<I", 1 << 31),
        "beyond-device": _patched(good, _RECORD + 8, "<Q", 16 << 20),
        "nan-time": _patched(good, _RECORD + 32, "<d", math.nan),
        "inf-time": _patched(good, _RECORD + 40, "<d", math.inf),
        "head-cut": good[: _RECORD + 30], "data-cut": good[: _RECORD + 64 + 100],
        "repeated-id": good[:_RECORD] + first + first,
    }  # fmt: skip
    return cases[name]


_NOT_REGULAR = "is neither a report directory nor a trace file"
VERIFY_TRACE = [
    ("empty", "$A: empty file, not an nbdfork trace"),
    ("cut-4", "$A: trace header cut short (4 of 24 bytes)"),
    ("cut-12", "$A: trace header cut short (12 of 24 bytes)"),
    ("cut-20", "$A: trace header cut short (20 of 24 bytes)"),
    ("bad-magic", "$A: not an nbdfork trace (bad magic)"),
    ("version-3", "$A: trace format version 3; this nbdfork reads 2"),
    ("sector-4096", "$A: trace sector size 4096; this nbdfork reads 512"),
    ("size-0", "$A: trace device size 0 is not a multiple of 512 from 512 to 64T"),
    ("size-1000", "$A: trace device size 1000 is not a multiple of 512 from 512 to 64T"),
    ("size-2**63", f"$A: trace device size {1 << 63} is not a multiple of 512 from 512 to 64T"),
    ("op-9", "$A: record 0 has an unknown op code 9"),
    ("op-0", "$A: record 0 has an unknown op code 0"),
    ("flags", "$A: record 0 has unknown flags 0x80"),
    ("write-2G", "$A: record 0 is a write of 2147483648 bytes, more than nbdkit's largest "
                 "request (64M)"),
    ("beyond-device", "$A: record 0 covers 16777216+4096, beyond the device size 16777216"),
    ("nan-time", "$A: record 0 has a time that is not a finite number"),
    ("inf-time", "$A: record 0 has a time that is not a finite number"),
    ("head-cut", "$A: record 0 is cut short"),
    ("data-cut", "$A: record 0 data is cut short"),
    ("repeated-id", "$A: record 1 repeats the request id 1 of an earlier write"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "line"), VERIFY_TRACE, ids=[c[0] for c in VERIFY_TRACE])
def test_verify_bad_trace_is_one_line(
    recorded: tuple[Path, Path], tmp_path: Path, name: str, line: str
) -> None:
    """`nbdfork verify` on a tampered or truncated trace: exit 2, one line saying what is wrong."""
    trace = tmp_path / f"{name}.trace"
    trace.write_bytes(_trace_case(recorded[0].read_bytes(), name))
    assert command_error(["verify", str(trace)]) == line.replace("$A", str(trace))


def _report_case(tmp: Path, report: Path, name: str) -> list[str]:
    """The arguments of verify case `name`: FIFOs, devices, deep or huge files."""
    copy = tmp / "report"
    shutil.copytree(report, copy)
    fifo = tmp / "fifo"
    os.mkfifo(fifo)
    deep = "[" * 100_000 + "]" * 100_000
    if name == "events-fifo":
        (copy / "events.jsonl").unlink()
        os.mkfifo(copy / "events.jsonl")
    elif name == "summary-fifo":
        (copy / "summary.json").unlink()
        os.mkfifo(copy / "summary.json")
    elif name == "events-deep":
        (copy / "events.jsonl").write_text(deep + "\n")
    elif name == "summary-deep":
        (copy / "summary.json").write_text(deep)
    elif name == "summary-huge":
        with (copy / "summary.json").open("r+b") as handle:
            handle.truncate(17 << 20)
    elif name == "against-fifo":
        (copy / "events.jsonl").unlink()
        os.mkfifo(copy / "events.jsonl")
        return [str(tmp / "run.trace"), "--against", str(copy)]
    args = {"fifo": [str(fifo)], "dev-null": ["/dev/null"], "dev-zero": ["/dev/zero"],
            "missing": [str(tmp / "missing")]}  # fmt: skip
    return args.get(name, [str(copy)])


VERIFY_FILES = [
    ("fifo", f"$A {_NOT_REGULAR}"),
    ("dev-null", f"/dev/null {_NOT_REGULAR}"),
    ("dev-zero", f"/dev/zero {_NOT_REGULAR}"),
    ("missing", "$A: No such file or directory"),
    ("events-fifo", "$A/events.jsonl is a FIFO, not a regular file"),
    ("summary-fifo", "$A/summary.json is a FIFO, not a regular file"),
    ("events-deep", "$A/events.jsonl:1: bad JSON: nested too deeply"),
    ("summary-deep", "$A/summary.json: unreadable summary (nested too deeply)"),
    ("summary-huge", "$A/summary.json is larger than 16777216 bytes: not one of ours"),
    ("against-fifo", "$B/events.jsonl is a FIFO, not a regular file"),
]


@pytest.mark.parametrize(("name", "line"), VERIFY_FILES, ids=[c[0] for c in VERIFY_FILES])
def test_verify_bad_file_is_one_line(
    recorded: tuple[Path, Path], tmp_path: Path, name: str, line: str
) -> None:
    """`nbdfork verify` on FIFOs, devices, deep or huge files: exit 2, one line, no hang."""
    shutil.copy(recorded[0], tmp_path / "run.trace")
    args = _report_case(tmp_path, recorded[1], name)
    expected = line.replace("$A", args[0]).replace("$B", args[-1])
    assert command_error(["verify", *args], timeout=30) == expected


def test_verify_recorded_run_is_identical(recorded: tuple[Path, Path]) -> None:
    """The untampered trace re-judges to the recorded events (the cases above start sound)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    trace, report = recorded
    result = subprocess.run(
        [sys.executable, "-m", "nbdfork.cli", "verify", str(trace), "--against", str(report)],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "torn_write         1" in result.stdout and "identical to" in result.stdout


def _snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative name -> bytes)."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}  # fmt: skip


def _wait_for(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _run_clients(server: Callable[..., Server], report: Path, clients: int) -> None:
    """One nbdkit run into `report`: `clients` connections, each writing a stamped page."""
    srv = server("size=16M", f"report={report}")
    for stream in range(1, clients + 1):
        h = nbd.NBD()
        h.connect_unix(str(srv.socket))
        h.pwrite(encode_page(stream, 0, 1), stream * 4096)
        disconnect(h)
        _wait_for(report / f"connection-{stream}.json")  # written by the plugin's close()
    assert srv.stop() == 0


def test_reused_report_dir_sets_aside_everything(
    server: Callable[..., Server], tmp_path: Path
) -> None:
    """A second run moves every entry of the first under previous/, byte for byte."""
    report = tmp_path / "report"
    _run_clients(server, report, 3)
    (report / ".summary.json.0123456789abcdef.tmp").write_text("{}")  # a killed run's
    (report / "notes.txt").write_text("kept\n")
    first = _snapshot(report)
    assert {"connection-1.json", "connection-2.json", "connection-3.json", "events.jsonl",
            "summary.json", "nbdfork.log"} < set(first)  # fmt: skip
    _run_clients(server, report, 1)
    (aside,) = (report / "previous").iterdir()
    assert _snapshot(aside) == first
    now = {p.name for p in report.iterdir()} - {"previous"}
    assert now == {"connection-1.json", "events.jsonl", "summary.json", "nbdfork.log"}
    assert json.loads((report / "summary.json").read_text())["connections"] == 1


def test_injected_errors_are_one_log_line_each(server: Callable[..., Server]) -> None:
    """Each injected error (read, write, flush, trim, zero) is one nbdkit stderr line."""
    srv = server("size=1M", "error-op=all", "error-errno=ENOSPC")
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    calls = [lambda: h.pread(4096, 0), lambda: h.pwrite(bytes(4096), 4096), h.flush,
             lambda: h.trim(4096, 8192), lambda: h.zero(4096, 12288)]  # fmt: skip
    for call in calls:
        with pytest.raises(nbd.Error):
            call()
    disconnect(h)
    srv.stop()
    assert srv.proc.stderr is not None
    lines = [line for line in srv.proc.stderr.read().splitlines() if line.strip()]
    plugin = f"{PLUGIN}: "
    assert [line.split(plugin, 1)[1] for line in lines] == [
        "pread: error: injected ENOSPC on read 0+4096",
        "pwrite: error: injected ENOSPC on write 4096+4096",
        "flush: error: injected ENOSPC on flush 0+0",
        "trim: error: injected ENOSPC on trim 8192+4096",
        "zero: error: injected ENOSPC on zero 12288+4096",
    ]
    assert all(line.startswith("nbdkit: python.") for line in lines)
