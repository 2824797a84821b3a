"""Formats in the per-WRITE path: real blocks from real tools (mkfs images, fio files, fio's nbd
engine) through the device and its oracle, with `formats=` and the `corrupt-*` control."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from nbdfork.config import FORMAT_NAMES, parse_params
from nbdfork.device.device import Device
from nbdfork.errors import ConfigError
from nbdfork.oracle.events import read_events
from nbdfork.oracle.formats import Verdict
from nbdfork.oracle.formats.ext4 import Ext4Format
from nbdfork.oracle.formats.fio import FioFormat
from nbdfork.oracle.stamp import encode_page
from nbdfork.oracle.verify import FORMAT_NAMES as ORACLE_FORMATS
from nbdfork.oracle.verify import Oracle, WriteRequest, judge
from tests.conftest import Server
from tests.test_formats import (
    btrfs_image,
    ext4_image,
    fio_file,
    mount_and_write,
    populate,
    run,
    scan_image,
    xfs_image,
)
from tests.test_oracle import ListSink

KiB = 1024
MiB = 1024 * KiB
CHUNK = 128 * KiB


def device(sink: ListSink, *params: str, size: str = "512M") -> Device:
    """A Device judged by an Oracle for `params` (key=value), its events into `sink`."""
    pairs = [(k, v) for k, _, v in (p.partition("=") for p in params)]
    config = parse_params([("size", size), ("seed", "1"), *pairs])
    return Device(config, judge(sink, config.formats))


def chunks(image: bytes) -> Iterator[tuple[int, bytes]]:
    """The image as 128 KiB WRITEs, in order, leaving out all-zero ones (a sparse image's
    holes: mkfs does not write them)."""
    zero = bytes(CHUNK)
    for off in range(0, len(image), CHUNK):
        data = image[off : off + CHUNK]
        if data != zero[: len(data)]:
            yield off, data


def feed(dev: Device, image: bytes, connection: int = 1, at: int = 0) -> int:
    """WRITE every non-zero chunk of `image` to `dev`, `at` bytes in; how many WRITEs."""
    n = 0
    for off, data in chunks(image):
        dev.pwrite(connection, data, at + off, fua=False)
        n += 1
    return n


def formats_seen(dev: Device, name: str) -> Mapping[str, int]:
    """The device's counts of format `name`."""
    return dev.format_counts()[name]


# --- the parameter --------------------------------------------------------------------------


def test_formats_parameter_lists_every_format_the_oracle_has() -> None:
    """config's FORMAT_NAMES (what formats= takes) are exactly the oracle's names, stamp first."""
    assert FORMAT_NAMES == ORACLE_FORMATS == ("stamp", "btrfs", "ext4", "fio", "xfs")


def test_formats_parameter_parses_and_defaults_to_stamp() -> None:
    """formats= keeps order and drops repeats; without it the device judges the stamp alone."""
    assert parse_params([("size", "1M")]).formats == ("stamp",)
    cfg = parse_params([("size", "1M"), ("formats", "stamp, xfs,fio,xfs")])
    assert cfg.formats == ("stamp", "xfs", "fio")
    assert cfg.settings()["formats"] == ["stamp", "xfs", "fio"]


@pytest.mark.parametrize(("text", "problem"), [
    ("zfs", "formats: unknown format 'zfs' (known: stamp,btrfs,ext4,fio,xfs)"),
    (" , ", "formats: is empty (e.g. formats=stamp,ext4)"),
])  # fmt: skip
def test_formats_parameter_rejects_a_bad_list_in_one_line(text: str, problem: str) -> None:
    """An unknown or empty format list is one ConfigError line naming `formats`."""
    with pytest.raises(ConfigError) as err:
        parse_params([("size", "1M"), ("formats", text)])
    assert str(err.value) == problem


