"""Pure parsers of what the storage tools print (btrfs-progs, dmsetup, /dev/kmsg, fsck).

Each one is tested against output captured from the real tools in a guest
(tests/golden/stacks/). A format they do not recognise raises ParseError rather than
reading as zero errors: a checker that cannot read its tool must not look clean.
"""

from __future__ import annotations

import re

import msgspec

from nbdfork.errors import NbdforkError
from nbdfork.experiments.stacks.results import BtrfsChunk, BtrfsStripe, FsckResult, ScrubDevice

__all__ = [
    "KmsgRecord",
    "ParseError",
    "fsck_verdict",
    "parse_chunk_tree",
    "parse_dev_item_devid",
    "parse_device_stats",
    "parse_integrity_status",
    "parse_kmsg_record",
    "parse_scrub_status",
]

_SCRUB_HEAD = re.compile(r"^Scrub device (\S+) \(id (\d+)\)")
_SCRUB_FIELD = re.compile(r"^\s+(\w+): (\d+)$")
_STATS_LINE = re.compile(r"^\[(.+)\]\.(\w+)\s+(\d+)$")
_CHUNK_HEAD = re.compile(r"item \d+ key \(FIRST_CHUNK_TREE CHUNK_ITEM (\d+)\)")
_CHUNK_LEN = re.compile(r"^\s+length (\d+) owner \d+ stripe_len \d+ type (\S+)")
_STRIPE = re.compile(r"^\s+stripe \d+ devid (\d+) offset (\d+)")
_DEVID = re.compile(r"^dev_item\.devid\s+(\d+)$", re.M)
_FSCK_TAIL = 20


class ParseError(NbdforkError):
    """A tool printed something its parser does not recognise."""


def parse_scrub_status(text: str) -> list[ScrubDevice]:
    """`btrfs scrub start -B -d -R` or `btrfs scrub status -d -R`: one entry per device."""
    blocks: list[tuple[str, int, dict[str, int]]] = []
    for line in text.splitlines():
        if m := _SCRUB_HEAD.match(line):
            blocks.append((m[1], int(m[2]), {}))
        elif (f := _SCRUB_FIELD.match(line)) and blocks:
            blocks[-1][2][f[1]] = int(f[2])
    if not blocks:
        raise ParseError("btrfs scrub: no 'Scrub device' block in its output")
    return [_scrub_device(dev, devid, fields) for dev, devid, fields in blocks]


def _scrub_device(device: str, devid: int, fields: dict[str, int]) -> ScrubDevice:
    names = [n for n in ScrubDevice.__struct_fields__ if n not in ("device", "devid")]
    missing = [n for n in names if n not in fields]
    if missing:
        raise ParseError(f"btrfs scrub: {device} has no {', '.join(missing)} (-R output?)")
    return ScrubDevice(device, devid, **{n: fields[n] for n in names})


def parse_device_stats(text: str) -> dict[str, dict[str, int]]:
    """`btrfs device stats MNT` -> {device: {counter: value}}."""
    stats: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        if m := _STATS_LINE.match(line.strip()):
            stats.setdefault(m[1], {})[m[2]] = int(m[3])
    if not stats:
        raise ParseError("btrfs device stats: no [device].counter line")
    return stats


def parse_chunk_tree(text: str) -> list[BtrfsChunk]:
    """`btrfs inspect-internal dump-tree -t chunk DEV` -> every chunk with its stripes."""
    chunks: list[BtrfsChunk] = []
    logical: int | None = None
    for line in text.splitlines():
        if m := _CHUNK_HEAD.search(line):
            logical = int(m[1])
        elif (m := _CHUNK_LEN.match(line)) and logical is not None:
            chunks.append(BtrfsChunk(logical, int(m[1]), m[2], []))
            logical = None
        elif (m := _STRIPE.match(line)) and chunks:
            chunks[-1].stripes.append(BtrfsStripe(int(m[1]), int(m[2])))
    if not chunks:
        raise ParseError("btrfs dump-tree: no CHUNK_ITEM in the chunk tree")
    return chunks


def parse_dev_item_devid(text: str) -> int:
    """`btrfs inspect-internal dump-super DEV` -> the devid of that device."""
    m = _DEVID.search(text)
    if m is None:
        raise ParseError("btrfs dump-super: no dev_item.devid line")
    return int(m[1])


def parse_integrity_status(text: str) -> int:
    """`dmsetup status NAME` of a dm-integrity target -> its mismatch counter.

    The target prints `START LEN integrity MISMATCHES PROVIDED_SECTORS RECALC_SECTOR|-`."""
    fields = text.split()
    if len(fields) < 6 or fields[2] != "integrity":
        raise ParseError(f"dmsetup status: not an integrity target: {text.strip()[:80]!r}")
    return int(fields[3])


class KmsgRecord(msgspec.Struct, frozen=True):
    """One /dev/kmsg record: sequence number, microseconds since boot, the message."""

    seq: int
    usec: int
    text: str


def parse_kmsg_record(record: bytes) -> KmsgRecord:
    """`PRI,SEQ,USEC,FLAGS[,...];MESSAGE\\n[ KEY=VALUE\\n...]` (Documentation/ABI/testing/
    dev-kmsg) -> KmsgRecord; continuation lines (device properties) are dropped."""
    head, sep, rest = record.decode("utf-8", "replace").partition(";")
    fields = head.split(",")
    if not sep or len(fields) < 4:
        raise ParseError(f"/dev/kmsg: not a record: {record[:60]!r}")
    return KmsgRecord(int(fields[1]), int(fields[2]), rest.split("\n", 1)[0])


_FSCK_CLEAN = {"e2fsck": (0,), "xfs_repair": (0,), "btrfs": (0,)}


def fsck_verdict(tool: str, device: str, exit_code: int, output: str) -> FsckResult:
    """The verdict of a read-only fsck from its exit status (e2fsck -n: 4 = errors left
    uncorrected, 8 = operational error; xfs_repair -n: 1 = corruption; btrfs check: 1)."""
    if tool not in _FSCK_CLEAN:
        raise ParseError(f"fsck: unknown tool {tool!r}")
    tail = [line for line in output.splitlines() if line.strip()][-_FSCK_TAIL:]
    return FsckResult(tool, device, exit_code, exit_code in _FSCK_CLEAN[tool], tail)
