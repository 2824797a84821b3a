"""Formats of other writers: real blocks from real tools (fio, mkfs, debugfs, a mounted fs)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nbdfork.errors import ConfigError
from nbdfork.oracle.formats import FORMATS, FormatBlock, Verdict, formats_for
from nbdfork.oracle.formats.base import BlockFormat
from nbdfork.oracle.formats.btrfs import BtrfsFormat
from nbdfork.oracle.formats.ext4 import Ext4Format
from nbdfork.oracle.formats.fio import FioFormat
from nbdfork.oracle.formats.xfs import XfsFormat

GOLDEN = Path(__file__).parent / "golden" / "formats"
KiB = 1024
MiB = 1024 * KiB


def run(argv: Sequence[str]) -> str:
    """Run a tool (failing the test with its stderr if it fails); its stdout."""
    tool = shutil.which(argv[0])
    if tool is None:
        pytest.fail(f"{argv[0]} is not installed: run scripts/setup")
    proc = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def scan_image(fmt: BlockFormat, image: bytes, chunk: int = 128 * KiB) -> list[FormatBlock]:
    """Every block `fmt` finds when `image` arrives as WRITEs of `chunk` bytes, in order."""
    view = memoryview(image)
    offsets = range(0, len(image), chunk)
    return [b for off in offsets for b in fmt.scan(view[off : off + chunk], off)]


def flipped(data: bytes, at: int) -> bytes:
    """`data` with the byte at `at` inverted."""
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def verdicts(blocks: Sequence[FormatBlock]) -> Counter[str]:
    """Count of blocks per (kind, verdict), as 'kind:verdict'."""
    return Counter(f"{b.kind}:{b.verdict}" for b in blocks)


PRIMERS: dict[str, Callable[[Path], bytes]] = {
    "xfs": lambda tmp: xfs_image(tmp).read_bytes(),
    "btrfs": lambda tmp: btrfs_image(tmp).read_bytes(),
    "ext4": lambda tmp: ext4_image(tmp).read_bytes(),
}
"""Per stateful format, an image whose first MiB teaches it its superblock."""


# --- registry --------------------------------------------------------------------------------


def test_formats_for_returns_fresh_instances_in_order() -> None:
    """formats_for gives a new instance per call for each name, in the order asked."""
    a, b = formats_for(["fio"]), formats_for(["fio"])
    assert [f.name for f in a] == ["fio"] and a[0] is not b[0]
    assert set(FORMATS) >= {"fio"}


def test_formats_for_rejects_an_unknown_name_in_one_line() -> None:
    """An unknown format name is a ConfigError on `formats` naming it, on one line."""
    with pytest.raises(ConfigError) as err:
        formats_for(["fio", "zfs"])
    assert err.value.key == "formats" and "'zfs'" in str(err.value) and "\n" not in str(err.value)


# --- fio -------------------------------------------------------------------------------------


def fio_file(tmp_path: Path, verify: str, size: int = 256 * KiB, bs: int = 4 * KiB) -> bytes:
    """A file written by the installed fio with `verify` (no read-back), as bytes."""
    path = tmp_path / f"fio-{verify}.bin"
    run(["fio", "--name=w", f"--filename={path}", f"--size={size}", f"--bs={bs}",
         "--rw=randwrite", "--norandommap=0", f"--verify={verify}", "--do_verify=0",
         "--ioengine=psync", "--randseed=7", "--verify_state_save=0"])  # fmt: skip
    return path.read_bytes()


@pytest.mark.parametrize("verify", ["crc32c", "crc32c-intel", "md5", "sha1", "sha3-256"])
def test_fio_blocks_written_by_fio_are_all_ok(tmp_path: Path, verify: str) -> None:
    """Every block fio writes with verify=X is found, at its offset, with its offset and ok."""
    image = fio_file(tmp_path, verify)
    blocks = FioFormat().scan(memoryview(image), 0)
    assert len(blocks) == 64
    assert {b.verdict for b in blocks} == {Verdict.OK}
    offsets = list(range(0, 256 * KiB, 4 * KiB))
    assert [b.offset for b in blocks] == [b.ident[0] for b in blocks] == offsets
    assert sorted(b.version for b in blocks if b.version is not None) == list(range(64))


@pytest.mark.parametrize("verify", ["crc32c", "md5"])
def test_fio_342_versioned_headers_are_read(verify: str) -> None:
    """fio >= 3.41's 48-byte header (u64 numberio) is read: 4 golden blocks, all ok."""
    image = (GOLDEN / f"fio-3.42-{verify}.bin").read_bytes()
    blocks = FioFormat().scan(memoryview(image), 0)
    assert [(b.offset, b.version, b.verdict) for b in blocks] == [
        (i * 4096, i, Verdict.OK) for i in range(4)
    ]
    assert image[2] == 0x81  # the version byte this test is about


