"""The real-kernel harness without a VM: argv generation, the guest script's step order on fake
tools and a fake sysfs, report cutting, the watchdog, outcome typing, kernels, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import io
import json
import shlex
import stat
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from nbdfork.device.summary import CONNECTION_SCHEMA, ConnectionReport
from nbdfork.errors import ConfigError, VMError, VMLost
from nbdfork.experiments.matrix import cli as run_command
from nbdfork.experiments.matrix import guest
from nbdfork.experiments.matrix.experiment import EXPERIMENT as RUN
from nbdfork.experiments.matrix.guest import GuestRunner
from nbdfork.experiments.matrix.plan import Plan, RunSpec, build_runs, run_id
from nbdfork.experiments.matrix.record import RunRecord
from nbdfork.experiments.matrix.results import build_report, outcome_of, run_record, run_records
from nbdfork.experiments.matrix.schema import (
    HarnessTimings,
    MatrixReport,
    load_report,
    write_report,
)
from nbdfork.experiments.matrix.session import RunOptions
from nbdfork.experiments.stacks.catalogue import parse_stacks
from nbdfork.files import write_json
from nbdfork.harness.boot import (
    BOOT_TRIM_MODULES,
    VMConfig,
    guest_argv,
    parse_marker,
    run_vm,
    vng_argv,
)
from nbdfork.harness.guest import Reporter, nbd_client_argv
from nbdfork.harness.guestdevice import DeviceServer, nbdkit_argv
from nbdfork.harness.kernel import (
    Kernel,
    detect_accel,
    find_kernel,
    image_release,
    installed_kernels,
    validate_kernel,
)
from nbdfork.harness.protocol import MARKER, Outcome
from nbdfork.harness.steps import StepError, run_step
from nbdfork.options import parse_args
from nbdfork.seeds import derive_seed

# --- fixtures --------------------------------------------------------------------------------


def make_plan(tmp_path: Path, runs: list[RunSpec] | None = None, **overrides: Any) -> Plan:
    """A plan whose paths all live in tmp_path."""
    if runs is None:
        runs = build_runs(
            filesystems=["ext4"],
            stable_writes=[0, 1],
            workloads=["pwrite"],
            seconds=5.0,
            seed=11,
            workload_options={"max_writes": 12, "pages": 2},
        )
    fields: dict[str, Any] = {
        "out": str(tmp_path / "out"),
        "project": "/work/main",
        "python": sys.executable,
        "venv": sys.prefix,
        "plugin": "/work/main/plugin/nbdfork_plugin.py",
        "seed": 11,
        "device": {"size": "512M", "write-latency": "2ms", "seed": "5"},
        "runs": runs,
        "mountpoint": str(tmp_path / "mnt"),
        "socket": str(tmp_path / "nbd.sock"),
    }
    fields.update(overrides)
    return Plan(**fields)


FAKE_TOOL = """#!/bin/sh
# Records its argv and the stable_writes the device has at this instant.
echo "$(basename "$0") $* sw=$(cat {queue}/stable_writes)" >> {log}
case "$(basename "$0")" in
  nbd-client) if [ "$1" = "-d" ]; then size=0; else size=1048576; fi; echo $size > {block}/size ;;
  {fail}) echo "{fail}: injected failure" >&2; exit 3 ;;
  {slow}) sleep 10 ;;
esac
exit 0
"""


class FakeServer:
    """Stands in for DeviceServer: counts connections, writes a minimal run summary."""

    def __init__(self) -> None:
        self.proc = None
        self.connections = 0

    def check_alive(self) -> None:
        """Always alive."""

    def collect(
        self, run_id: str, run_dir: Path, connected: float | None, started: float | None
    ) -> ConnectionReport:
        """The connection's summary and (empty) events."""
        self.connections += 1
        summary = ConnectionReport(
            schema=CONNECTION_SCHEMA, version="0", started="", seed=1, settings={},
            counts={"torn_write": 0}, writes=3, stamped_pages=2, connection=self.connections,
            export=run_id, opened_s=0.0, closed_s=1.0,
        )  # fmt: skip
        write_json(run_dir / "summary.json", summary)
        (run_dir / "events.jsonl").write_text("")
        return summary

    def stop(self) -> int:
        """Stopped."""
        return 0


