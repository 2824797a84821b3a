"""The oracle: stamped-page format, verdicts on every WRITE, event log and offline image scans.

`stamp` owns the page format (docs/stamp-format.md), `verify` the verdict engine, `events` the
events.jsonl file, `image` offline scans; this package re-exports their public names.
"""

from nbdfork.oracle.events import EventLog, read_events, summarize
from nbdfork.oracle.image import ImageScan, scan_file, scan_image
from nbdfork.oracle.stamp import (
    PageDecode,
    PagesDecode,
    PageStatus,
    decode_page,
    decode_pages,
    encode_page,
    encode_pages,
)
from nbdfork.oracle.verify import EventSink, Oracle, WriteRequest

__all__ = [
    "EventLog",
    "EventSink",
    "ImageScan",
    "Oracle",
    "PageDecode",
    "PageStatus",
    "PagesDecode",
    "WriteRequest",
    "decode_page",
    "decode_pages",
    "encode_page",
    "encode_pages",
    "read_events",
    "scan_file",
    "scan_image",
    "summarize",
]
