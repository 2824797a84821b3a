"""`nbdfork crash` on the host: plan, one boot, then report.json / report.md with a plot."""

from __future__ import annotations

import compileall
import contextlib
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import msgspec

from nbdfork import PACKAGE, PLUGIN
from nbdfork.errors import ConfigError, ReportError, VMError, VMLost
from nbdfork.experiments.crash.cut import member_seed
from nbdfork.experiments.crash.expectations import EXPECTATIONS
from nbdfork.experiments.crash.experiment import OPTIONS
from nbdfork.experiments.crash.plan import CrashPlan
from nbdfork.experiments.crash.schema import (
    ControlSummary,
    CrashDevice,
    CrashOutcome,
    CrashReport,
    CrashWorkload,
    StackExpectation,
    StackSummary,
    StateRow,
    StatesSummary,
    load_states,
    summarize_stack,
    summarize_states,
    write_crash_report,
)
from nbdfork.experiments.crash.stackguest import STACK_MODULES
from nbdfork.experiments.stacks.catalogue import parse_stack
from nbdfork.harness import nbdkit as launch
from nbdfork.harness.boot import (
    VMConfig,
    find_vng,
    forward_opts,
    forwards_opts,
    guest_argv,
    run_vm,
    vm_timeouts,
    vng_argv,
)
from nbdfork.harness.kernel import Kernel, detect_accel, find_kernel, validate_kernel
from nbdfork.harness.protocol import FIRST_PORT, GUEST_FORWARD_ADDR
from nbdfork.options import check_values
from nbdfork.seeds import new_seed

__all__ = ["CrashOptions", "run_crash"]

# Small devices keep each crash image cheap to build, mount and check; xfs wants >= 300 MB
# and btrfs >= 114 MB (mkfs refuses less).
_DEVICE_MIB = {"ext4": 96, "xfs": 320, "btrfs": 160}
CLOCK_DEVICE_MIB = 4  # a stack's clock device: marker reads only


@dataclass(frozen=True, slots=True)
class CrashOptions:
    """What `nbdfork crash` accepts."""

    out: Path
    fs: str = "ext4"
    states: int = 20
    control_states: int = 6
    seconds: float = 5.0
    seed: int | None = None
    ignore_flush: bool = False
    kernel: str | None = None
    points: str = "checkpoint"
    device_location: str = "host"
    workload: str = "fsync"
    stack: str = "plain"

    def validate(self) -> None:
        """ConfigError naming the first bad option (the options' own parsers decide)."""
        check_values(OPTIONS, {f.name: getattr(self, f.name) for f in dataclasses.fields(self)})


def run_crash(options: CrashOptions) -> CrashReport:
    """Boot once, run the campaign and its control, write OUT/report.json; return it."""
    options.validate()
    out = options.out.absolute()
    out.mkdir(parents=True, exist_ok=True)
    spec = parse_stack(options.stack)
    fs = options.fs if spec.name == "plain" else spec.filesystem(options.fs)
    if spec.name != "plain" and options.device_location != "host":
        raise ConfigError("device_location", "a stack's devices run on the host (one clock)")
    kernel = find_kernel(options.kernel)
    validate_kernel(kernel, needs=("nbd", "loop", fs, *STACK_MODULES[spec.name]))
    accel, _why = detect_accel(kernel.image)
    seed = options.seed if options.seed is not None else new_seed()
    size = _member_mib(spec.name, fs)
    plan = CrashPlan(
        out=str(out), plugin=str(PLUGIN), venv=sys.prefix,
        fs=fs, states=options.states, control_states=options.control_states,
        seconds=options.seconds, seed=seed, ignore_flush=options.ignore_flush,
        size=f"{size}M", size_bytes=size << 20, points=options.points,
        workload=options.workload, modules_dir=_modules_dir(kernel), stack=spec.label,
    )  # fmt: skip
    # The guest sees the tree read-only: without .pyc files every import compiles from source.
    compileall.compile_dir(PACKAGE, quiet=2, workers=1)
    started = time.monotonic()
    serve = _host_device if spec.name == "plain" else _host_stack
    with serve(plan, options.device_location) as (plan, qemu_opts):
        plan.write(out / "crash-plan.json")
        config = VMConfig(kernel=kernel, accel=accel, vng=find_vng(), qemu_opts=qemu_opts)
        command = guest_argv("nbdfork.experiments.crash.guest", out / "crash-plan.json")
        argv = vng_argv(config, out, command)
        vm = run_vm(argv, log_path=out / "vm.log", timeouts=vm_timeouts(accel))
    fatal = next((e for e in vm.events if e.get("event") == "fatal"), None)
    report = _report(out, plan, kernel.release, accel, time.monotonic() - started,
                     lost=vm.lost, guest_error=str(fatal.get("message")) if fatal else None)
    write_crash_report(report, out)
    if vm.lost:
        raise VMLost(f"{vm.lost} (guest log: {out / 'guest.log'}, console: {out / 'vm.log'})")
    return report