def test_unknown_format_stops_nbdkit_with_one_line(tmp_path: Path) -> None:
    """nbdkit with formats=zfs exits 1 before serving, with one error line naming the key."""
    from tests.conftest import nbdkit_env, plugin_argv  # noqa: PLC0415

    argv = [*plugin_argv("size=1M", "formats=stamp,zfs", single=False), "--run", "true"]
    proc = subprocess.run(argv, env=nbdkit_env(), capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if "nbdfork" in line]
    assert proc.returncode == 1
    assert lines == ["nbdkit: nbdfork: error: formats: unknown format 'zfs' "
                     "(known: stamp,btrfs,ext4,fio,xfs)"]  # fmt: skip


def test_corrupt_parameters_need_corrupt_op_write() -> None:
    """corrupt-range without corrupt-op=write is one line; with it the spec is recorded."""
    with pytest.raises(ConfigError, match=r"^corrupt-range: needs corrupt-op=write"):
        parse_params([("size", "1M"), ("corrupt-range", "0-4K")])
    cfg = parse_params([("size", "1M"), ("corrupt-op", "write"), ("corrupt-range", "1K-2K")])
    assert cfg.settings()["corrupt"] == {"ops": ["write"], "probability": 1.0,
                                         "range": [1024, 2048], "trigger": None}  # fmt: skip


# --- no false verdict on what mkfs writes -----------------------------------------------------


@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_mkfs_image_through_the_device_gives_no_verdict(tmp_path: Path, fs: str) -> None:
    """Every WRITE of a real mkfs image judged with formats=stamp,FS: blocks found, none torn,
    no event at all."""
    make = {"ext4": ext4_image, "xfs": xfs_image, "btrfs": btrfs_image}[fs]
    sink = ListSink()
    dev = device(sink, f"formats=stamp,{fs}")
    feed(dev, make(tmp_path).read_bytes())
    counts = formats_seen(dev, fs)
    assert sink.events == []
    assert counts["ok_blocks"] >= 8 and counts["torn_blocks"] == 0
    assert counts["torn_write"] == counts["stale_write"] == counts["overlapping_write"] == 0


def test_a_second_mkfs_forgets_the_first_filesystems_versions(tmp_path: Path) -> None:
    """Two mkfs.xfs images in turn on one device (LSNs restart): no stale_write."""
    sink = ListSink()
    dev = device(sink, "formats=xfs")
    first = xfs_image(tmp_path).read_bytes()
    feed(dev, first)
    feed(dev, xfs_image(tmp_path).read_bytes())  # a new uuid: a new filesystem
    assert sink.events == [] and formats_seen(dev, "xfs")["ok_blocks"] >= 16