def test_fio_unverifiable_type_is_unchecked_not_torn(tmp_path: Path) -> None:
    """A verify type the oracle cannot compute (crc64) is recognised and reported unchecked."""
    blocks = FioFormat().scan(memoryview(fio_file(tmp_path, "crc64", size=16 * KiB)), 0)
    assert verdicts(blocks) == {"fio.crc64:unchecked": 4}
    assert blocks[0].reason == "verify=crc64 is not checked"


def test_fio_a_changed_data_byte_is_torn(tmp_path: Path) -> None:
    """A byte changed in a block's data makes that block (only) torn, located after its header."""
    image = flipped(fio_file(tmp_path, "crc32c", size=64 * KiB), 5 * 4096 + 3000)
    blocks = FioFormat().scan(memoryview(image), 1 * MiB)
    torn = [b for b in blocks if b.verdict is Verdict.TORN]
    assert [(b.offset, b.torn_at) for b in torn] == [(1 * MiB + 5 * 4096, None)]
    assert len(blocks) == 16


def test_fio_a_changed_header_byte_is_torn_at_the_header(tmp_path: Path) -> None:
    """A byte changed in a header (numberio) is torn and located at the header's sector."""
    image = flipped(fio_file(tmp_path, "md5", size=16 * KiB), 2 * 4096 + 33)
    torn = [b for b in FioFormat().scan(memoryview(image), 0) if b.verdict is Verdict.TORN]
    assert [(b.offset, b.torn_at, b.reason) for b in torn] == [
        (8192, 8192, "header crc32c mismatch")
    ]


def test_fio_block_cut_by_the_write_is_unchecked(tmp_path: Path) -> None:
    """A header whose block runs past the WRITE's end is unchecked, not torn."""
    image = fio_file(tmp_path, "crc32c", size=16 * KiB)
    blocks = FioFormat().scan(memoryview(image)[: 4096 + 1024], 0)
    assert [(b.verdict, b.reason) for b in blocks] == [
        (Verdict.OK, ""), (Verdict.UNCHECKED, "block extends beyond this WRITE")
    ]  # fmt: skip


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_random_and_zero_data_give_no_block(name: str, tmp_path: Path) -> None:
    """Random bytes and zero pages give no block, also once the format has seen a superblock."""
    fmt = formats_for([name])[0]
    if name in PRIMERS:
        image = PRIMERS[name](tmp_path)
        fmt.scan(memoryview(image)[: 1 * MiB], 0)
    noise = os.urandom(1 * MiB)
    for data in (noise, bytes(1 * MiB)):
        assert fmt.scan(memoryview(data), 200 * MiB) == []
        # where a filesystem places metadata by location, nothing is claimed either
        assert {b.verdict for b in fmt.scan(memoryview(data), 0)} <= {Verdict.UNCHECKED}


# --- mounting (only to get blocks the kernel itself writes: log records, journal commits) ---


def can_mount() -> str | None:
    """Why this host cannot loop-mount an image, or None if it can."""
    if os.geteuid() != 0:
        return "needs root to loop-mount"
    if shutil.which("losetup") is None or not Path("/dev/loop-control").exists():
        return "no loop devices"
    return None


def mount_and_write(image: Path, work: Sequence[Sequence[str]]) -> None:
    """Loop-mount `image`, run each argv (with {mnt} replaced), sync and unmount."""
    reason = can_mount()
    if reason is not None:
        pytest.skip(reason)
    mnt = image.parent / "mnt"
    mnt.mkdir(exist_ok=True)
    loop = run(["losetup", "-f", "--show", str(image)]).strip()
    try:
        run(["mount", loop, str(mnt)])
        try:
            for argv in work:
                run([a.replace("{mnt}", str(mnt)) for a in argv])
            run(["sync", "-f", str(mnt)])
        finally:
            run(["umount", str(mnt)])
    finally:
        run(["losetup", "-d", loop])


