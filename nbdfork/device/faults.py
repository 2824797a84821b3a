"""Error injection per op type, by byte range, probability or trigger file, with an errno; and
in-flight corruption of WRITEs (`corrupt-*`), the oracle's positive control."""

from __future__ import annotations

import errno as _errno
from pathlib import Path

from nbdfork.config import CorruptSpec, FaultSpec
from nbdfork.device.rng import DeviceRng
from nbdfork.errors import DeviceError

__all__ = ["Corrupter", "FaultInjector"]

Buffer = bytes | bytearray | memoryview

_PURPOSE = 301


class FaultInjector:
    """Decides, per request, whether it fails; a failed write is never counted durable."""

    def __init__(self, spec: FaultSpec, rng: DeviceRng) -> None:
        self.spec = spec
        self._rng = rng
        self.injected = 0

    def check(self, op: str, request_id: int, offset: int, length: int) -> None:
        """Raise DeviceError(errno) if this request is to fail."""
        spec = self.spec
        if op not in spec.ops:
            return
        if spec.range is not None and op != "flush":
            start, end = spec.range
            if offset + length <= start or offset >= end:
                return
        if spec.trigger is not None and not Path(spec.trigger).exists():
            return
        if spec.probability < 1 and self._rng.uniform(_PURPOSE, request_id) >= spec.probability:
            return
        self.injected += 1
        name = _errno.errorcode.get(spec.errno, str(spec.errno))
        raise DeviceError(f"injected {name} on {op} {offset}+{length}", spec.errno)


_CORRUPT_PURPOSE = 302


class Corrupter:
    """Changes one byte of a matching WRITE in flight (seeded): a control the oracle must
    report torn. The byte lies in the WRITE and, given a range, inside it; it is inverted."""

    def __init__(self, spec: CorruptSpec, rng: DeviceRng) -> None:
        self.spec = spec
        self._rng = rng
        self.corrupted = 0

    def corrupt(self, request_id: int, offset: int, data: Buffer) -> tuple[bytes, int] | None:
        """The corrupted payload and the device offset of the byte changed, or None."""
        spec, end = self.spec, offset + len(data)
        lo, hi = offset, end
        if spec.range is not None:
            lo, hi = max(offset, spec.range[0]), min(end, spec.range[1])
            if lo >= hi:
                return None
        if spec.trigger is not None and not Path(spec.trigger).exists():
            return None
        if spec.probability < 1 and self._rng.uniform(_CORRUPT_PURPOSE, request_id) >= (
            spec.probability
        ):
            return None
        at = lo + min(hi - lo - 1, int(self._rng.uniform(_CORRUPT_PURPOSE, request_id, 1)
                                       * (hi - lo)))  # fmt: skip
        out = bytearray(data)
        out[at - offset] ^= 0xFF
        self.corrupted += 1
        return bytes(out), at
