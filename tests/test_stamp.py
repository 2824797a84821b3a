"""The stamped-page format: encoding, the exact and the vectorized decoder, the spec example."""

from __future__ import annotations

import crc32c
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nbdfork.oracle.stamp import (
    FILL_WORDS,
    MAGIC,
    PAGE_SIZE,
    SECTOR_SIZE,
    PageDecode,
    PageStatus,
    decode_page,
    decode_pages,
    encode_page,
    encode_pages,
    find_stamps,
    mix64,
)

streams = st.integers(0, 2**32 - 1)
u64s = st.integers(0, 2**64 - 1)
small = st.integers(0, 1000)
JBD2_MAGIC = 0xC03B3998


def distinct_generations() -> st.SearchStrategy[tuple[int, int]]:
    """Two different generations."""
    return st.tuples(u64s, u64s).filter(lambda ab: ab[0] != ab[1])


def first_difference(a: bytes, b: bytes) -> int | None:
    """Index of the first byte where a and b differ."""
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    return int(diff[0]) if diff.size else None


def restamp(page: bytes | bytearray) -> bytes:
    """`page` with the crc of every sector recomputed as the spec says (crc fields zeroed)."""
    data = bytearray(page)
    for s in range(8):
        data[s * SECTOR_SIZE + 32 : s * SECTOR_SIZE + 36] = bytes(4)
    crc = crc32c.crc32c(bytes(data)).to_bytes(4, "little")
    for s in range(8):
        data[s * SECTOR_SIZE + 32 : s * SECTOR_SIZE + 36] = crc
    return bytes(data)


def fill_word(page: bytes, w: int) -> int:
    """Fill word w (0..471) of an encoded page."""
    sector, j = divmod(w, FILL_WORDS)
    at = sector * SECTOR_SIZE + 40 + 8 * j
    return int.from_bytes(page[at : at + 8], "little")


# --- encoding and the documented example -----------------------------------------------------


def test_documented_example_first_48_bytes() -> None:
    """stream=1, page=2, generation=3 encodes to the hex printed in docs/stamp-format.md."""
    page = encode_page(1, 2, 3)
    assert page[:48].hex() == (
        "6e6264464f524b31" "0100" "0000" "01000000" "0200000000000000" "0300000000000000"
        "bd5a69e7" "00000000" "da6fbef9c2ebc093"
    )  # fmt: skip
    assert page[512:528].hex() == "6e6264464f524b310100010001000000"


def test_documented_mix64_values() -> None:
    """mix64 gives the worked-example values of the spec, and they sit where the spec says."""
    expected = {0: 0x93C0EBC2F9BE6FDA, 1: 0x5CFCC539F5C2A452, 58: 0x0DD7A6AFC7204861,
                59: 0x6A7B8FADA394DC14, 471: 0xADBBF11E625B013F}  # fmt: skip
    page = encode_page(1, 2, 3)
    for w, value in expected.items():
        assert mix64(1, 2, 3, w) == value
        assert fill_word(page, w) == value


def test_magic_is_not_jbd2_and_starts_every_sector() -> None:
    """The magic's first u32 is not jbd2's 0xc03b3998 (either byte order); every sector has it."""
    assert int.from_bytes(MAGIC[:4], "little") != JBD2_MAGIC
    assert int.from_bytes(MAGIC[:4], "big") != JBD2_MAGIC
    page = encode_page(9, 9, 9)
    assert [page[s * SECTOR_SIZE : s * SECTOR_SIZE + 8] for s in range(8)] == [MAGIC] * 8


def test_crc_is_crc32c_with_crc_fields_zeroed() -> None:
    """Every sector stores crc32c of the page computed with all 8 crc fields zero."""
    page = bytearray(encode_page(4, 5, 6))
    stored = {bytes(page[s * 512 + 32 : s * 512 + 36]) for s in range(8)}
    for s in range(8):
        page[s * 512 + 32 : s * 512 + 36] = bytes(4)
    assert stored == {crc32c.crc32c(bytes(page)).to_bytes(4, "little")}


@settings(deadline=None)  # a pure-Python reference per word: slow on a loaded machine
@given(streams, u64s, u64s)
def test_fill_matches_reference_mix64(stream: int, page: int, generation: int) -> None:
    """The vectorized fill equals the pure-Python mix64 for every word of the page."""
    data = encode_page(stream, page, generation)
    assert [fill_word(data, w) for w in range(472)] == [
        mix64(stream, page, generation, w) for w in range(472)
    ]


@given(streams, u64s, distinct_generations())
def test_every_fill_word_differs_between_generations(
    stream: int, page: int, gens: tuple[int, int]
) -> None:
    """Two generations of one page differ in all 472 fill words."""
    a, b = (encode_page(stream, page, g) for g in gens)
    assert all(fill_word(a, w) != fill_word(b, w) for w in range(472))