def _member_mib(stack: str, fs: str) -> int:
    """Each member device's size: the filesystem's smallest cheap device, more where a layer
    takes room (dm-integrity's tags and journal; xfs refuses less than 300 MB)."""
    if stack == "dm-integrity" and fs == "xfs":
        return 352
    if stack.startswith("md-") and fs == "ext4":
        return 64  # md compares, resyncs and checks every member in every state
    return _DEVICE_MIB[fs]


def _modules_dir(kernel: Kernel) -> str | None:
    """The module tree the guest must link at /lib/modules/RELEASE, if it is not there."""
    if kernel.modules is None or kernel.modules == Path("/lib/modules") / kernel.release:
        return None
    return str(kernel.modules)


@contextlib.contextmanager
def _host_device(plan: CrashPlan, location: str) -> Iterator[tuple[CrashPlan, tuple[str, ...]]]:
    """For a device on the host: nbdkit with the traced, cached device beside qemu, and the
    plan and qemu options that lead the guest to it; for one in the guest, nothing."""
    if location != "host":
        yield plan, ()
        return
    work = Path(plan.out) / "campaign"
    work.mkdir(parents=True, exist_ok=True)
    trace = work / "trace.bin"
    params = {"size": plan.size, "report": str(work / "device"), "trace": str(trace),
              "cache": "volatile", "seed": str(plan.seed),
              "ignore-flush": "on" if plan.ignore_flush else "off"}  # fmt: skip
    with launch.private_server(params, log=work / "nbdkit.log", env=launch.plugin_env()) as (
        socket, _,
    ):  # fmt: skip
        hosted = dataclasses.replace(plan, device_location="host", host_trace=str(trace),
                                     nbd_target=(GUEST_FORWARD_ADDR, str(FIRST_PORT)))  # fmt: skip
        yield hosted, forward_opts(socket, [FIRST_PORT], GUEST_FORWARD_ADDR)


@contextlib.contextmanager
def _host_stack(plan: CrashPlan, _location: str) -> Iterator[tuple[CrashPlan, tuple[str, ...]]]:
    """For a stack: one traced device with a volatile cache per member (each its own nbdkit,
    seed and report: OUT/campaign/device-N, trace-N.bin) and the clock device the workload's
    checkpoint markers read (OUT/campaign/clock, clock.trace); the plan names every forward
    and trace, in stack order, the clock device last."""
    work = Path(plan.out) / "campaign"
    work.mkdir(parents=True, exist_ok=True)
    members = parse_stack(plan.stack).devices
    params: list[tuple[Path, dict[str, str]]] = []
    for m in range(members):
        trace = work / f"trace-{m}.bin"
        params.append((trace, {
            "size": plan.size, "report": str(work / f"device-{m}"), "trace": str(trace),
            "cache": "volatile", "seed": str(member_seed(plan.seed, m)),
            "ignore-flush": "on" if plan.ignore_flush else "off",
        }))  # fmt: skip
    clock = work / "clock.trace"
    params.append((clock, {"size": f"{CLOCK_DEVICE_MIB}M", "report": str(work / "clock"),
                           "trace": str(clock), "oracle": "off"}))  # fmt: skip
    with contextlib.ExitStack() as stack:
        forwards = []
        for index, (_, device) in enumerate(params):
            log = Path(device["report"] + ".nbdkit.log")
            socket, _ = stack.enter_context(
                launch.private_server(device, log=log, env=launch.plugin_env()))
            forwards.append((FIRST_PORT + index, socket))
        hosted = dataclasses.replace(
            plan, device_location="host", host_traces=tuple(str(t) for t, _ in params),
            nbd_targets=tuple((GUEST_FORWARD_ADDR, str(port)) for port, _ in forwards),
        )  # fmt: skip
        yield hosted, forwards_opts(forwards, GUEST_FORWARD_ADDR)


