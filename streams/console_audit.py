"""Tamper-evident audit log in ClickHouse: hash-chained, sealed, verifiable (``vigie audit verify``).

What is appended
----------------
* ``alert_raised``: every alert the engine stored (the console's alert watcher appends one
  entry per new ``alert_id``, actor ``engine``);
* ``outcome_recorded``: every control outcome recorded through the console (officer form or
  integrator API), with the alert, the officer and the amounts;
* ``alert_viewed``, ``login``, ``login_failed``, ``logout``: who looked at what and who got in.

How it is made tamper-evident
-----------------------------
Each :class:`~vigie.schemas.audit.AuditEntry` carries ``prev_hash`` (the previous entry's
``entry_hash``) and its own ``entry_hash`` (SHA-256 of its canonical form), so editing,
deleting, inserting or reordering any row breaks the chain at that row. A ``seal``
(HMAC-SHA256 of ``entry_hash`` under the audit key from ``secrets.json``) means that
recomputing the hashes after an edit needs that key too. The last appended position is
also written to an anchor file (``audit-head.json``, mode 0600, outside the database):
deleting the newest entries, which leaves a shorter but intact chain, is caught by
comparing with it. The anchor never moves backwards: while it records a position the table
does not reach (or a different hash there), :class:`AuditLog` refuses to append
(:class:`AuditAnchorMismatch`) and the console refuses to start, so a restart cannot
paper over the deletion. Restore the entries, or, once the loss is investigated, move the
anchor file aside deliberately.

Entries are appended by one writer (the console process) under a lock: ``seq`` numbers are
dense from 0. Run one console per audit log.

The table
---------
``audit_log`` is derived from the model with :mod:`vigie.sinks.ddl` (same column mapping,
``ReplacingMergeTree(ingested_at)`` ordered by ``seq``, partitioned by month). It is *not*
in :data:`vigie.sinks.ddl.TABLES` (that registry is what ``Sink.write`` feeds and every
sink creates), so it is created here and written with ``INSERT ... SELECT`` of literals through
:meth:`Sink.query`, which works on chdb and on a native-protocol server alike. No TTL:
an audit log is kept for its legal retention and pruned only deliberately.
:func:`verify_log` reads the rows *without* ``FINAL``: a second version of a row (an edit
by re-insertion) is seen before a merge hides it, and caught by its hash after.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from vigie.schemas.audit import GENESIS_HASH, AuditAction, AuditEntry
from vigie.sinks.base import Sink
from vigie.sinks.ddl import (
    DEFAULT_DATABASE,
    MODERN,
    ServerProfile,
    Table,
    model_columns,
    validate_identifier,
)

from .console_auth import write_private

__all__ = [
    "AUDIT_TABLE",
    "AuditAnchorMismatch",
    "AuditLog",
    "BrokenEntry",
    "VerifyReport",
    "audit_ddl",
    "canonical_detail",
    "seal_for",
    "sql_literal",
    "verify_entries",
    "verify_log",
]

log = logging.getLogger(__name__)

AUDIT_TABLE = Table(
    name="audit_log",
    model=AuditEntry,
    columns=tuple(model_columns(AuditEntry)),
    key=("seq",),
    sorting=("seq",),  # deduplicated and read by sequence number alone, as the audit chain is
    time_column="entry_time",
    personal_data=False,  # officer ids are personal, but an audit trail must not expire by TTL
)
"""The ``audit_log`` table, columns derived from :class:`~vigie.schemas.audit.AuditEntry`."""

VERIFY_PAGE = 20_000
"""Entries read per query while verifying."""
INSERT_BATCH = 200
"""Entries appended per statement."""


def audit_ddl(profile: ServerProfile = MODERN, database: str = DEFAULT_DATABASE) -> str:
    """``CREATE TABLE IF NOT EXISTS`` of the audit table for ``profile``."""
    return AUDIT_TABLE.render(profile, validate_identifier(database), ttl_days=None)


def sql_literal(value: Any) -> str:
    """``value`` as a ClickHouse SQL literal (strings escaped; for values built into SQL text).

    >>> sql_literal("O'Brien \\\\ co"), sql_literal(None), sql_literal(3), sql_literal(True)
    ("'O\\\\'Brien \\\\\\\\ co'", 'NULL', '3', '1')
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        value = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\0", "\\0")
    return f"'{escaped}'"