@given(streams, u64s, u64s)
def test_round_trip_is_valid(stream: int, page: int, generation: int) -> None:
    """A freshly encoded page decodes VALID with its identity in all 8 sector tags."""
    data = encode_page(stream, page, generation)
    assert len(data) == PAGE_SIZE
    assert decode_page(data) == PageDecode(
        PageStatus.VALID, stream, page, generation, (generation,) * 8, True, None
    )


@pytest.mark.parametrize("count", [3, 40])
def test_encode_pages_concatenates_consecutive_pages(count: int) -> None:
    """encode_pages(s, p, gens) is encode_page(s, p + i, gens[i]) joined, for 3 or 40 pages."""
    gens = [(i * 0x9E3779B97F4A7C15) % 2**64 for i in range(count)]
    assert encode_pages(3, 10, gens) == b"".join(
        encode_page(3, 10 + i, g) for i, g in enumerate(gens)
    )


@pytest.mark.parametrize(
    ("args", "error", "name"),
    [
        ((2**32, 0, 0), ValueError, "stream"),
        ((-1, 0, 0), ValueError, "stream"),
        ((0, 2**64, 0), ValueError, "page"),
        ((0, 0, -5), ValueError, "generation"),
        ((True, 0, 0), TypeError, "stream"),
    ],
)
def test_encode_rejects_out_of_range(args: tuple[int, int, int], error: type, name: str) -> None:
    """encode_page rejects values outside u32/u64 (and bools) with an error naming the field."""
    with pytest.raises(error, match=name):
        encode_page(*args)


# --- the exact decoder -------------------------------------------------------------------------


@given(streams, small, distinct_generations(), st.integers(1, 7))
def test_sector_splice_is_torn_with_sector_map(
    stream: int, page: int, gens: tuple[int, int], k: int
) -> None:
    """Sectors 0..k-1 of generation a and k..7 of b: TORN, sector map a*k + b*(8-k), crc fails."""
    a, b = gens
    new, old = encode_page(stream, page, a), encode_page(stream, page, b)
    spliced = new[: k * SECTOR_SIZE] + old[k * SECTOR_SIZE :]
    d = decode_page(spliced)
    assert d.status is PageStatus.TORN
    assert (d.stream, d.page, d.generation) == (stream, page, a)
    assert d.sector_generations == (a,) * k + (b,) * (8 - k)
    assert d.first_mismatch == first_difference(spliced, new)
    assert d.first_mismatch is not None and d.first_mismatch >= k * SECTOR_SIZE
    assert not d.crc_ok


@given(streams, small, distinct_generations(), st.integers(0, PAGE_SIZE))
def test_byte_splice_torn_iff_differs_from_both(
    stream: int, page: int, gens: tuple[int, int], cut: int
) -> None:
    """A splice at any byte is TORN iff it differs from both originals; first_mismatch is exact."""
    a, b = gens
    new, old = encode_page(stream, page, a), encode_page(stream, page, b)
    spliced = new[:cut] + old[cut:]
    d = decode_page(spliced)
    assert (d.status is PageStatus.TORN) == (spliced not in (new, old))
    assert d.generation is not None
    assert d.first_mismatch == first_difference(spliced, encode_page(stream, page, d.generation))
    if cut >= 32:  # sector 0's tag comes from generation a
        assert d.generation == a
        assert d.first_mismatch == first_difference(spliced, new)


@given(streams, small, u64s, st.integers(0, 7), st.integers(40, SECTOR_SIZE - 1))
def test_fill_corruption_is_located_to_the_byte(
    stream: int, page: int, gen: int, sector: int, at: int
) -> None:
    """One flipped fill byte: TORN, tags all intact, crc fails, first_mismatch is that byte."""
    data = bytearray(encode_page(stream, page, gen))
    data[sector * SECTOR_SIZE + at] ^= 0x01
    d = decode_page(bytes(data))
    assert d.status is PageStatus.TORN
    assert d.sector_generations == (gen,) * 8
    assert (d.crc_ok, d.first_mismatch) == (False, sector * SECTOR_SIZE + at)


def test_crc_is_normative_not_the_fill() -> None:
    """A fill that is not mix64's under consistent tags and a matching crc is VALID (rule 3)."""
    data = bytearray(encode_page(1, 2, 3))
    data[3 * SECTOR_SIZE + 100] ^= 0xFF
    d = decode_page(restamp(data))
    assert d == PageDecode(PageStatus.VALID, 1, 2, 3, (3,) * 8, True, None)