def populate(image: Path) -> None:
    """Mount `image`, make a directory of 300 files and a 4 MiB file, unmount."""
    script = "mkdir -p {mnt}/d && for i in $(seq 300); do echo $i > {mnt}/d/f$i; done"
    big = ["dd", "if=/dev/urandom", "of={mnt}/big", "bs=64k", "count=64"]
    mount_and_write(image, [["sh", "-c", script], big])


# --- xfs -------------------------------------------------------------------------------------


def xfs_image(tmp_path: Path) -> Path:
    """A 320 MiB sparse image made by mkfs.xfs (v5, 4 AGs by default at this size)."""
    path = tmp_path / "xfs.img"
    with path.open("wb") as f:
        f.truncate(320 * MiB)
    run(["mkfs.xfs", "-q", "-f", "-m", "crc=1", str(path)])
    return path


def test_xfs_mkfs_metadata_is_all_found_and_ok(tmp_path: Path) -> None:
    """Every checksummed block mkfs.xfs writes is found and ok: 4 AGs of headers, btrees, inodes."""
    blocks = scan_image(XfsFormat(), xfs_image(tmp_path).read_bytes())
    counts = verdicts(blocks)
    assert counts.pop("xfs.log.record:unchecked") >= 1  # mkfs writes h_crc 0 (see docs)
    assert counts == {
        "xfs.sb:ok": 4, "xfs.agf:ok": 4, "xfs.agi:ok": 4, "xfs.agfl:ok": 4,
        "xfs.btree.ab3b:ok": 4, "xfs.btree.ab3c:ok": 4, "xfs.btree.iab3:ok": 4,
        "xfs.btree.fib3:ok": 4, "xfs.btree.r3fc:ok": 4, "xfs.dinode:ok": 64,
    }  # fmt: skip


def test_xfs_blocks_before_the_superblock_are_not_judged(tmp_path: Path) -> None:
    """Until the primary superblock is seen, only superblocks are reported (uuid unknown)."""
    image = xfs_image(tmp_path).read_bytes()
    fmt = XfsFormat()
    ag1 = len(image) // 4
    assert {b.kind for b in fmt.scan(memoryview(image)[ag1 : ag1 + 64 * KiB], ag1)} == {"xfs.sb"}
    fmt.scan(memoryview(image)[:4096], 0)
    assert len(fmt.scan(memoryview(image)[ag1 : ag1 + 64 * KiB], ag1)) > 1


def test_xfs_a_changed_byte_tears_that_block_only(tmp_path: Path) -> None:
    """A byte changed in AG 0's AGF makes the AGF torn and nothing else."""
    image = xfs_image(tmp_path).read_bytes()
    agf = image.index(b"XAGF")
    blocks = scan_image(XfsFormat(), flipped(image, agf + 100))
    torn = [(b.kind, b.offset) for b in blocks if b.verdict is Verdict.TORN]
    assert torn == [("xfs.agf", agf)]


def test_xfs_a_torn_inode_chunk_is_located_to_the_inode(tmp_path: Path) -> None:
    """In an inode cluster, the inode with the changed byte is torn, at its own offset."""
    image = xfs_image(tmp_path).read_bytes()
    fmt = XfsFormat()
    fmt.scan(memoryview(image)[:4096], 0)
    first = next(b for b in scan_image(fmt, image) if b.kind == "xfs.dinode")
    bad = flipped(image, first.offset + 512 * 3 + 200)
    view = memoryview(bad)[first.offset : first.offset + 16 * KiB]
    torn = [b for b in fmt.scan(view, first.offset) if b.verdict is Verdict.TORN]
    assert [(b.offset, b.length) for b in torn] == [(first.offset + 3 * 512, 512)]


def test_xfs_kernel_log_records_and_directories_are_ok(tmp_path: Path) -> None:
    """After a mount, 300 creates and unmount, the kernel's log records and dir blocks are ok."""
    path = xfs_image(tmp_path)
    populate(path)
    counts = verdicts(scan_image(XfsFormat(), path.read_bytes()))
    assert counts["xfs.log.record:ok"] >= 2
    assert counts["xfs.dir3.data:ok"] + counts["xfs.dir3.block:ok"] >= 1
    assert counts["xfs.dinode:ok"] >= 300 + 3
    assert not [k for k in counts if k.endswith(":torn")]


