"""Guest kernels and accelerators: find, validate and describe what the harness boots.

A kernel is either a Debian package (`/boot/vmlinuz-RELEASE` with `/lib/modules/RELEASE`), picked
by release or prefix (`6.1`, `6.12`, `6.1.0-57-amd64`), or a user's own image (`bzImage`,
`vmlinuz-*`) with its modules. The accelerator is probed, never assumed: /dev/kvm can exist and
still hang or crash qemu (a nested VM), so KVM is used only after a bounded test boot of the
very kernel reached the end of its init.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nbdfork.errors import ConfigError, VMError
from nbdfork.files import write_json

__all__ = [
    "DEFAULT_SERIES",
    "Accel",
    "Kernel",
    "detect_accel",
    "find_kernel",
    "image_release",
    "installed_kernels",
    "kvm_probe_argv",
    "needed_modules",
    "validate_kernel",
]

Accel = Literal["kvm", "tcg"]

DEFAULT_SERIES = "6.1"
"""The series `--kernel` defaults to: Debian 12's packaged kernel."""

_RELEASE_RE = re.compile(r"^(\d+)\.(\d+)")
_PROBE_TIMEOUT_S = 15.0
_PROBE_OK = ("Kernel panic", "No working init", "VFS: Unable to mount root")


@dataclass(frozen=True, slots=True)
class Kernel:
    """One bootable kernel: its image, release string and module tree (None: all built in)."""

    release: str
    image: Path
    modules: Path | None
    source: Literal["debian", "user"]

    @property
    def series(self) -> str:
        """`6.1` for `6.1.0-57-amd64`."""
        match = _RELEASE_RE.match(self.release)
        return f"{match.group(1)}.{match.group(2)}" if match else self.release

    def describe(self) -> dict[str, object]:
        """JSON-ready description for report.json."""
        return {
            "release": self.release,
            "image": str(self.image),
            "modules": str(self.modules) if self.modules else None,
            "source": self.source,
        }


def image_release(image: Path) -> str | None:
    """The release string an x86 bzImage carries in its setup header, or None if not a bzImage."""
    try:
        with image.open("rb") as f:
            header = f.read(0x10000)
    except OSError:
        return None
    if len(header) < 0x210 or header[0x202:0x206] != b"HdrS":
        return None
    offset = int.from_bytes(header[0x20E:0x210], "little")
    if offset == 0:
        return None
    start = 0x200 + offset
    end = header.find(b"\0", start)
    text = header[start : end if end > 0 else len(header)].decode("ascii", "replace")
    return text.split(" ", 1)[0] or None


def _version_key(release: str) -> tuple[int, ...]:
    """Sort key: numeric parts of `6.1.0-57-amd64` -> (6, 1, 0, 57)."""
    return tuple(int(n) for n in re.findall(r"\d+", release))


def installed_kernels(
    boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")
) -> list[Kernel]:
    """Packaged kernels with both an image in `boot` and a module tree, newest first."""
    found = []
    for image in boot.glob("vmlinuz-*"):
        release = image.name.removeprefix("vmlinuz-")
        modules = modules_root / release
        if image.is_file() and modules.is_dir():
            found.append(Kernel(release, image, modules, "debian"))
    return sorted(found, key=lambda k: _version_key(k.release), reverse=True)


def _matches(release: str, spec: str) -> bool:
    """`6.1` matches 6.1.x but not 6.12; a full release matches itself."""
    return release == spec or release.startswith(spec + ".") or release.startswith(spec + "-")


def _modules_for_image(image: Path, release: str) -> Path | None:
    """Where virtme-ng looks for an image's modules: ROOT/lib/modules/RELEASE above the image."""
    for parent in image.resolve().parents:
        for candidate in (parent / "lib/modules" / release, parent / "usr/lib/modules" / release):
            if candidate.is_dir():
                return candidate
    return None


def find_kernel(
    spec: str | None,
    *,
    modules: Path | None = None,
    boot: Path = Path("/boot"),
    modules_root: Path = Path("/lib/modules"),
) -> Kernel:
    """Resolve `--kernel` (None, a series, a release or an image path) to a validated Kernel."""
    if spec is not None and ("/" in spec or Path(spec).is_file()):
        kernel = _user_kernel(Path(spec), modules)
    else:
        kernel = _packaged_kernel(spec, boot, modules_root)
        if modules is not None:
            kernel = Kernel(kernel.release, kernel.image, modules, kernel.source)
    validate_kernel(kernel)
    return kernel


def _packaged_kernel(spec: str | None, boot: Path, modules_root: Path) -> Kernel:
    kernels = installed_kernels(boot, modules_root)
    if not kernels and spec is None:
        raise ConfigError(
            "--kernel",
            f"no kernel in {boot} with modules in {modules_root} "
            "(install linux-image-amd64, or pass --kernel PATH/TO/bzImage)",
        )
    wanted = spec or DEFAULT_SERIES
    for kernel in kernels:
        if _matches(kernel.release, wanted):
            return kernel
    if spec is None:
        return kernels[0]
    from nbdfork.harness.fetch import cached_kernels  # noqa: PLC0415

    for cached in cached_kernels():
        if _matches(cached.release, wanted):
            return Kernel(cached.release, cached.image, cached.modules, "debian")
    have = ", ".join(k.release for k in kernels)
    raise ConfigError(
        "--kernel",
        f"{spec!r} is neither installed (installed: {have}) nor fetched: "
        f"run `nbdfork kernel fetch {spec}`",
    )


