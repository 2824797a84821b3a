"""The crash campaign inside the guest: record a traced fsync workload, then check crash states.

Run by the host as `python -S -m nbdfork.experiments.crash.guest --plan OUT/crash-plan.json`. Steps,
each with a timeout: modules (nbd, loop, the fs); nbdkit with the plugin (`cache=volatile`,
`trace=`); nbd-client; mkfs leaving the device's last MiB for checkpoint markers; mount; the
workload; umount; disconnect; stop nbdkit; then the campaign (`run_campaign` with images
mounted on loop devices and fsck'd), once for the device as configured and once for the
`ignore-flush` control. Progress lines use the VM harness's markers, so its watchdog applies.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from nbdfork.experiments.crash.fscheck import make_fs_checker
from nbdfork.experiments.crash.plan import CrashPlan
from nbdfork.experiments.crash.states import CampaignPlan, StateResult, run_campaign
from nbdfork.experiments.crash.workload import MARKER_GAP, FsyncLedgerWorkload, Ledger, write_ledger
from nbdfork.files import write_json
from nbdfork.harness import nbdkit as launch
from nbdfork.harness.guest import Reporter, link_modules, nbd_client_argv, network_up
from nbdfork.harness.steps import DEFAULT_TIMEOUTS, StepError, run_step

__all__ = ["CrashPlan", "GuestCampaign", "main"]

MARKER_RESERVE = 1 << 20
_SOCKET = "/tmp/nbdfork-crash.sock"
_MOUNT = Path("/tmp/nbdfork-crash-mnt")
_CHECK_MOUNT = Path("/tmp/nbdfork-crash-check")
_IMAGES = Path("/tmp")




def mkfs_argv(fs: str, device: str, fs_bytes: int) -> list[str]:
    """mkfs for `fs` on `device`, using only the first `fs_bytes` (markers live beyond)."""
    if fs == "ext4":
        return ["mkfs.ext4", "-F", "-q", "-b", "4096", device, str(fs_bytes // 4096)]
    if fs == "xfs":
        return ["mkfs.xfs", "-f", "-q", "-d", f"size={fs_bytes}", device]
    return ["mkfs.btrfs", "-f", "-q", "-b", str(fs_bytes), device]


class GuestCampaign:
    """One recorded workload and its crash campaigns (configured device and control)."""

    def __init__(self, plan: CrashPlan, reporter: Reporter) -> None:
        self.plan = plan
        self.out = Path(plan.out)
        self.reporter = reporter
        self.log = reporter.log
        self.nbdkit: subprocess.Popen[bytes] | None = None

    def record(self, name: str, *, ignore_flush: bool) -> tuple[Path, Ledger]:
        """Run the workload on a traced device; return the trace and the ledger."""
        work = self.out / name
        work.mkdir(parents=True, exist_ok=True)
        self.reporter.emit("run-start", id=f"{name}-workload", seconds=self.plan.seconds + 60)
        if self.plan.device_location == "host":  # the host's nbdkit wrote it into OUT
            ledger = self._workload(work, list(self.plan.nbd_target))
            trace = Path(self.plan.host_trace)
            self.reporter.emit("run-end", id=f"{name}-workload")
            return trace, ledger
        trace = Path("/tmp") / f"nbdfork-{name}.trace"  # guest RAM: 9p is slow per record
        self._start_nbdkit(work, trace, ignore_flush=ignore_flush)
        try:
            ledger = self._workload(work, ["-unix", _SOCKET])
        finally:
            self._stop_nbdkit()
        shutil.copyfile(trace, work / "trace.bin")  # keep the reproducer with the results
        self.reporter.emit("run-end", id=f"{name}-workload")
        return trace, ledger

    def _start_nbdkit(self, work: Path, trace: Path, *, ignore_flush: bool) -> None:
        params = {"size": self.plan.size, "report": str(work / "device"), "trace": str(trace),
                  "cache": "volatile", "seed": str(self.plan.seed),
                  "ignore-flush": "on" if ignore_flush else "off"}  # fmt: skip
        argv = launch.plugin_argv(params, unix=_SOCKET, plugin=self.plan.plugin)
        self.log(f"$ {' '.join(argv)} &")
        log = work / "nbdkit.log"
        try:
            self.nbdkit = launch.start(argv, log=log, env=launch.plugin_env(self.plan.venv))
            # TCG on a busy host: the plugin imports slowly
            launch.wait_ready(self.nbdkit, _SOCKET, log=log, timeout=300)
        except launch.NbdkitError as exc:
            raise StepError("nbdkit", f"{exc} (see {log})") from None

    def _workload(self, work: Path, target: list[str]) -> Ledger:
        dev, fs_bytes = "/dev/nbd0", self.plan.size_bytes - MARKER_RESERVE
        run_step(self.log, "nbd-client", nbd_client_argv(target, dev, export="campaign"), 60)
        try:
            run_step(self.log, "mkfs", mkfs_argv(self.plan.fs, dev, fs_bytes), 120)
            _MOUNT.mkdir(parents=True, exist_ok=True)
            run_step(self.log, "mount", ["mount", dev, str(_MOUNT)], 60)
            try:
                workload = FsyncLedgerWorkload(
                    _MOUNT, Path(dev), fs_bytes + MARKER_GAP, files=self.plan.files,
                    pages=self.plan.pages,
                    seconds=self.plan.seconds, seed=self.plan.seed,
                    atomic=self.plan.workload == "atomic",
                )  # fmt: skip
                ledger = workload.run()
            finally:
                run_step(self.log, "umount", ["umount", str(_MOUNT)], 120)
        finally:
            run_step(self.log, "nbd-client -d", ["nbd-client", "-d", dev], 60)
        write_ledger(ledger, work / "ledger.json")
        return ledger

    def _stop_nbdkit(self) -> None:
        if self.nbdkit is not None:
            launch.stop(self.nbdkit, 60)

    def campaign(self, name: str, trace: Path, ledger: Ledger, states: int, *,
                 ignore_flush: bool) -> list[StateResult]:  # fmt: skip
        """Check `states` crash states of the recorded trace; results to OUT/name/states.json."""
        plan = CampaignPlan(states=states, seed=self.plan.seed, device_size=self.plan.size_bytes,
                            ignore_flush=ignore_flush, points=self.plan.points)  # fmt: skip
        self.reporter.emit("run-start", id=f"{name}-states", seconds=30.0 * states)
        checker = make_fs_checker(self.plan.fs, _CHECK_MOUNT)
        (self.out / name).mkdir(parents=True, exist_ok=True)
        results = []
        # Images go to the guest's own /tmp: the shared results folder is slow 9p.
        for result in run_campaign(trace, ledger, plan, _IMAGES, checker):
            results.append(result)
            self.reporter.emit("state", id=name, n=len(results), outcome=result.outcome)
        rows = [r.to_json() for r in results]
        write_json(self.out / name / "states.json", rows)
        self.reporter.emit("run-end", id=f"{name}-states")
        return results


def _prepare(plan: CrashPlan, log: Reporter) -> None:
    link_modules(plan.modules_dir)
    run_step(log.log, "modprobe", ["modprobe", "-a", "nbd", "loop", plan.fs], 60)
    if plan.device_location == "host":
        network_up(log.log, Path("/sys"), DEFAULT_TIMEOUTS)


def main(argv: Sequence[str] | None = None) -> int:
    """The guest entry point: record, check, write results; exit 0 unless a step failed."""
    parser = argparse.ArgumentParser(prog="nbdfork.experiments.crash.guest")
    parser.add_argument("--plan", type=Path, required=True)
    args = parser.parse_args(argv)
    plan = CrashPlan.read(args.plan)
    reporter = Reporter(Path(plan.out) / "guest.log")
    reporter.emit("hello")
    guest = GuestCampaign(plan, reporter)
    try:
        _prepare(plan, reporter)
        if plan.stack != "plain":
            # imported here: a single-device campaign loads nothing of the stacks
            from nbdfork.experiments.crash.stackguest import run_stack  # noqa: PLC0415

            run_stack(plan, reporter)
            return 0
        reporter.emit("ready")
        # One recorded workload; the control replays the same trace on a device that ignores
        # FLUSH and FUA, which is what ignore-flush=on does to the device's media.
        trace, ledger = guest.record("campaign", ignore_flush=plan.ignore_flush)
        guest.campaign("campaign", trace, ledger, plan.states, ignore_flush=plan.ignore_flush)
        if plan.control_states and not plan.ignore_flush:
            guest.campaign("control", trace, ledger, plan.control_states, ignore_flush=True)
    except StepError as exc:
        reporter.emit("fatal", step=exc.step, message=str(exc))
        return 1
    except Exception as exc:  # the host must hear why, not just see the VM exit
        reporter.emit("fatal", step="campaign", message=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        reporter.emit("done")
        reporter.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
