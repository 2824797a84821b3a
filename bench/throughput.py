"""Throughput of nbdfork against nbdkit's C memory plugin and a minimal Python plugin.

Run from the project root after scripts/setup (docs/benchmarks.md explains the numbers):

    .venv/bin/python bench/throughput.py                 # about 5 minutes
    .venv/bin/python bench/throughput.py --quick         # under a minute
    .venv/bin/python bench/throughput.py --json out.json # also write the results as JSON

One run starts nbdkit servers on unix sockets — `c_memory` (nbdkit's C memory plugin, the
practical limit), `minimal_python` (bench/minimal_plugin.py, a bytearray store), `oracle_off`,
`oracle_on` (formats=stamp, the default) and `oracle_formats` (every format) of
plugin/nbdfork_plugin.py (no latency, no reordering), and one server per format alone
(`oracle_fio`, ...: 4k randwrite only) — then measures every workload on every server,
repetition after repetition, rotating the server order so that machine drift hits all alike,
and reports medians and ratios of medians. `--workloads 4k_randwrite` measures one workload.

fio cannot write stamped pages (its buffer_pattern is at most 512 bytes, and a stamped page
is 4096 bytes whose 8 sectors differ), so the stamped workloads are driven by nbdcopy (libnbd's
C copier: sequential, a fixed number of requests in flight) copying a file of stamped pages;
the same nbdcopy run with random bytes gives the like-for-like unstamped row.

Last, a fresh `oracle_on` server with a 64 GiB device gets 200 MiB of stamped 1 MiB writes at
random places: its resident set (VmRSS) is read before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import itertools
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from a fresh clone: import nbdfork from here
    sys.path.insert(0, str(ROOT))

import nbd  # noqa: E402  libnbd's Python binding (python3-libnbd, seen through the venv)

from nbdfork.harness import nbdkit as launch  # noqa: E402
from nbdfork.oracle.blocks import FormatJudge  # noqa: E402
from nbdfork.oracle.stamp import PAGE_SIZE, encode_pages  # noqa: E402
from nbdfork.oracle.verify import Oracle, WriteRequest  # noqa: E402

SCHEMA = "nbdfork.bench.throughput/1"
SINGLE_FORMATS = ("fio", "xfs", "btrfs", "ext4")
ALL_FORMATS = ",".join(("stamp", *SINGLE_FORMATS))
PLUGIN = ROOT / "plugin" / "nbdfork_plugin.py"
MINIMAL = ROOT / "bench" / "minimal_plugin.py"
MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class Target:
    """One nbdkit server: its name in tables and JSON, its nbdkit plugin arguments, and the
    workloads it is measured with (empty: every one)."""

    name: str
    plugin: tuple[str, ...]
    only: tuple[str, ...] = ()

    def runs(self, workload: str) -> bool:
        """Whether this target is measured with `workload`."""
        return not self.only or workload in self.only


TARGETS = (
    Target("c_memory", ("memory",)),
    Target("minimal_python", ("python", str(MINIMAL))),
    Target("oracle_off", ("python", str(PLUGIN), "oracle=off")),
    Target("oracle_on", ("python", str(PLUGIN), "oracle=on")),
    Target("oracle_formats", ("python", str(PLUGIN), "oracle=on", f"formats={ALL_FORMATS}")),
    *(Target(f"oracle_{name}", ("python", str(PLUGIN), "oracle=on", f"formats={name}"),
             ("4k_randwrite",)) for name in SINGLE_FORMATS),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Workload:
    """One load: fio (time-based, unstamped) or nbdcopy (a file copied, stamped or not)."""

    name: str
    tool: str  # "fio" | "nbdcopy"
    rw: str  # fio's rw=, or "write" for nbdcopy (sequential)
    bs: int
    qd: int
    payload: str  # "fio" (fio's random buffers), "stamped" or "random"

    def describe(self) -> str:
        """A short human label, e.g. 'fio 4k randwrite QD32'."""
        size = f"{self.bs // MIB}m" if self.bs >= MIB else f"{self.bs // 1024}k"
        extra = f" {self.payload}" if self.tool == "nbdcopy" else ""
        return f"{self.tool} {size} {self.rw} QD{self.qd}{extra}"


WORKLOADS = (
    Workload("4k_randwrite", "fio", "randwrite", 4096, 32, "fio"),
    Workload("4k_randread", "fio", "randread", 4096, 32, "fio"),
    Workload("1m_write", "fio", "write", MIB, 8, "fio"),
    Workload("4k_write_stamped", "nbdcopy", "write", 4096, 32, "stamped"),
    Workload("4k_write_unstamped", "nbdcopy", "write", 4096, 32, "random"),
    Workload("1m_write_stamped", "nbdcopy", "write", MIB, 8, "stamped"),
)

# name -> (numerator (target, workload), denominator (target, workload))
Cell = tuple[str, str]
RATIOS: dict[str, tuple[Cell, Cell]] = {
    "oracle_on_vs_minimal_python_4k_randwrite": (
        ("oracle_on", "4k_randwrite"), ("minimal_python", "4k_randwrite")),
    "oracle_formats_vs_minimal_python_4k_randwrite": (
        ("oracle_formats", "4k_randwrite"), ("minimal_python", "4k_randwrite")),
    "oracle_formats_vs_on_4k_randwrite": (
        ("oracle_formats", "4k_randwrite"), ("oracle_on", "4k_randwrite")),
    **{f"oracle_{name}_vs_minimal_python_4k_randwrite": (
        (f"oracle_{name}", "4k_randwrite"), ("minimal_python", "4k_randwrite"))
       for name in SINGLE_FORMATS},
    "oracle_on_vs_c_memory_4k_randwrite": (
        ("oracle_on", "4k_randwrite"), ("c_memory", "4k_randwrite")),
    "oracle_on_vs_c_memory_1m_write": (("oracle_on", "1m_write"), ("c_memory", "1m_write")),
    "oracle_on_vs_off_4k_randwrite": (
        ("oracle_on", "4k_randwrite"), ("oracle_off", "4k_randwrite")),
    "oracle_on_vs_minimal_python_4k_randread": (
        ("oracle_on", "4k_randread"), ("minimal_python", "4k_randread")),
    "oracle_on_vs_minimal_python_1m_write": (
        ("oracle_on", "1m_write"), ("minimal_python", "1m_write")),
    "oracle_off_vs_minimal_python_4k_randwrite": (
        ("oracle_off", "4k_randwrite"), ("minimal_python", "4k_randwrite")),
    "minimal_python_vs_c_memory_4k_randwrite": (
        ("minimal_python", "4k_randwrite"), ("c_memory", "4k_randwrite")),
    "oracle_on_vs_minimal_python_4k_write_stamped": (
        ("oracle_on", "4k_write_stamped"), ("minimal_python", "4k_write_stamped")),
    "oracle_on_vs_c_memory_4k_write_stamped": (
        ("oracle_on", "4k_write_stamped"), ("c_memory", "4k_write_stamped")),
    "oracle_on_vs_off_4k_write_stamped": (
        ("oracle_on", "4k_write_stamped"), ("oracle_off", "4k_write_stamped")),
    "oracle_on_stamped_vs_unstamped_4k_write": (
        ("oracle_on", "4k_write_stamped"), ("oracle_on", "4k_write_unstamped")),
    "oracle_on_vs_c_memory_1m_write_stamped": (
        ("oracle_on", "1m_write_stamped"), ("c_memory", "1m_write_stamped")),
    "oracle_on_vs_off_1m_write_stamped": (
        ("oracle_on", "1m_write_stamped"), ("oracle_off", "1m_write_stamped")),
}  # fmt: skip

GOALS = {  # issue 5: oracle on, no latency or reordering
    "oracle_on_vs_minimal_python_4k_randwrite": 0.9,
    "oracle_on_vs_c_memory_4k_randwrite": 0.4,
    "oracle_on_vs_c_memory_1m_write": 0.9,
    "oracle_on_vs_off_4k_randwrite": 0.9,
}
MEMORY_GOAL = 2.0  # nbdkit's VmRSS after writing <= 2x the bytes written


@dataclass(frozen=True, slots=True)
class Settings:
    """How much to measure; `--quick` and the full run differ only here."""

    reps: int = 5
    runtime: float = 3.0  # seconds per fio run
    device_size: int = 512 * MIB
    memory_device: int = 64 << 30
    memory_written: int = 200 * MIB

    @property
    def volume_4k(self) -> int:
        """Bytes nbdcopy copies with 4 KiB requests: about `runtime` at ~8k IOPS or more."""
        return _clamp(int(self.runtime * 32 * MIB), 1 * MIB, self.device_size)

    @property
    def volume_1m(self) -> int:
        """Bytes nbdcopy copies with 1 MiB requests."""
        return _clamp(int(self.runtime * 256 * MIB), 8 * MIB, self.device_size)


QUICK = Settings(reps=2, runtime=0.5, device_size=256 * MIB)


def _clamp(value: int, low: int, high: int) -> int:
    """`value` within [low, high], rounded down to a MiB."""
    return max(low, min(high, value)) // MIB * MIB


@dataclass(slots=True)
class Sample:
    """One measured run."""

    iops: float
    mb_s: float
    ops: int  # requests completed
    cpu_us: float = 0.0  # nbdkit's CPU time (all threads, user + system) per request


@dataclass(slots=True)
class Series:
    """All runs of one workload on one target, and their medians."""

    runs: list[Sample] = field(default_factory=list)

    @property
    def iops(self) -> float:
        """Median IOPS."""
        return statistics.median(s.iops for s in self.runs)

    @property
    def mb_s(self) -> float:
        """Median MB/s (10^6 bytes per second)."""
        return statistics.median(s.mb_s for s in self.runs)

    @property
    def cpu_us(self) -> float:
        """Median CPU microseconds nbdkit spent per request."""
        return statistics.median(s.cpu_us for s in self.runs)


# --- servers -------------------------------------------------------------------------------


class Server:
    """nbdkit serving one target on a unix socket, as a child of this process."""

    def __init__(self, target: Target, size: int, workdir: Path) -> None:
        self.target = target
        self.socket = workdir / f"{target.name}.sock"
        self.log = (workdir / f"{target.name}.log").open("w")
        argv = launch.server_argv([*target.plugin, f"size={size}"], unix=self.socket,
                                  nbdkit=_tool("nbdkit"))  # fmt: skip
        env = dict(os.environ, VIRTUAL_ENV=sys.prefix)  # the plugin finds the venv through it
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = Path(self.log.name).read_text()
                raise RuntimeError(f"nbdkit ({target.name}) did not start:\n{log}")
            time.sleep(0.02)

    @property
    def uri(self) -> str:
        """The NBD URI of the socket."""
        return f"nbd+unix:///?socket={self.socket}"

    def cpu_seconds(self) -> float:
        """CPU time nbdkit has used so far, user + system, all threads (dead ones included)."""
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is [0]
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss(self) -> int:
        """nbdkit's resident set size in bytes (VmRSS)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc/PID/status")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if nbdkit has not exited within 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def serving(targets: Sequence[Target], size: int, workdir: Path) -> Iterator[dict[str, Server]]:
    """Start one server per target; all are stopped on the way out, whatever happens."""
    servers: dict[str, Server] = {}
    try:
        for target in targets:
            servers[target.name] = Server(target, size, workdir)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _tool(name: str) -> str:
    """The absolute path of a required program."""
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"bench: {name} is not installed (run scripts/setup)")
    return path


