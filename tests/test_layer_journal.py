"""A storage layer's own journal on the device is not judged: dm-integrity (J) writes every
data sector there with its last 8 bytes replaced by a commit id, which is no tear."""

from __future__ import annotations

import struct

import pytest

from nbdfork.oracle.layers import INTEGRITY_MAGIC, integrity_journal
from nbdfork.oracle.stamp import encode_page
from nbdfork.oracle.verify import Oracle, WriteRequest
from tests.test_oracle import ListSink

# The first 64 bytes of the superblock `integritysetup format --integrity crc32c` (cryptsetup
# 2.6.1) wrote on a 128 MiB nbd device under Linux 6.1, as nbdfork's trace recorded that WRITE
# (issue 19's crash campaign on dm-integrity:J); the rest of its 4 KiB is zeros. Version 5,
# interleave 2^15 sectors, 4-byte tags, 8 journal sections, 512-byte blocks, no journal MAC.
REAL_SB = bytes.fromhex(
    "696e746567727400050f04000800000078f402000000000018000000000f0000"
    "00000000000000000000000000000000ef223c9c9992554b5fbf42ace96f9c26"
).ljust(4096, b"\0")
JOURNAL = (4096, 724992)  # sectors 8 .. 8 + 8 sections x 176 sectors


def _sb(*, flags: int = 0x18, log2_spb: int = 0, sections: int = 8) -> bytes:
    head = struct.pack("<8sBBHIQIB", INTEGRITY_MAGIC, 5, 15, 4, sections, 193656, flags, log2_spb)
    return head.ljust(4096, b"\0")


def test_the_real_superblock_gives_the_journal_it_describes() -> None:
    """The recorded superblock: journal from 4 KiB to 708 KiB; in that campaign's trace every
    page the oracle used to call torn lay inside it (8 KiB .. 636 KiB)."""
    assert integrity_journal(REAL_SB) == JOURNAL
    assert integrity_journal(_sb()) == JOURNAL


@pytest.mark.parametrize(("sb", "end_sector"), [
    (_sb(flags=0x19), 8 + 8 * (20 * 8 + 8)),          # a journal MAC: 20 entries a sector
    (_sb(log2_spb=3), 8 + 8 * ((6 * 8 << 3) + 8)),    # 4 KiB blocks: 80-byte entries
    (_sb(sections=1), 8 + 176),
])  # fmt: skip
def test_the_journal_extent_follows_the_kernels_layout(sb: bytes, end_sector: int) -> None:
    """Entry size, MAC and block size change the extent as calculate_journal_section_size()."""
    assert integrity_journal(sb) == (4096, end_sector * 512)


@pytest.mark.parametrize("sb", [bytes(4096), b"integrt", _sb(sections=0), b"xntegrt\0" + bytes(60)])
def test_anything_else_describes_no_journal(sb: bytes) -> None:
    """Zeros, a short or unknown header, or no journal sections: no journal."""
    assert integrity_journal(sb) is None


def journal_copy(page: bytes) -> bytes:
    """`page` as dm-integrity's journal holds it: each sector's last 8 bytes a commit id."""
    return b"".join(page[i : i + 504] + struct.pack("<Q", 0x1234_0000 + i)
                    for i in range(0, 4096, 512))  # fmt: skip


class _Device:
    def __init__(self) -> None:
        self.sink = ListSink()
        self.oracle = Oracle(self.sink)
        self.next_id = 0

    def write(self, offset: int, data: bytes, conn: int = 1) -> list[object]:
        """One WRITE arriving and landing; the verdict kinds it caused."""
        before = len(self.sink.events)
        self.next_id += 1
        req = WriteRequest(self.next_id, conn, offset, len(data), False, 1.0)
        self.oracle.write_arrived(req, data)
        self.oracle.write_replied(self.next_id, ok=True, time=2.0)
        return [e["event"] for e in self.sink.events[before:]]


def test_journal_copies_are_not_judged_while_the_layer_stands() -> None:
    """After the superblock, a journal copy of a stamped page is no verdict (counted as a
    layer journal WRITE); the same bytes in the data area are torn; once the client that
    formatted the layer disconnects, or offset 0 is rewritten, the area is judged again."""
    dev = _Device()
    copy = journal_copy(encode_page(7, 0, 1))
    assert dev.write(0, copy, conn=1) == ["torn_write"]  # no layer yet: judged
    assert dev.write(0, REAL_SB) == []
    assert dev.write(8192, copy) == []
    assert dev.write(JOURNAL[1] - 4096, copy) == []
    assert dev.oracle.counts()["layer_journal_writes"] == 2
    assert dev.oracle.counts(1)["layer_journal_writes"] == 2
    assert dev.write(JOURNAL[1], copy) == ["torn_write"]  # the data area: the writer's blocks
    assert dev.write(JOURNAL[1] - 2048, copy) == ["torn_write"]  # straddles the journal's end
    dev.oracle.connection_closed(1, time=3.0)
    assert dev.write(8192, copy, conn=2) == ["torn_write"]
    assert dev.write(0, REAL_SB, conn=2) == [] and dev.write(8192, copy, conn=2) == []
    assert dev.write(0, bytes(4096), conn=2) == []  # wipefs: the layer is gone
    assert dev.write(8192, copy, conn=2) == ["torn_write"]
