"""The audit log's entry: one hash-chained record of something the console must be able to prove.

Entries are appended by :mod:`vigie.streams.console_audit`, one per alert raised and one
per officer decision (plus logins and alert views), and stored in the ClickHouse table
``audit_log``, whose columns derive from this model like every other table's.

Chaining
--------
``entry_hash`` is the SHA-256 (hex) of the entry's canonical form, which includes
``prev_hash``, the ``entry_hash`` of the entry before it (64 zeros for the first entry). Changing
any stored field of an entry changes its hash, and therefore breaks the link from the next
entry: whoever edits a row must rewrite every later one. ``seal`` is an HMAC-SHA256 (hex) of
``entry_hash`` under a key the console generated at first start and keeps outside the
database, so rewriting the chain consistently also needs that key.

The canonical form is :meth:`AuditEntry.canonical_bytes`: JSON of every field except
``entry_hash`` and ``seal``, keys sorted, no spaces, ``entry_time`` in whole seconds UTC
(ClickHouse 18.16 stores seconds: the hash must survive every supported server).
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Literal

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

__all__ = ["GENESIS_HASH", "AuditAction", "AuditEntry"]

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry of a log."""

AuditAction = Literal[
    "alert_raised",
    "alert_viewed",
    "outcome_recorded",
    "event_published",
    "login",
    "login_failed",
    "logout",
]
"""What happened. ``alert_raised``: the engine raised an alert (actor ``engine``);
``outcome_recorded``: an officer or integrator recorded a control outcome;
``event_published``: an integrator published another inbound event through the console API."""

Hex64 = Field(pattern=r"^[0-9a-f]{64}$")


class AuditEntry(BaseModel):
    """One audit record. ``seq`` numbers entries from 0 without gaps; the chain fields are
    filled by the appender, never by callers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seq: int = Field(ge=0, le=2**63 - 1, description="Position in the log, 0 for the first entry, no gaps")
    entry_time: AwareDatetime = Field(description="When the entry was appended (UTC, whole seconds)")
    action: AuditAction
    actor: str = Field(min_length=1, max_length=64, description="Account name, or 'engine' for raised alerts")
    actor_role: str = Field(min_length=1, max_length=32, description="Role of the actor when it acted")
    subject_type: str = Field(max_length=32, description="'alert', 'outcome', 'account', ... ('' when none)")
    subject_id: str = Field(max_length=128, description="Alert id, outcome event id, account name ('' when none)")
    office: str | None = Field(default=None, max_length=16, description="Customs office concerned, if any")
    detail: str = Field(max_length=65_536, description="Canonical JSON (sorted keys) with the facts of the entry")
    prev_hash: str = Hex64
    entry_hash: str = Hex64
    seal: str = Hex64

    @field_validator("entry_time")
    @classmethod
    def _whole_seconds_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC).replace(microsecond=0)

    def canonical_bytes(self) -> bytes:
        """The bytes ``entry_hash`` covers: every field but ``entry_hash`` and ``seal``."""
        data = self.model_dump(mode="json", exclude={"entry_hash", "seal"})
        data["entry_time"] = self.entry_time.strftime("%Y-%m-%dT%H:%M:%SZ")
        return orjson.dumps(data, option=orjson.OPT_SORT_KEYS)

    def computed_hash(self) -> str:
        """SHA-256 (hex) of :meth:`canonical_bytes`: equals ``entry_hash`` unless the entry was changed.

        >>> entry = AuditEntry(seq=0, entry_time=datetime(2026, 3, 2, tzinfo=UTC), action="login", actor="ana",
        ...     actor_role="officer", subject_type="", subject_id="", detail="{}", prev_hash=GENESIS_HASH,
        ...     entry_hash=GENESIS_HASH, seal=GENESIS_HASH)
        >>> edited = entry.model_copy(update={"actor": "bo"})
        >>> len(entry.computed_hash()), entry.computed_hash() == edited.computed_hash()
        (64, False)
        """
        return hashlib.sha256(self.canonical_bytes()).hexdigest()
