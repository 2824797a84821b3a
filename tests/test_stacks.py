"""Storage stacks: names, build plans, and the parsers of the tools' real output (issue 19)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nbdfork.errors import ConfigError
from nbdfork.experiments.stacks import STACKS, parse_stack, parse_stacks, plan_stack
from nbdfork.experiments.stacks.parse import (
    KmsgRecord,
    ParseError,
    fsck_verdict,
    parse_chunk_tree,
    parse_dev_item_devid,
    parse_device_stats,
    parse_integrity_status,
    parse_kmsg_record,
    parse_scrub_status,
)
from nbdfork.experiments.stacks.plan import Run, SysfsWrite

GOLDEN = Path(__file__).parent / "golden" / "stacks"
MNT = "/tmp/mnt"


def golden(name: str) -> str:
    """A tool's output captured in a guest (see golden/stacks/README.md)."""
    return (GOLDEN / name).read_text()


def devices(n: int) -> list[str]:
    """n nbd device paths."""
    return [f"/dev/nbd{i}" for i in range(n)]


def plan(name: str, fs: str = "ext4"):  # type: ignore[no-untyped-def]
    """The plan of `name` over as many devices as it needs."""
    spec = parse_stack(name)
    return plan_stack(spec, devices(spec.devices), fs, MNT)


# --- names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "mode", "count"),
    [
        ("plain", "plain", "", 1),
        ("btrfs", "btrfs", "", 1),
        ("btrfs-raid1", "btrfs-raid1", "", 2),
        ("md-raid1", "md-raid1", "", 2),
        ("md-raid5", "md-raid5", "copy", 3),
        ("md-raid5:skip_copy", "md-raid5", "skip_copy", 3),
        ("dm-integrity", "dm-integrity", "J", 1),
        ("dm-integrity:D", "dm-integrity", "D", 1),
        ("dm-integrity:B", "dm-integrity", "B", 1),
    ],
)
def test_parse_stack_names_modes_and_device_counts(
    text: str, name: str, mode: str, count: int
) -> None:
    """Every catalogue name parses to its stack, its mode (the first when none is given) and
    the number of block devices it needs."""
    spec = parse_stack(text)
    assert (spec.name, spec.mode, spec.devices) == (name, mode, count)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("raid6", "stack: unknown stack 'raid6'; known: plain, btrfs"),
        ("dm-integrity:X", "stack: dm-integrity has no mode 'X'; modes: J, D, B"),
        ("dm-integrity:", "stack: dm-integrity has no mode ''"),
        ("btrfs:J", "stack: btrfs has no mode 'J'; modes: none"),
        ("md-raid5:1", "stack: md-raid5 has no mode '1'; modes: copy, skip_copy"),
    ],
)
def test_bad_stack_name_is_one_line_config_error(text: str, message: str) -> None:
    """An unknown stack or mode is a one-line ConfigError naming the choices."""
    with pytest.raises(ConfigError) as err:
        parse_stack(text)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_parse_stacks_splits_a_comma_list_and_rejects_an_empty_one() -> None:
    """`--stack a,b` gives both stacks in order; an empty list is an error."""
    assert [s.label for s in parse_stacks("btrfs, dm-integrity:D")] == ["btrfs", "dm-integrity:D"]
    with pytest.raises(ConfigError, match="no stack named"):
        parse_stacks(" , ")


def test_filesystem_on_top_and_the_stacks_own() -> None:
    """ext4/xfs go on a block stack; btrfs stacks are btrfs whatever fs is asked; other fs
    names are refused."""
    assert parse_stack("md-raid1").filesystem("xfs") == "xfs"
    assert parse_stack("btrfs-raid1").filesystem("ext4") == "btrfs"
    with pytest.raises(ConfigError, match="fs: 'f2fs' cannot go on stack plain"):
        parse_stack("plain").filesystem("f2fs")


# --- plans -----------------------------------------------------------------------------


def test_plan_refuses_the_wrong_number_of_devices_or_a_repeated_one() -> None:
    """A plan needs exactly the stack's device count, each device once."""
    spec = parse_stack("md-raid5")
    with pytest.raises(ConfigError, match="md-raid5:copy needs 3 device"):
        plan_stack(spec, devices(2), "ext4", MNT)
    with pytest.raises(ConfigError, match="named twice"):
        plan_stack(spec, ["/dev/nbd0", "/dev/nbd1", "/dev/nbd0"], "ext4", MNT)