@pytest.fixture
def rig(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Fake nbd-client/mkfs/mount/umount on PATH and a fake /sys/block/nbd0."""
    block = tmp_path / "sys" / "block" / "nbd0"
    (block / "queue").mkdir(parents=True)
    (block / "queue" / "stable_writes").write_text("0\n")
    (block / "size").write_text("0\n")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "out" / "runs").mkdir(parents=True)
    rig: dict[str, Any] = {"tmp": tmp_path, "block": block, "log": tmp_path / "tools.log"}
    rig["install"] = lambda fail="none", slow="none": _install_tools(rig, fail, slow)
    rig["install"]()
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    return rig


def _install_tools(rig: dict[str, Any], fail: str, slow: str) -> None:
    bindir = rig["tmp"] / "bin"
    bindir.mkdir(exist_ok=True)
    script = FAKE_TOOL.format(
        queue=rig["block"] / "queue", block=rig["block"], log=rig["log"], fail=fail, slow=slow
    )
    for tool in ("nbd-client", "mkfs.ext4", "mkfs.xfs", "mount", "umount", "modprobe"):
        path = bindir / tool
        path.write_text(script)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)


def runner_for(rig: dict[str, Any], plan: Plan) -> GuestRunner:
    """A GuestRunner on the fake rig."""
    reporter = Reporter(Path(plan.out) / "guest.log", io.StringIO())
    return GuestRunner(plan, reporter, server=FakeServer(), sys_root=rig["tmp"] / "sys")  # type: ignore[arg-type]


def tool_calls(rig: dict[str, Any]) -> list[str]:
    """The fake tools' log lines."""
    return rig["log"].read_text().splitlines()


# --- the guest script ------------------------------------------------------------------------


def test_stable_writes_is_set_before_mkfs_and_mount(rig: dict[str, Any]) -> None:
    """nbd-client, then stable_writes (already 1 when mkfs and mount run), then the workload,
    umount and nbd-client -d."""
    plan = make_plan(rig["tmp"])
    runner = runner_for(rig, plan)
    record = runner.run_one(plan.runs[1])  # stable_writes=1
    assert record.status == "ok", record.error
    calls = [c.split()[0] for c in tool_calls(rig)]
    assert calls == ["nbd-client", "mkfs.ext4", "mount", "umount", "nbd-client"]
    assert all(c.endswith("sw=1") for c in tool_calls(rig)[1:3])
    assert record.stable_writes_read == record.stable_writes_after_mount == 1
    run_dir = Path(plan.out) / "runs" / plan.runs[1].id
    assert json.loads((run_dir / "result.json").read_text())["status"] == "ok"
    assert json.loads((run_dir / "workload.json").read_text())["writer_ops"] == 12


def test_mkfs_runs_once_per_filesystem_unless_asked(rig: dict[str, Any]) -> None:
    """The second run on the same fs mounts the existing filesystem; mkfs_each_run formats."""
    plan = make_plan(rig["tmp"])
    runner = runner_for(rig, plan)
    records = [runner.run_one(spec) for spec in plan.runs]
    assert [r.mkfs for r in records] == ["fresh", "reused"]
    mounts = [c for c in tool_calls(rig) if c.startswith("mount")]
    assert [m.rsplit("sw=", 1)[1] for m in mounts] == ["0", "1"]
    assert "-o noinit_itable" in mounts[0]
    rig["log"].unlink()
    each = make_plan(rig["tmp"], mkfs_each_run=True)
    runner = runner_for(rig, each)
    assert [runner.run_one(s).mkfs for s in each.runs] == ["fresh", "fresh"]


def test_a_failed_mkfs_is_a_harness_error_and_still_disconnects(rig: dict[str, Any]) -> None:
    """mkfs exiting non-zero fails the run at step mkfs; nbd-client -d still runs and the
    next run formats again."""
    rig["install"](fail="mkfs.ext4")
    plan = make_plan(rig["tmp"])
    runner = runner_for(rig, plan)
    record = runner.run_one(plan.runs[0])
    assert record.status == "error" and record.failed_step == "mkfs"
    assert "exited 3" in record.error and "injected failure" in record.error
    assert tool_calls(rig)[-1].startswith("nbd-client -d")
    rig["install"]()
    assert runner.run_one(plan.runs[1]).mkfs == "fresh"


def test_a_hanging_step_times_out_as_a_harness_error(rig: dict[str, Any]) -> None:
    """A mount that never returns is killed at its timeout and named in the error."""
    rig["install"](slow="mount")
    plan = make_plan(rig["tmp"], timeouts={"mount": 0.5})
    started = time.monotonic()
    record = runner_for(rig, plan).run_one(plan.runs[0])
    assert time.monotonic() - started < 8
    assert record.failed_step == "mount" and "did not finish in 0.5 s" in record.error


def test_stable_writes_that_does_not_take_fails_the_run(
    rig: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If stable_writes reads back another value, the run fails before mkfs."""
    monkeypatch.setattr(guest, "_sysfs_write", lambda path, value: 0)
    plan = make_plan(rig["tmp"])
    record = runner_for(rig, plan).run_one(plan.runs[1])
    assert record.failed_step == "stable_writes"
    assert "wrote 1 but it reads 0" in record.error
    assert not any(c.startswith("mkfs") for c in tool_calls(rig))


def test_a_failed_umount_wedges_the_device_for_later_runs(rig: dict[str, Any]) -> None:
    """If teardown cannot unmount, later runs are skipped with the reason, not attempted."""
    rig["install"](fail="umount")
    plan = make_plan(rig["tmp"])
    runner = runner_for(rig, plan)
    assert runner.run_one(plan.runs[0]).failed_step == "umount"
    second = runner.run_one(plan.runs[1])
    assert second.failed_step == "skipped" and plan.runs[0].id in (second.error or "")


def test_run_step_failure_and_timeout_are_step_errors() -> None:
    """run_step names the step and the exit status, or the timeout, in one line."""
    lines: list[str] = []
    with pytest.raises(StepError, match=r"^x: sh exited 3: boom$"):
        run_step(lines.append, "x", ["sh", "-c", "echo boom; exit 3"], 10)
    with pytest.raises(StepError, match=r"did not finish in 0\.2 s"):
        run_step(lines.append, "y", ["sleep", "5"], 0.2)
    with pytest.raises(StepError, match="cannot run"):
        run_step(lines.append, "z", ["/nonexistent/tool"], 1)


def test_nbdkit_and_nbd_client_argv(tmp_path: Path) -> None:
    """nbdkit serves the plugin on the plan's socket with its report dir and device params;
    nbd-client uses 4 KiB blocks and no request timeout (a timeout would resend writes)."""
    plan = make_plan(tmp_path)
    argv = nbdkit_argv(plan, tmp_path / "device")
    assert argv[:6] == [
        "nbdkit",
        "--exit-with-parent",
        "--unix",
        plan.socket,
        "--foreground",
        "python",
    ]
    assert argv[6] == plan.plugin
    assert {"size=512M", "write-latency=2ms", "seed=5", f"report={tmp_path / 'device'}"} <= set(
        argv
    )
    client = nbd_client_argv(plan.connect_target(0), "/dev/nbd0", export="ext4-sw0-pwrite")
    assert client == ["nbd-client", "-N", "ext4-sw0-pwrite", "-unix", plan.socket, "/dev/nbd0",
                      "-b", "4096"]  # fmt: skip
    assert "-t" not in client
    host = dataclasses.replace(plan, device_location="host", nbd_ports=[10809, 10810])
    assert nbd_client_argv(host.connect_target(1), "/dev/nbd0") == [
        "nbd-client", "10.0.2.100", "10810", "/dev/nbd0", "-b", "4096"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match="no forward left"):
        host.connect_target(2)


class AliveProc:
    """A stand-in for a running nbdkit process."""

    returncode = None

    def poll(self) -> None:
        """Still running."""


def test_device_report_is_collected_per_connection(tmp_path: Path) -> None:
    """A run takes the report of the connection named after it and only that connection's
    events, each with run_time_s from the workload's start on the device clock."""
    plan = make_plan(tmp_path, timeouts={"summary": 2.0})
    report = tmp_path / "device"
    report.mkdir()
    server = DeviceServer(plan, report, lambda message: None)
    server.proc = AliveProc()  # type: ignore[assignment]
    for n, (export, opened) in enumerate([("a", 1.0), ("b", 10.0), ("b", 30.0)], start=1):
        write_json(report / f"connection-{n}.json", ConnectionReport(
            schema=CONNECTION_SCHEMA, version="0", started="", seed=1, settings={},
            connection=n, export=export, opened_s=opened, closed_s=opened + 1, writes=n,
            counts={"torn_write": n},
        ))  # fmt: skip
    with (report / "events.jsonl").open("w") as f:
        for conn, t in [(1, 5.0), (2, 20.0), (3, 40.0), (3, 41.0)]:
            f.write(json.dumps({"event": "torn_write", "time": t, "connection": conn}) + "\n")
    run = tmp_path / "r"
    run.mkdir()
    split = server.collect("b", run, 500.0, 502.0)
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    assert [e["run_time_s"] for e in events] == [8.0, 9.0]  # connection 3: the last "b"
    assert split.counts == {"torn_write": 3}
    assert split.run_split is not None and split.run_split.events == 2
    assert json.loads((run / "summary.json").read_text())["writes"] == 3


def test_a_run_without_a_connection_report_times_out(tmp_path: Path) -> None:
    """If the device never writes the connection's report, collect() fails at step summary."""
    plan = make_plan(tmp_path, timeouts={"summary": 0.3})
    (tmp_path / "device").mkdir()
    server = DeviceServer(plan, tmp_path / "device", lambda message: None)
    server.proc = AliveProc()  # type: ignore[assignment]
    with pytest.raises(StepError, match=r"^summary: "):
        server.collect("x", tmp_path, None, None)


def test_reporter_pads_then_emits_marker_lines(tmp_path: Path) -> None:
    """The first console line is padding (guests can lose the first bytes), then markers."""
    stream = io.StringIO()
    Reporter(tmp_path / "g.log", stream).emit("hello", kernel="k")
    lines = stream.getvalue().splitlines()
    assert lines[0] == ""
    assert parse_marker(lines[1]) == {"event": "hello", "t": pytest.approx(0, abs=1), "kernel": "k"}


# --- the host side: vng, watchdog, outcomes ----------------------------------------------------


def kernel() -> Kernel:
    """A packaged-kernel description (the file need not exist)."""
    return Kernel(
        "6.1.0-57-amd64",
        Path("/boot/vmlinuz-6.1.0-57-amd64"),
        Path("/lib/modules/6.1.0-57-amd64"),
        "debian",
    )


def test_vng_argv_boots_the_kernel_with_out_shared(tmp_path: Path) -> None:
    """vng gets the image, the rwdir, 9p, the boot trimming and --disable-kvm under TCG; the
    guest command survives vng's shell quoting."""
    plan = make_plan(tmp_path)
    command = guest_argv("nbdfork.experiments.matrix.guest", Path(plan.out) / "plan.json",
                         venv=plan.venv, python=plan.python)
    argv = vng_argv(VMConfig(kernel(), "tcg", vng="/venv/bin/vng"), Path(plan.out), command)
    assert argv[:3] == ["/venv/bin/vng", "--run", "/boot/vmlinuz-6.1.0-57-amd64"]
    assert argv[argv.index("--rwdir") + 1] == plan.out
    assert "--force-9p" in argv and "--disable-kvm" in argv
    assert f"module_blacklist={','.join(BOOT_TRIM_MODULES)}" in argv[argv.index("--append") + 1]
    assert "nbd" not in BOOT_TRIM_MODULES and "xfs" not in BOOT_TRIM_MODULES
    assert shlex.split(argv[argv.index("--exec") + 1]) == command
    assert command[-3:] == ["nbdfork.experiments.matrix.guest", "--plan", f"{plan.out}/plan.json"]
    assert f"VIRTUAL_ENV={sys.prefix}" in command
    kvm = vng_argv(VMConfig(kernel(), "kvm"), Path(plan.out), command)
    assert "--disable-kvm" not in kvm


def test_parse_marker_finds_the_event_after_garbage() -> None:
    """Lost or garbled leading bytes do not hide a progress event; non-events are None."""
    assert parse_marker(f"md64{MARKER}" + '{"event": "hello"}') == {"event": "hello"}
    assert parse_marker("plain console line") is None
    assert parse_marker(MARKER + "{not json") is None
    assert parse_marker(MARKER + '{"no": "event"}') is None


def fake_vng(tmp_path: Path, body: str) -> list[str]:
    """A 'vng' that is a Python script printing guest markers."""
    script = tmp_path / "fake_vng.py"
    script.write_text(
        "import json, sys, time\n"
        f"def say(**e): print({MARKER!r} + json.dumps(e), flush=True)\n" + body
    )
    return [sys.executable, str(script)]


TIMEOUTS = {"boot": 10.0, "startup": 10.0, "run": 10.0, "shutdown": 10.0}


def test_run_vm_records_phases_and_exit(tmp_path: Path) -> None:
    """A guest that says hello, ready, runs one config and done: marks and status recorded."""
    argv = fake_vng(
        tmp_path,
        "say(event='hello', kernel='k'); say(event='ready')\n"
        "say(event='run-start', id='a', seconds=0)\n"
        "say(event='run-end', id='a', status='ok')\n"
        "print('kernel says hi', file=sys.stderr)\n"
        "say(event='done'); sys.exit(0)\n",
    )
    seen: list[str] = []
    vm = run_vm(
        argv,
        log_path=tmp_path / "vm.log",
        timeouts=TIMEOUTS,
        on_event=lambda e: seen.append(e["event"]),
        env={},
    )
    assert vm.lost is None and vm.returncode == 0 and vm.finished
    assert seen == ["hello", "ready", "run-start", "run-end", "done"]
    assert set(vm.run_marks["a"]) == {"start", "end"}
    assert "console: kernel says hi" in (tmp_path / "vm.log").read_text()


def test_a_silent_guest_is_lost_at_the_phase_deadline(tmp_path: Path) -> None:
    """No progress within the phase's deadline kills the VM: vm_lost naming the phase."""
    argv = fake_vng(
        tmp_path,
        "say(event='hello'); say(event='ready')\n"
        "say(event='run-start', id='x', seconds=0); time.sleep(60)\n",
    )
    started = time.monotonic()
    vm = run_vm(argv, log_path=tmp_path / "vm.log", env={}, timeouts={**TIMEOUTS, "run": 0.5})
    assert time.monotonic() - started < 30
    assert vm.lost is not None and "run x" in vm.lost
    assert vm.returncode is not None  # killed and reaped, not left running


def test_a_vm_that_dies_mid_run_is_lost_with_the_console_tail(tmp_path: Path) -> None:
    """The VM exiting before `done` is vm_lost, naming the run and the console's last line."""
    argv = fake_vng(
        tmp_path,
        "say(event='hello'); say(event='ready')\n"
        "say(event='run-start', id='y', seconds=0)\n"
        "print('Kernel panic - not syncing', file=sys.stderr)\n"
        "sys.exit(1)\n",
    )
    vm = run_vm(argv, log_path=tmp_path / "vm.log", timeouts=TIMEOUTS, env={})
    assert vm.lost is not None and "during y" in vm.lost and "Kernel panic" in vm.lost


def test_an_early_boot_panic_is_booted_again_once(tmp_path: Path) -> None:
    """A kernel panic before the guest said hello boots the VM again (nothing of the run had
    happened); the panic is kept. A second early panic, or one after hello, is final."""
    counter = tmp_path / "boots"
    body = (
        f"from pathlib import Path; c = Path({str(counter)!r})\n"
        "n = int(c.read_text()) + 1 if c.exists() else 1; c.write_text(str(n))\n"
        "if n <= PANICS:\n"
        "    print('Kernel panic - not syncing: Fatal exception in interrupt', file=sys.stderr)\n"
        "    sys.exit(255)\n"
        "say(event='hello'); say(event='ready'); say(event='done'); sys.exit(0)\n"
    )
    argv = fake_vng(tmp_path, "PANICS = 1\n" + body)
    vm = run_vm(argv, log_path=tmp_path / "vm.log", timeouts=TIMEOUTS, env={})
    assert vm.finished and vm.lost is None and counter.read_text() == "2"
    assert len(vm.boot_panics) == 1 and "Fatal exception" in vm.boot_panics[0]
    assert (tmp_path / "vm.log").read_text().count("$ ") == 2
    counter.unlink()
    argv = fake_vng(tmp_path, "PANICS = 2\n" + body)
    vm = run_vm(argv, log_path=tmp_path / "vm2.log", timeouts=TIMEOUTS, env={})
    assert vm.lost is not None and "did not boot" in vm.lost and counter.read_text() == "2"
    counter.unlink()
    vm = run_vm(argv, log_path=tmp_path / "vm3.log", timeouts=TIMEOUTS, env={}, boot_retries=0)
    assert vm.lost is not None and counter.read_text() == "1" and vm.boot_panics == []


def test_a_vm_that_fails_to_start_is_not_booted_again(tmp_path: Path) -> None:
    """No kernel panic on the console (qemu refused its options, say): one attempt only."""
    counter = tmp_path / "boots"
    argv = fake_vng(tmp_path, f"open({str(counter)!r}, 'a').write('x')\n"
                    "print('qemu: bad option', file=sys.stderr); sys.exit(1)\n")  # fmt: skip
    vm = run_vm(argv, log_path=tmp_path / "vm.log", timeouts=TIMEOUTS, env={})
    assert vm.lost is not None and counter.read_text() == "x" and vm.boot_panics == []


def test_outcomes() -> None:
    """passed / violations from the counts; harness_error from a failed step; a run without
    a result takes the reason given (vm_lost when the VM died)."""
    ok = RunRecord(status="ok")
    assert outcome_of(ok, {"torn": 0, "stale": 0, "overlapping": 0}) == (Outcome.PASSED, None)
    assert outcome_of(ok, {"torn": 3, "stale": 0})[0] is Outcome.VIOLATIONS
    failed = RunRecord(status="error", error="mkfs: exited 1")
    assert outcome_of(failed, {"torn": 9}) == (Outcome.HARNESS_ERROR, "mkfs: exited 1")
    assert outcome_of(None, {}, (Outcome.VM_LOST, "gone")) == (Outcome.VM_LOST, "gone")
    assert outcome_of(None, {})[0] is Outcome.HARNESS_ERROR


def write_run_files(out: Path, spec: RunSpec, torn: int) -> None:
    """The files a completed run leaves (result, split summary, workload summary)."""
    run_dir = out / "runs" / spec.id
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "result.json").write_text(
        json.dumps(
            {
                "status": "ok",
                "kernel": "6.1.0-57-amd64",
                "mkfs": "fresh",
                "cpu": None,
                "durations": {"setup_s": 1.0, "workload_s": 5.0, "teardown_s": 0.5},
            }
        )
    )
    write_json(run_dir / "summary.json", ConnectionReport(
        schema=CONNECTION_SCHEMA, version="0", started="", seed=1, settings={}, connection=1,
        export=spec.id, opened_s=0.0, closed_s=6.0, writes=100, stamped_pages=80,
        counts={"torn_write": torn, "stale_write": 0, "overlapping_write": 0},
    ))  # fmt: skip
    (run_dir / "workload.json").write_text(
        json.dumps(
            {
                "writer_ops": 50,
                "writer_latency_ms": {"p50": 0.1, "p99": 2.0, "p999": 3.0, "max": 4.0},
                "writer_latency_hist": {"edges_ms": [0.1, 1.0, 10.0], "counts": [40, 10]},
            }
        )
    )


def test_report_json_has_the_agreed_shape(tmp_path: Path) -> None:
    """report.json carries every field the renderer reads, per run from the run's files; a
    run the VM never reached is vm_lost with the reason."""
    plan = make_plan(tmp_path)
    out = Path(plan.out)
    write_run_files(out, plan.runs[0], torn=4)
    runs = run_records(plan, kernel="6.1.0-57-amd64", missing=(Outcome.VM_LOST, "the VM exited"))
    report = build_report(
        plan,
        runs,
        kernel="6.1.0-57-amd64",
        accel="tcg",
        started=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        duration_s=100.0,
        harness=HarnessTimings(boot_s=30.0, per_config_overhead_s=(2.0,)),
        versions={"nbdfork": "0.1.0", "nbdkit": "1.32.5", "python": "3.11"},
    )
    first, second = report.runs
    assert report.schema == "nbdfork.run/1" and report.seed == 11
    assert first.id == "ext4-sw0-pwrite" and first.dir == "runs/ext4-sw0-pwrite"
    assert (first.torn, first.stamped_pages, first.writes) == (4, 80, 100)
    assert first.outcome == "violations" and first.writer_latency_ms.p99 == 2.0
    assert first.mkfs_options == ("-F", "-q", "-b", "4096")
    assert first.device == {"size": "512M", "write-latency": "2ms", "seed": "5"}
    assert (second.outcome, second.error) == ("vm_lost", "the VM exited")
    parsed = load_report(write_report(report, tmp_path / "report.json"))
    assert parsed == report
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["runs"][0]["mkfs_options"] == ["-F", "-q", "-b", "4096"]
    assert [r["outcome"] for r in written["runs"]] == ["violations", "vm_lost"]


def test_run_record_reads_a_harness_error_from_result_json(tmp_path: Path) -> None:
    """A run whose result.json says error is harness_error with that message."""
    plan = make_plan(tmp_path)
    spec = plan.runs[0]
    run_dir = Path(plan.out) / "runs" / spec.id
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps({"status": "error", "error": "mount: boom"}))
    record = run_record(spec, Path(plan.out), kernel="k", device={})
    assert (record.outcome, record.error) == ("harness_error", "mount: boom")
    assert record.writer_latency_ms.p99 is None