@pytest.mark.parametrize(
    ("field", "at"),
    [("version", 8), ("sector", 10), ("stream", 12), ("page", 16), ("generation", 24),
     ("reserved", 36)],
)  # fmt: skip
def test_one_inconsistent_header_field_is_torn(field: str, at: int) -> None:
    """A header field changed in sector 5 alone, crc recomputed to match: TORN with crc_ok."""
    data = bytearray(encode_page(1, 2, 3))
    data[5 * SECTOR_SIZE + at] ^= 0x04
    d = decode_page(restamp(data))
    assert (d.status, d.crc_ok) == (PageStatus.TORN, True)
    assert d.first_mismatch == 32  # the recomputed crc, in sector 0, differs from encode_page's


def test_crc_differing_in_one_sector_is_torn() -> None:
    """Sector 6 storing another crc than the other seven: TORN, located at that crc field."""
    data = bytearray(encode_page(1, 2, 3))
    data[6 * SECTOR_SIZE + 33] ^= 0x10
    d = decode_page(bytes(data))
    assert (d.status, d.crc_ok, d.first_mismatch) == (PageStatus.TORN, False, 6 * SECTOR_SIZE + 33)


def test_identity_from_majority_when_sector_0_lost_its_magic() -> None:
    """Sector 0 zeroed: identity comes from the other sectors' majority, sector map has None."""
    data = bytes(SECTOR_SIZE) + encode_page(1, 2, 7)[SECTOR_SIZE:]
    d = decode_page(data)
    assert d == PageDecode(PageStatus.TORN, 1, 2, 7, (None,) + (7,) * 7, False, 0)


def test_magic_alone_is_torn_not_dropped() -> None:
    """A page whose only stamp is a bare magic in sector 3 is TORN (reported, never dropped)."""
    data = bytearray(PAGE_SIZE)
    data[3 * SECTOR_SIZE : 3 * SECTOR_SIZE + 8] = MAGIC
    d = decode_page(bytes(data))
    assert (d.status, d.stream, d.page, d.generation) == (PageStatus.TORN, 0, 0, 0)
    assert d.sector_generations == (None, None, None, None, None, None, None, None)
    assert d.first_mismatch == 0


def test_sector_of_another_page_has_no_valid_tag() -> None:
    """A sector from another page of the stream shows as None in the sector map."""
    data = encode_page(1, 2, 3)[: 5 * SECTOR_SIZE] + encode_page(1, 9, 3)[5 * SECTOR_SIZE :]
    d = decode_page(data)
    assert d.status is PageStatus.TORN
    assert d.sector_generations == (3, 3, 3, 3, 3, None, None, None)


def test_future_version_is_torn() -> None:
    """A page with format version 2 is not VALID: a decoder must know the version it accepts."""
    data = bytearray(encode_page(1, 2, 3))
    for s in range(8):
        data[s * SECTOR_SIZE + 8] = 2
    d = decode_page(bytes(data))
    assert (d.status, d.sector_generations) == (PageStatus.TORN, (None,) * 8)


@given(st.integers(0, 2**64 - 1))
def test_random_bytes_are_unstamped(seed: int) -> None:
    """Random bytes (no magic) decode UNSTAMPED with no identity."""
    d = decode_page(np.random.default_rng(seed).bytes(PAGE_SIZE))
    assert d == PageDecode(PageStatus.UNSTAMPED, None, None, None, (None,) * 8, False, None)


def test_zeros_are_unstamped_and_wrong_size_rejected() -> None:
    """A zero page is UNSTAMPED; a buffer that is not 4096 bytes is a ValueError."""
    assert decode_page(bytes(PAGE_SIZE)).status is PageStatus.UNSTAMPED
    assert decode_page(memoryview(bytearray(PAGE_SIZE))).status is PageStatus.UNSTAMPED
    with pytest.raises(ValueError, match="4096"):
        decode_page(bytes(512))


# --- the vectorized decoder --------------------------------------------------------------------

KINDS = ("zero", "random", "valid", "sector_tear", "byte_tear", "bare_magic", "refilled",
         "bad_reserved")  # fmt: skip


def make_page(kind: str, n: int, seed: int) -> bytes:
    """A page of one kind, distinct per n."""
    rng = np.random.default_rng(seed)
    new, old = encode_page(n % 3, n, n + 2), encode_page(n % 3, n, n + 1)
    cut = int(rng.integers(1, PAGE_SIZE))
    pages = {
        "zero": bytes(PAGE_SIZE),
        "random": rng.bytes(PAGE_SIZE),
        "valid": new,
        "sector_tear": new[: 512 * (cut % 7 + 1)] + old[512 * (cut % 7 + 1) :],
        "byte_tear": new[:cut] + old[cut:],
        "bare_magic": MAGIC + bytes(PAGE_SIZE - 8),
        "refilled": restamp(new[:cut] + bytes([new[cut] ^ 1]) + new[cut + 1 :]) if cut % 512 >= 40
        else new,  # a fill byte changed, crc recomputed: VALID
        "bad_reserved": restamp(new[:36] + b"\x01" + new[37:]),
    }  # fmt: skip
    return pages[kind]


