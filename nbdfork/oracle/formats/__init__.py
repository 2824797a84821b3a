"""Other writers' checksummed formats, found and judged in the bytes of one WRITE.

One module per format (`fio`, `xfs`, `btrfs`, `ext4` with its jbd2 journal); `base` owns the
verdict type and the protocol. docs/formats.md documents every layout as read here.

    fmts = formats_for(["fio", "ext4"])          # fresh, per-device instances
    for fmt in fmts:
        for block in fmt.scan(memoryview(payload), offset):
            ...                                   # block.verdict is ok / torn / unchecked
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from nbdfork.errors import ConfigError
from nbdfork.oracle.formats.base import BlockFormat, FormatBlock, Verdict
from nbdfork.oracle.formats.btrfs import BtrfsFormat
from nbdfork.oracle.formats.ext4 import Ext4Format
from nbdfork.oracle.formats.fio import FioFormat
from nbdfork.oracle.formats.xfs import XfsFormat

__all__ = [
    "FORMATS",
    "BlockFormat",
    "FormatBlock",
    "Verdict",
    "formats_for",
    "scan_all",
]

FORMATS: Final[Mapping[str, Callable[[], BlockFormat]]] = MappingProxyType(
    {
        "btrfs": BtrfsFormat,
        "ext4": Ext4Format,
        "fio": FioFormat,
        "xfs": XfsFormat,
    }
)
"""Format name -> factory of a fresh, per-device instance."""


def formats_for(names: Sequence[str]) -> list[BlockFormat]:
    """Fresh instances of the named formats, in order; an unknown name is a ConfigError."""
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        known = ",".join(FORMATS)
        raise ConfigError("formats", f"unknown format {unknown[0]!r} (known: {known})")
    return [FORMATS[n]() for n in dict.fromkeys(names)]


def scan_all(
    formats: Sequence[BlockFormat], data: memoryview, device_offset: int
) -> list[FormatBlock]:
    """The blocks every format in `formats` finds in one WRITE."""
    return [block for fmt in formats for block in fmt.scan(data, device_offset)]
