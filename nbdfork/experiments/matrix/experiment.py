"""`nbdfork run` declared: its options (the one table the parser, the checks and campaign cells
come from), its main function and its report."""

from __future__ import annotations

import re

from nbdfork.errors import ConfigError
from nbdfork.experiments.matrix.plan import FILESYSTEMS, parse_list
from nbdfork.experiments.stacks.catalogue import STACKS, parse_stacks
from nbdfork.harness.experiment import Experiment, ReportKind
from nbdfork.options import (
    Option,
    Parser,
    parse_bounded_float,
    parse_bounded_int,
    parse_choice,
    parse_out_dir,
    parse_path,
)
from nbdfork.seeds import SEED_LIMIT
from nbdfork.workloads import KICK_MODES, WORKLOADS
from nbdfork.workloads.fio import FIO_PREFIX, validate_jobfile

__all__ = ["EXPERIMENT", "OPTIONS"]

_EPILOG = """\
examples:
  nbdfork run                                   ext4,xfs x stable_writes 0,1 x pwrite, ~2 min
  nbdfork run --fs ext4 --seconds 30 --seed 7   one filesystem, longer, reproducible
  nbdfork run --workload pwrite,mmap,odirect --out results/all
  nbdfork run --fs ext4 --workload fio:jobs/randwrite.fio   your fio job, judged as it arrives
  nbdfork run --kernel 6.12                     another packaged kernel
  nbdfork run --kernel ~/linux/arch/x86/boot/bzImage --modules /tmp/mods/lib/modules/6.13.0
  nbdfork run --device write-latency=lognormal:2ms:0.5 --device size=1G
  sudo nbdfork run --no-vm                      this host's kernel (needs the nbd driver)

exit status: 0 when every configuration ran (violations found are a result),
1 with --fail-on-violation when any configuration found one, 2 on a harness error or lost VM.
"""


def _list_of(allowed: tuple[str, ...]) -> Parser:
    def parse(option: str, text: str) -> tuple[str, ...]:
        return tuple(parse_list(option, text, allowed))

    return parse


