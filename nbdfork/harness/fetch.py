"""Debian kernels fetched into a cache: 6.1 (bookworm), 6.12 (trixie), 7.x (sid), side by side.

`nbdfork kernel fetch 6.12 7.2` runs apt-get with a private configuration — its own sources
file, state and cache directories under the cache folder, the Debian archive keyring as
Signed-By — so the host's apt sources and package state are never touched and nothing is
installed. apt verifies the suites' signed Release files and each .deb against them; the
packages are unpacked with `dpkg-deb -x` and the module tree indexed with `depmod -b`.

Two packagings exist: `linux-image-RELEASE[-unsigned]` holds the image and its modules (6.1,
6.12); from 7.x Debian splits them into `linux-binary-RELEASE` (the image, at
usr/lib/modules/RELEASE/vmlinuz), `linux-modules-RELEASE` and `linux-base-RELEASE`
(modules.builtin, config, System.map).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nbdfork.errors import ConfigError, NbdforkError
from nbdfork.files import write_json

__all__ = [
    "CachedKernel",
    "FetchError",
    "SUITES",
    "cache_root",
    "cached_kernels",
    "fetch_series",
    "pick_packages",
]

SUITES = ("bookworm", "trixie", "sid")
"""Where the series come from: 6.1 in bookworm, 6.12 in trixie, 7.x in sid."""
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
MIRROR = "http://deb.debian.org/debian"
META = "nbdfork-kernel.json"
_SERIES_RE = re.compile(r"^\d+(\.\d+)?$")  # 6.12, or 7: the newest 7.x


class FetchError(NbdforkError):
    """A kernel could not be fetched or unpacked."""


@dataclass(frozen=True, slots=True)
class CachedKernel:
    """A fetched kernel: image, module tree and where it came from."""

    release: str
    series: str
    image: Path
    modules: Path
    packages: dict[str, str]  # name -> version
    suite: str
    fetched: str

    def describe(self) -> dict[str, object]:
        """JSON-ready, for `nbdfork kernel list` and report.json."""
        return {
            "release": self.release, "series": self.series, "image": str(self.image),
            "modules": str(self.modules), "packages": self.packages, "suite": self.suite,
            "fetched": self.fetched,
        }  # fmt: skip


def cache_root() -> Path:
    """NBDFORK_KERNEL_CACHE, else $XDG_CACHE_HOME/nbdfork/kernels (~/.cache/...)."""
    if os.environ.get("NBDFORK_KERNEL_CACHE"):
        return Path(os.environ["NBDFORK_KERNEL_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nbdfork" / "kernels"


def cached_kernels(root: Path | None = None) -> list[CachedKernel]:
    """Every kernel fetched into the cache, newest release first."""
    found = []
    for meta in (root or cache_root()).glob(f"*/{META}"):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
            found.append(CachedKernel(
                data["release"], data["series"], Path(data["image"]), Path(data["modules"]),
                dict(data["packages"]), data["suite"], data["fetched"],
            ))  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found, key=lambda k: _version_key(k.release), reverse=True)


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text))


# --- the private apt ---------------------------------------------------------------------------


class PrivateApt:
    """apt-get and apt-cache under ROOT/apt: own sources, state, cache, no lock on the host's."""

    def __init__(self, root: Path, suites: Sequence[str] = SUITES) -> None:
        self.root = root / "apt"
        self.suites = suites
        for sub in ("sources", "state/lists/partial", "cache/archives/partial", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "state" / "status").touch()
        (self.root / "sources" / "nbdfork.sources").write_text(
            f"Types: deb\nURIs: {MIRROR}\nSuites: {' '.join(suites)}\nComponents: main\n"
            f"Architectures: amd64\nSigned-By: {KEYRING}\n",
            encoding="utf-8",
        )

    def options(self) -> list[str]:
        """The -o options that keep apt inside ROOT/apt."""
        settings = {
            "Dir::Etc::SourceList": "/dev/null",
            "Dir::Etc::SourceParts": str(self.root / "sources"),
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": str(self.root / "etc"),
            "Dir::State": str(self.root / "state"),
            "Dir::State::status": str(self.root / "state" / "status"),
            "Dir::Cache": str(self.root / "cache"),
            "Debug::NoLocking": "1",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
        }
        return [arg for k, v in settings.items() for arg in ("-o", f"{k}={v}")]

    def run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 900) -> str:
        """Run apt-get/apt-cache; FetchError with apt's last error line on failure."""
        argv = [tool, *self.options(), *args]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                                  timeout=timeout, check=False)  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FetchError(f"{tool} {args[0] if args else ''}: {exc}") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(("E:", "W:"))]
            why = (lines or proc.stderr.strip().splitlines() or ["failed"])[-1]
            raise FetchError(f"{tool} {args[0] if args else ''}: {why.strip()}")
        return proc.stdout

    def update(self) -> None:
        """Download and verify the suites' signed indexes."""
        self.run("apt-get", "update", "-q")

    def names(self, prefix: str) -> list[str]:
        """Package names starting with `prefix`."""
        return self.run("apt-cache", "pkgnames", prefix).split()

    def version(self, name: str) -> tuple[str, str]:
        """(version, suite) apt would download for `name`."""
        out = self.run("apt-cache", "policy", name)
        candidate = re.search(r"Candidate:\s*(\S+)", out)
        suite = next((s for s in self.suites if f" {s}/main" in out or f"/{s} " in out), "")
        return (candidate.group(1) if candidate else "", suite)

    def download(self, names: Sequence[str], into: Path) -> list[Path]:
        """The .deb files of `names`, checked against the signed indexes."""
        self.run("apt-get", "download", "-q", *names, cwd=into)
        return sorted(into.glob("*.deb"))