def canonical_detail(detail: Mapping[str, Any]) -> str:
    """The ``detail`` column: JSON with sorted keys, the same text for the same facts."""
    return orjson.dumps(dict(detail), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def seal_for(entry_hash: str, key: bytes) -> str:
    """HMAC-SHA256 (hex) of an entry hash under the audit key."""
    return hmac.new(key, entry_hash.encode("ascii"), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------------------------
# verification (pure)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokenEntry:
    """The first entry where the log stops being trustworthy, and why."""

    seq: int
    reason: str
    entry: AuditEntry | None = None

    def __str__(self) -> str:
        what = ""
        if self.entry is not None:
            e = self.entry
            what = f" ({e.action} by {e.actor} at {e.entry_time:%Y-%m-%d %H:%M:%S}Z, subject {e.subject_id or '-'})"
        return f"entry seq {self.seq}{what}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of a verification: ``ok`` when every entry checked and the anchor agrees."""

    entries: int
    head_seq: int | None
    head_hash: str | None
    seals_checked: bool
    first_broken: BrokenEntry | None = None

    @property
    def ok(self) -> bool:
        return self.first_broken is None

    def __str__(self) -> str:
        if self.first_broken is not None:
            return f"audit log BROKEN after {self.entries} entries: first broken {self.first_broken}"
        seals = "hashes and seals" if self.seals_checked else "hashes only (no audit key)"
        head = "empty" if self.head_seq is None else f"head seq {self.head_seq} hash {self.head_hash}"
        return f"audit log intact: {self.entries} entries, {seals} verified, {head}"


def _parse_row(row: Mapping[str, Any]) -> AuditEntry:
    data = {name: row[name] for name in AuditEntry.model_fields if name in row}
    return AuditEntry.model_validate(data)


def verify_entries(
    rows: Iterable[Mapping[str, Any]], key: bytes | None = None, anchor: Mapping[str, Any] | None = None
) -> VerifyReport:
    """Check rows of the audit table, in ``seq`` order (copies of one ``seq`` adjacent).

    The checks, per entry, in this order, name the first failure: the row parses; its
    ``seq`` follows the previous one without a gap; a second copy of the same ``seq`` is
    identical; its content hashes to ``entry_hash``; its ``seal`` matches (when ``key`` is
    given); its ``prev_hash`` is the previous entry's hash. Finally the ``anchor`` (the last
    position the writer recorded, ``{"seq": .., "entry_hash": ..}``) must be present with
    the same hash.
    """
    expected_seq = 0
    prev_hash = GENESIS_HASH
    last: AuditEntry | None = None
    count = 0
    anchor_seq = int(anchor["seq"]) if anchor else None

    def report(broken: BrokenEntry | None = None) -> VerifyReport:
        return VerifyReport(
            count, last.seq if last else None, last.entry_hash if last else None, key is not None, broken
        )

    for row in rows:
        try:
            entry = _parse_row(row)
        except ValidationError as exc:
            seq = row.get("seq")
            where = int(seq) if isinstance(seq, int) else expected_seq
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            return report(BrokenEntry(where, f"the row is not a valid entry ({field}: {first['msg']}): it was edited"))
        if last is not None and entry.seq == last.seq:
            if entry != last:
                return report(
                    BrokenEntry(entry.seq, "two different versions of this entry are stored: it was re-written", entry)
                )
            continue  # an identical copy (a retried insert) is harmless
        if entry.seq != expected_seq:
            if entry.seq > expected_seq:
                missing = f"{expected_seq}" if entry.seq == expected_seq + 1 else f"{expected_seq}..{entry.seq - 1}"
                reason = f"missing: the log jumps to seq {entry.seq} (deleted {missing})"
                return report(BrokenEntry(expected_seq, reason))
            return report(BrokenEntry(entry.seq, f"out of order: expected seq {expected_seq}", entry))
        if entry.computed_hash() != entry.entry_hash:
            return report(BrokenEntry(entry.seq, "its content does not match its hash: the row was edited", entry))
        if key is not None and not hmac.compare_digest(seal_for(entry.entry_hash, key), entry.seal):
            return report(
                BrokenEntry(entry.seq, "its seal is wrong: the hash was recomputed without the audit key", entry)
            )
        if entry.prev_hash != prev_hash:
            return report(
                BrokenEntry(
                    entry.seq,
                    "its prev_hash is not the previous entry's hash: an entry before it was replaced or removed",
                    entry,
                )
            )
        if anchor_seq is not None and entry.seq == anchor_seq and entry.entry_hash != anchor.get("entry_hash"):
            reason = "its hash differs from the one the writer anchored: the log was re-written"
            return report(BrokenEntry(entry.seq, reason, entry))
        prev_hash = entry.entry_hash
        last = entry
        expected_seq += 1
        count += 1
    if anchor_seq is not None and (last is None or last.seq < anchor_seq):
        have = "no entry" if last is None else f"the last entry is seq {last.seq}"
        return report(BrokenEntry(expected_seq, f"missing: the writer anchored seq {anchor_seq} but {have}"))
    return report()


def _pages(store: Sink, database: str, upto: int | None) -> Iterator[dict[str, Any]]:
    columns = ", ".join(AuditEntry.model_fields)
    bound = "" if upto is None else f" AND seq <= {int(upto)}"
    start = 0
    while True:
        rows = store.query(
            f"SELECT {columns} FROM {database}.audit_log WHERE seq >= {start} AND seq < {start + VERIFY_PAGE}{bound} "
            "ORDER BY seq, ingested_at"
        )
        if not rows:
            # A gap of a whole page would end the walk early: look for anything further.
            more = store.query(
                f"SELECT min(seq) AS s, count() AS n FROM {database}.audit_log WHERE seq >= {start}{bound}"
            )
            if not more or not more[0]["n"]:
                return
            start = int(more[0]["s"])
            continue
        yield from rows
        start += VERIFY_PAGE


def verify_log(
    store: Sink,
    key: bytes | None,
    anchor_path: Path | None = None,
    database: str = DEFAULT_DATABASE,
    *,
    anchor: Mapping[str, Any] | None = None,
    upto: int | None = None,
) -> VerifyReport:
    """Verify the audit table of ``store`` (see :func:`verify_entries`).

    ``anchor`` overrides the file at ``anchor_path``; ``upto`` stops at that ``seq`` (a log
    still being appended to is verified up to the head it had when verification began).
    """
    database = validate_identifier(database)
    if anchor is None:
        anchor = _read_anchor(anchor_path)
    return verify_entries(_pages(store, database, upto), key, anchor)


def _read_anchor(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# --------------------------------------------------------------------------------------------
# appending
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """What a caller asks to append; the log adds position, time and chain."""

    action: AuditAction
    actor: str
    actor_role: str
    subject_type: str = ""
    subject_id: str = ""
    office: str | None = None
    detail: Mapping[str, Any] | None = None


class AuditAnchorMismatch(RuntimeError):
    """The anchor file records a head the table does not have: entries were deleted or rewritten."""


class AuditLog:
    """Appends chained, sealed entries to ``database.audit_log`` through ``store``.

    ``anchor_path`` (optional) receives the head after every append. Thread-safe; one
    writer per table (see the module docstring). :attr:`refusal` says why appends are
    refused (the anchor is ahead of the table), None when they are not.
    """

    def __init__(
        self,
        store: Sink,
        key: bytes,
        anchor_path: Path | None = None,
        database: str = DEFAULT_DATABASE,
        profile: ServerProfile | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.anchor_path = anchor_path
        self.database = validate_identifier(database)
        self.profile = profile or getattr(store, "profile", MODERN)
        self._lock = threading.Lock()
        store.query(audit_ddl(self.profile, self.database))
        head = store.query(
            f"SELECT seq, entry_hash FROM {self.database}.audit_log ORDER BY seq DESC, ingested_at DESC LIMIT 1"
        )
        self._next_seq = int(head[0]["seq"]) + 1 if head else 0
        self._head_hash = str(head[0]["entry_hash"]) if head else GENESIS_HASH
        self.refusal: str | None = self._anchor_problem()
        if self.refusal is not None:
            log.error("%s", self.refusal)

    def _anchor_problem(self) -> str | None:
        """Why the anchor and the table disagree (so appending would hide it), or None."""
        anchor = _read_anchor(self.anchor_path)
        if anchor is None:
            return None
        seq = int(anchor["seq"])
        if seq >= self._next_seq:
            have = "is empty" if self._next_seq == 0 else f"ends at seq {self._next_seq - 1}"
            return (
                f"audit anchor {self.anchor_path} records seq {seq} but the audit table {have}: "
                "entries were deleted. Appending is refused (it would move the anchor back); run "
                "`vigie audit verify`, restore the entries, or move the anchor aside once investigated"
            )
        rows = self.store.query(
            f"SELECT entry_hash FROM {self.database}.audit_log WHERE seq = {seq} ORDER BY ingested_at DESC LIMIT 1"
        )
        if rows and str(rows[0]["entry_hash"]) != anchor.get("entry_hash"):
            return (
                f"audit anchor {self.anchor_path} records another hash for seq {seq} than the table: "
                "the log was rewritten. Appending is refused; run `vigie audit verify`"
            )
        return None

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def append(
        self,
        action: AuditAction,
        actor: str,
        actor_role: str,
        subject_type: str = "",
        subject_id: str = "",
        office: str | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry; returns it as stored."""
        record = AuditRecord(action, actor, actor_role, subject_type, subject_id, office, detail)
        return self.append_many([record])[0]

    def append_many(self, records: Iterable[AuditRecord]) -> list[AuditEntry]:
        """Append several entries (the watcher's batch of new alerts), ``INSERT_BATCH`` per statement."""
        records = list(records)
        stored: list[AuditEntry] = []
        with self._lock:
            for start in range(0, len(records), INSERT_BATCH):
                stored += self._append_locked(records[start : start + INSERT_BATCH])
        return stored

    def _append_locked(self, records: list[AuditRecord]) -> list[AuditEntry]:
        if self.refusal is None:
            anchor = _read_anchor(self.anchor_path)
            if anchor is not None and int(anchor["seq"]) >= self._next_seq:  # the table shrank under us
                self.refusal = self._anchor_problem()
        if self.refusal is not None:
            raise AuditAnchorMismatch(self.refusal)
        now = datetime.now(UTC)
        seq, prev = self._next_seq, self._head_hash
        entries: list[AuditEntry] = []
        for record in records:
            draft = AuditEntry(
                seq=seq,
                entry_time=now,
                action=record.action,
                actor=record.actor,
                actor_role=record.actor_role,
                subject_type=record.subject_type,
                subject_id=record.subject_id,
                office=record.office,
                detail=canonical_detail(record.detail or {}),
                prev_hash=prev,
                entry_hash=GENESIS_HASH,
                seal=GENESIS_HASH,
            )
            digest = draft.computed_hash()
            entries.append(draft.model_copy(update={"entry_hash": digest, "seal": seal_for(digest, self.key)}))
            seq, prev = seq + 1, digest
        self._insert(entries)
        # Only once stored: a failed insert leaves the head where it was.
        self._next_seq, self._head_hash = seq, prev
        self._write_anchor(entries[-1])
        return entries

    def verify(self) -> VerifyReport:
        """Verify the log up to its current head with this log's key and anchor (appends go on meanwhile)."""
        with self._lock:
            upto = self._next_seq - 1
            anchor = _read_anchor(self.anchor_path)
        if upto < 0:
            return verify_entries([], self.key, anchor)
        return verify_log(self.store, self.key, None, self.database, anchor=anchor, upto=upto)

    def _insert(self, entries: list[AuditEntry]) -> None:
        # INSERT ... SELECT of literals rather than INSERT ... VALUES: the native protocol
        # (clickhouse-driver) streams VALUES as data blocks and would wait for them, while a
        # SELECT runs wholly on the server; chdb takes both. It is also synchronous on chdb,
        # whose plain inserts are asynchronous by default: the chain needs each row stored.
        names = list(AuditEntry.model_fields)
        selects = "\nUNION ALL ".join(
            "SELECT " + ", ".join(self._literal(name, getattr(e, name)) for name in names) for e in entries
        )
        self.store.query(f"INSERT INTO {self.database}.audit_log ({', '.join(names)})\n{selects}")

    @staticmethod
    def _literal(name: str, value: Any) -> str:
        if name == "seq":
            return f"toUInt64({int(value)})"
        if name == "entry_time":
            return f"toDateTime({sql_literal(value)}, 'UTC')"
        if name == "office" and value is None:
            return "CAST(NULL AS Nullable(String))"
        return sql_literal(value)

    def _write_anchor(self, entry: AuditEntry) -> None:
        if self.anchor_path is None:
            return
        data = {"seq": entry.seq, "entry_hash": entry.entry_hash, "entry_time": entry.entry_time.isoformat()}
        # Private, atomic and synced: a torn or lost anchor would hide deleted entries.
        write_private(self.anchor_path, json.dumps(data).encode())