def test_each_run_records_the_parameters_its_own_devices_had_alone(tmp_path: Path) -> None:
    """`--device-param 1:...` reaches the runs of a two-device stack, not the one-device
    runs (they have no device 1), and survives writing and reading report.json."""
    runs = build_runs(filesystems=["ext4"], stable_writes=[0], workloads=["pwrite"],
                      seconds=1.0, seed=11, stacks=parse_stacks("btrfs,md-raid1"))  # fmt: skip
    damaged = {"1": {"corrupt-op": "write", "corrupt-probability": "0.02"}}
    plan = make_plan(tmp_path, runs, device_overrides=damaged)
    btrfs, md = run_records(plan, kernel="k")
    assert (btrfs.stack, btrfs.device_overrides) == ("btrfs", {})
    assert (md.stack, md.device_overrides) == ("md-raid1", damaged)
    report = build_report(plan, (btrfs, md), kernel="k", accel="tcg",
                          started=dt.datetime(2026, 1, 1, tzinfo=dt.UTC), duration_s=1.0,
                          harness=HarnessTimings(boot_s=1.0, per_config_overhead_s=()),
                          versions={})  # fmt: skip
    assert load_report(write_report(report, tmp_path / "report.json")).runs[1] == md


# --- plans and seeds -------------------------------------------------------------------------


