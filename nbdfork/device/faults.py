"""Error injection per op type, by byte range, probability or trigger file, with an errno."""

from __future__ import annotations

import errno as _errno
from pathlib import Path

from nbdfork.config import FaultSpec
from nbdfork.device.rng import DeviceRng
from nbdfork.errors import DeviceError

__all__ = ["FaultInjector"]

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
