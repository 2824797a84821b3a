"""The shared per-WRITE pre-pass changes no verdict: real blocks of every format, alone in a WRITE
at many sector positions or as whole mkfs images, are found as the per-format scans find them."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator

import pytest

from nbdfork.oracle.blocks import FormatJudge
from nbdfork.oracle.formats import FormatBlock, formats_for, scan_all
from nbdfork.oracle.formats.base import BlockFormat
from nbdfork.oracle.formats.ext4 import Ext4Format
from nbdfork.oracle.formats.jbd2 import MAGIC as JBD2_MAGIC
from nbdfork.oracle.formats.prepass import Prepass
from nbdfork.oracle.formats.xfs import XfsFormat
from tests.test_formats import GOLDEN, btrfs_image, ext4_image, fio_file, xfs_image

KiB = 1024
MiB = 1024 * KiB
ALL = ("fio", "xfs", "btrfs", "ext4")
FAR = 448 * MiB  # no filesystem of the images places metadata here
WRITE_SIZES = (4 * KiB, 32 * KiB, 128 * KiB, 1 * MiB)  # struct unpack up to 32 KiB, numpy above
BY_PLACE = {"btrfs.super", "ext4.group_desc", "ext4.inode"}  # found where they lie, not moved
STEP = {"btrfs": 4 * KiB, "ext4.extent": 4 * KiB, "ext4.dir": 4 * KiB, "ext4.super": 1 * KiB}
"""Where a kind may start in a WRITE (its format's alignment), if not at any sector."""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """mkfs images of each filesystem, a fio crc32c file and fio 3.42's golden blocks."""
    tmp = tmp_path_factory.mktemp("prepass")
    return {
        "xfs": xfs_image(tmp).read_bytes(),
        "btrfs": btrfs_image(tmp).read_bytes(),
        "ext4": ext4_image(tmp).read_bytes(),
        "fio": fio_file(tmp, "crc32c", size=64 * KiB),
        "fio342": (GOLDEN / "fio-3.42-md5.bin").read_bytes(),
    }


class Twin:
    """One FormatJudge (with the pre-pass) and the same formats scanned one by one without it,
    fed the same WRITEs: every WRITE must give both the same blocks."""

    def __init__(self) -> None:
        self.judge = FormatJudge(ALL)
        self.plain: list[BlockFormat] = formats_for(ALL)
        self.cleared = 0  # WRITEs the pre-pass let skip every content scan

    def write(self, data: bytes, offset: int) -> list[FormatBlock]:
        """The blocks of one WRITE, checked equal both ways."""
        self.cleared += self.judge.prepass.clear(memoryview(data), offset)
        got = list(self.judge.scan(memoryview(data), offset))
        assert got == scan_all(self.plain, memoryview(data), offset), f"WRITE at {offset}"
        return got

    def prime(self, images: dict[str, bytes]) -> None:
        """Every filesystem's first MiB, so that each knows its superblock (as after mkfs)."""
        for name in ("xfs", "btrfs", "ext4"):
            for at in range(0, 1 * MiB, 128 * KiB):
                self.write(images[name][at : at + 128 * KiB], at)
        assert all(getattr(f, "geometry", True) is not None for f in self.judge.formats)
        # fio and jbd2 at 0, xfs at 0 and 8, the btrfs fsid at 32, ext4's superblock at 0x38,
        # ext4's directory tail at 506
        assert self.judge.prepass.offsets == (0, 8, 32, 0x38, 506)
        self.cleared = 0


def real_blocks(images: dict[str, bytes]) -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of one block of every kind the images hold (what their tools wrote)."""
    seen: set[str] = set()
    for name, image in images.items():
        fmt = formats_for(["fio" if name.startswith("fio") else name])[0]
        for at in range(0, len(image), 1 * MiB):
            for block in fmt.scan(memoryview(image)[at : at + 1 * MiB], at):
                whole = block.length and block.offset + block.length <= at + 1 * MiB
                if block.kind not in seen and whole:
                    seen.add(block.kind)
                    yield block.kind, image[block.offset : block.offset + block.length]


def made_blocks(judge: FormatJudge) -> Iterator[tuple[str, bytes]]:
    """Blocks of the kinds mkfs does not write (the kernel does, once mounted), made from the
    learned geometry: recognised, though their checksums are not right."""
    xfs = next(f for f in judge.formats if isinstance(f, XfsFormat))
    assert xfs.geometry is not None
    for magic, kind in (
        (b"\x3e\xbe", "xfs.da3.node"),
        (b"\x3d\xf1", "xfs.dir3.leaf1"),
        (b"\x3d\xff", "xfs.dir3.leafn"),
        (b"\x3b\xee", "xfs.attr3.leaf"),
    ):
        block = bytearray(random.Random(kind).randbytes(xfs.geometry.blocksize))
        block[8:10], block[32:48] = magic, xfs.geometry.uuid
        yield kind, bytes(block)
    ext4 = next(f for f in judge.formats if isinstance(f, Ext4Format))
    assert ext4.geometry is not None
    size = ext4.geometry.blocksize
    extent = bytearray(size)
    extent[:8] = struct.pack("<HHHH", 0xF30A, 0, 4, 0)  # magic, entries, max, depth
    yield "ext4.extent", bytes(extent)
    leaf = bytearray(random.Random(1).randbytes(size))
    leaf[-12:] = b"\x00\x00\x00\x00\x0c\x00\x00\xde" + bytes(4)
    yield "ext4.dir", bytes(leaf)
    for btype, kind in ((1, "jbd2.descriptor"), (2, "jbd2.commit"), (5, "jbd2.revoke")):
        yield kind, JBD2_MAGIC + struct.pack(">II", btype, 7) + bytes(size - 12)


@pytest.mark.parametrize("size", WRITE_SIZES)
def test_every_kind_alone_in_a_write_is_found_at_every_sector_position(
    images: dict[str, bytes], size: int
) -> None:
    """A block of one kind in an otherwise zero WRITE -- at the first, a middle and the last
    sector position it fits at -- is found as the per-format scans find it: the pre-pass sees
    every kind's own probe word, whatever WRITE size (struct or numpy path) and position."""
    twin = Twin()
    twin.prime(images)
    blocks = dict(real_blocks(images)) | dict(made_blocks(twin.judge))
    assert {
        "xfs.sb",
        "xfs.agf",
        "xfs.btree.ab3b",
        "xfs.dinode",
        "xfs.log.record",
        "btrfs.super",
        "btrfs.leaf",
        "ext4.super",
        "jbd2.super",
        "fio.crc32c",
        "fio.md5",
    } <= set(blocks)
    for kind, raw in sorted(blocks.items()):
        if len(raw) > size or kind in BY_PLACE:
            continue
        step = STEP.get(kind, STEP.get(kind.split(".")[0], 512))
        last = (size - len(raw)) // step * step
        for at in sorted({0, last // 2 // step * step, last}):
            data = bytearray(size)
            data[at : at + len(raw)] = raw
            found = twin.write(bytes(data), FAR)
            assert kind in {b.kind for b in found}, (kind, size, at)
    assert twin.cleared == 0


@pytest.mark.parametrize("chunk", [4 * KiB, 128 * KiB])
@pytest.mark.parametrize("name", ["xfs", "btrfs", "ext4"])
def test_whole_images_and_noise_over_their_metadata_give_the_same_blocks(
    images: dict[str, bytes], name: str, chunk: int
) -> None:
    """A whole mkfs image as WRITEs of `chunk` bytes, then random and zero WRITEs over every
    block found (where ext4 looks by place), give the same blocks with the pre-pass as without."""
    twin = Twin()
    twin.prime(images)
    image, found = images[name], []
    zero = bytes(chunk)
    for at in range(0, len(image), chunk):
        if image[at : at + chunk] != zero:
            found += twin.write(image[at : at + chunk], at)
    assert len(found) >= 10
    rng = random.Random(name)
    for block in found:
        at = block.offset // chunk * chunk
        twin.write(rng.randbytes(chunk), at)
        twin.write(zero, at)
    assert twin.cleared >= len(found)  # the noise and zeros mostly skip the content scans


def test_random_data_clears_the_prepass_and_costs_no_block(images: dict[str, bytes]) -> None:
    """Random 4 KiB and 1 MiB WRITEs far from any metadata skip every content scan (but for
    the rare probe word by chance) and give no block, with every format primed."""
    twin = Twin()
    twin.prime(images)
    rng = random.Random(5)
    writes = [(rng.randbytes(4 * KiB), FAR + i * 4 * KiB) for i in range(500)]
    writes += [(rng.randbytes(1 * MiB), FAR + i * MiB) for i in range(4)]
    for data, at in writes:
        assert twin.write(data, at) == []
    assert twin.cleared >= 0.9 * len(writes)


# --- the pre-pass alone -----------------------------------------------------------------------


def _with(size: int, sector: int, offset: int, word: bytes) -> memoryview:
    data = bytearray(size)
    data[sector * 512 + offset : sector * 512 + offset + 2] = word
    return memoryview(bytes(data))


@pytest.mark.parametrize("size", [512, 4 * KiB, 32 * KiB, 64 * KiB, 1 * MiB])
def test_prepass_clears_exactly_the_writes_without_a_probe_word(size: int) -> None:
    """Each probe word at its offset of any sector stops the clearance; the same word at
    another offset, or another word, does not (struct and numpy paths alike)."""
    prepass = Prepass([{0: [b"\xca\xac"]}, {8: [b"\x3e\xbe", b"\x3b\xee"]}, {}])
    last = size // 512 - 1
    assert prepass.clear(memoryview(bytes(size)), 0)
    for sector in {0, last // 2, last}:
        assert not prepass.clear(_with(size, sector, 0, b"\xca\xac"), 0)
        assert not prepass.clear(_with(size, sector, 8, b"\x3b\xee"), 4096)
        assert prepass.clear(_with(size, sector, 8, b"\xca\xac"), 0)  # fio's word, xfs's place
        assert prepass.clear(_with(size, sector, 2, b"\xca\xac"), 0)
        assert prepass.clear(_with(size, sector, 0, b"\xac\xca"), 0)


def test_prepass_does_not_clear_what_it_cannot_judge() -> None:
    """Partial sectors, an unaligned device offset, an empty WRITE or a format without probes
    (None) always get the full scans; no probes at all clears everything."""
    prepass = Prepass([{0: [b"\xca\xac"]}])
    assert not prepass.clear(memoryview(bytes(4096 + 100)), 0)
    assert not prepass.clear(memoryview(bytes(4096)), 100)
    assert not prepass.clear(memoryview(b""), 0)
    assert not Prepass([{0: [b"\xca\xac"]}, None]).clear(memoryview(bytes(4096)), 0)
    assert Prepass([{}]).clear(memoryview(b"\xca\xac" + bytes(4094)), 0)
    with pytest.raises(ValueError, match="even offset"):
        Prepass([{511: [b"ab"]}])
