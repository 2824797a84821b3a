"""The device's media: a sparse memory mapping or a file, both behind one mmap-based store.

An anonymous MAP_NORESERVE mapping costs nothing until a page is written, so a 64 GiB device
holding a few MiB stays a few MiB; trimming gives pages back with MADV_DONTNEED. A file-backed
store maps the file shared, punches holes with MADV_REMOVE and syncs with msync.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path

from nbdfork.errors import ConfigError, DeviceError

__all__ = ["Store", "resident_bytes"]

_PAGE = mmap.PAGESIZE
# Python 3.11's mmap module does not export MAP_NORESERVE; this is its Linux value.
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class Store:
    """Byte-addressed media of a fixed size; writes copy the caller's buffer."""

    def __init__(self, size: int, path: Path | None = None) -> None:
        self.size = size
        self.path = path
        self._fd = -1
        self._map = self._map_file(path, size) if path else self._map_anonymous(size)
        self._view = memoryview(self._map)

    @staticmethod
    def _map_anonymous(size: int) -> mmap.mmap:
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        return mmap.mmap(-1, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def _map_file(self, path: Path, size: int) -> mmap.mmap:
        # Never through a link (its target may be anyone's), never blocking on a FIFO.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ConfigError("file", f"cannot open {path}: {exc.strerror}") from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            os.close(self._fd)
            raise ConfigError("file", f"{path} is not a regular file")
        if os.fstat(self._fd).st_size < size:
            os.ftruncate(self._fd, size)
        return mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED)

    def check(self, offset: int, length: int) -> None:
        """Raise DeviceError(EINVAL) unless [offset, offset+length) lies on the device."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise DeviceError(
                f"request {offset}+{length} is beyond the device size {self.size}", errno.EINVAL
            )

    def read_into(self, buf: memoryview | bytearray, offset: int) -> None:
        """Fill `buf` with the bytes at `offset`."""
        self.check(offset, len(buf))
        buf[:] = self._view[offset : offset + len(buf)]

    def read(self, offset: int, length: int) -> bytes:
        """The bytes at `offset` as a new bytes object."""
        self.check(offset, length)
        return bytes(self._view[offset : offset + length])

    def view(self) -> memoryview:
        """A read-only view of the whole media (no copy): for scans."""
        return self._view.toreadonly()

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` to `offset` (the caller's buffer is not kept)."""
        self.check(offset, len(data))
        self._view[offset : offset + len(data)] = data

    def discard(self, offset: int, length: int) -> None:
        """Make a range read back as zeroes, giving whole pages back to the system."""
        self.check(offset, length)
        start = -(-offset // _PAGE) * _PAGE
        end = (offset + length) // _PAGE * _PAGE
        if end <= start:
            self._view[offset : offset + length] = bytes(length)
            return
        self._view[offset:start] = bytes(start - offset)
        self._view[end : offset + length] = bytes(offset + length - end)
        advice = mmap.MADV_REMOVE if self.path else mmap.MADV_DONTNEED
        self._map.madvise(advice, start, end - start)

    def sync(self, offset: int = 0, length: int | None = None) -> None:
        """Make a range durable on the backing file (memory media have nothing to sync)."""
        if self.path is None:
            return
        length = self.size - offset if length is None else length
        start = offset // _PAGE * _PAGE
        self._map.flush(start, offset + length - start)

    def close(self) -> None:
        """Release the mapping and the file."""
        self._view.release()
        self._map.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def resident_bytes() -> int:
    """This process's resident set size in bytes (Linux), for memory checks and benchmarks."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE
