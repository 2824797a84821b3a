"""One `nbdfork run`: options -> plan -> one boot (or the host kernel) -> report.json.

`RunSession.prepare()` validates everything that can be checked before a VM starts (options,
device parameters, kernel, modules, accelerator) so that bad input costs no boot;
`RunSession.execute()` runs the plan and writes OUT/report.json, then lets the renderer (if
installed) write report.md/html and plots beside it.
"""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from nbdfork import IMPORT_ROOT, PACKAGE, PLUGIN
from nbdfork.config import parse_params
from nbdfork.errors import ConfigError, NbdforkError
from nbdfork.experiments.matrix.experiment import OPTIONS
from nbdfork.experiments.matrix.plan import (
    CONNECTS_PER_RUN,
    FIO_PREFIX,
    FIRST_PORT,
    STACK_MODULES,
    Plan,
    build_runs,
)
from nbdfork.experiments.matrix.results import (
    build_report,
    collect_host_runs,
    run_records,
    tool_versions,
)
from nbdfork.experiments.matrix.schema import (
    HarnessTimings,
    KernelInfo,
    MatrixReport,
    RunResult,
    VMShape,
    write_report,
)
from nbdfork.experiments.stacks.catalogue import STACKS, parse_stack
from nbdfork.harness.boot import (
    VMConfig,
    VMRun,
    find_vng,
    forwards_opts,
    guest_argv,
    run_vm,
    vm_timeouts,
    vng_argv,
)
from nbdfork.harness.hostdevice import HostDevice
from nbdfork.harness.hostdevice import read_sysctls as _read_sysctls
from nbdfork.harness.kernel import (
    Accel,
    Kernel,
    detect_accel,
    find_kernel,
    needed_modules,
    validate_kernel,
)
from nbdfork.harness.protocol import Outcome
from nbdfork.seeds import derive_seed, new_seed
from nbdfork.workloads.fio import validate_jobfile

__all__ = [
    "DEFAULT_DEVICE",
    "DEFAULT_HOST_SYSCTLS",
    "DEFAULT_SYSCTLS",
    "DEVICE_LOCATIONS",
    "MultiKernelSession",
    "kernel_list",
    "merge_reports",
    "RunOptions",
    "RunSession",
    "render",
]

DEFAULT_DEVICE: dict[str, str] = {"size": "512M", "write-latency": "2ms"}
"""The device the KERNEL.md figures were measured with: 512 MiB (xfs wants >= 300 MB) and a
2 ms write latency, which keeps pages under writeback long enough to be rewritten."""

DEFAULT_SYSCTLS: dict[str, str] = {"net.core.wmem_default": "4608"}
"""Guest sysctls of a VM run unless overridden. The smallest socket send buffer makes the nbd
driver copy each 4 KiB page into the AF_UNIX socket in two pieces, blocking in between until
nbdkit reads, as a page can be over TCP: the window in which a rewrite tears the WRITE is then
as long as the server takes to read, not one memcpy. With Linux's default (212992) a tear needs
the writer's copy to race nbd's memcpy of the page: 0-2 tears per 10 s on a loaded 2-core TCG
host, against ~50 with 4608 (ext4, pwrite). `--sysctl net.core.wmem_default=212992` restores the
default; --no-vm sets no sysctl unless asked."""

DEFAULT_HOST_SYSCTLS: dict[str, str] = {}
"""Guest sysctls when the device runs on the host: none. The sweep in docs/tear-window.md
found the TCP send buffer irrelevant to the tear rate (2-3 per 1,000 stamped pages from
4 KiB to Linux's default), so nothing is changed that the experiment does not need."""
DEVICE_LOCATIONS = ("host", "guest")
TRANSPORT_HOST = "tcp: guest nbd-client -> qemu user net (restrict=on) guestfwd -> unix socket"
TRANSPORT_GUEST = "unix socket inside the guest"