def test_plan_round_trips_and_seeds_do_not_depend_on_the_matrix(tmp_path: Path) -> None:
    """plan.json reads back equal; a run's seed depends on the master seed and its id only."""
    plan = make_plan(tmp_path)
    path = tmp_path / "plan.json"
    plan.write(path)
    assert Plan.read(path) == plan
    small = build_runs(
        filesystems=["xfs"], stable_writes=[1], workloads=["pwrite"], seconds=1, seed=11
    )
    big = build_runs(
        filesystems=["ext4", "xfs"], stable_writes=[0, 1], workloads=["pwrite"], seconds=1, seed=11
    )
    assert small[0].seed == next(r.seed for r in big if r.id == "xfs-sw1-pwrite")
    assert derive_seed(11, "a") != derive_seed(12, "a")
    assert len({r.stream_base for r in big}) == 4
    assert run_id("ext4", 0, "pwrite") == "ext4-sw0-pwrite"


def test_bad_options_are_one_line_config_errors(tmp_path: Path) -> None:
    """Each bad option raises ConfigError naming it, before any VM starts."""
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filesystems": ("ext5",)}, "--fs"),
        ({"stable_writes": (2,)}, "--stable-writes"),
        ({"workloads": ("fio",)}, "--workload"),
        ({"seconds": 0.0}, "--seconds"),
        ({"seed": -1}, "--seed"),
        ({"device": {"size": "512M", "write-latency": "x"}}, "write"),
        ({"device": {"size": "1M", "report": "/x"}}, "--device"),
        ({"workload_options": {"bogus": 1}}, "workload option"),
        ({"no_vm": True, "kernel": "6.12"}, "--no-vm"),
        ({"sysctls": {"no dots": "1"}}, "--sysctl"),
    ]
    for overrides, name in cases:
        with pytest.raises(ConfigError, match=name):
            RunOptions(out=tmp_path, **overrides).validate()


