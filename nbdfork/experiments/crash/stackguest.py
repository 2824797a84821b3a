"""The crash campaign of a storage stack inside the guest (`nbdfork crash --stack NAME`).

The host serves one traced device with a volatile cache per member of the stack, plus a small
*clock device* (traced, no cache) that the workload reads after every fsync returned: its
checkpoint markers, out of the stack's way. Record: connect every device, build the stack,
mkfs and mount on its top, the fsync ledger workload, unmount, take the stack down (stop, close:
nothing that writes the members beyond what a shutdown writes), disconnect. Campaign: the
members' traces cut at one instant (nbdfork.experiments.crash.cut), each state recovered and
judged by the stack's own tools (nbdfork.experiments.crash.recovery).
"""

from __future__ import annotations

from pathlib import Path

from nbdfork.experiments.crash.cut import MemberTrace, StackStateResult, run_stack_campaign
from nbdfork.experiments.crash.plan import CrashPlan
from nbdfork.experiments.crash.recovery import MD_SPEED_MIN, MD_START_RO, StackRecovery
from nbdfork.experiments.crash.states import CampaignPlan
from nbdfork.experiments.crash.workload import FsyncLedgerWorkload, Ledger, write_ledger
from nbdfork.experiments.stacks import build, make_filesystem, mount, parse_stack, umount
from nbdfork.experiments.stacks.plan import BuildPlan, plan_stack
from nbdfork.files import write_json
from nbdfork.harness.guest import Reporter, nbd_client_argv
from nbdfork.harness.steps import run_step

__all__ = ["CLOCK_MARKER_OFFSET", "STACK_MODULES", "StackCampaign", "run_stack", "stack_row"]

CLOCK_MARKER_OFFSET = 3 << 19  # 1.5 MiB: between the power-of-two pages that blkid probes read
STACK_MODULES: dict[str, tuple[str, ...]] = {
    "plain": (), "btrfs": ("btrfs",), "btrfs-raid1": ("btrfs",), "md-raid1": ("md_mod", "raid1"),
    "md-raid5": ("md_mod", "raid456"), "dm-integrity": ("dm_integrity",),
}  # fmt: skip
"""The modules each stack loads in the guest (the host checks the kernel has them)."""
_MOUNT = Path("/tmp/nbdfork-crash-mnt")
_CHECK_MOUNT = Path("/tmp/nbdfork-crash-check")
_IMAGES = Path("/tmp")