# --- load generators -------------------------------------------------------------------------


def run_fio(uri: str, w: Workload, settings: Settings, out: Path, *, timed: bool = True) -> Sample:
    """One fio run over NBD; time-based unless `timed` is False (then one pass of the device)."""
    argv = [_tool("fio"), "--name=bench", "--ioengine=nbd", f"--uri={uri}", f"--rw={w.rw}",
            f"--bs={w.bs}", f"--iodepth={w.qd}", "--output-format=json",
            f"--output={out}"]  # fmt: skip
    if timed:  # no ramp_time: the servers are warm (prefilled), and CPU is read per run
        argv += ["--time_based", f"--runtime={_ms(settings.runtime)}"]
    _run(argv)
    job = json.loads(out.read_text())["jobs"][0]
    side = job["read" if "read" in w.rw else "write"]
    return Sample(float(side["iops"]), float(side["bw_bytes"]) / 1e6, int(side["total_ios"]))


def run_nbdcopy(uri: str, w: Workload, source: Path) -> Sample:
    """Copy `source` to the server with nbdcopy: one connection, one thread, `w.qd` in flight."""
    argv = [_tool("nbdcopy"), "--connections=1", "--threads=1", f"--requests={w.qd}",
            f"--request-size={w.bs}", "--sparse=0", str(source), uri]  # fmt: skip
    start = time.monotonic()
    _run(argv)
    elapsed = time.monotonic() - start
    size = source.stat().st_size
    return Sample(size / w.bs / elapsed, size / elapsed / 1e6, size // w.bs)


def _ms(seconds: float) -> str:
    """A duration as fio reads it."""
    return f"{round(seconds * 1000)}ms"


def _run(argv: list[str]) -> None:
    """Run a load generator; its failure is the benchmark's failure."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}): {proc.stderr}")


def make_sources(workdir: Path, settings: Settings) -> dict[str, Path]:
    """The files nbdcopy copies, per workload: stamped pages or random bytes."""
    pool = {
        # 4096 pages of stream 1, generation 1: repeated copies land at other device offsets,
        # which the oracle accepts (a VALID page may live anywhere; same generation again).
        "stamped": encode_pages(1, 0, [1] * min(4096, settings.volume_1m // PAGE_SIZE)),
        "random": random.Random(5).randbytes(16 * MIB),
    }
    sources = {}
    for w in WORKLOADS:
        if w.tool != "nbdcopy":
            continue
        path = sources[w.name] = workdir / f"{w.name}.img"
        volume = settings.volume_4k if w.bs < MIB else settings.volume_1m
        chunk = pool[w.payload]
        with path.open("wb") as out:
            for at in range(0, volume, len(chunk)):
                out.write(chunk[: volume - at])
    return sources


# --- the run ----------------------------------------------------------------------------------


def measure(
    settings: Settings,
    workdir: Path,
    workloads: Sequence[Workload] = WORKLOADS,
    *,
    log: bool = True,
) -> dict[str, dict[str, Series]]:
    """Every workload on every target that runs it, `settings.reps` times, interleaved."""
    sources = make_sources(workdir, settings)
    results = {t.name: {w.name: Series() for w in workloads if t.runs(w.name)} for t in TARGETS}
    fio_out = workdir / "fio.json"
    with serving(TARGETS, settings.device_size, workdir) as servers:
        prefill = Workload("prefill", "fio", "write", MIB, 8, "fio")
        for server in servers.values():  # steady state: every page allocated before measuring
            run_fio(server.uri, prefill, settings, fio_out, timed=False)
        for rep in range(settings.reps):
            order = TARGETS[rep % len(TARGETS) :] + TARGETS[: rep % len(TARGETS)]
            for w in workloads:
                for target in order:
                    if w.name not in results[target.name]:
                        continue
                    server = servers[target.name]
                    cpu = server.cpu_seconds()
                    if w.tool == "fio":
                        sample = run_fio(server.uri, w, settings, fio_out)
                    else:
                        sample = run_nbdcopy(server.uri, w, sources[w.name])
                    sample.cpu_us = (server.cpu_seconds() - cpu) / max(sample.ops, 1) * 1e6
                    results[target.name][w.name].runs.append(sample)
            if log:
                print(f"bench: repetition {rep + 1}/{settings.reps} done", file=sys.stderr)
    return results


def measure_memory(settings: Settings, workdir: Path) -> dict[str, object]:
    """VmRSS of an oracle_on server with a large device before and after stamped writes."""
    target = Target("memory_oracle_on", ("python", str(PLUGIN), "oracle=on"))
    chunk = encode_pages(2, 0, [1] * (MIB // PAGE_SIZE))
    rng = random.Random(7)
    slots = rng.sample(range(settings.memory_device // MIB), settings.memory_written // MIB)
    with serving([target], settings.memory_device, workdir) as servers:
        server = servers[target.name]
        handle = nbd.NBD()
        handle.connect_uri(server.uri)
        before = server.rss()
        for slot in slots:
            handle.pwrite(chunk, slot * MIB)
        handle.flush()
        after = server.rss()
        handle.shutdown()
        del handle
    written = len(slots) * MIB
    return {
        "device_size": settings.memory_device,
        "written": written,
        "payload": "stamped 1 MiB writes at random 1 MiB-aligned offsets",
        "rss_before": before,
        "rss_after": after,
        "rss_growth": after - before,
        "rss_after_vs_written": after / written,
        "goal": MEMORY_GOAL,
        "met": after <= MEMORY_GOAL * written,
    }


def _best_us(call: Callable[[], object], repeat: int) -> float:
    """The best of 5 timings of `repeat` calls, in µs per call."""
    return round(min(timeit.repeat(call, number=repeat, repeat=5)) / repeat * 1e6, 2)


def _judge_one(oracle: Any, ids: Iterator[int], data: bytes) -> None:
    """One WRITE through the oracle: arrival then reply, at 200 MiB."""
    rid = next(ids)
    oracle.write_arrived(WriteRequest(rid, 1, 200 * MIB, len(data), False, 0.0), data)
    oracle.write_replied(rid, ok=True, time=0.0)


def format_costs(workdir: Path, repeat: int = 2000) -> dict[str, dict[str, float]]:
    """In-process µs per WRITE of each format as the oracle runs it (the shared pre-pass,
    then the format's scan by place, or its full scan if a probe word is seen), and of the
    whole oracle (arrival and reply) with the stamp alone and with every format, on WRITEs
    holding no recognisable block: random and zero 4 KiB, random 128 KiB. Stateful formats
    are primed first with the first MiB of a real mkfs image (so they look for metadata as
    they do during a run)."""
    payloads = {"4k_random": os.urandom(4096), "4k_zero": bytes(4096),
                "128k_random": os.urandom(128 << 10)}  # fmt: skip
    primers = {}
    for fs, argv in (("ext4", ["mkfs.ext4", "-q", "-F", "-b", "4096"]),
                     ("xfs", ["mkfs.xfs", "-q", "-f"]), ("btrfs", ["mkfs.btrfs", "-q", "-f"])):
        image = workdir / f"{fs}.img"
        with image.open("wb") as f:
            f.truncate(320 * MIB)
        _run([_tool(argv[0]), *argv[1:], str(image)])
        with image.open("rb") as f:
            primers[fs] = f.read(MIB)
    out: dict[str, dict[str, float]] = {}
    for name in SINGLE_FORMATS:
        judge = FormatJudge([name])
        if name in primers:
            judge.scan(memoryview(primers[name]), 0)
        out[name] = {label: _best_us(functools.partial(judge.scan, memoryview(data), 200 * MIB),
                                     repeat) for label, data in payloads.items()}  # fmt: skip

    class _Null:
        def emit(self, event: object) -> None:
            pass

    for label, formats in (("oracle_stamp", ("stamp",)),
                           ("oracle_all_formats", tuple(ALL_FORMATS.split(",")))):
        oracle = Oracle(_Null(), None, formats)  # type: ignore[arg-type]
        for primer in primers.values():
            oracle.write_arrived(WriteRequest(0, 1, 0, MIB, False, 0.0), primer)
            oracle.write_replied(0, ok=True, time=0.0)
        ids = itertools.count(1)
        out[label] = {plabel: _best_us(functools.partial(_judge_one, oracle, ids, data), repeat)
                      for plabel, data in payloads.items()}  # fmt: skip
    return out


def ratios(results: dict[str, dict[str, Series]]) -> dict[str, float]:
    """Every ratio of RATIOS whose two cells were measured, from medians of IOPS."""
    out = {}
    for name, ((t1, w1), (t2, w2)) in RATIOS.items():
        if w1 in results.get(t1, {}) and w2 in results.get(t2, {}):
            out[name] = round(results[t1][w1].iops / results[t2][w2].iops, 3)
    return out


def report(
    settings: Settings,
    results: dict[str, dict[str, Series]],
    memory: dict[str, object] | None,
    started: dt.datetime,
    elapsed: float,
) -> dict[str, object]:
    """Everything the JSON file holds."""
    ratio = ratios(results)
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "duration_s": round(elapsed, 1),
        "host": _host(),
        "settings": {
            **asdict(settings),
            "volume_4k": settings.volume_4k,
            "volume_1m": settings.volume_1m,
        },
        "targets": {t.name: " ".join(t.plugin) for t in TARGETS},
        "workloads": {w.name: {**asdict(w), "label": w.describe()} for w in WORKLOADS},
        "results": {t: {w: _medians(s) for w, s in by_w.items()} for t, by_w in results.items()},
        "ratios": ratio,
        "goals": {
            name: {"ratio": ratio[name], "goal": goal, "met": ratio[name] >= goal}
            for name, goal in GOALS.items()
            if name in ratio
        },
        "memory": memory,
    }


def _medians(series: Series) -> dict[str, object]:
    """One JSON cell: medians, and every run's IOPS and CPU per request."""
    return {
        "iops": round(series.iops, 1),
        "mb_s": round(series.mb_s, 2),
        "cpu_us_per_op": round(series.cpu_us, 2),
        "runs_iops": [round(r.iops, 1) for r in series.runs],
        "runs_cpu_us_per_op": [round(r.cpu_us, 2) for r in series.runs],
    }


def _host() -> dict[str, object]:
    """What the numbers depend on: CPUs, load, tool versions."""

    def version(argv: list[str]) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (proc.stdout or proc.stderr).splitlines()[0] if proc.returncode == 0 else "?"

    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": sys.version.split()[0],
        "nbdkit": version([_tool("nbdkit"), "--version"]),
        "fio": version([_tool("fio"), "--version"]),
        "nbdcopy": version([_tool("nbdcopy"), "--version"]),
    }


Cells = dict[str, dict[str, dict[str, float]]]


def _rows(doc: dict[str, object]) -> tuple[Cells, list[str], list[Workload]]:
    """The results of `doc`, its targets (as measured: a saved file may predate some) and the
    workloads measured on any of them."""
    results: Cells = doc["results"]  # type: ignore[assignment]
    measured = [w for w in WORKLOADS if any(w.name in by_w for by_w in results.values())]
    return results, list(results), measured


def _iops(cell: dict[str, float] | None, width: int = 0) -> str:
    """'IOPS (MB/s)' of a cell, or a dash where the target does not run the workload."""
    if cell is None:
        return "-"
    return f"{cell['iops']:>{width},.0f} ({cell['mb_s']:>{max(width - 3, 0)},.0f})"


def _cpu(cell: dict[str, float] | None) -> str:
    """nbdkit CPU µs per request of a cell, or a dash."""
    return "-" if cell is None else f"{cell.get('cpu_us_per_op', 0):.1f}"


def render(doc: dict[str, object]) -> str:
    """The terminal table: medians per workload and target, then ratios, goals, memory."""
    results, names, measured = _rows(doc)
    lines = [f"{'median IOPS (MB/s)':34}" + "".join(f"{n:>20}" for n in names)]
    for w in measured:
        cells = [_iops(results[n].get(w.name), 9) for n in names]
        lines.append(f"{w.describe():34}" + "".join(f"{c:>20}" for c in cells))
    lines += ["", f"{'nbdkit CPU us per request (median)':34}" + "".join(f"{n:>20}" for n in names)]
    for w in measured:
        cells = [_cpu(results[n].get(w.name)) for n in names]
        lines.append(f"{w.describe():34}" + "".join(f"{c:>20}" for c in cells))
    lines.append("")
    goals: dict[str, dict[str, object]] = doc["goals"]  # type: ignore[assignment]
    for name, value in doc["ratios"].items():  # type: ignore[attr-defined]
        goal = goals.get(name)
        mark = ""
        if goal is not None:
            mark = f"   goal >= {goal['goal']}: {'met' if goal['met'] else 'NOT MET'}"
        lines.append(f"{name:48} {value:6.3f}{mark}")
    lines += _render_costs(doc)
    memory = doc["memory"]
    if isinstance(memory, dict):
        lines += ["", (
            f"memory: {memory['device_size'] >> 30} GiB device, {memory['written'] >> 20} MiB "
            f"written: VmRSS {memory['rss_before'] / MIB:.0f} -> {memory['rss_after'] / MIB:.0f} "
            f"MiB = {memory['rss_after_vs_written']:.2f}x written   goal <= {MEMORY_GOAL}x: "
            f"{'met' if memory['met'] else 'NOT MET'}")]  # fmt: skip
    return "\n".join(lines)


def _render_costs(doc: dict[str, object], *, markdown: bool = False) -> list[str]:
    """The per-format cost table (µs per WRITE holding no recognisable block), if measured."""
    costs: dict[str, dict[str, float]] | None = doc.get("format_costs")  # type: ignore[assignment]
    if not costs:
        return []
    cols = list(next(iter(costs.values())))
    if markdown:
        lines = ["", "| µs per WRITE, no recognisable block | " + " | ".join(cols) + " |",
                 "|---|" + "---:|" * len(cols)]  # fmt: skip
        lines += [f"| `{name}` | " + " | ".join(f"{row[c]:.1f}" for c in cols) + " |"
                  for name, row in costs.items()]  # fmt: skip
        return lines
    lines = ["", f"{'us per WRITE, no recognisable block':40}" + "".join(f"{c:>14}" for c in cols)]
    lines += [f"{name:40}" + "".join(f"{row[c]:>14.1f}" for c in cols)
              for name, row in costs.items()]  # fmt: skip
    return lines


def render_markdown(doc: dict[str, object]) -> str:
    """The same figures as Markdown tables, for docs/benchmarks.md."""
    results, names, measured = _rows(doc)
    lines = ["| median IOPS (MB/s) | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---|" + "---:|" * len(names)]  # fmt: skip
    for w in measured:
        cells = [_iops(results[n].get(w.name)) for n in names]
        lines.append(f"| {w.describe()} | " + " | ".join(cells) + " |")
    lines += ["", "| nbdkit CPU µs per request (median) | " + " | ".join(f"`{n}`" for n in names)
              + " |", "|---|" + "---:|" * len(names)]  # fmt: skip
    for w in measured:
        cells = [_cpu(results[n].get(w.name)) for n in names]
        lines.append(f"| {w.describe()} | " + " | ".join(cells) + " |")
    costs = _render_costs(doc, markdown=True)
    lines += costs
    lines += ["", "| ratio of medians | value | goal |", "|---|---:|---|"]
    goals: dict[str, dict[str, object]] = doc["goals"]  # type: ignore[assignment]
    for name, value in doc["ratios"].items():  # type: ignore[attr-defined]
        goal = goals.get(name)
        mark = ""
        if goal is not None:
            mark = f"≥ {goal['goal']}: {'met' if goal['met'] else '**not met**'}"
        lines.append(f"| `{name}` | {value:.3f} | {mark} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    """Command-line options; --quick picks the short preset, the others override a preset."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a short run (under a minute)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--from-json", type=Path, metavar="FILE",
                   help="measure nothing: print the tables of a saved JSON file")  # fmt: skip
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    p.add_argument("--reps", type=int, help="repetitions of every workload on every target")
    p.add_argument("--runtime", type=float, help="seconds per fio run (scales nbdcopy volumes)")
    p.add_argument("--device-size", type=int, metavar="MIB", help="device size of the servers")
    p.add_argument("--memory-written", type=int, metavar="MIB",
                   help="MiB written in the memory check (0 skips it)")  # fmt: skip
    p.add_argument("--workloads", metavar="NAME,...",
                   help=f"measure only these ({','.join(w.name for w in WORKLOADS)})")
    args = p.parse_args(argv)
    known = {w.name: w for w in WORKLOADS}
    names = args.workloads.split(",") if args.workloads else list(known)
    if unknown := [n for n in names if n not in known]:
        p.error(f"--workloads: unknown workload {unknown[0]!r} (known: {','.join(known)})")
    args.workloads = [known[n] for n in dict.fromkeys(names)]
    settings = QUICK if args.quick else Settings()
    overrides: dict[str, object] = {}
    if args.reps is not None:
        overrides["reps"] = int(_positive(p, "--reps", args.reps))
    if args.runtime is not None:
        overrides["runtime"] = _positive(p, "--runtime", args.runtime)
    if args.device_size is not None:
        overrides["device_size"] = int(_positive(p, "--device-size", args.device_size)) * MIB
    if args.memory_written is not None:
        overrides["memory_written"] = max(0, args.memory_written) * MIB
    return args, Settings(**{**asdict(settings), **overrides})


def _positive(parser: argparse.ArgumentParser, name: str, value: float) -> float:
    """`value`, or a usage error if it is not positive."""
    if value <= 0:
        parser.error(f"{name} must be positive")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, write the JSON file if asked."""
    args, settings = parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print(render_markdown(saved) if args.markdown else render(saved))
        return 0
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbdfork-bench-") as tmp:
        workdir = Path(tmp)
        results = measure(settings, workdir, args.workloads)
        memory = measure_memory(settings, workdir) if settings.memory_written else None
        costs = format_costs(workdir, 300 if settings is QUICK else 2000)
    doc = report(settings, results, memory, started, time.monotonic() - clock)
    doc["format_costs"] = costs
    print(render_markdown(doc) if args.markdown else render(doc))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"\nbench: results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
