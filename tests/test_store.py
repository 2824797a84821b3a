"""The mmap store: sparse memory and file media, zeroing and bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from nbdfork.device.store import Store, resident_bytes
from nbdfork.errors import DeviceError


def test_write_read_round_trip_and_copy_semantics() -> None:
    """Written bytes read back, and changing the source buffer afterwards changes nothing."""
    store = Store(1 << 20)
    source = bytearray(b"x" * 4096)
    store.write(8192, memoryview(source))
    source[:] = b"y" * 4096
    assert store.read(8192, 4096) == b"x" * 4096
    assert store.read(0, 4096) == bytes(4096)


def test_discard_reads_back_zeroes_including_unaligned_edges() -> None:
    """A discarded range reads as zeroes; bytes just outside it are kept."""
    store = Store(1 << 20)
    store.write(0, b"\xff" * (64 << 10))
    store.discard(1000, 20000)
    data = store.read(0, 64 << 10)
    assert data[:1000] == b"\xff" * 1000
    assert data[1000:21000] == bytes(20000)
    assert data[21000:] == b"\xff" * (len(data) - 21000)


def test_out_of_range_is_einval() -> None:
    """A request past the end is a DeviceError with EINVAL."""
    store = Store(1 << 20)
    with pytest.raises(DeviceError) as info:
        store.write((1 << 20) - 100, bytes(4096))
    assert info.value.errno == 22


def test_sparse_64g_device_costs_what_is_written() -> None:
    """A 64 GiB memory store with 8 MiB written grows the RSS by about 8 MiB, not more."""
    before = resident_bytes()
    store = Store(64 << 30)
    for i in range(8):
        store.write(i * (8 << 30), b"\x01" * (1 << 20))
    grown = resident_bytes() - before
    assert grown < 24 << 20
    store.close()


def test_file_store_persists_and_punches_holes(tmp_path: Path) -> None:
    """A file store keeps data in the file across reopen, and a discard punches a hole."""
    path = tmp_path / "disk.img"
    store = Store(4 << 20, path)
    store.write(0, b"\xab" * (2 << 20))
    store.sync()
    store.discard(1 << 20, 1 << 20)
    store.close()
    assert path.stat().st_size == 4 << 20
    assert path.stat().st_blocks * 512 <= (1 << 20) + 65536
    reopened = Store(4 << 20, path)
    assert reopened.read(0, 4096) == b"\xab" * 4096
    assert reopened.read(1 << 20, 4096) == bytes(4096)