# --- kernels and accelerators ----------------------------------------------------------------


def fake_bzimage(path: Path, release: str) -> Path:
    """A file with an x86 setup header whose kernel_version string is `release ...`."""
    data = bytearray(0x1000)
    data[0x202:0x206] = b"HdrS"
    data[0x20E:0x210] = (0x400).to_bytes(2, "little")
    text = f"{release} (builder@host) #1 SMP".encode()
    data[0x600 : 0x600 + len(text)] = text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def fake_modules(root: Path, release: str, names: list[str]) -> Path:
    """ROOT/lib/modules/RELEASE with a modules.dep listing `names`."""
    tree = root / "lib" / "modules" / release
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text("".join(f"kernel/x/{n}.ko.xz:\n" for n in names))
    return tree


def test_packaged_kernels_default_to_6_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 6.1 and 6.12 installed the default is 6.1; `6.12` and a full release select; a
    kernel neither installed nor fetched names the fetch command."""
    monkeypatch.setenv("NBDFORK_KERNEL_CACHE", str(tmp_path / "empty-cache"))
    boot = tmp_path / "boot"
    for release in ("6.1.0-57-amd64", "6.12.9-amd64", "6.1.0-40-amd64"):
        fake_bzimage(boot / f"vmlinuz-{release}", release)
        fake_modules(tmp_path, release, ["nbd", "ext4", "xfs"])
    where = {"boot": boot, "modules_root": tmp_path / "lib" / "modules"}
    assert [k.release for k in installed_kernels(**where)] == [
        "6.12.9-amd64",
        "6.1.0-57-amd64",
        "6.1.0-40-amd64",
    ]
    assert find_kernel(None, **where).release == "6.1.0-57-amd64"
    assert find_kernel("6.12", **where).release == "6.12.9-amd64"
    assert find_kernel("6.1.0-40-amd64", **where).release == "6.1.0-40-amd64"
    with pytest.raises(ConfigError, match=r"'6\.6' is neither installed .* nor fetched: run "
                       r"`nbdfork kernel fetch 6\.6`"):
        find_kernel("6.6", **where)


def test_a_user_kernel_finds_its_modules_above_the_image(tmp_path: Path) -> None:
    """PREFIX/boot/bzImage finds PREFIX/lib/modules/RELEASE; the release is read from the
    image header; a tree without nbd is refused naming it."""
    image = fake_bzimage(tmp_path / "boot" / "bzImage", "6.13.0-rc1+")
    fake_modules(tmp_path, "6.13.0-rc1+", ["nbd", "xfs"])
    found = find_kernel(str(image))
    assert (found.release, found.source) == ("6.13.0-rc1+", "user")
    assert found.modules == tmp_path / "lib" / "modules" / "6.13.0-rc1+"
    assert image_release(image) == "6.13.0-rc1+"
    with pytest.raises(ConfigError, match="has no ext4 module"):
        validate_kernel(found, needs=["nbd", "ext4"])
    with pytest.raises(ConfigError, match="not an x86 bzImage"):
        find_kernel(str(fake_modules(tmp_path / "x", "r", []) / "modules.dep"))


def fake_qemu(tmp_path: Path, body: str) -> str:
    """An executable standing in for qemu-system-x86_64."""
    path = tmp_path / "qemu"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


def test_kvm_is_used_only_when_a_test_boot_works(tmp_path: Path) -> None:
    """The accelerator comes from a bounded test boot: panic reached -> kvm; crash or hang
    -> tcg within the timeout; the verdict is cached."""
    kvm = tmp_path / "kvm"
    kvm.write_text("")
    image = fake_bzimage(tmp_path / "bzImage", "6.1.0")
    common = {"kvm_device": kvm, "cache": tmp_path / "accel.json", "timeout": 1.0}
    good = fake_qemu(tmp_path, "echo 'Kernel panic - not syncing: No working init found'")
    assert detect_accel(image, qemu=good, **common)[0] == "kvm"  # type: ignore[arg-type]
    (tmp_path / "accel.json").unlink()
    crash = fake_qemu(tmp_path, "echo 'kvm_buf_set_msrs: Assertion failed' >&2; exit 134")
    accel, why = detect_accel(image, qemu=crash, **common)  # type: ignore[arg-type]
    assert accel == "tcg" and "Assertion" in why
    accel, why = detect_accel(image, qemu=crash, **common)  # type: ignore[arg-type]
    assert why.endswith("(cached)")
    (tmp_path / "accel.json").unlink()
    started = time.monotonic()
    hang = fake_qemu(tmp_path, "exec sleep 30")
    accel, why = detect_accel(image, qemu=hang, **common)  # type: ignore[arg-type]
    assert accel == "tcg" and "did not finish" in why and time.monotonic() - started < 10
    assert detect_accel(image, qemu=good, requested="tcg")[0] == "tcg"
    missing = {**common, "kvm_device": tmp_path / "nokvm"}
    assert detect_accel(image, qemu=good, **missing)[0] == "tcg"  # type: ignore[arg-type]


# --- the CLI ---------------------------------------------------------------------------------


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse `nbdfork run ARGV` with only the run subcommand registered."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    RUN.register(sub)
    args = parser.parse_args(["run", *argv])
    return argparse.Namespace(**{**vars(args), **parse_args(RUN.options, args)})


def test_cli_options_become_run_options() -> None:
    """Comma lists, --device pairs on top of the defaults, and workload knobs."""
    args = parse(
        [
            "--fs",
            "xfs,ext4",
            "--stable-writes",
            "1",
            "--workload",
            "pwrite,mmap",
            "--seconds",
            "3",
            "--seed",
            "9",
            "--device",
            "write-latency=5ms",
            "--out",
            "/tmp/o",
            "--pages",
            "16",
        ]
    )
    options = run_command.options_from_args(args)
    assert options.filesystems == ("xfs", "ext4") and options.stable_writes == (1,)
    assert options.workloads == ("pwrite", "mmap") and options.seed == 9
    assert options.device == {"size": "512M", "write-latency": "5ms"}
    assert options.workload_options["pages"] == 16
    defaults = run_command.options_from_args(parse([]))
    assert defaults.filesystems == ("ext4", "xfs") and defaults.stable_writes == (0, 1)
    with pytest.raises(ConfigError, match="--device"):
        parse(["--device", "novalue"])


def report_with(*outcomes: str) -> MatrixReport:
    """A minimal report whose runs have these outcomes."""
    runs = [
        {
            "id": f"r{i}", "kernel": "k", "fs": "ext4", "mkfs_options": [], "stable_writes": 0,
            "workload": "pwrite", "seconds": 1.0, "writes": 2, "stamped_pages": 2, "torn": 1,
            "stale": 0, "overlapping": 0, "writer_ops": 3, "outcome": o,
            "error": None if o in ("passed", "violations") else "x", "seed": 1, "device": {},
            "durations": {}, "dir": f"runs/r{i}", "writer_latency_hist": {},
            "writer_latency_ms": {"p50": 0.1, "p99": 1.0, "p999": None, "max": None},
        }
        for i, o in enumerate(outcomes)
    ]  # fmt: skip
    return msgspec.convert({"kernel": "k", "accel": "tcg", "seed": 1, "started": "",
                            "duration_s": 1.0, "versions": {}, "runs": runs,
                            "harness": {"boot_s": 1.0, "per_config_overhead_s": []}},
                           MatrixReport)  # fmt: skip


def test_exit_status_types_the_outcome() -> None:
    """0 when all ran (violations are results), 1 only with --fail-on-violation, VMError for a
    harness error, VMLost for a lost VM."""
    exit_status = run_command._exit_status
    assert exit_status(report_with("passed", "violations"), False) == 0
    assert exit_status(report_with("passed", "violations"), True) == 1
    with pytest.raises(VMError, match="1 of 2 configurations did not complete"):
        exit_status(report_with("passed", "harness_error"), False)
    with pytest.raises(VMLost):
        exit_status(report_with("vm_lost", "harness_error"), False)


def test_results_table_has_a_row_per_run() -> None:
    """The end-of-run table shows torn/stamped and latencies per configuration."""
    table = run_command.results_table(report_with("passed", "violations"))
    assert table.row_count == 2
    assert [c.header for c in table.columns][:3] == ["run", "outcome", "torn/stamped"]


def test_overhead_per_configuration_does_not_count_a_skipped_workload(tmp_path: Path) -> None:
    """Overhead is a configuration's wall time beyond its workload: a run whose workload was
    skipped (no atomic unit, say) spent no workload seconds, so none are subtracted."""
    from types import SimpleNamespace  # noqa: PLC0415

    from nbdfork.experiments.matrix.session import RunSession  # noqa: PLC0415
    from nbdfork.harness.boot import VMRun  # noqa: PLC0415

    plan = make_plan(tmp_path)
    ran, skipped = plan.runs
    for spec, workload_s in ((ran, 5.3), (skipped, 0.02)):
        run_dir = Path(plan.out) / "runs" / spec.id
        run_dir.mkdir(parents=True)
        (run_dir / "result.json").write_text(json.dumps({"durations": {"workload_s": workload_s}}))
    vm = VMRun(marks={"hello": 10.0, "ready": 20.0},
               run_marks={ran.id: {"start": 20.0, "end": 27.0},
                          skipped.id: {"start": 27.0, "end": 28.5}})  # fmt: skip
    runs = run_records(plan, kernel="k")
    harness = RunSession._harness(SimpleNamespace(vm=vm, host=None), plan, runs)  # type: ignore[arg-type]
    assert harness.per_config_overhead_s == (2.0, 1.48)
    assert (harness.boot_s, harness.vm_boot_s, harness.device_start_s) == (20.0, 10.0, 10.0)