def test_xfs_log_record_tear_is_located_to_the_sector(tmp_path: Path) -> None:
    """A kernel log record whose 2nd data sector shows an older cycle is torn at that sector."""
    path = xfs_image(tmp_path)
    populate(path)
    image = path.read_bytes()
    fmt = XfsFormat()
    records = [b for b in scan_image(fmt, image) if b.kind == "xfs.log.record"]
    rec = next(b for b in records if b.verdict is Verdict.OK and b.length >= 4 * 512)
    sector = rec.offset + 2 * 512  # header, then the first data sector, then this one
    bad = bytearray(image)
    bad[sector : sector + 4] = bytes(4)  # cycle 0: what mkfs left there
    torn = fmt.scan(memoryview(bytes(bad))[rec.offset : rec.offset + rec.length], rec.offset)
    assert [(b.verdict, b.torn_at) for b in torn] == [(Verdict.TORN, sector)]


# --- btrfs -----------------------------------------------------------------------------------


def btrfs_image(tmp_path: Path) -> Path:
    """A 256 MiB sparse image made by mkfs.btrfs (DUP metadata: every tree block twice)."""
    path = tmp_path / "btrfs.img"
    with path.open("wb") as f:
        f.truncate(256 * MiB)
    run(["mkfs.btrfs", "-q", "-f", str(path)])
    return path


def reachable_tree_blocks(image: Path) -> set[int]:
    """Logical addresses of the tree blocks btrfs-progs' dump-tree reaches in `image`."""
    lines = run(["btrfs", "inspect-internal", "dump-tree", str(image)]).splitlines()
    return {int(line.split()[1]) for line in lines if line.startswith(("leaf ", "node "))}


def test_btrfs_mkfs_tree_blocks_are_all_found_and_ok(tmp_path: Path) -> None:
    """Both superblock copies and every tree block dump-tree reaches (twice: DUP) are ok."""
    path = btrfs_image(tmp_path)
    blocks = scan_image(BtrfsFormat(), path.read_bytes())
    assert {b.verdict for b in blocks} == {Verdict.OK}
    supers = [b.offset for b in blocks if b.kind == "btrfs.super"]
    assert supers == [64 * KiB, 64 * MiB]
    copies = Counter(b.ident[0] for b in blocks if b.kind != "btrfs.super")
    reachable = reachable_tree_blocks(path)
    assert len(reachable) >= 5
    assert {copies[bytenr] for bytenr in reachable} == {2}
    assert {b.length for b in blocks if b.kind != "btrfs.super"} == {16 * KiB}


def test_btrfs_tree_blocks_are_not_found_before_a_superblock(tmp_path: Path) -> None:
    """Tree blocks carry no magic: before the superblock at 64 KiB is seen, none is found."""
    image = btrfs_image(tmp_path).read_bytes()
    fmt = BtrfsFormat()
    tail = memoryview(image)[1 * MiB :]
    assert [b.kind for b in fmt.scan(tail, 1 * MiB)] == ["btrfs.super"]  # the 64 MiB copy
    fmt.scan(memoryview(image)[: 1 * MiB], 0)
    assert len(fmt.scan(tail, 1 * MiB)) > 1


def test_btrfs_a_changed_byte_tears_one_tree_block_copy(tmp_path: Path) -> None:
    """A byte changed in one copy of a tree block tears that copy; its DUP twin stays ok."""
    image = btrfs_image(tmp_path).read_bytes()
    fmt = BtrfsFormat()
    leaves = [b for b in scan_image(fmt, image) if b.kind == "btrfs.leaf"]
    dup = Counter(b.ident for b in leaves)
    leaf = next(b for b in leaves if dup[b.ident] == 2)
    blocks = scan_image(BtrfsFormat(), flipped(image, leaf.offset + 9000))
    torn = [b for b in blocks if b.verdict is Verdict.TORN]
    assert [(b.offset, b.reason) for b in torn] == [(leaf.offset, "crc32c mismatch")]
    twins = [b for b in blocks if b.ident == leaf.ident and b.version == leaf.version]
    assert [b.verdict for b in twins if b.offset != leaf.offset] == [Verdict.OK]


def test_btrfs_kernel_written_tree_blocks_are_ok(tmp_path: Path) -> None:
    """After a real mount, 300 creates and unmount, every tree block and superblock is ok."""
    path = btrfs_image(tmp_path)
    populate(path)
    blocks = scan_image(BtrfsFormat(), path.read_bytes())
    assert {b.verdict for b in blocks} == {Verdict.OK}
    assert max(b.version or 0 for b in blocks if b.kind == "btrfs.super") > 1
    assert {copies for copies in Counter(b.ident[0] for b in blocks).values()} >= {2}