def test_plain_plan_is_mkfs_and_mount_on_the_device() -> None:
    """plain: no assembly, mkfs.ext4 -b 4096 on the device, fsck as its only checker."""
    p = plan("plain")
    assert p.assemble == () and p.teardown == ()
    assert p.mkfs == (Run("mkfs", ("mkfs.ext4", "-F", "-q", "-b", "4096", "/dev/nbd0"), 300.0),)
    assert p.mount.argv == ("mount", "/dev/nbd0", MNT)
    assert p.checks == ("fsck",)
    assert plan("plain", "xfs").mkfs[0].argv == ("mkfs.xfs", "-f", "-q", "/dev/nbd0")


def test_btrfs_plans_profiles_members_and_mount_options() -> None:
    """btrfs is single/dup on one device; btrfs-raid1 is raid1/raid1 over both, mounted naming
    every member, with the mirror compared; the run's stable_writes goes on every member."""
    single, raid1 = plan("btrfs"), plan("btrfs-raid1")
    assert single.mkfs[0].argv == (
        "mkfs.btrfs",
        "-f",
        "-q",
        "-d",
        "single",
        "-m",
        "dup",
        "/dev/nbd0",
    )
    assert raid1.mkfs[0].argv == (
        "mkfs.btrfs",
        "-f",
        "-q",
        "-d",
        "raid1",
        "-m",
        "raid1",
        "/dev/nbd0",
        "/dev/nbd1",
    )
    assert raid1.mount.argv == (
        "mount",
        "-o",
        "device=/dev/nbd0,device=/dev/nbd1",
        "/dev/nbd0",
        MNT,
    )
    assert raid1.top == ("/dev/nbd0", "/dev/nbd1")
    assert single.checks == ("btrfs_scrub", "fsck")
    assert raid1.checks == ("btrfs_scrub", "mirror_diff", "fsck")


def test_md_plans_create_in_device_order_and_tear_down_in_reverse() -> None:
    """md: mdadm --create --assume-clean over the devices in order (raid5 then writes
    md/skip_copy), filesystem on /dev/md0; teardown stops the array, then clears members."""
    r1, r5 = plan("md-raid1"), plan("md-raid5:skip_copy")
    create = r1.assemble[0]
    assert isinstance(create, Run)
    assert create.argv == (
        "mdadm",
        "--create",
        "/dev/md0",
        "--run",
        "--assume-clean",
        "--metadata=1.2",
        "--level=1",
        "--raid-devices=2",
        "/dev/nbd0",
        "/dev/nbd1",
    )
    assert r5.assemble[1] == SysfsWrite("skip_copy", "/dev/md0", "md/skip_copy", "1")
    assert plan("md-raid5").assemble[1] == SysfsWrite("skip_copy", "/dev/md0", "md/skip_copy", "0")
    assert [layer.path for layer in r5.layers] == ["/dev/md0", *devices(3)]
    assert r5.mkfs[0].argv[-1] == "/dev/md0" and r5.top == ("/dev/md0",)
    assert [t.argv[:2] for t in r1.teardown] == [
        ("mdadm", "--stop"),
        ("mdadm", "--zero-superblock"),
    ]
    assert r1.checks == ("md_check", "mirror_diff", "fsck")
    assert r5.checks == ("md_check", "fsck")


@pytest.mark.parametrize(
    ("mode", "flags"),
    [("J", ()), ("D", ("--integrity-no-journal",)), ("B", ("--integrity-bitmap-mode",))],
)
def test_dm_integrity_plan_formats_opens_with_the_mode_and_closes(
    mode: str, flags: tuple[str, ...]
) -> None:
    """dm-integrity: integritysetup format then open with crc32c and the mode's flag; the
    filesystem goes on the mapper device; teardown closes it."""
    p = plan(f"dm-integrity:{mode}")
    assert [a.argv for a in p.assemble if isinstance(a, Run)] == [
        ("integritysetup", "format", "--batch-mode", "--integrity", "crc32c", "/dev/nbd0"),
        (
            "integritysetup",
            "open",
            "--integrity",
            "crc32c",
            *flags,
            "/dev/nbd0",
            "nbdfork-integrity",
        ),
    ]
    assert p.top == ("/dev/mapper/nbdfork-integrity",)
    assert [(layer.path, layer.kind) for layer in p.layers] == [
        ("/dev/mapper/nbdfork-integrity", f"dm-integrity:{mode}"),
        ("/dev/nbd0", "device"),
    ]
    assert [t.argv for t in p.teardown] == [("integritysetup", "close", "nbdfork-integrity")]


