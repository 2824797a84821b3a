"""Driving the VM: the vng command line, the guest command, the watchdog and typed outcomes.

One `vng` process boots the kernel with the host root read-only and OUT shared read-write, and
runs the experiment's guest module (e.g. `python -m nbdfork.experiments.matrix.guest --plan
OUT/plan.json`) inside. The guest's progress lines tell the watchdog which phase it is in;
every phase has a deadline, and a guest that misses one, or a VM that exits before the guest
said `done`, is `vm_lost` with the console's last lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from nbdfork import IMPORT_ROOT
from nbdfork.errors import VMError
from nbdfork.harness.kernel import Accel, Kernel
from nbdfork.harness.protocol import MARKER
from nbdfork.log import get_logger

__all__ = [
    "BOOT_TRIM_MODULES",
    "VMConfig",
    "VMRun",
    "find_vng",
    "forward_opts",
    "forwards_opts",
    "guest_argv",
    "parse_marker",
    "run_vm",
    "vm_timeouts",
    "vng_argv",
]

BOOT_TRIM_MODULES = (
    "kvm",
    "kvm_amd",
    "kvm_intel",
    "ccp",
    "irqbypass",
    "ahci",
    "libahci",
    "libata",
    "sr_mod",
    "cdrom",
    "sg",
    "scsi_mod",
    "iTCO_wdt",
    "iTCO_vendor_support",
    "intel_pmc_bxt",
    "lpc_ich",
    "i2c_i801",
    "i2c_smbus",
    "i6300esb",
    "evdev",
    "psmouse",
    "serio_raw",
    "pcspkr",
    "joydev",
    "button",
    "floppy",
    "parport_pc",
    "ppdev",
    "powernow_k8",
    "crc32_pclmul",
    "crct10dif_pclmul",
    "ghash_clmulni_intel",
    "sha1_ssse3",
    "sha256_ssse3",
    "sha512_ssse3",
    "aesni_intel",
    "crypto_simd",
    "cryptd",
)
"""Modules udev would load for q35's emulated hardware (AHCI, CD-ROM, watchdogs, SMBus, input)
and CPU crypto glue, none of which the harness uses: loading them under TCG cost ~15 s of boot.
Passed as `module_blacklist=` on the guest's command line only."""


@dataclass(frozen=True, slots=True)
class VMConfig:
    """How to boot: kernel, accelerator and the guest's size."""

    kernel: Kernel
    accel: Accel
    cpus: int = 2
    memory: str = "2G"
    vng: str = "vng"
    qemu_opts: tuple[str, ...] = ()


def forward_opts(socket: Path, ports: list[int], addr: str) -> tuple[str, ...]:
    """qemu arguments for the guest's one network with every port forwarded to `socket`."""
    return forwards_opts([(port, socket) for port in ports], addr)


def forwards_opts(forwards: list[tuple[int, Path]], addr: str) -> tuple[str, ...]:
    """qemu arguments for the guest's one network: user mode with `restrict=on` (the guest
    reaches nothing, the host opens no port) and one `guestfwd` per NBD connection, each into
    a device's unix socket. A guestfwd's chardev is connected once, when qemu starts, and
    carries one TCP session: a second nbd-client through the same forward hangs in
    negotiation, so every connection the plan may make gets its own port."""
    for _, socket in forwards:
        if any(c in str(socket) for c in ", \t\n"):
            raise VMError(f"{socket}: a socket path for qemu must not contain commas or spaces")
    text = "".join(f",guestfwd=tcp:{addr}:{port}-unix:{socket}" for port, socket in forwards)
    netdev = f"user,id=nbdnet,restrict=on{text}"
    return ("-netdev", netdev, "-device", "virtio-net-pci,netdev=nbdnet")


def vm_timeouts(accel: Accel) -> dict[str, float]:
    """Host-side deadlines per phase (s); generous under TCG, where Python starts slowly.

    `run` is added to a run's workload seconds and exceeds the sum of the guest's own step
    timeouts, so that a stuck step becomes that run's harness error before the VM is lost."""
    scale = 1.0 if accel == "kvm" else 3.0
    return {"boot": 80 * scale, "startup": 150 * scale, "run": 700.0, "shutdown": 40 * scale}


def find_vng() -> str:
    """The vng of this interpreter's environment (the project venv), else the one on PATH."""
    here = Path(sys.prefix) / "bin" / "vng"
    if here.exists():
        return str(here)
    found = shutil.which("vng")
    if found is None:
        raise VMError("vng (virtme-ng) not found: run scripts/setup to create the venv")
    return found