class StackCampaign:
    """One recorded workload on a stack and its crash campaigns (configured and control)."""

    def __init__(self, plan: CrashPlan, reporter: Reporter) -> None:
        self.plan = plan
        self.spec = parse_stack(plan.stack)
        self.out = Path(plan.out)
        self.reporter = reporter
        self.log = reporter.log
        count = self.spec.devices
        self.members = [f"/dev/nbd{i}" for i in range(count)]
        self.clock = f"/dev/nbd{count}"

    def prepare(self) -> None:
        """The stack's modules; md leaves a dirty array read-auto until asked (start_ro)."""
        modules = STACK_MODULES[self.spec.name]
        run_step(self.log, "modprobe", ["modprobe", "-a", "loop", *modules], 60)
        if "md_mod" in modules:
            self.log(f"# echo 1 > {MD_START_RO}")
            MD_START_RO.write_text("1\n")
            # md slows a check to speed_limit_min (1 MB/s) when it sees other I/O on the
            # members; the guest does nothing else, and under TCG that is minutes per state.
            self.log(f"# echo 2000000 > {MD_SPEED_MIN}")
            MD_SPEED_MIN.write_text("2000000\n")

    def record(self) -> Ledger:
        """Connect, build, mkfs, mount, the workload, unmount, take down, disconnect."""
        work = self.out / "campaign"
        work.mkdir(parents=True, exist_ok=True)
        self.reporter.emit("run-start", id="campaign-workload", seconds=self.plan.seconds + 300)
        connected: list[str] = []
        try:
            for device, target in zip([*self.members, self.clock], self.plan.nbd_targets,
                                      strict=True):  # fmt: skip
                run_step(self.log, "nbd-client",
                         nbd_client_argv(list(target), device, export="campaign"), 60)
                connected.append(device)
            ledger = self._on_stack(plan_stack(self.spec, self.members, self.plan.fs, str(_MOUNT)))
        finally:
            for device in reversed(connected):
                run_step(self.log, "nbd-client -d", ["nbd-client", "-d", device], 60)
        write_ledger(ledger, work / "ledger.json")
        self.reporter.emit("run-end", id="campaign-workload")
        return ledger

    def _on_stack(self, stack: BuildPlan) -> Ledger:
        build(stack, self.log)
        try:
            make_filesystem(stack, self.log)
            mount(stack, self.log)
            try:
                workload = FsyncLedgerWorkload(
                    _MOUNT, Path(self.clock), CLOCK_MARKER_OFFSET, files=self.plan.files,
                    pages=self.plan.pages, seconds=self.plan.seconds, seed=self.plan.seed,
                    atomic=self.plan.workload == "atomic",
                )  # fmt: skip
                return workload.run()
            finally:
                umount(stack, self.log)
        finally:
            self._take_down(stack)

    def _take_down(self, stack: BuildPlan) -> None:
        """What a shutdown does: stop md, close dm-integrity; never md's --zero-superblock,
        whose writes would land in the traces as if the workload had made them."""
        if stack.md_device is not None:
            run_step(self.log, "teardown", ["mdadm", "--stop", stack.md_device], 120)
        if stack.integrity_name is not None:
            run_step(self.log, "teardown", ["integritysetup", "close", stack.integrity_name], 120)

    def campaign(self, name: str, ledger: Ledger, states: int, *, ignore_flush: bool) -> None:
        """Check `states` crash states of the members' traces; rows to OUT/name/states.json."""
        traces = [MemberTrace.open(Path(t)) for t in self.plan.host_traces]
        members, clock = traces[:-1], traces[-1]
        plan = CampaignPlan(states=states, seed=self.plan.seed, device_size=self.plan.size_bytes,
                            ignore_flush=ignore_flush, points=self.plan.points)  # fmt: skip
        self.reporter.emit("run-start", id=f"{name}-states", seconds=120.0 * states)
        recovery = StackRecovery(self.spec, self.plan.fs, _CHECK_MOUNT, self.log)
        (self.out / name).mkdir(parents=True, exist_ok=True)
        rows = []
        for result in run_stack_campaign(members, clock, ledger, plan, _IMAGES,
                                         check=recovery.check):  # fmt: skip
            rows.append(stack_row(result))
            self.reporter.emit("state", id=name, n=len(rows), outcome=rows[-1]["outcome"],
                               verdict=result.recovery.get("verdict"))  # fmt: skip
        write_json(self.out / name / "states.json", rows)
        self.reporter.emit("run-end", id=f"{name}-states")


def stack_row(result: StackStateResult) -> dict[str, object]:
    """A state of a stack as a row of states.json (the single-device row's fields, `fs` from
    the filesystem on top, and `stack`: the verdict, findings and every checker's result)."""
    recovery = dict(result.recovery)
    fs = recovery.pop("fs", {})
    assert isinstance(fs, dict)
    findings = recovery.pop("findings", {})
    assert isinstance(findings, dict)
    outcome = ("ledger_violation" if findings.get("ledger_violations")
               else "fsck_failure" if findings.get("fsck_failed") or findings.get("mount_failed")
               else "passed")  # fmt: skip
    stack = {"verdict": recovery.pop("verdict", "violation"), "instant_s": result.instant_s,
             "findings": findings, "documented": recovery.pop("documented", []),
             "violations": recovery.pop("violations", []), "checks": recovery}  # fmt: skip
    return {"point": result.point, "checkpoint": result.checkpoint, "index": result.index,
            "outcome": outcome, "reproducer": result.reproducer, "fs": fs,
            "stack": stack}  # fmt: skip


def run_stack(plan: CrashPlan, reporter: Reporter) -> None:
    """Record once, then the campaign and (unless the device itself ignores flushes) the
    ignore-flush control over the same traces."""
    guest = StackCampaign(plan, reporter)
    guest.prepare()
    reporter.emit("ready")
    ledger = guest.record()
    guest.campaign("campaign", ledger, plan.states, ignore_flush=plan.ignore_flush)
    if plan.control_states and not plan.ignore_flush:
        guest.campaign("control", ledger, plan.control_states, ignore_flush=True)
