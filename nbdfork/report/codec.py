"""Reading and writing every report.json through its msgspec types.

Each report (run, crash, model, campaign) is one tree of `msgspec.Struct`s: the harness builds
it and `write_json` encodes it; `read_json` decodes and validates a file into the same types.
A bad file is one `ReportError` naming the file and the field (`report.json: runs[1].torn:
expected int >= 0`); a report of another kind or version is refused by its `schema` first.
Every file is read through nbdfork.inputs: a FIFO, a device, a file over 64 MiB or JSON nested
over 64 deep is one ReportError before anything is decoded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import msgspec.inspect as mi

from nbdfork.errors import ReportError
from nbdfork.files import encode_json, write_atomic
from nbdfork.inputs import MAX_JSON_BYTES, check_depth, read_bounded

__all__ = [
    "REPORT_FILE",
    "Record",
    "allowed_values",
    "encode",
    "read_bytes",
    "read_json",
    "report_file",
    "schema_of",
    "validation_error",
    "write_json",
]

REPORT_FILE = "report.json"

T = TypeVar("T")


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """Base of every report structure: immutable, keyword-built, unknown fields kept out."""


class _Schema(msgspec.Struct):
    schema: str


_AT = re.compile(r"^(?P<problem>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_INNER = re.compile(r"^(?P<field>[a-z_][\w.\[\]]*): (?P<problem>.*)$", re.DOTALL)


def _field_path(message: str) -> tuple[str, str]:
    """msgspec's "problem - at `$.a[0].b`" as ("a[0].b", "problem")."""
    match = _AT.match(message)
    problem = match["problem"] if match else message
    path = (match["path"] or "").lstrip(".") if match else ""
    missing = _MISSING.match(problem)
    if missing:
        path = f"{path}.{missing['field']}" if path else missing["field"]
        problem = "missing required field"
    inner = _INNER.match(problem)  # a check of our own names the field it refused
    if inner:
        path = f"{path}.{inner['field']}" if path else inner["field"]
        problem = inner["problem"]
    problem = problem[:1].lower() + problem[1:]
    return path or "top level", problem


_STEP = re.compile(r"\.?([^.\[\]]+)|\[(\d+)\]")


def _inner(info: mi.Type, step: str) -> mi.Type | None:
    """The type one path step (a field name or an index) below `info`."""
    if isinstance(info, mi.UnionType):
        found = (_inner(t, step) for t in info.types)
        return next((t for t in found if t is not None), None)
    if isinstance(info, mi.StructType):
        return next((f.type for f in info.fields if f.encode_name == step), None)
    if isinstance(info, mi.VarTupleType | mi.ListType | mi.TupleType) and step.isdigit():
        types = getattr(info, "item_types", None)
        return types[int(step)] if types else getattr(info, "item_type", None)
    if isinstance(info, mi.DictType):
        return info.value_type
    return None


def allowed_values(kind: type[Any], path: str) -> tuple[object, ...]:
    """The values a Literal (or enum) field at `path` (e.g. `runs[0].outcome`) of `kind` admits."""
    info: mi.Type | None = mi.type_info(kind)
    for match in _STEP.finditer(path):
        if info is None:
            return ()
        info = _inner(info, match[1] or match[2])
    if isinstance(info, mi.UnionType):
        info = next((t for t in info.types if isinstance(t, mi.LiteralType | mi.EnumType)), None)
    if isinstance(info, mi.EnumType):
        return tuple(sorted(member.value for member in info.cls))
    return tuple(info.values) if isinstance(info, mi.LiteralType) else ()


def validation_error(
    source: Path | str, exc: msgspec.ValidationError, kind: type[Any] | None = None
) -> ReportError:
    """One line naming the file, the field and what is wrong with it (for a field of fixed
    values, which ones it takes)."""
    path, problem = _field_path(str(exc))
    if kind is not None and problem.startswith("invalid enum value"):
        values = allowed_values(kind, path)
        if values:
            problem += f" (expected one of {', '.join(map(repr, values))})"
    return ReportError(f"{source}: {path}: {problem}")


def report_file(path: Path) -> Path:
    """`path` itself, or the report.json inside it when it is a directory."""
    return path / REPORT_FILE if path.is_dir() else path


def read_bytes(source: Path) -> bytes:
    """The report file's bytes: a regular file of at most 64 MiB, nested at most 64 deep."""

    def fail(problem: str) -> ReportError:
        return ReportError(f"{source}: {problem}")

    data = read_bounded(source, MAX_JSON_BYTES, fail)
    check_depth(data, fail)
    return data


def _not_json(source: Path, data: bytes, exc: msgspec.DecodeError) -> ReportError:
    match = re.search(r"byte (\d+)", str(exc))
    line = data[: int(match[1])].count(b"\n") + 1 if match else 0
    where = f"line {line}: " if match else ""
    return ReportError(f"{source}: not JSON: {where}{exc}")


def _declared(source: Path, data: bytes) -> str:
    """The `schema` that the report bytes `data` (read from `source`) declare."""
    try:
        return msgspec.json.decode(data, type=_Schema).schema
    except msgspec.ValidationError as exc:
        raise validation_error(source, exc) from None
    except msgspec.DecodeError as exc:
        raise _not_json(source, data, exc) from None


def schema_of(path: Path) -> str:
    """The `schema` a report file declares (so a reader can pick its type)."""
    source = report_file(path)
    return _declared(source, read_bytes(source))


def read_json(path: Path, kind: type[T], schema: str) -> T:
    """Read `path` (or its report.json) as `kind`, whose `schema` must be `schema`."""
    source = report_file(path)
    data = read_bytes(source)
    found = _declared(source, data)
    if found != schema:
        raise ReportError(f"{source}: schema: unknown schema {found!r}; this reads {schema!r}")
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise validation_error(source, exc, kind) from None
    except msgspec.DecodeError as exc:  # past `schema`: bytes the schema check skipped
        raise _not_json(source, data, exc) from None


def encode(value: Any) -> bytes:
    """`value` as report.json holds it: indented JSON with a final newline."""
    return encode_json(value)


def write_json(value: Any, path: Path) -> Path:
    """Encode `value` into `path` (its report.json when a directory), atomically; the file."""
    return write_atomic(report_file(path), encode(value))
