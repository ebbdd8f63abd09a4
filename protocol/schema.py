"""Kafka message codecs compiled from Kafka's own JSON message definitions.

Kafka declares every request and response as data (``ProduceRequest.json``
and friends: fields, version ranges, flexible versions, tagged fields).  The
kafka-python 3 wheel ships those files as package resources; this module reads
them and compiles, per (message, version), a reader and a writer out of the
primitives in ``protocol.primitives``.  There is no per-version hand-written
code: supporting a new version means advertising it.

Decoded messages are plain dicts keyed by snake_case field names
(``TopicData`` -> ``topic_data``); writers accept the same shape and fill in
each field's declared default when a key is missing.  Why this and not the
``kio`` package: see docs/protocol-codec.md.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import primitives as p
from protocol.primitives import DecodeError

_COMMENT = re.compile(r"^\s*//.*$", re.M)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def snake_case(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


@dataclass(frozen=True, slots=True)
class VersionRange:
    low: int
    high: int  # inclusive; a large number for "N+"

    @classmethod
    def parse(cls, text: str | None) -> VersionRange:
        if text is None or text == "none":
            return cls(1, 0)  # empty
        text = text.strip()
        if text.endswith("+"):
            return cls(int(text[:-1]), 1 << 15)
        if "-" in text:
            lo, hi = text.split("-")
            return cls(int(lo), int(hi))
        return cls(int(text), int(text))

    def __contains__(self, version: int) -> bool:
        return self.low <= version <= self.high


@dataclass(slots=True)
class FieldSpec:
    name: str
    type: str
    versions: VersionRange
    nullable: VersionRange
    tagged: VersionRange
    tag: int | None
    default: Any
    flexible_override: VersionRange | None
    fields: list[FieldSpec] = field(default_factory=list)

    @property
    def is_array(self) -> bool:
        return self.type.startswith("[]")

    @property
    def element_type(self) -> str:
        return self.type[2:] if self.is_array else self.type

    @property
    def is_struct(self) -> bool:
        return bool(self.fields)


@dataclass(slots=True)
class MessageSpec:
    name: str
    api_key: int | None
    kind: str
    valid: VersionRange
    flexible: VersionRange
    fields: list[FieldSpec]


@functools.cache
def _schema_dir() -> Path:
    """Where the definitions live, found without importing kafka-python itself (slow, noisy)."""
    spec = importlib.util.find_spec("kafka")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("kafka-python (which ships Kafka's message definitions) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "protocol" / "schemas" / "resources"


def _load_json(name: str) -> dict[str, Any]:
    text = (_schema_dir() / (name + ".json")).read_text("utf-8")
    return json.loads(_COMMENT.sub("", text))


def _parse_default(raw: Any, type_name: str) -> Any:
    if type_name.startswith("[]"):
        return None if raw == "null" else []
    if type_name[:1].isupper():
        return None  # a struct
    if raw is None:
        return {
            "bool": False, "string": "", "bytes": b"", "records": None, "uuid": p.ZERO_UUID,
            "float64": 0.0,
        }.get(type_name, 0)
    if raw == "null":
        return None
    if type_name == "bool":
        return str(raw).lower() == "true"
    if type_name in ("string",):
        return str(raw)
    if type_name == "float64":
        return float(raw)
    if type_name in ("int8", "int16", "int32", "int64", "uint16", "uint32"):
        return int(str(raw), 0)
    return raw


def _parse_fields(raw_fields: list[dict[str, Any]], structs: dict[str, list[dict[str, Any]]]) -> list[FieldSpec]:
    specs = []
    for raw in raw_fields:
        type_name = raw["type"]
        element = type_name[2:] if type_name.startswith("[]") else type_name
        sub = raw.get("fields")
        if sub is None and element[:1].isupper():
            sub = structs.get(element)
            if sub is None:
                raise ValueError(f"unknown struct type {element}")
        specs.append(FieldSpec(
            name=snake_case(raw["name"]),
            type=type_name,
            versions=VersionRange.parse(raw.get("versions")),
            nullable=VersionRange.parse(raw.get("nullableVersions")),
            tagged=VersionRange.parse(raw.get("taggedVersions")),
            tag=raw.get("tag"),
            default=_parse_default(raw.get("default"), type_name),
            flexible_override=VersionRange.parse(raw["flexibleVersions"]) if "flexibleVersions" in raw else None,
            fields=_parse_fields(sub, structs) if sub else [],
        ))
    return specs


def _collect_structs(raw_fields: list[dict[str, Any]], into: dict[str, list[dict[str, Any]]]) -> None:
    for raw in raw_fields:
        if "fields" in raw:
            type_name = raw["type"]
            into.setdefault(type_name[2:] if type_name.startswith("[]") else type_name, raw["fields"])
            _collect_structs(raw["fields"], into)


@functools.cache
def message_spec(name: str) -> MessageSpec:
    raw = _load_json(name)
    structs: dict[str, list[dict[str, Any]]] = {s["name"]: s["fields"] for s in raw.get("commonStructs", [])}
    _collect_structs(raw["fields"], structs)
    for common in raw.get("commonStructs", []):
        _collect_structs(common["fields"], structs)
    return MessageSpec(
        name=raw["name"],
        api_key=raw.get("apiKey"),
        kind=raw["type"],
        valid=VersionRange.parse(raw["validVersions"]),
        flexible=VersionRange.parse(raw.get("flexibleVersions")),
        fields=_parse_fields(raw["fields"], structs),
    )


@functools.cache
def api_names() -> dict[int, str]:
    """API key -> API name (e.g. 0 -> "Produce"), from the shipped definitions."""
    names = {}
    for entry in sorted(_schema_dir().iterdir()):
        if entry.name.endswith("Request.json"):
            raw = json.loads(_COMMENT.sub("", entry.read_text("utf-8")))
            if "apiKey" in raw:
                names[raw["apiKey"]] = raw["name"][: -len("Request")]
    return names


# Compilation ----------------------------------------------------------------

_SCALARS: dict[str, tuple[p.Reader, p.Writer]] = {
    "int8": (p.read_int8, p.write_int8),
    "int16": (p.read_int16, p.write_int16),
    "uint16": (p.read_uint16, p.write_uint16),
    "int32": (p.read_int32, p.write_int32),
    "uint32": (p.read_uint32, p.write_uint32),
    "int64": (p.read_int64, p.write_int64),
    "float64": (p.read_float64, p.write_float64),
    "bool": (p.read_bool, p.write_bool),
    "uuid": (p.read_uuid, p.write_uuid),
}


def _scalar_codec(type_name: str, flexible: bool) -> tuple[p.Reader, p.Writer]:
    if type_name in _SCALARS:
        return _SCALARS[type_name]
    if type_name == "string":
        return (p.read_compact_string, p.write_compact_string) if flexible else (p.read_string, p.write_string)
    if type_name in ("bytes", "records"):
        return (p.read_compact_bytes, p.write_compact_bytes) if flexible else (p.read_bytes, p.write_bytes)
    raise ValueError(f"unsupported type {type_name}")


def _array_codec(element: tuple[p.Reader, p.Writer], flexible: bool, nullable: bool) -> tuple[p.Reader, p.Writer]:
    read_element, write_element = element
    read_len = p.read_compact_array_length if flexible else p.read_array_length
    write_len = p.write_compact_array_length if flexible else p.write_array_length

    def read(buf: Any, pos: int) -> tuple[list[Any] | None, int]:
        count, pos = read_len(buf, pos)
        if count < 0:
            if not nullable:
                raise DecodeError("null for a non-nullable array")
            return None, pos
        if count > len(buf) - pos:
            raise DecodeError("array length exceeds buffer")
        items = []
        append = items.append
        for _ in range(count):
            item, pos = read_element(buf, pos)
            append(item)
        return items, pos

    def write(out: bytearray, value: list[Any] | None) -> None:
        if value is None:
            write_len(out, -1)
            return
        write_len(out, len(value))
        for item in value:
            write_element(out, item)

    return read, write


def _field_codec(spec: FieldSpec, version: int, flexible: bool) -> tuple[p.Reader, p.Writer]:
    if spec.flexible_override is not None:
        flexible = version in spec.flexible_override
    if spec.is_struct:
        element = compile_struct(spec.fields, version, flexible)
    else:
        element = _scalar_codec(spec.element_type, flexible)
    if spec.is_array:
        return _array_codec(element, flexible, version in spec.nullable)
    if spec.is_struct and version in spec.nullable:
        return _nullable_struct(element)
    return element


def _nullable_struct(element: tuple[p.Reader, p.Writer]) -> tuple[p.Reader, p.Writer]:
    read_element, write_element = element

    def read(buf: Any, pos: int) -> tuple[Any, int]:
        marker, pos = p.read_int8(buf, pos)
        if marker < 0:
            return None, pos
        return read_element(buf, pos)

    def write(out: bytearray, value: Any) -> None:
        if value is None:
            out.append(0xFF)
        else:
            out.append(1)
            write_element(out, value)

    return read, write


def _fresh(default: Any) -> Any:
    if isinstance(default, list):
        return []
    return {} if isinstance(default, dict) else default


def _regular_default(spec: FieldSpec, version: int) -> Any:
    """A non-nullable struct left out by a writer is written with all fields at their defaults."""
    if spec.is_struct and not spec.is_array and version not in spec.nullable:
        return _EMPTY_STRUCT
    return spec.default


_EMPTY_STRUCT: dict[str, Any] = {}


def compile_struct(fields: list[FieldSpec], version: int, flexible: bool) -> tuple[p.Reader, p.Writer]:
    regular: list[tuple[str, p.Reader, p.Writer, Any]] = []
    tagged: dict[int, tuple[str, p.Reader, p.Writer, Any]] = {}
    absent: list[tuple[str, Any]] = []
    for spec in fields:
        if version not in spec.versions:
            absent.append((spec.name, spec.default))
            continue
        reader, writer = _field_codec(spec, version, flexible)
        if flexible and version in spec.tagged:
            assert spec.tag is not None
            # A tagged field is written only when set to something other than its default.
            default = None if spec.is_struct and not spec.is_array else spec.default
            tagged[spec.tag] = (spec.name, reader, writer, default)
            absent.append((spec.name, default))
        else:
            regular.append((spec.name, reader, writer, _regular_default(spec, version)))
    tag_order = sorted(tagged.items())

    def read(buf: Any, pos: int) -> tuple[dict[str, Any], int]:
        value: dict[str, Any] = {}
        for name, default in absent:
            value[name] = _fresh(default)
        for name, reader, _w, _d in regular:
            value[name], pos = reader(buf, pos)
        if flexible:
            pos = _read_tagged(buf, pos, tagged, value)
        return value, pos

    def write(out: bytearray, value: dict[str, Any]) -> None:
        get = value.get
        for name, _r, writer, default in regular:
            writer(out, get(name, default))
        if flexible:
            present = [(tag, name, writer) for tag, (name, _r, writer, default) in tag_order
                       if get(name, default) != default]
            p.write_uvarint(out, len(present))
            for tag, name, writer in present:
                scratch = bytearray()
                writer(scratch, value[name])
                p.write_uvarint(out, tag)
                p.write_uvarint(out, len(scratch))
                out += scratch

    return read, write


def _read_tagged(buf: Any, pos: int, known: dict[int, tuple[str, p.Reader, p.Writer, Any]],
                 value: dict[str, Any]) -> int:
    count, pos = p.read_uvarint(buf, pos)
    for _ in range(count):
        tag, pos = p.read_uvarint(buf, pos)
        size, pos = p.read_uvarint(buf, pos)
        end = pos + size
        if end > len(buf):
            raise DecodeError("tagged field exceeds buffer")
        if tag in known:
            name, reader, _w, _d = known[tag]
            value[name], consumed = reader(buf, pos)
            if consumed != end:
                raise DecodeError(f"tagged field {name} has the wrong size")
        pos = end
    return pos


@dataclass(frozen=True, slots=True)
class Codec:
    """The compiled reader and writer of one message at one version."""

    name: str
    version: int
    flexible: bool
    read: Callable[[Any, int], tuple[dict[str, Any], int]]
    write: Callable[[bytearray, dict[str, Any]], None]

    def decode(self, buf: Any, pos: int = 0) -> dict[str, Any]:
        value, end = self.read(buf, pos)
        if end != len(buf):
            raise DecodeError(f"{self.name} v{self.version}: {len(buf) - end} trailing bytes")
        return value

    def encode(self, value: dict[str, Any]) -> bytearray:
        out = bytearray()
        self.write(out, value)
        return out


@functools.cache
def codec(message_name: str, version: int) -> Codec:
    spec = message_spec(message_name)
    if version not in spec.valid:
        raise KeyError(f"{message_name} has no version {version}")
    flexible = version in spec.flexible
    read, write = compile_struct(spec.fields, version, flexible)
    return Codec(message_name, version, flexible, read, write)


def request_codec(api_key: int, version: int) -> Codec:
    return codec(api_names()[api_key] + "Request", version)


def response_codec(api_key: int, version: int) -> Codec:
    return codec(api_names()[api_key] + "Response", version)


def is_flexible(api_key: int, version: int) -> bool:
    return version in message_spec(api_names()[api_key] + "Request").flexible