@pytest.mark.parametrize("name", sorted(STACKS))
def test_every_plan_layers_top_down_and_teardown_mirrors_assembly(name: str) -> None:
    """Each stack's layers start at its top device(s) and end at its devices; teardown
    undoes the assembly's tools in reverse (stop/close before the members are cleared)."""
    p = plan(name)
    assert p.layers[0].path == p.top[0]
    assert {layer.path for layer in p.layers} >= set(p.devices)
    tools = [a.argv[0] for a in p.assemble if isinstance(a, Run)]
    undo = [t.argv[0] for t in p.teardown]
    assert sorted(set(undo)) == sorted(set(tools))
    if undo:
        assert undo[0] == tools[-1]


# --- parsers against captured output ------------------------------------------------------


def test_scrub_parser_reads_a_clean_raid1_scrub() -> None:
    """A clean raid1 scrub: two devices, every error counter 0."""
    devs = parse_scrub_status(golden("btrfs-scrub-start-raid1-clean.txt"))
    assert [(d.device, d.devid) for d in devs] == [("/dev/mapper/d0", 1), ("/dev/mapper/d1", 2)]
    assert all(d.csum_errors == d.uncorrectable_errors == d.corrected_errors == 0 for d in devs)


@pytest.mark.parametrize(
    "name", ["btrfs-scrub-start-raid1-damaged.txt", "btrfs-scrub-status-raid1-damaged.txt"]
)
def test_scrub_parser_reads_a_corrected_csum_error_on_one_leg(name: str) -> None:
    """One byte changed on raid1 leg 2: `scrub start -B` and `scrub status` both show one
    csum error on devid 2, corrected from devid 1."""
    d0, d1 = parse_scrub_status(golden(name))
    assert (d0.csum_errors, d0.corrected_errors) == (0, 0)
    assert (d1.csum_errors, d1.corrected_errors, d1.uncorrectable_errors) == (1, 1, 0)
    assert d1.data_bytes_scrubbed == 278528


def test_scrub_parser_refuses_output_without_a_device_block() -> None:
    """Output the parser cannot read is an error, never a scrub with zero errors."""
    with pytest.raises(ParseError, match="no 'Scrub device' block"):
        parse_scrub_status("ERROR: not a btrfs filesystem: /tmp/mnt\n")
    with pytest.raises(ParseError, match="has no"):
        parse_scrub_status("Scrub device /dev/sda (id 1) done\n\tcsum_errors: 0\n")


def test_device_stats_parser_reads_corruption_errs_per_device() -> None:
    """`btrfs device stats`: every counter of every device; the damaged leg has one
    corruption error."""
    stats = parse_device_stats(golden("btrfs-device-stats-raid1-damaged.txt"))
    assert stats["/dev/mapper/d1"]["corruption_errs"] == 1
    assert stats["/dev/mapper/d0"] == {
        "write_io_errs": 0,
        "read_io_errs": 0,
        "flush_io_errs": 0,
        "corruption_errs": 0,
        "generation_errs": 0,
    }


def test_chunk_tree_parser_reads_raid1_stripes() -> None:
    """The raid1 chunk tree: four chunks, each with a stripe on devid 1 and devid 2 at the
    offsets dump-tree printed; all mirrored."""
    chunks = parse_chunk_tree(golden("btrfs-dump-tree-chunk-raid1.txt"))
    assert [(c.logical, c.length, c.type) for c in chunks] == [
        (22020096, 8388608, "SYSTEM|RAID1"),
        (30408704, 33554432, "METADATA|RAID1"),
        (63963136, 67108864, "DATA|RAID1"),
        (131072000, 33554432, "SYSTEM|RAID1"),
    ]
    data = chunks[2]
    assert [(s.devid, s.offset) for s in data.stripes] == [(1, 63963136), (2, 42991616)]
    assert all(c.mirrored for c in chunks)


