"""Hardening (issue 10): every bad parameter is one line through real nbdkit, the same in
`nbdfork serve --dry-run`; only errnos NBD carries are accepted.

BAD is the table of docs/parameters.md: the parameters given, then the exact line nbdkit
prints after `nbdkit: nbdfork: error: `. $TMP is a directory laid out by `layout`.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import nbd
import pytest

from nbdfork.cli import main as nbdfork_main
from nbdfork.config import parse_params
from nbdfork.errors import ConfigError
from tests.conftest import PLUGIN, ROOT, close_handle, nbdkit_env

PREFIX = "nbdkit: nbdfork: error: "
# What NBD carries for WRITE/FLUSH/TRIM/READ (nbdkit server/protocol.c nbd_errno()).
NBD_ERRNOS = ("EPERM", "EIO", "ENOMEM", "EINVAL", "ENOSPC", "ESHUTDOWN")
_NBD = "use EPERM, EIO, ENOMEM, EINVAL, ENOSPC, ESHUTDOWN"

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
    # keys
    pytest.param(["size=1M", "colour=red"], "colour: unknown parameter (allowed: size, file, "
                 "report, seed, oracle, latency, read-latency, write-latency, flush-latency, "
                 "trim-latency, bandwidth, stall-probability, stall, trace, cache, cache-size, "
                 "ignore-flush, reorder-window, error-op, error-probability, error-range, "
                 "error-errno, error-trigger)", id="unknown-key"),
    # seed, switches, integers
    pytest.param(["size=1M", "seed=²"], "seed: '²' must be an integer from 0 to 2**64-1",
                 id="seed-superscript"),
    pytest.param(["size=1M", "seed=18446744073709551616"],
                 "seed: '18446744073709551616' must be an integer from 0 to 2**64-1",
                 id="seed-2**64"),
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
    pytest.param(["size=1M", "stall=3601s"],
                 "stall: '3601s' is longer than the maximum of 3600s (one hour)", id="stall"),
    pytest.param(["size=1M", "bandwidth=1k"],
                 "bandwidth: '1k' is below the minimum of 32K (64M per hour)", id="bandwidth"),
    # probabilities
    pytest.param(["size=1M", "stall-probability=nan"], "stall-probability: 'nan' is not a number",
                 id="probability-nan"),
    pytest.param(["size=1M", "stall-probability=1e999"],
                 "stall-probability: '1e999' must be between 0 and 1", id="probability-inf"),
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
    # report
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
]  # fmt: skip


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """$TMP: a file, a directory, a world-writable one, a report dir whose `previous` is a
    file, one with a planted events.jsonl link, a foreign file and a link."""
    tmp = tmp_path_factory.mktemp("layout")
    (tmp / "file").write_text("x")
    (tmp / "dir").mkdir()
    (tmp / "open").mkdir()
    os.chmod(tmp / "open", 0o777)
    (tmp / "prevfile").mkdir()
    (tmp / "prevfile" / "previous").write_text("x")
    (tmp / "linked").mkdir()
    (tmp / "linked" / "events.jsonl").symlink_to(tmp / "victim")
    (tmp / "text").write_text("hello")
    (tmp / "link").symlink_to(tmp / "victim")
    return tmp


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
    given = [p.replace("$TMP", str(layout)) for p in params]
    assert nbdkit_error(given) == line.replace("$TMP", str(layout))


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
    assert params[0] == "size" and "error-errno" in params and len(params) == 23
    assert "nbdfork_param_size=SIZE (required): device size" in result.stdout
