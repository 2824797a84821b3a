"""The tear window as a swept variable: torn pages per stamped page against the settings that
open it — the guest's TCP send buffer, the device's service time and queue depth, the hot set.

Run: .venv/bin/python bench/tear_window.py --out results/tear-window [--seconds 10] [--quick]

One `nbdfork run` (one boot, device on the host) per setting, ext4 and xfs with
stable_writes=0 (the baseline also with 1), each axis varied alone around the baseline. Writes
OUT/sweep.json, OUT/sweep.md (the table docs/tear-window.md quotes) and OUT/sweep.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINUX_TCP_WMEM = "4096 16384 4194304"
NBDFORK = Path(sys.executable).parent / "nbdfork"


@dataclass(frozen=True)
class Setting:
    """One point of the sweep: what differs from the baseline, and its name."""

    name: str
    axis: str
    tcp_wmem: str = "4096 4096 4096"
    latency: str = "2ms"
    threads: int | None = None
    pages: int = 8
    stable_writes: str = "0"
    extra: dict[str, str] = field(default_factory=dict)

    def argv(self, out: Path, seconds: float, seed: int) -> list[str]:
        """The `nbdfork run` command for this setting."""
        argv = [
            str(NBDFORK), "run", "--out", str(out), "--fs", "ext4,xfs",
            "--stable-writes", self.stable_writes, "--seconds", str(seconds), "--seed", str(seed),
            "--device", "size=512M", "--device", f"write-latency={self.latency}",
            "--sysctl", f"net.ipv4.tcp_wmem={self.tcp_wmem}", "--pages", str(self.pages),
            "--json",
        ]  # fmt: skip
        if self.threads is not None:
            argv += ["--nbdkit-threads", str(self.threads)]
        return argv


def settings(quick: bool) -> list[Setting]:
    """tcp_wmem=4096 with 2 ms writes (the reference point, with stable_writes 0 and 1), then
    one axis at a time around it; `nbdfork run`'s own default is the Linux-default row."""
    points = [
        Setting("tcp_wmem=4096", "socket", stable_writes="0,1"),
        Setting("tcp_wmem=Linux default", "socket", tcp_wmem=LINUX_TCP_WMEM),
        Setting("tcp_wmem=8192", "socket", tcp_wmem="8192 8192 8192"),
        Setting("latency=0", "service", latency="0"),
        Setting("latency=10ms", "service", latency="10ms"),
        Setting("nbdkit threads=1", "queue", threads=1),
        Setting("hot set 64 pages", "hot set", pages=64),
    ]
    return points[:3] if quick else points


def run_point(point: Setting, out: Path, seconds: float, seed: int) -> dict[str, Any]:
    """Boot once for `point`; its rows (fs, stable_writes, torn, stamped, p99s)."""
    target = out / point.name.replace(" ", "_").replace("=", "-")
    proc = subprocess.run(point.argv(target, seconds, seed), capture_output=True, text=True,
                          check=False, timeout=1800)  # fmt: skip
    report_path = target / "report.json"
    if not report_path.exists():
        return {"setting": point.name, "error": proc.stderr.strip()[-300:] or "no report"}
    report = json.loads(report_path.read_text())
    rows = []
    for run in report["runs"]:
        service = run.get("device_write_service_ms") or {}
        rows.append({
            "fs": run["fs"], "stable_writes": run["stable_writes"], "torn": run["torn"],
            "stamped": run["stamped_pages"], "outcome": run["outcome"],
            "writer_p99_ms": run["writer_latency_ms"]["p99"], "device_p99_ms": service.get("p99"),
        })  # fmt: skip
    return {"setting": point.name, "axis": point.axis, "rows": rows, "dir": str(target)}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: list[dict[str, Any]]) -> str:
    """The sweep table."""
    lines = [
        "| setting | fs | stable_writes | torn / stamped | per 1,000 | writer p99 ms | "
        "device p99 ms |",
        "|---|---|--:|--:|--:|--:|--:|",
    ]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['setting']} | failed: {result['error']} | | | | | |")
            continue
        for row in result["rows"]:
            rate = 1000 * row["torn"] / row["stamped"] if row["stamped"] else 0.0
            lines.append(
                f"| {result['setting']} | {row['fs']} | {row['stable_writes']} | "
                f"{row['torn']} / {row['stamped']} | {rate:.1f} | {_ms(row['writer_p99_ms'])} | "
                f"{_ms(row['device_p99_ms'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Torn per 1,000 stamped pages per setting, ext4 and xfs side by side (stable_writes=0)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r["setting"] for r in results if "rows" in r]
    fig, ax = plt.subplots(figsize=(9, 4))
    for offset, fs in ((-0.2, "ext4"), (0.2, "xfs")):
        rates = []
        for r in results:
            if "rows" not in r:
                continue
            row = next((x for x in r["rows"] if x["fs"] == fs and x["stable_writes"] == 0), None)
            rates.append(1000 * row["torn"] / row["stamped"] if row and row["stamped"] else 0.0)
        ax.bar([i + offset for i in range(len(rates))], rates, width=0.4, label=fs)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right")
    ax.set_ylabel("torn per 1,000 pages (sw=0)")
    ax.set_title("The tear window: device on the host, guest over TCP")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep and write sweep.json, sweep.md and sweep.png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="a new results directory")
    parser.add_argument("--seconds", type=float, default=10.0, help="workload seconds per run")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="baseline and the socket axis only")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for point in settings(args.quick):
        print(f"tear_window: {point.name} ...", flush=True)
        results.append(run_point(point, args.out, args.seconds, args.seed))
        (args.out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (args.out / "sweep.md").write_text(table)
    plot(results, args.out / "sweep.png")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