# --- choosing packages -------------------------------------------------------------------------


_IMAGE_RE = re.compile(r"^linux-image-(\d+\.\d+\.\d+[^-]*(?:-\d+)?)-amd64-unsigned$")
_BINARY_RE = re.compile(r"^linux-binary-(\d+\.\d+\.\d+\S*)-amd64$")


def pick_packages(series: str, names: Sequence[str]) -> tuple[str, list[str]]:
    """(release, packages) of the newest build of `series` among apt's package names: the split
    7.x packaging when present, else linux-image-RELEASE-amd64-unsigned."""
    if not _SERIES_RE.match(series):
        raise ConfigError("kernel", f"{series!r} is not a series like 6.12, 7.2 or 7")
    split = [(m.group(1), n) for n in names if (m := _BINARY_RE.match(n))]
    split = [(r, n) for r, n in split if _in_series(r, series)]
    if split:
        release = max(split, key=lambda rn: _version_key(rn[0]))[0] + "-amd64"
        wanted = [f"linux-binary-{release}", f"linux-modules-{release}"]
        base = f"linux-base-{release}"
        return release, wanted + ([base] if base in names else [])
    images = [(m.group(1), n) for n in names if (m := _IMAGE_RE.match(n))]
    images = [(r, n) for r, n in images if _in_series(r, series)]
    if not images:
        raise FetchError(f"no Debian kernel of series {series} in {', '.join(SUITES)}")
    release, name = max(images, key=lambda rn: _version_key(rn[0]))
    return release + "-amd64", [name]


def _in_series(release: str, series: str) -> bool:
    return release == series or release.startswith(series + ".")


# --- unpacking ---------------------------------------------------------------------------------


def _unpack(debs: Sequence[Path], dest: Path) -> None:
    for deb in debs:
        proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], capture_output=True,
                              text=True, check=False, timeout=600)  # fmt: skip
        if proc.returncode != 0:
            raise FetchError(f"dpkg-deb -x {deb.name}: {proc.stderr.strip()[-200:]}")


def _locate(dest: Path, release: str) -> tuple[Path, Path, Path]:
    """(image, module tree, depmod base) of an unpacked kernel."""
    for base in (dest / "usr", dest):
        modules = base / "lib" / "modules" / release
        if modules.is_dir():
            break
    else:
        raise FetchError(f"{dest}: no lib/modules/{release} in the unpacked packages")
    for image in (modules / "vmlinuz", dest / "boot" / f"vmlinuz-{release}"):
        if image.is_file():
            return image, modules, base
    raise FetchError(f"{dest}: no vmlinuz for {release} in the unpacked packages")


def _depmod(base: Path, release: str) -> None:
    proc = subprocess.run(["depmod", "-b", str(base), release], capture_output=True, text=True,
                          check=False, timeout=300)  # fmt: skip
    if proc.returncode != 0:
        raise FetchError(f"depmod -b {base} {release}: {proc.stderr.strip()[-200:]}")


def fetch_series(series: str, root: Path | None = None, *, apt: PrivateApt | None = None,
                 refresh: bool = True) -> CachedKernel:  # fmt: skip
    """Fetch the newest Debian kernel of `series` into the cache (or return the cached one)."""
    root = root or cache_root()
    root.mkdir(parents=True, exist_ok=True)
    apt = apt or PrivateApt(root)
    if refresh:
        apt.update()
    names = apt.names("linux-")
    release, packages = pick_packages(series, names)
    for kernel in cached_kernels(root):
        if kernel.release == release:
            return kernel
    versions = {name: apt.version(name) for name in packages}
    dest = root / release
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        (work / "debs").mkdir()
        debs = apt.download(packages, work / "debs")
        unpacked = work / "root"
        _unpack(debs, unpacked)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(unpacked, dest)
    image, modules, base = _locate(dest, release)
    _depmod(base, release)
    kernel = CachedKernel(
        release, series, image, modules, {n: v for n, (v, _) in versions.items()},
        next((s for _, s in versions.values() if s), ""),
        dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )  # fmt: skip
    write_json(dest / META, kernel.describe())
    return kernel
