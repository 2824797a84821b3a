"""The in-guest script: run a whole plan on the kernel it runs on, one configuration at a time.

    python -m nbdfork.experiments.matrix.guest --plan OUT/plan.json

It loads nbd and the filesystems, starts one nbdkit with the nbdfork plugin on a unix socket
for the whole plan (starting the plugin's Python under TCG costs tens of seconds, so it is paid
once), and then per configuration: nbd-client, stable_writes set and read back BEFORE mkfs and
mount, mkfs, mount, the workload, sync, umount, nbd-client -d, and the device's events and
summary for that connection cut out into OUT/runs/<id>/. Every external step has a timeout; a
failed step is that run's harness error, never a hang. Progress goes to stdout as
`@@nbdfork {json}` lines for the host; OUT/guest.log and OUT/runs/<id>/guest.log keep the detail.
The same script serves `nbdfork run --no-vm` on a host kernel that has nbd.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from nbdfork.device.summary import ConnectionReport
from nbdfork.errors import ConfigError
from nbdfork.experiments.matrix.plan import STACK_MODULES, Plan, RunSpec
from nbdfork.experiments.matrix.record import RunRecord
from nbdfork.experiments.matrix.stackrun import StackRun
from nbdfork.experiments.stacks.results import LayerReport
from nbdfork.files import write_json
from nbdfork.harness.guest import (
    Reporter,
    cpu_sample,
    cpu_usage,
    link_modules,
    nbd_client_argv,
    network_up,
    now_iso,
    uptime_s,
)
from nbdfork.harness.guestdevice import DeviceServer
from nbdfork.harness.hostdevice import GUEST_SYSCTLS_FILE
from nbdfork.harness.protocol import CONNECTS_PER_RUN
from nbdfork.harness.steps import DEFAULT_TIMEOUTS, StepError, run_step

__all__ = ["RECORDED_SYSCTLS", "GuestRunner", "main"]

RECORDED_SYSCTLS = (
    "net.core.wmem_default", "net.core.wmem_max", "net.core.rmem_default", "net.core.rmem_max",
    "net.ipv4.tcp_wmem", "net.ipv4.tcp_rmem", "net.ipv4.tcp_notsent_lowat",
    "vm.dirty_ratio", "vm.dirty_background_ratio", "vm.dirty_expire_centisecs",
    "vm.dirty_writeback_centisecs",
)  # fmt: skip
"""Read back after the plan's sysctls are set and recorded in report.json: the socket buffers
that shape the tear window, and the writeback timers."""


def _sysfs_write(path: Path, value: int) -> int:
    """Write `value` to a sysfs attribute and return what it reads back."""
    try:
        path.write_text(f"{value}\n")
        return int(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StepError("stable_writes", f"{path}: {exc}") from exc


class GuestRunner:
    """Runs the plan's configurations in order against one DeviceServer."""

    def __init__(
        self,
        plan: Plan,
        reporter: Reporter,
        *,
        server: DeviceServer | None = None,
        sys_root: Path = Path("/sys"),
    ) -> None:
        self.plan = plan
        self.out = Path(plan.out)
        self.reporter = reporter
        self.timeouts = {**DEFAULT_TIMEOUTS, **plan.timeouts}
        self.server = server or DeviceServer(plan, self.out / "device", reporter.log)
        self.wedged: str | None = None  # set when a failed teardown leaves nbd0 unusable
        self.device_fs: str | None = None  # the filesystem on the device, known good
        self.dev = Path(plan.nbd_device)
        self.sys_root = sys_root
        self.block = sys_root / "block" / self.dev.name
        self.queue = self.block / "queue"
        self.host_device = plan.device_location == "host"
        # nbd-client attempts so far, per device: each one uses up a host forward
        self._connects = [0] * max(1, plan.devices)
        self._stack: StackRun | None = None  # the current run's stack, when not plain

    def prepare(self) -> None:
        """Modules and, for a device in the guest, nbdkit starting while this process imports
        the workloads (numpy); for a device on the host, the network that leads to it."""
        self._link_modules()
        log = self.reporter.log
        self._apply_sysctls(log)  # before nbd-client creates its socket
        if self.host_device:
            self._network_up(log)
        else:
            self.server.start()  # first: loading the plugin is the longest step
        nbds = f"nbds_max={max(2, self.plan.devices)}"
        run_step(log, "modprobe", ["modprobe", "nbd", nbds], self.timeouts["modprobe"])
        stacks = {r.stack.partition(":")[0] for r in self.plan.runs}
        modules = sorted({r.fs for r in self.plan.runs if r.fs != "raw"} | {
            m for s in stacks for m in STACK_MODULES.get(s, ())})  # fmt: skip
        if modules:
            run_step(log, "modprobe", ["modprobe", "-a", *modules], self.timeouts["modprobe"])
        # Heavy (numpy): imported now so that it overlaps with nbdkit loading the plugin.
        import nbdfork.workloads  # noqa: F401, PLC0415

        if not self.host_device:
            self.server.wait_ready()

    def _network_up(self, log: Callable[[str], None]) -> None:
        network_up(log, self.sys_root, self.timeouts)

    def _apply_sysctls(self, log: Callable[[str], None]) -> None:
        """The plan's sysctls, e.g. net.core.wmem_default (the nbd socket's send buffer)."""
        for key, value in self.plan.sysctls.items():
            path = self.sys_root.parent / "proc" / "sys" / key.replace(".", "/")
            try:
                path.write_text(f"{value}\n")
                got = path.read_text().strip()
            except OSError as exc:
                raise StepError("sysctl", f"{key}: {exc.strerror}") from exc
            log(f"sysctl {key}={value} (reads {got})")
        values = {}
        for key in RECORDED_SYSCTLS:
            with contextlib.suppress(OSError):
                path = self.sys_root.parent / "proc" / "sys" / key.replace(".", "/")
                values[key] = " ".join(path.read_text().split())
        write_json(self.out / GUEST_SYSCTLS_FILE, values)

    def _link_modules(self) -> None:
        link_modules(self.plan.modules_dir)

    def run_all(self) -> None:
        """Every configuration; a failure is recorded in its result.json and the plan goes on."""
        for index, spec in enumerate(self.plan.runs):
            self.reporter.emit("run-start", id=spec.id, index=index, seconds=spec.seconds)
            record = self.run_one(spec)
            self.reporter.emit("run-end", id=spec.id, **record.summary())

    def run_one(self, spec: RunSpec) -> RunRecord:
        """One configuration, start to finish; returns (and writes) its result.json."""
        run_dir = self.out / "runs" / spec.id
        run_dir.mkdir(parents=True, exist_ok=True)
        record = RunRecord(
            id=spec.id,
            kernel=os.uname().release,
            started=now_iso(),
            stable_writes=spec.stable_writes,
            mkfs_argv=[*spec.mkfs, self.plan.nbd_device],
            mount_options=list(spec.mount_options),
        )
        log_file = (run_dir / "guest.log").open("a", buffering=1, encoding="utf-8")
        t0 = time.monotonic()

        def log(message: str) -> None:
            log_file.write(f"{time.monotonic() - t0:8.3f} {message}\n")
            self.reporter.log(f"[{spec.id}] {message}")

        try:
            self._run_phases(spec, run_dir, record, log)
        finally:
            log_file.close()
            write_json(run_dir / "result.json", record)
        return record

    def _run_phases(
        self, spec: RunSpec, run_dir: Path, record: RunRecord, log: Callable[[str], None]
    ) -> None:
        durations = record.durations
        connected = mounted = False
        phase_start = time.monotonic()
        origin: float | None = None
        try:
            if self.wedged:
                raise StepError("skipped", f"nbd device unusable since {self.wedged}")
            if not self.host_device:
                self.server.check_alive()
            connected, mounted = self._setup(spec, record, log)
            durations.setup_s = round(time.monotonic() - phase_start, 3)
            self.reporter.emit("workload-start", id=spec.id)
            phase_start = time.monotonic()
            origin = record.workload_wall = time.time()
            self._workload(spec, run_dir, record, log)
            durations.workload_s = round(time.monotonic() - phase_start, 3)
        except StepError as exc:
            record.fail(exc.step, str(exc))
            self.device_fs = None  # whatever is on the device now, the next run formats it
            log(f"FAILED {exc}")
        finally:
            phase_start = time.monotonic()
            self._teardown(
                spec, run_dir, record, log, connected=connected, mounted=mounted, origin=origin
            )
            durations.teardown_s = round(time.monotonic() - phase_start, 3)

    def _setup(
        self, spec: RunSpec, record: RunRecord, log: Callable[[str], None]
    ) -> tuple[bool, bool]:
        if spec.stack != "plain":
            self._stack = StackRun(self.plan, spec, self._connects, self.timeouts, self.sys_root)
            self.device_fs = None  # the stack's mkfs and teardown leave nbd0 to the next run
            self._stack.setup(record, log)
            return True, True
        t = self.timeouts
        self._connect(spec, log)
        record.connected_wall = time.time()
        self._wait_size(log)
        # stable_writes is copied into the superblock at mount: it must be set before mkfs/mount.
        kernel_value = int((self.queue / "stable_writes").read_text().strip())
        got = _sysfs_write(self.queue / "stable_writes", spec.stable_writes)
        record.layers = [LayerReport(self.plan.nbd_device, "nbd", self.dev.name, kernel_value, got)]
        record.stable_writes_read = got
        log(f"stable_writes: wrote {spec.stable_writes}, reads {got}")
        if got != spec.stable_writes:
            raise StepError("stable_writes", f"wrote {spec.stable_writes} but it reads {got}")
        if spec.fs == "raw":  # a fio job on the device itself: no filesystem
            self.device_fs = None
            return True, False
        self._mkfs(spec, record, log)
        Path(self.plan.mountpoint).mkdir(parents=True, exist_ok=True)
        options = ["-o", ",".join(spec.mount_options)] if spec.mount_options else []
        run_step(
            log,
            "mount",
            ["mount", "-t", spec.fs, *options, self.plan.nbd_device, self.plan.mountpoint],
            t["mount"],
        )
        shutil.rmtree(Path(self.plan.mountpoint) / "nbdfork", ignore_errors=True)
        after = int((self.queue / "stable_writes").read_text().strip())
        record.stable_writes_after_mount = after
        if after != spec.stable_writes:
            wanted = spec.stable_writes
            raise StepError("stable_writes", f"reads {after} after mount, wanted {wanted}")
        return True, True

    def _connect(self, spec: RunSpec, log: Callable[[str], None]) -> None:
        """nbd-client, retried: the device of the previous run can still be held for a moment
        after its disconnect ("Failed to setup device"). The export name is the run id: the
        device names the connection's report after it."""
        for attempt in range(1, CONNECTS_PER_RUN + 1):
            try:
                target = self.plan.connect_target(self._connects[0])
            except ConfigError as exc:
                raise StepError("connect", str(exc)) from None
            self._connects[0] += 1
            argv = nbd_client_argv(target, self.plan.nbd_device, export=spec.id)
            try:
                run_step(log, "connect", argv, self.timeouts["connect"])
                return
            except StepError:
                if attempt == CONNECTS_PER_RUN:
                    raise
                if not self.host_device:
                    self.server.check_alive()
                time.sleep(attempt * 0.5)

    def _wait_released(self, log: Callable[[str], None]) -> None:
        """After nbd-client -d: wait until the kernel drops the device's configuration (its
        `pid` attribute goes away), so that the next run can connect."""
        deadline = time.monotonic() + self.timeouts["release"]
        while (self.block / "pid").exists():
            if time.monotonic() > deadline:
                raise StepError("disconnect", f"{self.dev} still in use after nbd-client -d")
            time.sleep(0.05)

    def _mkfs(self, spec: RunSpec, record: RunRecord, log: Callable[[str], None]) -> None:
        """mkfs, unless the device already holds a good filesystem of this kind: the device
        outlives the connection, and stable_writes is captured at mount, not at mkfs (mkfs.xfs
        zeroes a 64 MiB log through the plugin, seconds under TCG)."""
        if not self.plan.mkfs_each_run and self.device_fs == spec.fs:
            record.mkfs = "reused"
            log(f"mkfs: reusing the {spec.fs} filesystem already on the device")
            return
        self.device_fs = None
        run_step(log, "mkfs", [*spec.mkfs, self.plan.nbd_device], self.timeouts["mkfs"])
        record.mkfs = "fresh"
        self.device_fs = spec.fs

    def _wait_size(self, log: Callable[[str], None]) -> None:
        size = self.block / "size"
        deadline = time.monotonic() + self.timeouts["sysfs"]
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                if int(size.read_text()) > 0:
                    return
            time.sleep(0.05)
        raise StepError("connect", f"{self.dev} has no size after nbd-client")

    def _fio(self, spec: RunSpec, run_dir: Path, log: Callable[[str], None]) -> None:
        """The run's fio job, unmodified, then fio's own read-back of it from the device
        (sync, caches dropped, --verify_only): both results in RUN/fio.json."""
        from nbdfork.workloads.fio import (  # noqa: PLC0415
            Kicker,
            fio_argv,
            fio_env,
            fio_outcome,
            run_phase,
        )

        job = Path(spec.workload_options["jobfile"])
        directory = None if spec.fs == "raw" else Path(self.plan.mountpoint) / "nbdfork"
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        env = fio_env(directory, self.plan.nbd_device)
        timeout = self.timeouts.get("fio", 900.0)
        phases: dict[str, Any] = {"job": str(job), "directory": str(directory or "")}
        for phase, only in (("write", False), ("verify", True)):
            output = run_dir / f"fio-{phase}.json"
            argv = fio_argv(job, directory=directory, device=self.plan.nbd_device,
                            output=output, verify_only=only)  # fmt: skip
            log(f"$ {' '.join(argv)}")
            kick = phase == "write" and spec.workload_options.get("kick") == "sync_file_range"
            kicker = Kicker(directory, self.plan.nbd_device) if kick else None
            with kicker or contextlib.nullcontext():
                phases[phase] = result = run_phase(argv, env, output, timeout)
            if kicker is not None:
                phases["kicks"] = kicker.kicks
            log(f"fio {phase}: exit {result['exit']}, jobs {result['jobs']}")
            if not result["jobs"]:
                write_json(run_dir / "fio.json", phases)
                raise StepError("fio", f"fio {phase} gave no result: {result['messages'][-1:]}")
            if phase == "write":
                os.sync()
                with contextlib.suppress(OSError):  # the read-back must come from the device
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
        phases["passed"] = fio_outcome(phases["verify"])
        write_json(run_dir / "fio.json", phases)
        write_json(run_dir / "workload.json", {
            "writer_latency_ms": phases["write"]["writer_latency_ms"],
            "writer_ops": sum(j["write_ios"] for j in phases["write"]["jobs"]),
            "config": {"jobfile": str(job)},
        })  # fmt: skip

    def _workload(
        self, spec: RunSpec, run_dir: Path, record: RunRecord, log: Callable[[str], None]
    ) -> None:
        if spec.workload == "fio":
            self._fio(spec, run_dir, log)
            return
        import numpy as np  # noqa: PLC0415  (the guest imports numpy after nbdkit started)

        from nbdfork.workloads import (  # noqa: PLC0415
            WorkloadConfig,
            WorkloadSkipped,
            run_workload,
        )

        options = dict(spec.workload_options)
        config = WorkloadConfig(
            directory=Path(self.plan.mountpoint) / "nbdfork",
            seconds=spec.seconds,
            seed=spec.seed,
            stream_base=spec.stream_base,
            **options,
        )
        log(f"workload {spec.workload} {config.as_dict()}")
        nbdkit = self.server.proc.pid if self.server.proc and not self.host_device else None
        before = cpu_sample(nbdkit)
        try:
            result = run_workload(spec.workload, config)
        except WorkloadSkipped as exc:
            record.status, record.error = "skipped", str(exc)
            log(f"workload skipped: {exc}")
            return
        except OSError as exc:
            raise StepError("workload", f"{exc}") from exc
        record.cpu = cpu_usage(before, cpu_sample(nbdkit))
        log(f"cpu during the workload: {record.cpu}")
        summary = result.summary()
        write_json(run_dir / "workload.json", summary)
        np.save(run_dir / "latency_ns.npy", result.samples_ns)
        log(f"workload done: {result.writer_ops} ops, latency {summary['writer_latency_ms']}")
        if result.error:
            raise StepError("workload", result.error)

    def _teardown(
        self,
        spec: RunSpec,
        run_dir: Path,
        record: RunRecord,
        log: Callable[[str], None],
        *,
        connected: bool,
        mounted: bool,
        origin: float | None,
    ) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            problem = stack.teardown(record, log)
            if problem:
                self.wedged = f"{spec.id} ({problem})"
                self._fail(record, StepError("teardown", problem), log)
            elif stack.connected and not self.host_device:
                try:
                    split = self._collect(spec, run_dir, record)
                    record.connection = split.connection
                except StepError as exc:
                    self._fail(record, exc, log)
            return
        t = self.timeouts
        steps: list[tuple[str, list[str], float]] = []
        if mounted:
            os.sync()
            steps.append(("umount", ["umount", self.plan.mountpoint], t["umount"]))
        if connected or self._nbd_busy():
            steps.append(
                ("disconnect", ["nbd-client", "-d", self.plan.nbd_device], t["disconnect"])
            )
        for step, argv, timeout in steps:
            try:
                run_step(log, step, argv, timeout)
                if step == "disconnect":
                    self._wait_released(log)
            except StepError as exc:
                self.wedged = f"{spec.id} ({exc})"
                self._fail(record, exc, log)
                return
        if connected and not self.host_device:  # a host device's reports are the host's
            try:
                split = self._collect(spec, run_dir, record)
                record.connection = split.connection
            except StepError as exc:
                self._fail(record, exc, log)

    def _nbd_busy(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return int((self.block / "size").read_text()) > 0
        return False

    def _collect(self, spec: RunSpec, run_dir: Path, record: RunRecord) -> ConnectionReport:
        """The run's share of the device's report (a device in the guest)."""
        return self.server.collect(spec.id, run_dir, record.connected_wall, record.workload_wall)

    @staticmethod
    def _fail(record: RunRecord, exc: StepError, log: Callable[[str], None]) -> None:
        log(f"FAILED {exc}")
        record.fail(exc.step, str(exc))


@contextlib.contextmanager
def _signals_to_exit() -> Iterator[None]:
    """SIGTERM (the host giving up) unwinds like Ctrl-C so nbdkit and mounts are cleaned up."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None, stream: IO[str] | None = None) -> int:
    """Run a plan: 0 when every configuration ran (whatever it found), 1 when any could not."""
    parser = argparse.ArgumentParser(prog="python -m nbdfork.experiments.matrix.guest")
    parser.add_argument("--plan", type=Path, required=True, help="plan.json written by the host")
    args = parser.parse_args(argv)
    plan = Plan.read(args.plan)
    out = Path(plan.out)
    reporter = Reporter(out / "guest.log", stream)
    reporter.emit("hello", kernel=os.uname().release, uptime_s=uptime_s(), started=now_iso())
    runner = GuestRunner(plan, reporter)
    status = 0
    with _signals_to_exit():
        try:
            runner.prepare()
            reporter.emit("ready", uptime_s=uptime_s())
            runner.run_all()
        except StepError as exc:
            reporter.emit("fatal", step=exc.step, error=str(exc))
            status = 1
        finally:
            code = runner.server.stop()
            reporter.emit("done", nbdkit_status=code, uptime_s=uptime_s())
            reporter.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