def test_a_second_ext4_journal_below_a_stack_header_is_not_stale(tmp_path: Path) -> None:
    """Two ext4 filesystems in turn, 1 MiB into the device (where md or dm-integrity puts its
    data, so the superblock that would say "new filesystem" is not at the device's start): the
    second journal's sequences restart below the first's at the same places, and no version
    of one journal is compared with the other's."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # One transaction per file (sync -f); touch and mkdir make transactions of different
    # lengths, so the two journals' blocks meet at some places, and populate's one large
    # transaction puts the second journal's sequences behind the first's there.
    each = "for i in $(seq 40); do {op} {{mnt}}/t$i; sync -f {{mnt}}; done"
    first, second = ext4_image(tmp_path / "a"), ext4_image(tmp_path / "b")
    mount_and_write(first, [["sh", "-c", each.format(op="touch")]])
    populate(second)
    mount_and_write(second, [["sh", "-c", each.format(op="mkdir")]])
    journals = [_jbd2_versions(p.read_bytes()) for p in (first, second)]
    behind = [at for at, seq in journals[1].items() if journals[0].get(at, -1) > seq]
    assert behind, "precondition: the second journal writes lower sequences at the same places"
    sink = ListSink()
    dev = device(sink, "formats=ext4", size="1G")
    feed(dev, first.read_bytes(), at=MiB)
    feed(dev, second.read_bytes(), at=MiB)
    assert [e for e in sink.events if e["event"] == "stale_write"] == []
    assert formats_seen(dev, "ext4")["ok_blocks"] >= 2 * len(journals[1])


def _jbd2_versions(image: bytes) -> dict[int, int]:
    """Offset -> sequence of every checked jbd2 block (other than the superblock) in `image`."""
    blocks = scan_image(Ext4Format(), image)
    return {b.offset: b.version for b in blocks
            if b.kind.startswith("jbd2.") and b.kind != "jbd2.super"
            and b.version is not None and b.verdict is Verdict.OK}  # fmt: skip


# --- controls: a corrupted metadata block, a torn fio block -----------------------------------


@pytest.mark.parametrize(("fs", "where", "kind"), [
    ("ext4", (1024, 2048), "ext4.super"),     # the primary superblock
    ("xfs", (512, 1024), "xfs.agf"),          # AG 0's free space header (sector 1)
    ("btrfs", (64 * KiB, 68 * KiB), "btrfs.super"),
])  # fmt: skip
def test_a_byte_corrupted_in_flight_is_a_torn_metadata_block(
    tmp_path: Path, fs: str, where: tuple[int, int], kind: str
) -> None:
    """corrupt-op=write over one metadata block: exactly one torn_write, of that block's kind,
    format and offset, and the changed byte inside it."""
    make = {"ext4": ext4_image, "xfs": xfs_image, "btrfs": btrfs_image}[fs]
    sink = ListSink()
    dev = device(sink, f"formats=stamp,{fs}", "corrupt-op=write",
                 f"corrupt-range={where[0]}-{where[1]}")  # fmt: skip
    feed(dev, make(tmp_path).read_bytes())
    assert dev.stats.corruptions_injected == 1
    (event,) = sink.events
    (_, at), = dev.corruptions
    assert (event["event"], event["format"], event["kind"]) == ("torn_write", fs, kind)
    start = int(event["offset"])  # type: ignore[call-overload]
    assert start <= at < start + int(event["length"])  # type: ignore[call-overload]
    assert where[0] <= at < where[1]
    assert formats_seen(dev, fs)["torn_write"] == dev.format_counts()[fs]["torn_blocks"] == 1


def test_corruption_is_seeded() -> None:
    """The same seed corrupts the same byte; another seed (almost surely) another one."""
    def byte(seed: str) -> int:
        config = parse_params([("size", "1M"), ("seed", seed), ("corrupt-op", "write")])
        dev = Device(config, None)
        dev.pwrite(1, bytes(64 * KiB), 0, fua=False)
        return dev.corruptions[0][1]

    assert byte("5") == byte("5")
    assert len({byte(str(s)) for s in range(8)}) > 1


def test_a_fio_block_spliced_from_two_fio_runs_is_torn(tmp_path: Path) -> None:
    """Half of one fio run's block and half of another's (same offset) make one torn fio
    block, with its kind; the blocks around it are ok."""
    a = fio_file(tmp_path, "crc32c", size=64 * KiB)
    b = _fio_seeded(tmp_path / "b", 8)
    spliced = a[:8192] + a[8192:10240] + b[10240:12288] + a[12288:]
    sink = ListSink()
    dev = device(sink, "formats=stamp,fio")
    dev.pwrite(1, spliced, 0, fua=False)
    assert [(e["event"], e["format"], e["kind"], e["offset"]) for e in sink.events] == [
        ("torn_write", "fio", "fio.crc32c", 8192)
    ]
    assert formats_seen(dev, "fio") == {
        "torn_write": 1, "stale_write": 0, "overlapping_write": 0,
        "blocks": 16, "ok_blocks": 15, "torn_blocks": 1, "unchecked_blocks": 0,
    }  # fmt: skip


def _fio_seeded(path: Path, seed: int) -> bytes:
    """A 64 KiB fio crc32c file written sequentially with another random seed."""
    path.mkdir(parents=True, exist_ok=True)
    out = path / "f.bin"
    run(["fio", "--name=w", f"--filename={out}", "--size=64k", "--bs=4k", "--rw=write",
         "--verify=crc32c", "--do_verify=0", "--ioengine=psync", f"--randseed={seed}",
         "--verify_state_save=0"])  # fmt: skip
    return out.read_bytes()


def fio_rewrites(tmp_path: Path, writes: int) -> bytes:
    """Block 0 of a 4 KiB file fio wrote `writes` times (numberio 0 .. writes-1)."""
    out = tmp_path / f"r{writes}.bin"
    run(["fio", "--name=w", f"--filename={out}", "--size=4k", f"--loops={writes}",
         "--bs=4k", "--rw=write", "--verify=crc32c", "--do_verify=0", "--ioengine=psync",
         "--verify_state_save=0"])  # fmt: skip
    return out.read_bytes()


# --- stale and overlapping format blocks ------------------------------------------------------


def test_an_older_fio_block_after_a_newer_one_replied_is_stale(tmp_path: Path) -> None:
    """fio's block 0 at numberio 2 written and replied, then numberio 1 on the same
    connection: one stale_write naming fio, both versions; on another connection, none."""
    newer, older = fio_rewrites(tmp_path, 3), fio_rewrites(tmp_path, 2)
    versions = [FioFormat().scan(memoryview(x), 0)[0].version for x in (newer, older)]
    assert versions == [2, 1]
    sink = ListSink()
    dev = device(sink, "formats=fio")
    dev.pwrite(1, newer, 0, fua=False)
    dev.pwrite(2, older, 0, fua=False)  # another client (another fio run): numberio restarts
    assert sink.events == []
    dev.pwrite(2, newer, 0, fua=False)
    dev.pwrite(2, older, 0, fua=False)
    assert [(e["event"], e["format"], e["generations"], e["phase"]) for e in sink.events] == [
        ("stale_write", "fio", [1, 2], "arrival")
    ]


def test_fio_16_bit_numberio_wraps_without_a_stale_verdict() -> None:
    """fio <= 3.40's numberio is 16 bits: 65535 then 3 is a wrap (newer), 3 then 65535 older."""
    from nbdfork.oracle.formats.base import older  # noqa: PLC0415

    assert not older(3, 65535, 16) and older(65535, 3, 16) and older(1, 2, 16)
    assert older(1, 2) and not older(2, 1)