def guest_argv(module: str, plan_path: Path, *, venv: str | None = None,
               python: str | None = None) -> list[str]:
    """The command the guest runs: the venv's Python on an experiment's guest `module`. `-S`
    with an explicit PYTHONPATH skips site and .pth processing, seconds of a TCG guest's
    startup; the import root is the checkout or the site-packages nbdfork is installed in."""
    venv = venv or sys.prefix
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = f"{venv}/lib/{version}/site-packages"
    return [
        "env",
        f"VIRTUAL_ENV={venv}",
        f"PYTHONPATH={IMPORT_ROOT}:{site_packages}",
        "PYTHONDONTWRITEBYTECODE=1",
        "OPENBLAS_NUM_THREADS=1",
        "OMP_NUM_THREADS=1",
        python or sys.executable,
        "-S",
        "-m",
        module,
        "--plan",
        str(plan_path),
    ]


def vng_argv(config: VMConfig, rwdir: Path, command: list[str]) -> list[str]:
    """vng booting `config.kernel`, sharing `rwdir`, running `command` (quoted for the guest
    shell: vng's --exec takes one string)."""
    append = f"loglevel=4 module_blacklist={','.join(BOOT_TRIM_MODULES)}"
    argv = [
        config.vng,
        "--run",
        str(config.kernel.image),
        "--force-9p",
        "--verbose",
        "--cpus",
        str(config.cpus),
        "--memory",
        config.memory,
        "--rwdir",
        str(rwdir),
        "--cwd",
        str(rwdir),
        "--append",
        append,
    ]
    if config.accel == "tcg":
        argv.append("--disable-kvm")
    # vng splits a --qemu-opts value on spaces: one option per argument keeps paths whole.
    argv += [f"--qemu-opts={opt}" for opt in config.qemu_opts]
    return [*argv, "--exec", shlex.join(command)]


def parse_marker(line: str) -> dict[str, Any] | None:
    """The progress event in a guest stdout line, or None (the marker may follow garbage)."""
    at = line.find(MARKER)
    if at < 0:
        return None
    try:
        event = json.loads(line[at + len(MARKER) :])
    except ValueError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


@dataclass(slots=True)
class VMRun:
    """What the host saw of one boot."""

    returncode: int | None = None
    lost: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    run_marks: dict[str, dict[str, float]] = field(default_factory=dict)
    console_tail: list[str] = field(default_factory=list)
    current_run: str | None = None
    boot_panics: list[str] = field(default_factory=list)  # console tails of boots retried

    @property
    def finished(self) -> bool:
        """The guest said `done`."""
        return "done" in self.marks


class _Watchdog:
    """The deadline of the phase the guest is in, moved on by its progress events."""

    def __init__(self, timeouts: dict[str, float], start: float) -> None:
        self.timeouts = timeouts
        self.phase = "boot"
        self.deadline = start + timeouts["boot"]

    def advance(self, event: dict[str, Any], now: float) -> None:
        name = event["event"]
        if name == "hello":
            self.phase, self.deadline = "startup", now + self.timeouts["startup"]
        elif name == "run-start":
            seconds = float(event.get("seconds") or 0)
            self.phase = f"run {event.get('id')}"
            self.deadline = now + seconds + self.timeouts["run"]
        elif name in ("ready", "run-end"):
            self.phase, self.deadline = "between runs", now + self.timeouts["startup"]
        elif name in ("done", "fatal"):
            self.phase, self.deadline = "shutdown", now + self.timeouts["shutdown"]


def _pump(stream: IO[str], tag: str, lines: queue.Queue[tuple[str, str | None]]) -> None:
    for line in stream:
        lines.put((tag, line.rstrip("\n")))
    lines.put((tag, None))