# --- ext4 and jbd2 ---------------------------------------------------------------------------


def ext4_image(tmp_path: Path) -> Path:
    """A 512 MiB sparse image made by mkfs.ext4 -b 4096 (4 groups, metadata_csum, 64bit)."""
    path = tmp_path / "ext4.img"
    with path.open("wb") as f:
        f.truncate(512 * MiB)
    run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "metadata_csum,64bit", str(path)])
    return path


def test_ext4_mkfs_metadata_is_all_found_and_ok(tmp_path: Path) -> None:
    """mkfs.ext4's superblocks (groups 0,1,3), 3 GDT copies, root inodes and dirs are all ok."""
    blocks = scan_image(Ext4Format(), ext4_image(tmp_path).read_bytes())
    assert verdicts(blocks) == {
        "ext4.super:ok": 3, "ext4.group_desc:ok": 3, "ext4.inode:ok": 1, "ext4.dir:ok": 5,
        "jbd2.super:unchecked": 1,  # mkfs leaves csum v3 to the first mount
    }  # fmt: skip
    assert [b.ident for b in blocks if b.kind == "ext4.super"] == [(0,), (1,), (3,)]
    assert [b.offset for b in blocks if b.kind == "ext4.group_desc"] == [
        4096, (32768 + 1) * 4096, (3 * 32768 + 1) * 4096
    ]  # fmt: skip


def test_ext4_superblock_tear_is_reported(tmp_path: Path) -> None:
    """A byte changed in the primary superblock makes it torn (crc32c over 1020 bytes)."""
    image = flipped(ext4_image(tmp_path).read_bytes(), 1024 + 0x20)
    blocks = Ext4Format().scan(memoryview(image)[:8192], 0)
    assert [(b.kind, b.verdict) for b in blocks] == [("ext4.super", Verdict.TORN)]


def test_ext4_group_descriptor_tear_is_located(tmp_path: Path) -> None:
    """A byte changed in group 2's descriptor tears the GDT block at that descriptor."""
    image = ext4_image(tmp_path).read_bytes()
    fmt = Ext4Format()
    fmt.scan(memoryview(image)[:4096], 0)
    blocks = fmt.scan(memoryview(flipped(image, 4096 + 2 * 64 + 12))[4096:8192], 4096)
    assert [(b.kind, b.verdict, b.torn_at) for b in blocks] == [
        ("ext4.group_desc", Verdict.TORN, 4096 + 128)
    ]


def test_ext4_inode_tear_is_located_to_the_inode(tmp_path: Path) -> None:
    """A byte changed in the root inode (2) tears its inode-table block at inode 2."""
    image = ext4_image(tmp_path).read_bytes()
    fmt = Ext4Format()
    itable = next(b for b in scan_image(fmt, image) if b.kind == "ext4.inode")
    assert itable.ident == (1,)
    bad = memoryview(flipped(image, itable.offset + 256 + 0x10))
    blocks = fmt.scan(bad[itable.offset : itable.offset + 4096], itable.offset)
    assert [(b.verdict, b.torn_at) for b in blocks] == [(Verdict.TORN, itable.offset + 256)]


def test_ext4_inodes_are_unknown_before_the_superblock(tmp_path: Path) -> None:
    """Before the superblock and GDT are seen, an inode table block gives no verdict."""
    image = ext4_image(tmp_path).read_bytes()
    itable = next(b for b in scan_image(Ext4Format(), image) if b.kind == "ext4.inode")
    view = memoryview(image)[itable.offset : itable.offset + 4096]
    assert Ext4Format().scan(view, itable.offset) == []


def populated_ext4(tmp_path: Path) -> bytes:
    """An ext4 image after a real mount: 300 files, a 10-extent file, unmount."""
    path = ext4_image(tmp_path)
    sparse = "for i in 0 1 2 3 4 5 6 7 8 9; do dd if=/dev/urandom of={mnt}/sparse bs=4k " \
             "count=1 seek=$((i*2)) conv=notrunc status=none; done"  # fmt: skip
    populate(path)
    mount_and_write(path, [["sh", "-c", sparse]])
    return path.read_bytes()