_WORKLOAD_KNOBS = frozenset({"pages", "threads", "kick", "kick_interval_s", "max_writes"})


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything `nbdfork run` accepts, with its defaults (the default matrix)."""

    out: Path
    kernel: str | None = None
    modules: Path | None = None
    filesystems: tuple[str, ...] = ("ext4", "xfs")
    stable_writes: tuple[int, ...] = (0, 1)
    workloads: tuple[str, ...] = ("pwrite",)
    stacks: tuple[str, ...] = ("plain",)
    seconds: float = 10.0
    seed: int | None = None
    device: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_DEVICE))
    device_params: tuple[tuple[int, str, str], ...] = ()  # (device, key, value): one device
    workload_options: Mapping[str, Any] = field(default_factory=dict)
    no_vm: bool = False
    mkfs_each_run: bool = False
    sysctls: Mapping[str, str] | None = None
    accel: str = "auto"
    cpus: int = 2
    memory: str = "2G"
    device_location: str = "host"
    nbdkit_threads: int | None = None

    def validate(self) -> None:
        """Raise ConfigError naming the first bad option: each value by its option's own
        parser (nbdfork.experiments.matrix.experiment.OPTIONS), then what options say together."""
        self._check_values()
        self._check_combinations()
        self._check_devices()

    def _check_values(self) -> None:
        texts = {
            "fs": ",".join(self.filesystems), "workload": ",".join(self.workloads),
            "stable_writes": ",".join(map(str, self.stable_writes)),
            "stack": ",".join(self.stacks), "seconds": repr(float(self.seconds)),
            "cpus": str(self.cpus), "memory": self.memory, "accel": self.accel,
            "device_location": self.device_location,
            "seed": None if self.seed is None else str(self.seed),
            "nbdkit_threads": None if self.nbdkit_threads is None else str(self.nbdkit_threads),
        }  # fmt: skip
        options = {o.name: o for o in OPTIONS}
        for name, text in texts.items():
            if text is not None:
                options[name].parse(options[name].flag, text)
        for key in self.sysctls or {}:
            options["sysctl"].parse("--sysctl", f"{key}=")

    def _check_combinations(self) -> None:
        stacks = [parse_stack(s) for s in self.stacks]
        if self.device_location == "guest" and any(s.devices > 1 for s in stacks):
            raise ConfigError("--stack", "a stack of several devices needs the devices on the "
                              "host (--device-location host)")  # fmt: skip
        fio = [w for w in self.workloads if w.startswith(FIO_PREFIX)]
        if "raw" in self.filesystems and len(fio) < len(self.workloads):
            raise ConfigError("--fs", "raw (no filesystem) runs only fio:JOBFILE workloads")
        for job in (validate_jobfile(w) for w in fio):
            if job.raw and set(self.filesystems) != {"raw"}:
                raise ConfigError("--workload", f"fio:{job.path} writes ${{NBDFORK_DEVICE}}: "
                                  "under a mounted filesystem that corrupts it; use --fs raw")
        if self.no_vm and (self.kernel or self.modules):
            raise ConfigError("--no-vm", "runs this host's kernel: --kernel/--modules do not apply")
        unknown = sorted(set(self.workload_options) - _WORKLOAD_KNOBS)
        if unknown:
            raise ConfigError("workload option", f"unknown {', '.join(unknown)}")

    def _check_devices(self) -> None:
        if "report" in self.device:
            raise ConfigError("--device", "report= is set by the harness (one per run)")
        parse_params([*self.device.items(), ("report", "/nonexistent")])
        devices = max(parse_stack(s).devices for s in self.stacks)
        for index, key, _ in self.device_params:
            if index >= devices:
                raise ConfigError("--device-param", f"device {index}: the stacks have only "
                                  f"{devices} device(s) (0..{devices - 1})")  # fmt: skip
            if key in ("report", "seed"):
                raise ConfigError("--device-param", f"{key}= is set by the harness")
        for index in range(devices):
            parse_params([*self.device.items(), *self._params_of(index), ("report", "/x")])

    def _params_of(self, device: int) -> list[tuple[str, str]]:
        return [(k, v) for i, k, v in self.device_params if i == device]


def default_formats(opts: RunOptions) -> str:
    """formats= of a run's device unless --device formats= says: the stamp, every filesystem
    the runs make (their metadata judged live), and fio when a fio job runs."""
    stacks = {STACKS[parse_stack(s).name].filesystem for s in opts.stacks} - {None}
    made = [f for f in (*opts.filesystems, *sorted(f for f in stacks if f)) if f != "raw"]
    fio = ["fio"] if any(w.startswith(FIO_PREFIX) for w in opts.workloads) else []
    return ",".join(dict.fromkeys(["stamp", *made, *fio]))


def _copy_jobs(workloads: Sequence[str], out: Path) -> list[str]:
    """The workloads with each fio job file copied to OUT/jobs/ (the guest reads it there,
    and the report keeps the job that ran)."""
    result = []
    for workload in workloads:
        if not workload.startswith(FIO_PREFIX):
            result.append(workload)
            continue
        job = validate_jobfile(workload)
        target = out / "jobs" / job.path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.path, target)
        result.append(f"{FIO_PREFIX}{target}")
    return result


def _prepare_out(out: Path) -> Path:
    out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} exists and is not a directory")
    if (out / "runs").exists() and any((out / "runs").iterdir()):
        raise ConfigError("--out", f"{out} already holds a run (choose a new directory)")
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("--out", f"cannot create {out}: {exc.strerror}") from exc
    return out


def _check_host_nbd() -> None:
    """--no-vm needs root and an nbd driver in the running kernel."""
    if os.geteuid() != 0:
        raise ConfigError("--no-vm", "needs root (modprobe, nbd-client, mkfs, mount)")
    if Path("/sys/module/nbd").exists():
        return
    probe = subprocess.run(
        ["modprobe", "--dry-run", "nbd"], capture_output=True, text=True, timeout=30, check=False
    )
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["no nbd module"])[-1]
        raise ConfigError(
            "--no-vm",
            f"kernel {os.uname().release} has no nbd driver ({why}); "
            "run without --no-vm to boot a guest kernel",
        )


def _precompile() -> None:
    """Byte-compile nbdfork on the host: the guest sees the tree read-only and would otherwise
    compile every module from source, slowly, in each of its Python processes."""
    with contextlib.suppress(OSError):
        compileall.compile_dir(PACKAGE, quiet=2, workers=1)


def render(out: Path) -> str | None:
    """Let the report renderer write report.md/html and plots; None, or why it could not."""
    try:
        from nbdfork.experiments.matrix.render import render_report  # noqa: PLC0415
    except ImportError:
        return "the report renderer (nbdfork.experiments.matrix.render) is not installed"
    try:
        render_report(out)
    except (NbdforkError, OSError, ValueError) as exc:
        return f"rendering failed: {exc}"
    return None


class RunSession:
    """One matrix run, from options to report.json."""

    def __init__(
        self, options: RunOptions, on_event: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.options = options
        self.on_event = on_event
        self.kernel: Kernel | None = None
        self.accel: Accel | str = "none"
        self.accel_reason = ""
        self.plan: Plan | None = None
        self.vm: VMRun | None = None
        self.host: HostDevice | None = None
        self.render_problem: str | None = None

    def prepare(self) -> Plan:
        """Validate, pick kernel and accelerator, write OUT/plan.json; no VM yet."""
        opts = self.options
        opts.validate()
        if opts.no_vm:
            _check_host_nbd()
        else:
            stacks = {parse_stack(s).name for s in opts.stacks}
            own = {STACKS[s].filesystem for s in stacks} - {None}
            extra = [m for s in sorted(stacks) for m in STACK_MODULES[s]]
            made = [f for f in opts.filesystems if f != "raw"]
            needs = [*needed_modules(made), *sorted(f for f in own if f), *extra]
            self.kernel = find_kernel(opts.kernel, modules=opts.modules)
            validate_kernel(self.kernel, needs=needs)
            self.accel, self.accel_reason = detect_accel(self.kernel.image, requested=opts.accel)
        out = _prepare_out(opts.out)
        workloads = _copy_jobs(opts.workloads, out)
        seed = new_seed() if opts.seed is None else opts.seed
        self.plan = Plan(
            out=str(out),
            project=str(IMPORT_ROOT),
            python=sys.executable,
            venv=sys.prefix,
            plugin=str(PLUGIN),
            seed=seed,
            device={"formats": default_formats(opts), **opts.device,
                    "seed": str(derive_seed(seed, "device"))},
            device_overrides={str(i): dict(opts._params_of(i)) for i, _, _ in opts.device_params},
            runs=build_runs(
                filesystems=list(opts.filesystems),
                stable_writes=list(opts.stable_writes),
                workloads=workloads,
                seconds=opts.seconds,
                seed=seed,
                workload_options=dict(opts.workload_options),
                stacks=[parse_stack(s) for s in opts.stacks],
            ),
            modules_dir=self._modules_dir(),
            mkfs_each_run=opts.mkfs_each_run,
            sysctls=self.guest_sysctls(),
            device_location=self.device_location,
        )
        devices = max(r.devices for r in self.plan.runs)
        per = len(self.plan.runs) * CONNECTS_PER_RUN if self.device_location == "host" else 0
        self.plan = dataclasses.replace(
            self.plan, devices=devices, nbd_ports=[FIRST_PORT + i for i in range(per * devices)]
        )
        self.plan.write(out / "plan.json")
        return self.plan

    def _modules_dir(self) -> str | None:
        """The module tree the guest links at /lib/modules/RELEASE when it is not there: a
        user's --modules, or a kernel fetched into the cache."""
        if self.options.modules:
            return str(self.options.modules)
        kernel = self.kernel
        if kernel is None or kernel.modules is None:
            return None
        if kernel.modules == Path("/lib/modules") / kernel.release:
            return None
        return str(kernel.modules)

    @property
    def device_location(self) -> str:
        """Where nbdkit runs: `host` (default), or `guest` (in the VM, or --no-vm's host)."""
        return "guest" if self.options.no_vm else self.options.device_location

    def guest_sysctls(self) -> dict[str, str]:
        """The sysctls the guest sets: the defaults (VM only) with the options' on top."""
        if self.options.no_vm:
            base: dict[str, str] = {}
        elif self.device_location == "host":
            base = dict(DEFAULT_HOST_SYSCTLS)
        else:
            base = dict(DEFAULT_SYSCTLS)
        return {**base, **(self.options.sysctls or {})}

    def execute(self) -> MatrixReport:
        """Run the plan (prepare() first if needed), write report.json, render it (when the
        renderer is installed; `render_problem` says why not), return the report."""
        plan = self.plan or self.prepare()
        out = Path(plan.out)
        started_at = dt.datetime.now(dt.UTC)
        started = time.monotonic()
        _precompile()
        with HostDevice.maybe(plan, self.options.nbdkit_threads) as host:
            self.host = host
            self.vm = run_vm(
                self._argv(plan),
                log_path=out / "vm.log",
                timeouts=self._timeouts(),
                on_event=self.on_event,
            )
        collect_errors = collect_host_runs(plan, host.reports) if host is not None else {}
        runs = run_records(plan, kernel=self._kernel_release(), missing=self._missing(),
                           collect_errors=collect_errors)  # fmt: skip
        report = build_report(
            plan,
            runs,
            kernel=self._kernel_release(),
            accel=str(self.accel),
            started=started_at,
            duration_s=time.monotonic() - started,
            harness=self._harness(plan, runs),
            versions={**tool_versions(), "kernel": self._kernel_release()},
            extra=self._extra(),
        )
        write_report(report, out)
        self.render_problem = render(out)
        return report

    def _argv(self, plan: Plan) -> list[str]:
        command = guest_argv("nbdfork.experiments.matrix.guest", Path(plan.out) / "plan.json",
                             venv=plan.venv, python=plan.python)
        if self.options.no_vm:
            return command
        assert self.kernel is not None and self.accel in ("kvm", "tcg")
        accel: Accel = "kvm" if self.accel == "kvm" else "tcg"
        qemu_opts: tuple[str, ...] = ()
        if self.host is not None:
            per, sockets = plan.ports_per_device, self.host.sockets
            forwards = [(port, sockets[i // per]) for i, port in enumerate(plan.nbd_ports)]
            qemu_opts = forwards_opts(forwards, plan.nbd_host)
        config = VMConfig(self.kernel, accel, self.options.cpus, self.options.memory, find_vng(),
                          qemu_opts)  # fmt: skip
        return vng_argv(config, Path(plan.out), command)

    def _timeouts(self) -> dict[str, float]:
        return vm_timeouts("kvm" if self.accel in ("kvm", "none") else "tcg")

    def _kernel_release(self) -> str:
        if self.vm is not None:
            for event in self.vm.events:
                if event["event"] == "hello":
                    return str(event.get("kernel"))
        return self.kernel.release if self.kernel else os.uname().release

    def _missing(self) -> tuple[Outcome, str] | None:
        assert self.vm is not None
        if self.vm.lost:
            return Outcome.VM_LOST, self.vm.lost
        for event in self.vm.events:
            if event["event"] == "fatal":
                return Outcome.HARNESS_ERROR, str(event.get("error"))
        return None

    def _harness(self, plan: Plan, runs: Sequence[RunResult]) -> HarnessTimings:
        """boot_s: start until the guest can run its first configuration (VM boot, modules,
        nbdkit and the plugin loaded); per configuration: its wall time beyond the workload."""
        assert self.vm is not None
        marks, overhead = self.vm.marks, []
        workload_s = {run.id: run.durations.workload_s for run in runs}
        for spec in plan.runs:
            m = self.vm.run_marks.get(spec.id, {})
            if "start" in m and "end" in m:
                # a skipped workload (no atomic unit, say) spent seconds of nothing
                spent = min(spec.seconds, workload_s.get(spec.id, 0.0))
                overhead.append(round(m["end"] - m["start"] - spent, 3))
        ready = marks.get("ready", marks.get("exit", 0.0))
        host_start = self.host.start_s if self.host is not None else 0.0
        return HarnessTimings(
            host_device_start_s=round(host_start, 3),
            boot_s=round(ready, 3),
            per_config_overhead_s=tuple(overhead),
            vm_boot_s=round(marks["hello"], 3) if "hello" in marks else None,
            device_start_s=round(ready - marks["hello"], 3) if "hello" in marks else None,
            shutdown_s=round(marks["exit"] - marks["done"], 3) if "done" in marks else None,
        )

    def _extra(self) -> dict[str, Any]:
        host = self.device_location == "host"
        return {
            "mode": "host" if self.options.no_vm else "vm",
            "device_location": self.device_location,
            "transport": TRANSPORT_HOST if host else TRANSPORT_GUEST,
            "nbdkit_threads": self.options.nbdkit_threads,
            "guest_sysctls_read": _read_sysctls(Path(self.plan.out)) if self.plan else {},
            "accel_reason": self.accel_reason,
            "kernel_info": msgspec.convert(self.kernel.describe(), KernelInfo)
            if self.kernel
            else None,
            "vm": VMShape(cpus=self.options.cpus, memory=self.options.memory),
            "vm_lost": self.vm.lost if self.vm else None,
            "boot_panics": tuple(self.vm.boot_panics) if self.vm else (),
            "sysctls": self.plan.sysctls if self.plan else {},
            "plan": "plan.json",
        }


def kernel_list(spec: str | None) -> list[str | None]:
    """`--kernel 6.1,7.2` -> ["6.1", "7.2"]; one kernel (or the default) -> [spec]."""
    if spec is None or "," not in spec:
        return [spec]
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if len(set(items)) != len(items) or not items:
        raise ConfigError("--kernel", f"{spec!r}: list each kernel once")
    return list(items)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


class MultiKernelSession:
    """`nbdfork run --kernel 6.1,7.2`: the same matrix and seed on each kernel, one boot per
    kernel, one report whose runs carry their `kernel` (ids `RELEASE:run`)."""

    def __init__(
        self, options: RunOptions, kernels: list[str], on_event: Callable[..., None] | None = None
    ) -> None:
        seed = options.seed if options.seed is not None else new_seed()
        self.options = dataclasses.replace(options, seed=seed)
        self.out = self.options.out.resolve()
        self.sessions = [
            RunSession(
                dataclasses.replace(self.options, kernel=k, out=self.out / "kernels" / _slug(k)),
                on_event,
            )
            for k in kernels
        ]
        self.render_problem: str | None = None

    def prepare(self) -> list[Plan]:
        """Validate every kernel before any boots: a missing one costs no VM time."""
        return [s.prepare() for s in self.sessions]

    def execute(self) -> MatrixReport:
        """Boot each kernel in turn; merge their reports into OUT/report.json; render."""
        reports = []
        for session in self.sessions:
            reports.append(session.execute())  # prepares first if prepare() was not called
        merged = merge_reports(self.out, reports, [Path(s.plan.out) for s in self.sessions
                                                   if s.plan is not None])  # fmt: skip
        write_report(merged, self.out)
        self.render_problem = render(self.out)
        return merged


def merge_reports(out: Path, reports: list[MatrixReport], dirs: list[Path]) -> MatrixReport:
    """One report of several kernels' reports: runs re-keyed `RELEASE:id`, dirs relative to
    OUT, harness timings concatenated; top-level `kernels` lists them in order."""
    first = reports[0]
    runs = []
    for report, directory in zip(reports, dirs, strict=True):
        rel = directory.relative_to(out)
        for run in report.runs:
            runs.append(msgspec.structs.replace(run, id=f"{run.kernel}:{run.id}",
                                                dir=str(rel / run.dir)))  # fmt: skip
    harness = msgspec.structs.replace(
        first.harness,
        per_config_overhead_s=tuple(x for r in reports for x in r.harness.per_config_overhead_s),
        per_kernel={r.kernel: r.harness for r in reports},
    )
    infos = tuple(r.kernel_info if not isinstance(r.kernel_info, tuple) else None
                  for r in reports)  # fmt: skip
    return msgspec.structs.replace(
        first,
        kernel=" + ".join(r.kernel for r in reports),
        kernels=tuple(r.kernel for r in reports),
        accel=", ".join(sorted({r.accel for r in reports})),
        duration_s=round(sum(r.duration_s for r in reports), 3),
        harness=harness,
        kernel_info=infos,
        boot_panics=tuple(f"{r.kernel}: {p}" for r in reports for p in r.boot_panics),
        runs=tuple(runs),
    )