def _load_rows(path: Path) -> tuple[StateRow, ...] | None:
    try:
        return load_states(path)
    except ReportError as exc:
        raise VMError(str(exc)) from None


def _report(
    out: Path, plan: CrashPlan, kernel: str, accel: str, seconds: float, *, lost: str | None,
    guest_error: str | None,
) -> CrashReport:  # fmt: skip
    rows = _load_rows(out / "campaign" / "states.json")
    control_rows = _load_rows(out / "control" / "states.json")
    if rows is None:
        raise VMError(f"the guest wrote no {out / 'campaign' / 'states.json'} (see guest.log)")
    summary = summarize_states(rows)
    control = None
    if control_rows is not None:
        control = ControlSummary(**msgspec.structs.asdict(summarize_states(control_rows)))
    control_wanted = plan.control_states > 0 and not plan.ignore_flush
    stack: StackSummary | msgspec.UnsetType = msgspec.UNSET
    if plan.stack != "plain":
        stack = summarize_stack(
            rows, name=plan.stack, members=parse_stack(plan.stack).devices,
            member_size=plan.size, expectations=_expectations(plan.stack), control=control_rows,
        )  # fmt: skip
    return CrashReport(
        kernel=kernel, accel=accel, fs=plan.fs, seed=plan.seed,
        started=dt.datetime.now(dt.UTC).isoformat(), duration_s=round(seconds, 1),
        device=CrashDevice(size=plan.size, cache="volatile", ignore_flush=plan.ignore_flush),
        device_location=plan.device_location,
        workload=CrashWorkload(kind=cast(Literal["fsync", "atomic"], plan.workload),
                               seconds=float(plan.seconds), files=plan.files, pages=plan.pages),
        points=plan.points, **msgspec.structs.asdict(summary), control=control, states=rows,
        outcome=_outcome(lost, summary, control, control_wanted, stack),
        guest_error=guest_error, stack=stack,
    )  # fmt: skip


def _expectations(stack: str) -> tuple[StackExpectation, ...]:
    return tuple(StackExpectation(finding=e.finding, documented=e.documented, why=e.why)
                 for e in EXPECTATIONS.get(stack, ()))  # fmt: skip


def _outcome(
    lost: str | None, summary: StatesSummary, control: StatesSummary | None,
    control_wanted: bool, stack: StackSummary | msgspec.UnsetType = msgspec.UNSET,
) -> CrashOutcome:  # fmt: skip
    if lost:
        return "vm_lost"
    if not isinstance(stack, msgspec.UnsetType):
        # A stack's control must be judged a violation somewhere (a lost write, an array
        # that no longer assembles): else the checkers could not fail.
        if control_wanted and not (stack.control_verdicts or {}).get("violation"):
            return "control_failed"
        return "violations" if stack.violations else "passed"  # exposures are documented
    if control_wanted and control is None:
        return "control_failed"  # asked for, never completed: the passes are unconfirmed
    if control is not None and control.ledger_violations == 0:
        return "control_failed"  # the checker could not fail: its passes mean nothing
    return "violations" if summary.failures else "passed"