@given(st.lists(st.sampled_from(KINDS), max_size=40), st.integers(0, 2**32), small)
def test_decode_pages_agrees_with_decode_page(kinds: list[str], seed: int, base: int) -> None:
    """On a mixed payload, decode_pages gives decode_page's verdict for every page."""
    payload = b"".join(make_page(k, n, seed + n) for n, k in enumerate(kinds))
    got = decode_pages(payload, base_offset=base * PAGE_SIZE)
    singles = [decode_page(payload[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]) for i in range(len(kinds))]
    assert got.page_count == len(kinds)
    stamped = [i for i, d in enumerate(singles) if d.status is not PageStatus.UNSTAMPED]
    assert got.index.tolist() == stamped
    assert got.torn == {i: d for i, d in enumerate(singles) if d.status is PageStatus.TORN}
    assert got.valid_pages() == [
        ((base + i) * PAGE_SIZE, d.stream, d.page, d.generation)
        for i, d in enumerate(singles)
        if d.status is PageStatus.VALID
    ]
    assert [(got.stream[k], got.page[k], got.generation[k]) for k in range(len(stamped))] == [
        (singles[i].stream, singles[i].page, singles[i].generation) for i in stamped
    ]


@settings(deadline=None)  # 40 pages encoded per example: slow on a loaded machine
@given(st.lists(st.sampled_from(KINDS), max_size=40), st.integers(0, 2**32), small)
def test_find_stamps_agrees_with_decode_pages(kinds: list[str], seed: int, base: int) -> None:
    """find_stamps (one page, a page loop, or numpy above 16 pages) gives decode_pages' verdicts."""
    payload = b"".join(make_page(k, n, seed + n) for n, k in enumerate(kinds))
    want = decode_pages(payload, base_offset=base * PAGE_SIZE)
    got = find_stamps(memoryview(payload), base_offset=base * PAGE_SIZE)
    assert got.stamped == want.stamped_count
    assert list(got.valid) == want.valid_pages()
    assert list(got.torn) == want.torn_pages()


def test_find_stamps_of_one_unstamped_or_valid_page() -> None:
    """One page: zeros and random bytes have no stamps; a VALID page is found at base_offset."""
    assert find_stamps(bytes(PAGE_SIZE)) == (0, (), ())
    assert find_stamps(np.random.default_rng(1).bytes(PAGE_SIZE)) == (0, (), ())
    assert find_stamps(encode_page(3, 4, 5), base_offset=8192) == (1, ((8192, 3, 4, 5),), ())
    assert find_stamps(np.frombuffer(encode_page(3, 4, 5), np.uint8)).valid == ((0, 3, 4, 5),)
    with pytest.raises(ValueError, match="multiple of 4096"):
        find_stamps(bytes(PAGE_SIZE + 512))


def test_decode_pages_counts_and_offsets() -> None:
    """Counts and offsets of a payload with 2 valid, 1 torn and 1 zero page at base 8192."""
    torn = encode_page(1, 1, 2)[:1000] + encode_page(1, 1, 1)[1000:]
    payload = encode_pages(1, 0, [5]) + bytes(PAGE_SIZE) + torn + encode_page(2, 3, 4)
    got = decode_pages(memoryview(payload), base_offset=8192)
    assert (got.page_count, got.stamped_count, got.valid_count, got.torn_count) == (4, 3, 2, 1)
    assert got.valid_pages() == [(8192, 1, 0, 5), (8192 + 3 * PAGE_SIZE, 2, 3, 4)]
    [(offset, decode)] = got.torn_pages()
    assert (offset, decode.first_mismatch, decode.sector_generations) == (
        8192 + 2 * PAGE_SIZE, 1000, (2, 2, 1, 1, 1, 1, 1, 1),
    )  # fmt: skip


def test_decode_pages_of_unstamped_data_is_empty() -> None:
    """128 KiB of zeros or random bytes: no stamped page, nothing torn."""
    for payload in (bytes(128 << 10), np.random.default_rng(0).bytes(128 << 10)):
        got = decode_pages(payload)
        assert (got.page_count, got.stamped_count, got.torn, got.valid_pages()) == (32, 0, {}, [])


def test_decode_pages_rejects_partial_pages() -> None:
    """A payload that is not a multiple of 4096 bytes is a ValueError (the caller aligns)."""
    with pytest.raises(ValueError, match="multiple of 4096"):
        decode_pages(bytes(4096 + 512))