def _kill(proc: subprocess.Popen[str]) -> None:
    """Stop vng and its qemu (its own process group): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


_log = get_logger(__name__)

BOOT_RETRIES = 1  # another boot after a kernel panic that came before any guest code ran


def run_vm(
    argv: list[str],
    *,
    log_path: Path,
    timeouts: dict[str, float],
    on_event: Callable[[dict[str, Any]], None] | None = None,
    env: dict[str, str] | None = None,
    boot_retries: int = BOOT_RETRIES,
) -> VMRun:
    """Run vng until it exits or a phase deadline passes; stream everything to `log_path`.

    A kernel that panics before the guest script said hello (seen under TCG: an early-boot
    panic in the timekeeping interrupt, before any of our code or any device connection) is
    booted again, at most `boot_retries` times; each such boot's console tail is kept in
    `boot_panics` and the log holds every attempt. Any later loss is final."""
    env = _vng_env(argv[0]) if env is None else env
    panics: list[str] = []
    while True:
        result = _boot(argv, log_path=log_path, timeouts=timeouts, on_event=on_event, env=env)
        result.boot_panics = panics
        if not _early_panic(result) or len(panics) >= boot_retries:
            return result
        panics.append(" | ".join(result.console_tail[-3:])[-300:])
        _log.warning("vm.boot_panic", attempt=len(panics), console=panics[-1])


def _early_panic(result: VMRun) -> bool:
    """The kernel panicked before the guest script started: nothing of the run happened yet."""
    if result.finished or "hello" in result.marks or result.lost is None:
        return False
    return any("Kernel panic" in line for line in result.console_tail)


def _boot(
    argv: list[str],
    *,
    log_path: Path,
    timeouts: dict[str, float],
    on_event: Callable[[dict[str, Any]], None] | None,
    env: dict[str, str],
) -> VMRun:
    started = time.monotonic()
    result = VMRun()
    with log_path.open("a", buffering=1, encoding="utf-8", errors="replace") as log:
        log.write(f"$ {shlex.join(argv)}\n")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                errors="replace",
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            raise VMError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        try:
            _watch(proc, result, log, timeouts=timeouts, started=started, on_event=on_event)
        finally:
            if proc.poll() is None:
                _kill(proc)
        result.returncode = proc.returncode
        if result.lost is None and not result.finished:
            tail = " | ".join(result.console_tail[-3:])
            if "hello" not in result.marks:
                what = f"the VM did not boot to the guest script (status {proc.returncode})"
            elif result.current_run:
                what = f"the VM exited (status {proc.returncode}) during {result.current_run}"
            else:
                what = f"the VM exited (status {proc.returncode}) before the guest finished"
            result.lost = f"{what}: {tail[-300:]}"
        result.marks["exit"] = time.monotonic() - started
        log.write(f"# vng exited {proc.returncode} after {result.marks['exit']:.1f} s\n")
    return result


def _watch(
    proc: subprocess.Popen[str],
    result: VMRun,
    log: IO[str],
    *,
    timeouts: dict[str, float],
    started: float,
    on_event: Callable[[dict[str, Any]], None] | None,
) -> None:
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    assert proc.stdout is not None and proc.stderr is not None
    for stream, tag in ((proc.stdout, "guest"), (proc.stderr, "console")):
        threading.Thread(target=_pump, args=(stream, tag, lines), daemon=True).start()
    dog = _Watchdog(timeouts, started)
    open_streams = 2
    while open_streams:
        try:
            tag, line = lines.get(timeout=max(0.0, min(1.0, dog.deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() > dog.deadline:
                result.lost = f"no progress from the guest in its {dog.phase} phase (deadline)"
                log.write(f"# watchdog: {result.lost}\n")
                return
            continue
        if line is None:
            open_streams -= 1
            continue
        now = time.monotonic()
        log.write(f"{now - started:8.2f} {tag}: {line}\n")
        if tag == "console":
            result.console_tail = [*result.console_tail[-19:], line]
        event = parse_marker(line) if tag == "guest" else None
        if event is not None:
            _record(result, event, now - started)
            dog.advance(event, now)
            if on_event is not None:
                on_event(event)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(1.0, dog.deadline - time.monotonic()))


def _record(result: VMRun, event: dict[str, Any], t: float) -> None:
    name = event["event"]
    event["host_t"] = round(t, 3)
    result.events.append(event)
    if name in ("hello", "ready", "done", "fatal"):
        result.marks.setdefault(name, t)
    elif name == "run-start":
        result.current_run = str(event.get("id"))
        result.run_marks.setdefault(result.current_run, {})["start"] = t
    elif name == "run-end":
        result.run_marks.setdefault(str(event.get("id")), {})["end"] = t
        result.current_run = None


def _vng_env(vng: str) -> dict[str, str]:
    """vng calls virtme-run by name: its directory must lead PATH."""
    bindir = str(Path(vng).resolve().parent) if os.sep in vng else ""
    path = os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    return dict(os.environ, PATH=f"{bindir}:{path}" if bindir else path)