def test_chunk_tree_parser_tells_single_from_dup() -> None:
    """A single-device btrfs: DATA|single is not mirrored, METADATA|DUP is (two stripes on
    devid 1)."""
    chunks = parse_chunk_tree(golden("btrfs-dump-tree-chunk-single.txt"))
    kinds = {c.type: c for c in chunks}
    assert not kinds["DATA|single"].mirrored
    dup = kinds["METADATA|DUP"]
    assert dup.mirrored and [s.devid for s in dup.stripes] == [1, 1]


def test_dump_super_parser_reads_the_devid() -> None:
    """`dump-super` of the second raid1 member names devid 2."""
    assert parse_dev_item_devid(golden("btrfs-dump-super-devid2.txt")) == 2


def test_integrity_status_parser_reads_the_mismatch_counter() -> None:
    """`dmsetup status` of dm-integrity: 0 mismatches when clean, 1 after reading a block
    whose byte was changed under it."""
    assert parse_integrity_status(golden("dmsetup-status-integrity-clean.txt")) == 0
    assert parse_integrity_status(golden("dmsetup-status-integrity-damaged.txt")) == 1
    with pytest.raises(ParseError, match="not an integrity target"):
        parse_integrity_status("0 645128 linear 254:0 0\n")


def test_fsck_verdict_is_the_tools_exit_status() -> None:
    """fsck is clean only when the tool exits 0; the tail keeps its last non-empty lines."""
    clean = fsck_verdict("e2fsck", "/dev/md0", 0, "Pass 1\n\n/dev/md0: 12/81696 files\n")
    assert clean.clean and clean.output_tail == ["Pass 1", "/dev/md0: 12/81696 files"]
    assert not fsck_verdict("xfs_repair", "/dev/md0", 1, "").clean
    with pytest.raises(ParseError, match="unknown tool"):
        fsck_verdict("fsck.vfat", "/dev/md0", 0, "")


def test_scrub_parser_reads_an_uncorrectable_error_after_a_leading_error_line() -> None:
    """A single-device btrfs with one data byte changed: the ERROR line btrfs prints first is
    skipped; one csum error, uncorrectable (no second copy)."""
    (dev,) = parse_scrub_status(golden("btrfs-scrub-start-single-damaged.txt"))
    assert (dev.device, dev.devid) == ("/dev/dm-0", 1)
    assert (dev.csum_errors, dev.uncorrectable_errors, dev.corrected_errors) == (1, 1, 0)


@pytest.mark.parametrize(
    ("tool", "name", "code", "last"),
    [
        (
            "e2fsck",
            "e2fsck-fn-damaged-gdt.txt",
            4,
            "/dev/mapper/d0: 12/81696 files (0.0% non-contiguous), 9297/81664 blocks",
        ),
        ("xfs_repair", "xfs-repair-n-damaged-agf.txt", 1, "Exiting now."),
    ],
)
def test_fsck_verdict_on_a_damaged_filesystem(tool: str, name: str, code: int, last: str) -> None:
    """A changed metadata byte: e2fsck -fn exits 4, xfs_repair -n exits 1; not clean, and the
    tail ends with the tool's last line."""
    verdict = fsck_verdict(tool, "/dev/mapper/d0", code, golden(name))
    assert not verdict.clean and verdict.exit_code == code
    assert verdict.output_tail[-1] == last


def test_kmsg_parser_reads_sequence_time_and_message() -> None:
    """Raw /dev/kmsg records: `PRI,SEQ,USEC,FLAGS;MESSAGE` gives the sequence number, the
    microseconds since boot and the message without its newline."""
    records = json.loads(golden("kmsg-integrity-records.json"))
    first = parse_kmsg_record(records[0].encode("latin-1"))
    assert first == KmsgRecord(324, 1787858, "integrity: Platform Keyring initialized")
    with pytest.raises(ParseError, match="not a record"):
        parse_kmsg_record(b"no separator here\n")


def test_kmsg_parser_reads_dm_integrity_checksum_failures() -> None:
    """7.2 records of a dm-integrity read-back that hit torn blocks: priority 3 records whose
    messages name the failing sector."""
    records = json.loads(golden("kmsg-integrity-records-7.2.json"))
    parsed = [parse_kmsg_record(r.encode("latin-1")) for r in records]
    failed = [p for p in parsed if "Checksum failed" in p.text]
    assert len(failed) == 6
    assert failed[0] == KmsgRecord(
        674, 626119773, "device-mapper: integrity: dm-1: Checksum failed at sector 0xaf00"
    )