def test_two_writes_of_one_xfs_block_in_flight_overlap_naming_xfs(tmp_path: Path) -> None:
    """The xfs superblock in two WRITEs in flight together: an overlapping_write naming the
    format xfs and the kind xfs.sb."""
    image = xfs_image(tmp_path).read_bytes()[:CHUNK]
    sink = ListSink()
    oracle = Oracle(sink, None, ("stamp", "xfs"))
    oracle.write_arrived(WriteRequest(1, 1, 0, CHUNK, False, 1.0), image)
    oracle.write_arrived(WriteRequest(2, 1, 0, 4096, False, 1.0), image[:4096])
    assert [(e["event"], e["format"], e.get("kind")) for e in sink.events] == [
        ("overlapping_write", "xfs", "xfs.sb")
    ]
    assert oracle.format_counts()["xfs"]["overlapping_write"] == 1


def test_stamp_events_name_the_stamp_and_stamp_off_judges_none() -> None:
    """A torn stamped page is a torn_write with format stamp; with formats=fio it is not
    judged at all (no event, no stamped page)."""
    torn = encode_page(1, 0, 2)[:2048] + encode_page(1, 0, 1)[2048:]
    for formats, expected in ((("stamp",), ["stamp"]), (("fio",), [])):
        sink = ListSink()
        oracle = Oracle(sink, None, formats)
        oracle.write_arrived(WriteRequest(1, 1, 0, 4096, False, 1.0), torn)
        assert [e["format"] for e in sink.events] == expected


# --- fio on the host through its nbd engine against the device --------------------------------


