"""Bytes in, validated events out, with a rejection an integrator can act on.

Every runtime (file runner, Faust, Flink) decodes through :func:`decode_event`, so a
message is accepted or rejected identically everywhere, and the rejection text is the
same one the integrator sees from ``vigie publish``.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from .events import SUPPORTED_MAJOR, Alert, DeadLetter, InboundEvent, RiskScore

MAX_EVENT_BYTES = 1 << 20
"""Largest accepted event (1 MiB): a 999-item declaration is about 600 KB."""

_INBOUND: TypeAdapter[Any] = TypeAdapter(InboundEvent)
_MAX_ERRORS_SHOWN = 3
_MAX_VALUE_SHOWN = 60
_BOM = b"\xef\xbb\xbf"
_VERSION = re.compile(r"^([0-9]+)\.([0-9]+)$")


class EventRejected(ValueError):
    """Raised when bytes are not a valid event. ``field`` is the first offending path."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _shown(value: Any) -> str:
    """``repr(value)`` cut to :data:`_MAX_VALUE_SHOWN` characters: reasons are read, and kept in dead letters."""
    got = repr(value)
    return got[:_MAX_VALUE_SHOWN] + "..." if len(got) > _MAX_VALUE_SHOWN else got


def _describe(exc: ValidationError) -> EventRejected:
    parts: list[str] = []
    first_field: str | None = None
    for error in exc.errors()[:_MAX_ERRORS_SHOWN]:
        loc = list(error["loc"])
        # A discriminated union prefixes the location with the event_type tag: drop it.
        if loc and isinstance(loc[0], str) and loc[0] in ("ens", "declaration", "excise", "outcome"):
            loc = loc[1:]
        path = ".".join(str(p) for p in loc) or "(event)"
        first_field = first_field or path
        message = error["msg"]
        if error["type"] == "union_tag_invalid":
            # error["input"] is the whole event (up to 1 MiB, kept in every dead letter): show the tag only.
            tag = _shown(error.get("ctx", {}).get("tag", "?"))
            message = f"event_type must be one of 'ens', 'declaration', 'excise', 'outcome' (got {tag})"
            path = first_field = "event_type"
        elif error["type"] == "union_tag_not_found":
            message = "event_type is missing: expected 'ens', 'declaration', 'excise' or 'outcome'"
            path = first_field = "event_type"
        elif error["type"] != "json_invalid" and "input" in error and not isinstance(error["input"], dict | list):
            message += f" (got {_shown(error['input'])})"
        parts.append(f"{path}: {message}")
    more = exc.error_count() - _MAX_ERRORS_SHOWN
    if more > 0:
        parts.append(f"and {more} more error(s)")
    return EventRejected("; ".join(parts), first_field)


def decode_event(raw: bytes) -> InboundEvent:
    """Validate ``raw`` JSON bytes as one inbound event, or raise :class:`EventRejected`.

    >>> decode_event(b'{"event_type": "outcome"')
    Traceback (most recent call last):
    ...
    vigie.schemas.codec.EventRejected: (event): Invalid JSON: EOF while parsing an object at line 1 column 24
    """
    if len(raw) > MAX_EVENT_BYTES:
        raise EventRejected(f"event of {len(raw)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    if raw.startswith(_BOM):
        # JSON forbids it (RFC 8259 8.1), and the parser's "expected value at column 1" does not say why.
        raise EventRejected("starts with a UTF-8 byte-order mark (BOM); save the file as UTF-8 without BOM")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventRejected(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    try:
        # strict: JSON types as written. A number in a string ("12.5"), 1 or "yes" for a boolean,
        # 2.0 for an integer, an epoch number for a time (which dodged the offset rule) are
        # rejected; ISO times and enum values still parse. Per call rather than in the models'
        # config, because Python code builds events from enum values and datetimes.
        return _INBOUND.validate_json(raw, strict=True)
    except ValidationError as exc:
        newer = _without_newer_fields(raw, exc)
        if newer is None:
            raise _describe(exc) from None
    try:
        return _INBOUND.validate_json(newer, strict=True)
    except ValidationError as exc:
        raise _describe(exc) from None


def _minor_version(version: Any) -> int | None:
    """The minor of a supported ``schema_version`` ('1.3' gives 3), else None."""
    match = _VERSION.match(version) if isinstance(version, str) else None
    if match is None or int(match.group(1)) != SUPPORTED_MAJOR:
        return None
    return int(match.group(2))


def _without_newer_fields(raw: bytes, exc: ValidationError) -> bytes | None:
    """``raw`` without its unknown fields when it was written in a later 1.x (1.1 and up), else None.

    Minor versions only add optional fields, so a 1.1 event is read as the 1.0 it contains. A 1.0
    event (or one without a version) keeps the strict rule: its unknown fields are typos. Only the
    error path pays for this.
    """
    extra = [error["loc"] for error in exc.errors() if error["type"] == "extra_forbidden"]
    if not extra:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:  # e.g. an integer beyond 64 bits: keep the first rejection
        return None
    minor = _minor_version(data.get("schema_version")) if isinstance(data, dict) else None
    if minor is None or minor == 0:
        return None
    for loc in extra:
        parent: Any = data
        for step in loc[1:-1]:  # loc[0] is the event_type tag of the union
            parent = parent[step]
        del parent[loc[-1]]
    return orjson.dumps(data)


_FLAT_OUTPUTS = (RiskScore, Alert)
"""Models whose every field is a string, number, aware datetime, or a dict or list of those: orjson
writes them as pydantic does (tests/test_schemas.py checks the bytes), in about half the time. Scores
are most of what the Faust and Flink runtimes send to Kafka, three or so per event."""


def encode_event(event: Any) -> bytes:
    """Serialise any Vigie model to compact JSON bytes (the wire format), ``None`` fields left out.

    >>> from vigie.schemas.generator import GeneratorConfig, generate
    >>> event = next(e for e, _ in generate(GeneratorConfig(duration_hours=1)))
    >>> encode_event(event) == event.model_dump_json(exclude_none=True).encode()
    True
    """
    if type(event) in _FLAT_OUTPUTS:
        # model_dump_json(exclude_none=True), byte for byte: the fields in declaration order, UTC as "Z".
        return orjson.dumps({k: v for k, v in event.__dict__.items() if v is not None}, option=orjson.OPT_UTC_Z)
    return event.model_dump_json(exclude_none=True).encode()


def dead_letter(raw: bytes, source: str, rejected: EventRejected, received_at: datetime | None = None) -> DeadLetter:
    """Wrap rejected bytes with their reason; the id is stable for the same source and bytes."""
    digest = hashlib.blake2b(source.encode() + b"\0" + raw, digest_size=16).hexdigest()
    return DeadLetter(
        dead_letter_id=digest,
        received_at=received_at or datetime.now(UTC),
        source=source,
        reason=rejected.reason,
        field=rejected.field,
        raw_size=len(raw),
        raw=raw,
    )