def _user_kernel(image: Path, modules: Path | None) -> Kernel:
    if not image.is_file():
        raise ConfigError("--kernel", f"{image}: no such kernel image")
    release = image_release(image)
    if release is None:
        raise ConfigError("--kernel", f"{image}: not an x86 bzImage (no 'HdrS' setup header)")
    return Kernel(release, image.resolve(), modules or _modules_for_image(image, release), "user")


def _module_names(tree: Path) -> set[str]:
    """Module names a tree provides, loadable or built in (from modules.dep/modules.builtin)."""
    names: set[str] = set()
    for listing in ("modules.dep", "modules.builtin"):
        with contextlib.suppress(OSError):
            for line in (tree / listing).read_text(encoding="utf-8", errors="replace").splitlines():
                path = line.split(":", 1)[0].strip()
                if path:
                    names.add(Path(path).name.split(".ko", 1)[0].replace("-", "_"))
    if not names:  # no depmod output: look at the files themselves
        names = {p.name.split(".ko", 1)[0].replace("-", "_") for p in tree.rglob("*.ko*")}
    return names


def validate_kernel(kernel: Kernel, *, needs: Iterable[str] = ("nbd",)) -> None:
    """Raise ConfigError unless the image is readable and its modules provide `needs`."""
    if not os.access(kernel.image, os.R_OK):
        raise ConfigError("--kernel", f"{kernel.image}: not readable (run as root?)")
    if kernel.modules is None:
        return  # a user kernel without a module tree: everything must be built in
    if not kernel.modules.is_dir():
        raise ConfigError("--modules", f"{kernel.modules}: no such module directory")
    names = _module_names(kernel.modules)
    missing = [n for n in needs if n.replace("-", "_") not in names]
    if missing:
        raise ConfigError(
            "--kernel",
            f"{kernel.release}: {kernel.modules} has no {', '.join(missing)} "
            "module (needs CONFIG_BLK_DEV_NBD and the filesystems as modules or built in)",
        )


# --- accelerator ---------------------------------------------------------------------------


def kvm_probe_argv(qemu: str, image: Path) -> list[str]:
    """qemu booting `image` under KVM with the CPU virtme-ng asks for, to a quick panic."""
    return [
        qemu,
        "-accel",
        "kvm",
        "-cpu",
        "host,topoext=on",
        "-machine",
        "q35",
        "-m",
        "256",
        "-smp",
        "1",
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-kernel",
        str(image),
        "-append",
        "console=ttyS0 panic=-1 rdinit=/nonexistent init=/nonexistent",
    ]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the probe's own process group, then reap it without waiting forever."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _probe_kvm(qemu: str, image: Path, timeout: float) -> tuple[bool, str]:
    """Boot `image` under KVM until it panics for want of an init; (worked, why)."""
    proc = subprocess.Popen(
        kvm_probe_argv(qemu, image),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return False, f"a KVM test boot did not finish in {timeout:g} s"
    text = output.decode("utf-8", "replace")
    if any(marker in text for marker in _PROBE_OK):
        return True, "a KVM test boot reached the end of kernel init"
    last = text.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    return False, f"a KVM test boot failed: {last[0][:160]}"


def _cache_key(qemu: str, image: Path) -> str:
    boot_id = ""
    with contextlib.suppress(OSError):
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    parts = [
        boot_id,
        qemu,
        str(Path(qemu).stat().st_mtime_ns),
        str(image),
        str(image.stat().st_size),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _cache_path() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nbdfork" / "accel.json"


def detect_accel(
    image: Path,
    *,
    requested: str = "auto",
    qemu: str | None = None,
    timeout: float = _PROBE_TIMEOUT_S,
    cache: Path | None = None,
    kvm_device: Path = Path("/dev/kvm"),
) -> tuple[Accel, str]:
    """KVM if it boots `image` (probed once per host boot, cached), else TCG; (accel, why)."""
    if requested == "tcg":
        return "tcg", "requested"
    qemu = qemu or shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise VMError("qemu-system-x86_64 not found on PATH (install qemu-system-x86)")
    kvm_usable = os.access(kvm_device, os.R_OK | os.W_OK)
    if requested == "kvm":
        if not kvm_usable:
            raise ConfigError(
                "--accel", f"kvm requested but {kvm_device} is missing or not writable"
            )
        return "kvm", "requested"
    if requested != "auto":
        raise ConfigError("--accel", f"{requested!r} is not one of auto, kvm, tcg")
    if not kvm_usable:
        return "tcg", f"{kvm_device} is missing or not writable"
    return _cached_probe(qemu, image, timeout, cache or _cache_path())


def _cached_probe(qemu: str, image: Path, timeout: float, cache: Path) -> tuple[Accel, str]:
    key = _cache_key(qemu, image)
    known: dict[str, list[object]] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(cache.read_text())
    if key in known:
        ok, why = known[key]
        return ("kvm" if ok else "tcg"), f"{why} (cached)"
    started = time.monotonic()
    ok, why = _probe_kvm(qemu, image, timeout)
    why = f"{why} ({time.monotonic() - started:.1f} s)"
    known[key] = [ok, why]
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_json(cache, known)
    return ("kvm" if ok else "tcg"), why


def needed_modules(filesystems: Sequence[str]) -> list[str]:
    """Modules the guest loads for a matrix over `filesystems`."""
    return ["nbd", *filesystems]
