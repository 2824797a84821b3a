"""`nbdfork run --workload fio:JOBFILE`: the job checked before anything boots, the runs and
device formats it makes, and fio's own verification read as the report reads it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nbdfork.errors import ConfigError
from nbdfork.experiments.matrix.plan import build_runs
from nbdfork.experiments.matrix.session import RunOptions, default_formats
from nbdfork.workloads.fio import (
    Kicker,
    fio_argv,
    fio_env,
    fio_outcome,
    run_phase,
    validate_jobfile,
)
from tests.conftest import ROOT

JOB = """\
; a storage engineer's job, unmodified
[global]
bs=4k
size=64k
verify=crc32c
verify_state_save=0

[randw]
rw=randwrite
ioengine=psync
"""


@pytest.fixture
def job(tmp_path: Path) -> Path:
    """A valid fio job file with one job and verify=crc32c."""
    path = tmp_path / "randw.fio"
    path.write_text(JOB)
    return path


def test_a_valid_job_is_read_with_its_jobs_and_verify(job: Path) -> None:
    """The job file's sections and verify= are read; it does not name the device."""
    checked = validate_jobfile(f"fio:{job}")
    assert (checked.jobs, checked.verify, checked.raw, checked.stem) == (
        ("randw",), "crc32c", False, "randw"
    )


@pytest.mark.parametrize(("content", "problem"), [
    (None, "no such job file"),
    ("print('not a job')\n", "not a fio job file (no [job] section)"),
    ("[global]\nbs=4k\n", "not a fio job file (no [job] section)"),
    ("[j]\nrw=write\nfilename=/etc/passwd\n", "filename=/etc/passwd lies outside the nbdfork "
     "device (use a relative name or ${NBDFORK_DIR}, ${NBDFORK_DEVICE})"),
    ("[j]\nrw=write\nbogus_option=1\n", "fio rejects it: Bad option <bogus_option=1>"),
])  # fmt: skip
def test_a_bad_job_is_one_line_naming_the_file(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    """A missing file, a file fio does not parse, a job-less file or a file outside the
    device: a ConfigError on --workload naming the job file."""
    path = tmp_path / "bad.fio"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as err:
        validate_jobfile(f"fio:{path}")
    assert str(err.value) == f"--workload: fio:{path}: {problem}"


def test_nbdfork_run_refuses_a_missing_job_before_booting(tmp_path: Path) -> None:
    """`nbdfork run --workload fio:MISSING`: exit 2 within seconds, one error line, no VM and
    no results directory."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "nbdfork.cli", "run", "--workload", "fio:/nonexistent/j.fio",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "fio:/nonexistent/j.fio: no such job file" in lines[0]
    assert not out.exists()


def test_fio_runs_are_named_after_the_job_and_judge_fio(job: Path, tmp_path: Path) -> None:
    """A fio job becomes runs `FS-swN-fio.STEM` with the job file as option, and the device
    judges stamp, each filesystem's metadata and fio."""
    runs = build_runs(filesystems=["ext4"], stable_writes=[0, 1], workloads=[f"fio:{job}"],
                      seconds=5, seed=1)  # fmt: skip
    assert [(r.id, r.workload, r.workload_options) for r in runs] == [
        ("ext4-sw0-fio.randw", "fio", {"jobfile": str(job), "kick": "sync_file_range"}),
        ("ext4-sw1-fio.randw", "fio", {"jobfile": str(job), "kick": "sync_file_range"}),
    ]
    options = RunOptions(out=tmp_path, filesystems=("ext4", "xfs"), workloads=(f"fio:{job}",))
    assert default_formats(options) == "stamp,ext4,xfs,fio"
    assert default_formats(RunOptions(out=tmp_path)) == "stamp,ext4,xfs"


def test_raw_runs_only_fio_and_a_device_job_needs_raw(job: Path, tmp_path: Path) -> None:
    """--fs raw with a stamped workload, or a job writing ${NBDFORK_DEVICE} on a filesystem:
    one ConfigError each, before anything boots."""
    with pytest.raises(ConfigError, match=r"^--fs: raw \(no filesystem\) runs only fio"):
        RunOptions(out=tmp_path, filesystems=("raw",), workloads=("pwrite",)).validate()
    device_job = tmp_path / "dev.fio"
    device_job.write_text("[d]\nrw=write\nsize=64k\nfilename=${NBDFORK_DEVICE}\n")
    with pytest.raises(ConfigError, match=r"writes \$\{NBDFORK_DEVICE\}.*use --fs raw$"):
        RunOptions(out=tmp_path, filesystems=("ext4",),
                   workloads=(f"fio:{device_job}",)).validate()  # fmt: skip


def test_fio_read_back_passes_then_fails_on_a_changed_byte(job: Path, tmp_path: Path) -> None:
    """The job run as the guest runs it, then fio --verify_only: passed, 16 blocks read back;
    after one byte of the file is changed, the read-back fails with fio's EILSEQ (84)."""
    work = tmp_path / "mnt"
    work.mkdir()
    env = fio_env(work, "/dev/null")
    write = run_phase(fio_argv(job, directory=work, device="", output=tmp_path / "w.json"),
                      env, tmp_path / "w.json", 120)  # fmt: skip
    assert fio_outcome(write) and write["jobs"][0]["write_ios"] == 16
    assert write["writer_latency_ms"]["p50"] is not None

    def verify() -> dict[str, object]:
        argv = fio_argv(job, directory=work, device="", output=tmp_path / "v.json",
                        verify_only=True)  # fmt: skip
        return run_phase(argv, env, tmp_path / "v.json", 120)

    good = verify()
    assert fio_outcome(good) and good["jobs"][0]["read_ios"] == 16  # type: ignore[index]
    (data,) = [p for p in work.iterdir() if p.is_file()]
    raw = bytearray(data.read_bytes())
    raw[5 * 4096 + 100] ^= 0xFF
    data.write_bytes(bytes(raw))
    bad = verify()
    assert not fio_outcome(bad) and bad["jobs"][0]["error"] == 84  # type: ignore[index]


def test_the_kicker_starts_writeback_of_fios_files_until_stopped(tmp_path: Path) -> None:
    """While fio runs, the kicker calls sync_file_range on every file under the directory
    (here two files, at least 10 calls in 0.3 s), and stops when the phase ends."""
    (tmp_path / "a").write_bytes(bytes(4096))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(bytes(4096))
    with Kicker(tmp_path, "/dev/null") as kicker:
        time.sleep(0.3)
    done = kicker.kicks
    assert done >= 10
    time.sleep(0.05)
    assert kicker.kicks == done