def _workloads(option: str, text: str) -> tuple[str, ...]:
    """Workload names, or fio:JOBFILE (checked now: a missing or bad job costs no boot)."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    named = [i for i in items if not i.startswith(FIO_PREFIX)]
    if named or not items:
        parse_list(option, ",".join(named), tuple(WORKLOADS))
    for item in items:
        if item.startswith(FIO_PREFIX):
            try:
                validate_jobfile(item)
            except ConfigError as exc:
                raise ConfigError(option, exc.problem) from None
    return tuple(dict.fromkeys(items))


def _stable_writes(option: str, text: str) -> tuple[int, ...]:
    return tuple(int(s) for s in parse_list(option, text, ("0", "1")))


def _stacks(option: str, text: str) -> tuple[str, ...]:
    try:
        specs = parse_stacks(text)
    except ConfigError as exc:
        raise ConfigError(option, exc.problem) from None
    return tuple(dict.fromkeys(s.label for s in specs))


def _pair(option: str, text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(option, f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _device_param(option: str, text: str) -> tuple[int, str, str]:
    index, sep, pair = text.partition(":")
    if not sep or not index.isdigit() or int(index) > 7:
        raise ConfigError(option, f"{text!r} is not N:KEY=VALUE (N: the stack's device, 0-7)")
    key, value = _pair(option, pair)
    return int(index), key, value


def _sysctl(option: str, text: str) -> tuple[str, str]:
    key, value = _pair(option, text)
    if not re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key):
        raise ConfigError(option, f"{key!r} is not a sysctl name like vm.dirty_ratio")
    return key, value


def _memory(option: str, text: str) -> str:
    if not re.fullmatch(r"[1-9][0-9]{0,6}[MG]", text):
        raise ConfigError(option, f"{text!r} is not a guest memory size like 2G or 1536M")
    return text


OPTIONS: tuple[Option, ...] = (
    Option("kernel", "a packaged release or series (6.1, 6.12, 6.1.0-57-amd64) or a "
           "bzImage/vmlinuz path, or a comma-separated list of them (default: Debian's 6.1)",
           metavar="K"),
    Option("modules", "module tree of a --kernel PATH (default: ROOT/lib/modules/RELEASE above "
           "the image)", parse=parse_path, metavar="DIR"),
    Option("fs", f"filesystems, from {','.join(FILESYSTEMS)}", parse=_list_of(FILESYSTEMS),
           default=("ext4", "xfs")),
    Option("stack", "storage stacks between the filesystem and the devices, comma-separated: "
           f"{', '.join(STACKS)}; modes as dm-integrity:D, md-raid5:skip_copy (default plain)",
           parse=_stacks, default=("plain",), metavar="STACK"),
    Option("stable_writes", "stable_writes settings", parse=_stable_writes, default=(0, 1),
           metavar="0,1"),
    Option("workload", f"workloads, from {','.join(WORKLOADS)}, or fio:JOBFILE (an unmodified "
           "fio job, run on the mount, or on the device with --fs raw)",
           parse=_workloads, default=("pwrite",)),
    Option("seconds", "workload seconds per run, in (0, 3600]",
           parse=parse_bounded_float(0, 3600), default=10.0, metavar="N"),
    Option("seed", "seed of every random choice (default: a fresh one, recorded)",
           parse=parse_bounded_int(0, SEED_LIMIT - 1), campaign=False),
    Option("out", "results directory (default: results/run-YYYYmmdd-HHMMSS)", parse=parse_out_dir,
           campaign=False),
    Option("device", "plugin parameter, repeatable (default: size=512M write-latency=2ms)",
           parse=_pair, kind="repeat", metavar="KEY=VALUE"),
    Option("device_param", "plugin parameter for one device of the stack only, repeatable: "
           "1:error-op=write damages the second leg (device 0 is /dev/nbd0)",
           parse=_device_param, kind="repeat", metavar="N:KEY=VALUE"),
    Option("pages", "hot-set pages per writer thread", parse=parse_bounded_int(1, 1 << 16),
           default=8),
    Option("threads", "writer threads", parse=parse_bounded_int(1, 64), default=1),
    Option("kick", f"how writeback is started ({', '.join(KICK_MODES)})",
           parse=parse_choice(tuple(KICK_MODES)), default="sync_file_range"),
    Option("mkfs_each_run", "mkfs before every run (default: once per filesystem; "
           "stable_writes is still set before every mount)", kind="flag"),
    Option("sysctl", "guest sysctl set before anything runs, repeatable (default: none with "
           "the device on the host)", parse=_sysctl, kind="repeat", metavar="KEY=VALUE"),
    Option("device_location", "run nbdkit + the plugin on the host (default; the guest reaches "
           "it over qemu's restricted user network) or inside the guest, for comparison",
           parse=parse_choice(("host", "guest")), default="host"),
    Option("nbdkit_threads", "nbdkit --threads (default: nbdkit's)",
           parse=parse_bounded_int(1, 1024), metavar="N"),
    Option("fail_on_violation", "exit 1 if any run found a violation", kind="flag"),
    Option("no_vm", "run on this host's kernel (root, nbd driver)", kind="flag"),
    Option("accel", "accelerator", parse=parse_choice(("auto", "kvm", "tcg")), default="auto",
           hidden=True),
    Option("cpus", "guest vCPUs", parse=parse_bounded_int(1, 64), default=2),
    Option("memory", "guest memory", parse=_memory, default="2G"),
    Option("json", "print report.json instead of the table", kind="flag", campaign=False),
)  # fmt: skip

EXPERIMENT = Experiment(
    name="run",
    help="boot a real kernel and run the fs x stable_writes x workload matrix",
    description="Boot a real Linux kernel under qemu (KVM when it works, else TCG), attach "
    "/dev/nbd0 to the nbdfork device, and run every configuration of the matrix in one "
    "boot. Writes OUT/report.json (and report.md/html and plots when the renderer is "
    "installed) and prints a table.",
    epilog=_EPILOG,
    options=OPTIONS,
    main="nbdfork.experiments.matrix.cli:main",
    report=ReportKind("nbdfork.run/1", "nbdfork.experiments.matrix.schema:MatrixReport",
                      "nbdfork.experiments.matrix.render:render_report"),
    boots_vm=True,
    ok_statuses=(0, 1),
)