def test_fio_nbd_engine_against_the_device_verifies_and_is_judged(
    tmp_path: Path, server: Callable[..., Server]
) -> None:
    """fio (ioengine=nbd, unix socket) writes 1 MiB with verify=crc32c and reads it back:
    fio reports no error, and the device judged every fio block ok (256 blocks, 0 torn)."""
    if shutil.which("fio") is None:
        pytest.fail("fio is not installed: run scripts/setup")
    report = tmp_path / "report"
    srv = server("size=16M", "formats=stamp,fio", f"report={report}", "seed=3")
    out = subprocess.run(
        ["fio", "--name=nbd", "--ioengine=nbd", f"--uri=nbd+unix:///?socket={srv.socket}",
         "--rw=randwrite", "--bs=4k", "--size=1M", "--verify=crc32c", "--iodepth=4",
         "--output-format=json", "--verify_state_save=0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout[out.stdout.index("{") :])["jobs"][0]
    assert job["error"] == 0 and job["write"]["total_ios"] == 256
    assert job["read"]["total_ios"] == 256  # fio's own verify phase read every block back
    assert srv.stop() == 0
    summary = json.loads((report / "summary.json").read_text())
    fio = summary["formats"]["fio"]
    assert (fio["blocks"], fio["ok_blocks"], fio["torn_write"]) == (256, 256, 0)
    assert read_events(report / "events.jsonl") == []


def test_events_of_a_served_device_name_their_format(
    tmp_path: Path, server: Callable[..., Server]
) -> None:
    """Through real nbdkit: a torn stamped page and a torn fio block each give one event, with
    format stamp and fio; summary.json counts one torn_write under each format."""
    import nbd  # noqa: PLC0415

    report = tmp_path / "report"
    srv = server("size=16M", "formats=stamp,fio", f"report={report}")
    a, b = fio_file(tmp_path, "crc32c", size=16 * KiB), _fio_seeded(tmp_path / "b", 9)[:16 * KiB]
    h = nbd.NBD()
    h.connect_unix(str(srv.socket))
    h.pwrite(encode_page(1, 0, 2)[:2048] + encode_page(1, 0, 1)[2048:], 0)
    h.pwrite(a[:4096] + a[4096:6144] + b[6144:8192], 1 * MiB)
    h.shutdown()
    assert srv.stop() == 0
    events = read_events(report / "events.jsonl")
    assert Counter((e["event"], e["format"]) for e in events) == {
        ("torn_write", "stamp"): 1, ("torn_write", "fio"): 1
    }
    summary = json.loads((report / "summary.json").read_text())
    assert summary["counts"]["torn_write"] == 1  # top level: the stamp's, as before formats
    assert {n: c["torn_write"] for n, c in summary["formats"].items()} == {"stamp": 1, "fio": 1}


def test_a_trace_rejudged_with_the_recorded_formats_gives_the_same_events(
    tmp_path: Path,
) -> None:
    """An ext4 mkfs image with one corrupted byte, traced live: re-judging the trace with
    formats stamp,ext4 gives the same events (one torn ext4.super), with the stamp alone none."""
    from nbdfork.oracle.rejudge import rejudge_trace  # noqa: PLC0415

    sink = ListSink()
    trace = tmp_path / "t.trace"
    dev = device(sink, "formats=stamp,ext4", "corrupt-op=write", "corrupt-range=1K-2K",
                 f"trace={trace}")  # fmt: skip
    feed(dev, ext4_image(tmp_path).read_bytes())
    dev.close()
    again, stamp_only = ListSink(), ListSink()
    rejudge_trace(trace, again, ("stamp", "ext4"))
    rejudge_trace(trace, stamp_only)
    assert [(e["event"], e["kind"]) for e in sink.events] == [("torn_write", "ext4.super")]
    assert again.events == sink.events and stamp_only.events == []


def test_xfs_blocks_mkfs_wrote_outside_the_log_carry_no_version(tmp_path: Path) -> None:
    """mkfs.xfs writes its metadata with LSN 0: those blocks have no version (so never stale),
    its log record has one."""
    from nbdfork.oracle.formats.xfs import XfsFormat  # noqa: PLC0415
    from tests.test_formats import scan_image  # noqa: PLC0415

    blocks = scan_image(XfsFormat(), xfs_image(tmp_path).read_bytes())
    versions = Counter(b.version is None for b in blocks if b.kind != "xfs.log.record")
    assert versions == {True: 100}
    assert all(b.version for b in blocks if b.kind == "xfs.log.record")