def test_ext4_kernel_written_metadata_and_journal_are_ok(tmp_path: Path) -> None:
    """After real mounts, the kernel's inodes, dirs, extent block and jbd2 blocks are all ok."""
    counts = verdicts(scan_image(Ext4Format(), populated_ext4(tmp_path)))
    assert not [k for k in counts if k.endswith(":torn")]
    assert counts["jbd2.super:ok"] == 1
    assert counts["jbd2.descriptor:ok"] >= 1 and counts["jbd2.commit:ok"] >= 1
    assert counts["ext4.extent:ok"] >= 1
    assert counts["ext4.inode:ok"] >= 300 // 16
    assert counts["ext4.dir:ok"] >= 3


def test_jbd2_commit_tear_is_reported_with_its_sequence(tmp_path: Path) -> None:
    """A byte changed in a kernel-written jbd2 commit block tears it; its version is the tid."""
    image = populated_ext4(tmp_path)
    fmt = Ext4Format()
    commit = next(b for b in scan_image(fmt, image) if b.kind == "jbd2.commit")
    bad = memoryview(flipped(image, commit.offset + 40))
    torn = fmt.scan(bad[commit.offset : commit.offset + 4096], commit.offset)
    assert [(b.kind, b.verdict, b.version) for b in torn] == [
        ("jbd2.commit", Verdict.TORN, commit.version)
    ]
    assert commit.version is not None and commit.version >= 1


def reused_root(tmp_path: Path) -> tuple[bytes, bytes]:
    """An ext4 image, and a copy whose root inode has a new i_generation (debugfs) with its
    directory block's checksum rewritten for the new seed (e2fsck -fy): what a freed and
    reused directory inode looks like on the device."""
    first = ext4_image(tmp_path)
    second = tmp_path / "reused.img"
    second.write_bytes(first.read_bytes())
    run(["debugfs", "-w", "-R", "set_inode_field <2> generation 4242", str(second)])
    subprocess.run(["e2fsck", "-fy", str(second)], capture_output=True, check=False)
    return first.read_bytes(), second.read_bytes()


@pytest.mark.parametrize("tear", [False, True])
def test_ext4_dir_block_of_a_reused_inode_waits_for_its_inode(tmp_path: Path, tear: bool) -> None:
    """A dir block written for the root inode's new generation, arriving before the new inode:
    unchecked (waiting), then ok once the inode block arrives; with a byte changed, torn then."""
    old, new = reused_root(tmp_path)
    changed = [i for i in range(0, len(new), 4096) if old[i : i + 4096] != new[i : i + 4096]]
    itable, dirblock = changed[1], changed[2]  # block 0 is the superblock (fsck's times)
    fmt = Ext4Format()
    scan_image(fmt, old[: 1 * MiB])
    block = new[dirblock : dirblock + 4096]
    block = flipped(block, 200) if tear else block
    (early,) = fmt.scan(memoryview(block), dirblock)
    assert (early.kind, early.verdict, early.reason) == (
        "ext4.dir", Verdict.UNCHECKED, "waiting for inode 2: its last seen seed fails"
    )
    later = [b for b in fmt.scan(memoryview(new[itable : itable + 4096]), itable)
             if b.offset == dirblock]  # fmt: skip
    assert [(b.kind, b.verdict) for b in later] == [
        ("ext4.dir", Verdict.TORN if tear else Verdict.OK)
    ]
    assert later[0].reason == "judged when inode 2's seed was confirmed by a later WRITE"


def test_random_bytes_with_the_superblock_magic_are_no_superblock(tmp_path: Path) -> None:
    """The magic and the metadata_csum bit in otherwise random bytes (as a VM run found in
    dm-integrity's tag area: "group 27738") are not judged; the real superblock still is,
    torn when a byte of it changes."""
    rng = random.Random(7)
    lookalike = bytearray(rng.randbytes(2048))
    lookalike[1024 + 0x38 : 1024 + 0x3A] = b"\x53\xef"
    lookalike[1024 + 0x65] |= 0x04  # ro_compat bit 10: metadata_csum
    assert Ext4Format().scan(memoryview(bytes(lookalike)), 0) == []
    real = ext4_image(tmp_path).read_bytes()[:2048]
    assert [(b.kind, b.verdict) for b in Ext4Format().scan(memoryview(real), 0)] == [
        ("ext4.super", Verdict.OK)]
    torn = Ext4Format().scan(memoryview(flipped(real, 1024 + 0x78)), 0)  # the volume name
    assert [(b.kind, b.verdict) for b in torn] == [("ext4.super", Verdict.TORN)]
