"""ClickHouse tables derived from the pydantic models, and the rows each record becomes.

Nothing here lists columns by hand: each table names a model, its key and (for item
tables) the parent it hangs from; columns, types and row extraction follow from the
model's annotations. Adding a field to a model adds a column; a field whose type has no
mapping fails at import time rather than at the first insert.

Supported servers
-----------------
* **modern**: ClickHouse >= 22, including chdb 4.x (ClickHouse 26.9 in-process).
  ``DateTime64(3, 'UTC')``, ``LowCardinality``, ``Map``, ``TTL`` and ``EPHEMERAL`` columns.
* **legacy**: ClickHouse 18.16 (Debian's ``clickhouse-server``). Plain ``DateTime('UTC')``
  (seconds), no ``LowCardinality``/``Map``/``TTL``, dicts as JSON ``String``.
  Versions 19.x-21.x are rendered with the legacy subset: it is valid there too.

Tables
------
``ens``/``ens_items``, ``declarations``/``declaration_items``, ``excise``, ``outcomes``,
``scores``, ``alerts``, ``dead_letters``. All are ``ReplacingMergeTree(ingested_at)``
ordered by event time then id (plus ``item_number`` for item tables) and partitioned by
month of event time, so re-inserting a record is harmless: read with ``FINAL`` (or
``argMax`` / ``LIMIT 1 BY id``) and each id counts once. Deduplication holds because an id
always comes with the same event time. (Stores created before 2026-11-23 are ordered by id
alone; they keep that order, which is as correct and sorts more slowly.) An item removed from a
re-sent declaration is not deleted: item tables only ever gain or replace rows.

``dead_letters`` is the exception: its time, ``received_at``, is when the bytes were read, so
reading the same bytes again (a re-run, ``--resume``, a Kafka re-delivery) gives the same
``dead_letter_id`` at a later time. It is ordered by ``dead_letter_id`` alone and has a single
partition (dead letters are few), so the copies collapse under ``FINAL``. A ``dead_letters``
table created by an earlier version keeps its old key (``received_at, dead_letter_id``,
monthly partitions): ``CREATE TABLE IF NOT EXISTS`` does not change it. Recreate it (rename
the old table, open a sink, ``INSERT INTO dead_letters SELECT * FROM`` the old one) or read
it with ``LIMIT 1 BY dead_letter_id``.

Tables holding personal data (a :class:`~vigie.schemas.Party`, an officer id, raw inbound
bytes, an operator's EORI or excise number, which for a sole trader identifies a person:
``ens``, ``declarations``, ``declaration_items``, ``excise``, ``outcomes``, ``scores``,
``alerts``, ``dead_letters``) get a ``TTL`` of ``ttl_days`` (default 1826, five years; the
sink URL's ``ttl_days`` or ``vigie run --retention-days`` sets it) on modern servers, counted from when the row was
stored (``ingested_at``), not from the record's own time: a record dated long ago (a
back-fill of 2019 declarations) is kept for the whole period rather than dropped at insert,
and a time past 2106 cannot wrap ``DateTime`` around. Each sink applies the period to tables that
exist when it opens (:func:`retention_statements`): ``ALTER TABLE ... MODIFY TTL`` where a
table's TTL differs (a store created with another period, or by a version that left a table
out), ``REMOVE TTL`` with ``ttl_days=None``. 18.16 has no TTL: there the sink deletes the
expired rows when it opens (``ALTER TABLE ... DELETE WHERE ingested_at < ...``, a mutation,
issued only for tables holding such rows); a long-running worker on 18.16 applies the period
at its restarts only.

``compact_part_bytes`` (modern servers only; the embedded store passes
:data:`COMPACT_PART_BYTES`) sets ``min_bytes_for_wide_part``: a part holding less than that,
uncompressed, is written compact (every column in one file, about 12 files a part) rather than
wide (two to four files a column: 69 for a ``scores`` part on chdb 26.9). Inserts of large batches then
create a fraction of the files, and a merge writes a wide part once its output passes the size.
Like the TTL, it applies when a table is created (later: ``ALTER TABLE ... MODIFY SETTING``,
which the embedded store's sink does when it opens an older store).

Rows
----
Three row shapes:

* :func:`native_blocks` (what the ClickHouse sinks use): each record's values are encoded at
  once into ClickHouse ``Native`` columns (a Cython encoder), one block per table at flush.
  No per-row dict or tuple: bench/sink.py measures the whole path per scored event.
* :func:`column_writers` (generated once per model): each record appends its values to one
  list per column of its table (and of its item table), exactly as the model holds them
  (aware ``datetime`` in any offset, ``bool``, ``dict``, ``bytes``), for a sink that converts
  whole columns itself.
* :func:`rows_for`: one dict per row, values already converted for a server profile
  (datetimes in UTC, booleans 0/1, dicts as JSON text where the profile has no ``Map``), for
  callers that want to read rows (tests, tools). About 2 us for a score, 8 us for a
  three-item declaration.

``DateTime64(3)`` keeps milliseconds, 18.16's ``DateTime`` keeps seconds (sub-unit
precision is truncated).

Dead-letter bytes
-----------------
``dead_letters.raw`` is a ``String`` holding the original bytes unchanged (ClickHouse
strings are byte strings): ``SELECT raw`` returns them, ``length(raw) = raw_size``. The
sinks send ``raw`` as bytes directly (a Native ``String``, into chdb and over the native
protocol, the only way on 18.16). Text transports cannot carry arbitrary bytes, so on modern
servers the table also has an ``EPHEMERAL`` column ``raw_base64`` and ``raw`` defaults to
``base64Decode(raw_base64)``: a JSON insert sends ``raw_base64``. To read the bytes back
through JSON, select ``base64Encode(raw)`` (or ``hex(raw)``) and decode on the client.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from functools import lru_cache
from typing import Any, Literal, Union

import annotated_types
import orjson
from pydantic import BaseModel

from vigie.schemas.codes import CnCode, CountryCode, CurrencyCode, HsCode, OfficeCode, PreferenceCode, ProcedureCode
from vigie.schemas.events import (
    Alert,
    ControlOutcome,
    DeadLetter,
    EnsGoodsItem,
    EntrySummaryDeclaration,
    ExciseMovement,
    GoodsItem,
    ImportDeclaration,
    Party,
    RiskScore,
)

from ._native_block import K_ARRAY, K_BOOL, K_BYTES, K_DATETIME, K_FLOAT, K_INT, K_JSON, K_MAP, K_STRING, NativeBlocks

__all__ = [
    "COMPACT_PART_BYTES",
    "DEFAULT_DATABASE",
    "DEFAULT_TTL_DAYS",
    "LEGACY",
    "MODERN",
    "TABLES",
    "Column",
    "ColumnBatch",
    "ColumnLists",
    "Kind",
    "RowPlans",
    "RowWriter",
    "ServerProfile",
    "Table",
    "column_writers",
    "empty_columns",
    "json_text",
    "native_blocks",
    "native_type",
    "render_ddl",
    "retention_statements",
    "rows_for",
    "table_engines",
    "validate_identifier",
]

DEFAULT_DATABASE = "vigie"
DEFAULT_TTL_DAYS: int | None = 1826
"""Five years: how long tables holding personal data keep rows on modern servers."""

COMPACT_PART_BYTES = 256 << 20
"""Parts below 256 MiB uncompressed are written compact in the embedded store (chdb): a
200,000-row insert into ``scores`` (about 150 MB) makes one part of 12 files instead of 69.
Creating a file is costly where the file system scans its inode table past recently deleted
ones (ext4 without a journal, as on these machines: up to a quarter of chdb's CPU samples in
``ext4_create``). With 200,000-row batches the store needed 1-3 us less CPU per scored event
(of 31-45) in three sets of interleaved runs, within the machine's spread from run to run;
neutral with 50,000-row batches (bench/sink.py ``--chdb-parts compact,clickhouse``)."""

MODERN_MAJOR = 22

# Code lists of at most ~10k values: dictionary-encoded on modern servers.
_LOW_CARDINALITY_ALIASES: tuple[Any, ...] = (
    CountryCode,
    CurrencyCode,
    OfficeCode,
    ProcedureCode,
    PreferenceCode,
    HsCode,
    CnCode,
)
# Plain ``str`` fields (outbound models, envelope) that are low-cardinality by meaning.
_LOW_CARDINALITY_NAMES = frozenset(
    {
        "schema_version",
        "source_system",
        "office",
        "origin_country",
        "cn_code",
        "transport_mode",
        "supplementary_unit_code",
    }
)
# The table already says which type a row is.
_SKIPPED_FIELDS = frozenset({"event_type"})

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def validate_identifier(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier (database names are interpolated)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"invalid ClickHouse identifier {name!r}: use letters, digits and underscores")
    return name


@dataclass(frozen=True, slots=True)
class ServerProfile:
    """What a ClickHouse server can do, decided from its version string."""

    version: tuple[int, ...]

    @classmethod
    def parse(cls, version: str) -> ServerProfile:
        """Parse ``SELECT version()`` output such as ``'26.9.2.1'`` or ``'18.16.1'``."""
        parts = re.findall(r"\d+", version.strip())[:4]
        if len(parts) < 2:
            raise ValueError(f"not a ClickHouse version: {version!r}")
        return cls(tuple(int(p) for p in parts))

    @property
    def modern(self) -> bool:
        """ClickHouse >= 22: every feature this module uses is available."""
        return self.version[0] >= MODERN_MAJOR

    # Two tiers only: each feature flag is ``modern`` so the rendering has one rule per
    # feature, and a mid-range server (19-21) gets the subset that is safe everywhere.
    @property
    def datetime64(self) -> bool:
        return self.modern

    @property
    def low_cardinality(self) -> bool:
        return self.modern

    @property
    def map_type(self) -> bool:
        return self.modern

    @property
    def ttl(self) -> bool:
        return self.modern

    @property
    def ephemeral(self) -> bool:
        return self.modern

    @property
    def compact_parts(self) -> bool:
        """``min_bytes_for_wide_part`` (compact parts: ClickHouse 20.3 on)."""
        return self.modern

    def __str__(self) -> str:
        tier = "modern" if self.modern else "legacy"
        return f"ClickHouse {'.'.join(map(str, self.version))} ({tier})"


MODERN = ServerProfile.parse("22.0")
"""Any server >= 22 (chdb included)."""
LEGACY = ServerProfile.parse("18.16.1")
"""Debian's clickhouse-server 18.16."""


class Kind(Enum):
    """How a model value is stored."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATETIME = "datetime"
    ARRAY = "array"
    JSON = "json"  # any dict: a JSON document in a String
    MAP = "map"  # dict[str, float]: Map(String, Float64) on modern servers, JSON elsewhere
    BYTES = "bytes"


@dataclass(frozen=True, slots=True)
class Column:
    """One column and where its value comes from in the model.

    ``path`` is the attribute path in the table's model (``("consignor", "name")`` for a
    flattened party); for a column inherited from the parent record it is the path in the
    parent model and ``inherited`` is true.
    """

    name: str
    kind: Kind
    path: tuple[str, ...]
    nullable: bool = False
    low_cardinality: bool = False
    int_type: str = "Int64"
    element: Kind | None = None
    inherited: bool = False

    def clickhouse_type(self, profile: ServerProfile) -> str:
        """The column type on ``profile``."""
        if self.kind is Kind.ARRAY:
            assert self.element is not None
            return f"Array({_scalar_type(self.element, 'Int64', profile)})"
        base = _scalar_type(self.kind, self.int_type, profile)
        if self.low_cardinality and profile.low_cardinality:
            # LowCardinality(Nullable(...)) is the documented nesting on modern servers.
            return f"LowCardinality(Nullable({base}))" if self.nullable else f"LowCardinality({base})"
        return f"Nullable({base})" if self.nullable else base

    def transport_name(self, profile: ServerProfile) -> str:
        """Name a text (JSON) insert uses: bytes travel base64-encoded in an ephemeral column."""
        if self.kind is Kind.BYTES and profile.ephemeral:
            return f"{self.name}_base64"
        return self.name


def _scalar_type(kind: Kind, int_type: str, profile: ServerProfile) -> str:
    if kind is Kind.DATETIME:
        return "DateTime64(3, 'UTC')" if profile.datetime64 else "DateTime('UTC')"
    if kind is Kind.MAP and profile.map_type:
        return "Map(String, Float64)"
    return {
        Kind.STRING: "String",
        Kind.INT: int_type,
        Kind.FLOAT: "Float64",
        Kind.BOOL: "UInt8",
        Kind.JSON: "String",
        Kind.MAP: "String",
        Kind.BYTES: "String",
    }[kind]


@dataclass(frozen=True, slots=True)
class Table:
    """A ClickHouse table fed by one model (and, for item tables, its parent)."""

    name: str
    model: type[BaseModel]
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    """The record's id (plus ``item_number`` for item tables): what a re-sent copy shares."""
    time_column: str
    personal_data: bool
    parent: str | None = None
    via: str | None = None  # the parent's list field holding this table's models
    sorting: tuple[str, ...] | None = None
    """A sorting key of the table's own; None: time, then :attr:`key` (see :attr:`order_by`)."""
    by_month: bool = True
    """Partitioned by month of :attr:`time_column`; False: one partition (the time column may
    change between copies of a record, as a dead letter's ``received_at`` does)."""

    @property
    def order_by(self) -> tuple[str, ...]:
        """The sorting key: time, then :attr:`key`, unless the table names its own. Rows arrive
        roughly in time order, so an insert sorts little (random ids cost chdb a third more CPU
        per scored event), and dashboards' time filters skip whole granules. A copy of a record
        still collapses with it: an id always comes with the same time."""
        return self.sorting if self.sorting is not None else (self.time_column, *self.key)

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"{self.name} has no column {name!r}")

    def insert_columns(self, profile: ServerProfile) -> list[str]:
        """Column names a text insert lists (``ingested_at`` is left to its default)."""
        return [col.transport_name(profile) for col in self.columns]

    def render(
        self, profile: ServerProfile, database: str, ttl_days: int | None, compact_part_bytes: int | None = None
    ) -> str:
        """``CREATE TABLE IF NOT EXISTS`` for ``profile``."""
        lines = []
        for col in self.columns:
            if col.kind is Kind.BYTES and profile.ephemeral:
                eph = col.transport_name(profile)
                lines.append(f"    {eph} String EPHEMERAL")
                lines.append(f"    {col.name} String DEFAULT base64Decode({eph})")
            else:
                lines.append(f"    {col.name} {col.clickhouse_type(profile)}")
        lines.append("    ingested_at DateTime('UTC') DEFAULT now()")
        sql = (
            f"CREATE TABLE IF NOT EXISTS {database}.{self.name}\n(\n"
            + ",\n".join(lines)
            + "\n)\n"
            # ingested_at as version: the last copy of a re-sent record wins.
            + "ENGINE = ReplacingMergeTree(ingested_at)\n"
            + (f"PARTITION BY toYYYYMM({self.time_column})\n" if self.by_month else "")
            + f"ORDER BY ({', '.join(self.order_by)})"
        )
        if ttl_days is not None and self.personal_data and profile.ttl:
            # From storage, not from the record's own time: a record dated years back (a
            # back-fill) would be expired at insert although it was accepted and scored, and
            # toDateTime() of a time past 2106 wraps around (so would greatest(event, stored)
            # plus the period). For live traffic the two clocks are minutes apart.
            sql += f"\nTTL ingested_at + INTERVAL {int(ttl_days)} DAY"
        if compact_part_bytes is not None and profile.compact_parts:
            sql += f"\nSETTINGS min_bytes_for_wide_part = {int(compact_part_bytes)}"
        return sql


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str
    model: type[BaseModel]
    key: tuple[str, ...]
    time_column: str = "event_time"
    parent: str | None = None
    via: str | None = None
    inherit: tuple[str, ...] = ()
    personal: bool = False  # beyond the automatic rule "the model holds a Party"
    sorting: tuple[str, ...] | None = None  # see Table.sorting
    by_month: bool = True  # see Table.by_month


# The only hand-written part: which model feeds which table, and its key.
_SPECS: tuple[_Spec, ...] = (
    _Spec("ens", EntrySummaryDeclaration, key=("event_id",)),
    _Spec(
        "ens_items",
        EnsGoodsItem,
        key=("event_id", "item_number"),
        parent="ens",
        via="goods_items",
        inherit=("event_id", "ens_reference", "event_time"),
    ),
    _Spec("declarations", ImportDeclaration, key=("event_id",)),
    _Spec(
        "declaration_items",
        GoodsItem,
        key=("event_id", "item_number"),
        parent="declarations",
        via="goods_items",
        inherit=("event_id", "mrn", "event_time", "importer_eori", "customs_office"),
        personal=True,  # the importer's EORI: a sole trader's is a person's identifier
    ),
    _Spec("excise", ExciseMovement, key=("event_id",), personal=True),  # operator EORI, excise numbers
    # officer_id names a person.
    _Spec("outcomes", ControlOutcome, key=("event_id",), personal=True),
    # Scores and alerts name the operator (EORI) and quote the declaration in their reasons.
    _Spec("scores", RiskScore, key=("score_id",), personal=True),
    _Spec("alerts", Alert, key=("alert_id",), personal=True),
    # The raw bytes are whole inbound events, parties included. received_at is the time of each
    # read: re-reading the same bytes (a re-run, a resume, a re-delivery) gives the same id at a
    # later time, so the key is the id alone and the table is not partitioned by time, or the
    # copies would never collapse.
    _Spec(
        "dead_letters",
        DeadLetter,
        key=("dead_letter_id",),
        time_column="received_at",
        personal=True,
        sorting=("dead_letter_id",),
        by_month=False,
    ),
)


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(typing.get_args(hint)):
            return args[0], True
    return hint, False


def _strip_annotated(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _int_type(metadata: list[Any]) -> str:
    low: int | None = None
    high: int | None = None
    for m in metadata:
        if isinstance(m, annotated_types.Ge):
            low = int(m.ge)
        elif isinstance(m, annotated_types.Gt):
            low = int(m.gt) + 1
        elif isinstance(m, annotated_types.Le):
            high = int(m.le)
        elif isinstance(m, annotated_types.Lt):
            high = int(m.lt) - 1
    if low is not None and low >= 0:
        for bits in (8, 16, 32):
            if high is not None and high < 2**bits:
                return f"UInt{bits}"
        return "UInt64"
    return "Int64"


def _scalar_kind(tp: Any, where: str) -> Kind:
    # bool before int: bool is an int subclass.
    if tp is bool:
        return Kind.BOOL
    if tp is int:
        return Kind.INT
    if tp is float:
        return Kind.FLOAT
    if tp is bytes:
        return Kind.BYTES
    if isinstance(tp, type) and issubclass(tp, datetime):
        return Kind.DATETIME
    if tp is str or (isinstance(tp, type) and issubclass(tp, str)):
        return Kind.STRING
    if typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)):
        return Kind.STRING
    # pydantic's AwareDatetime is a marker class, not a datetime subclass.
    if getattr(tp, "__name__", "") in ("AwareDatetime", "NaiveDatetime", "PastDatetime", "FutureDatetime"):
        return Kind.DATETIME
    raise TypeError(f"{where}: no ClickHouse mapping for annotation {tp!r}")


def _is_low_cardinality(name: str, hint: Any, bare: Any) -> bool:
    if any(hint is alias for alias in _LOW_CARDINALITY_ALIASES):
        return True
    if typing.get_origin(bare) is Literal:
        return True
    if isinstance(bare, type) and issubclass(bare, Enum):
        return True
    return name in _LOW_CARDINALITY_NAMES


def model_columns(model: type[BaseModel], prefix: tuple[str, ...] = (), nullable_parent: bool = False) -> list[Column]:
    """Columns for ``model``'s scalar fields, nested models flattened with ``parent_`` names."""
    hints = typing.get_type_hints(model, include_extras=True)
    columns: list[Column] = []
    for name, info in model.model_fields.items():
        if name in _SKIPPED_FIELDS and not prefix:
            continue
        where = f"{model.__name__}.{name}"
        hint, optional = _strip_optional(hints[name])
        bare = _strip_annotated(hint)
        nullable = optional or nullable_parent
        path = (*prefix, name)
        col_name = "_".join(path)
        origin = typing.get_origin(bare)
        if _is_model(bare):
            columns.extend(model_columns(bare, path, nullable))
        elif origin is list:
            (elem_hint,) = typing.get_args(bare)
            elem = _strip_annotated(elem_hint)
            if _is_model(elem):
                continue  # rows of a child table
            if optional:
                raise TypeError(f"{where}: Optional lists have no ClickHouse mapping (Array cannot be Nullable)")
            columns.append(Column(col_name, Kind.ARRAY, path, element=_scalar_kind(elem, where)))
        elif origin is dict:
            key_t, value_t = typing.get_args(bare)
            kind = Kind.MAP if key_t is str and value_t is float and not nullable else Kind.JSON
            columns.append(Column(col_name, kind, path, nullable=nullable))
        else:
            kind = _scalar_kind(bare, where)
            if kind is Kind.BYTES and nullable:
                raise TypeError(f"{where}: Optional bytes are not supported")
            columns.append(
                Column(
                    col_name,
                    kind,
                    path,
                    nullable=nullable,
                    low_cardinality=kind is Kind.STRING and _is_low_cardinality(name, hint, bare),
                    int_type=_int_type(info.metadata) if kind is Kind.INT else "Int64",
                )
            )
    return columns


def _holds_party(model: type[BaseModel]) -> bool:
    # Party is the schema's personal-data carrier: names of people and companies.
    for info in model.model_fields.values():
        tp, _ = _strip_optional(info.annotation)
        if tp is Party:
            return True
        if typing.get_origin(tp) is list:
            (elem,) = typing.get_args(tp)
            if _is_model(elem) and _holds_party(elem):
                return True
    return False


def _build_tables() -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for spec in _SPECS:
        own = model_columns(spec.model)
        inherited: list[Column] = []
        if spec.parent is not None:
            parent = tables[spec.parent]
            for name in spec.inherit:
                col = parent.column(name)
                inherited.append(dataclasses.replace(col, inherited=True))
        columns = (*inherited, *own)
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ValueError(f"{spec.name}: duplicate column names {names}")
        for key in (*spec.key, spec.time_column):
            col = next((c for c in columns if c.name == key), None)
            if col is None or col.nullable:
                raise ValueError(f"{spec.name}: key column {key!r} missing or nullable")
        tables[spec.name] = Table(
            name=spec.name,
            model=spec.model,
            columns=columns,
            key=spec.key,
            time_column=spec.time_column,
            personal_data=spec.personal or _holds_party(spec.model),
            parent=spec.parent,
            via=spec.via,
            sorting=spec.sorting,
            by_month=spec.by_month,
        )
    return tables


TABLES: dict[str, Table] = _build_tables()
"""Every table, parents before their item tables."""


def render_ddl(
    profile: ServerProfile,
    database: str = DEFAULT_DATABASE,
    ttl_days: int | None = DEFAULT_TTL_DAYS,
    compact_part_bytes: int | None = None,
) -> list[str]:
    """``CREATE DATABASE`` then one ``CREATE TABLE`` per table, all ``IF NOT EXISTS``.

    ``ttl_days`` bounds how long tables holding personal data keep rows (modern servers
    only; ``None``: no TTL). It only applies when a table is created: changing it later
    needs ``ALTER TABLE ... MODIFY TTL``. ``compact_part_bytes``: parts below this many
    uncompressed bytes are written compact (modern servers only; ``None``: the server's own
    ``min_bytes_for_wide_part``), also when a table is created.
    """
    validate_identifier(database)
    if ttl_days is not None and ttl_days <= 0:
        raise ValueError(f"ttl_days must be positive or None, got {ttl_days}")
    if compact_part_bytes is not None and compact_part_bytes < 0:
        raise ValueError(f"compact_part_bytes must be >= 0 or None, got {compact_part_bytes}")
    return [f"CREATE DATABASE IF NOT EXISTS {database}"] + [
        table.render(profile, database, ttl_days, compact_part_bytes) for table in TABLES.values()
    ]


def table_engines(query: Callable[[str], list[dict[str, Any]]], database: str, names: Iterable[str]) -> dict[str, str]:
    """``engine_full`` (engine, keys, TTL, settings) of the tables among ``names`` that exist in ``database``."""
    listed = ", ".join(f"'{name}'" for name in names)
    rows = query(f"SELECT name, engine_full FROM system.tables WHERE database = '{database}' AND name IN ({listed})")
    return {row["name"]: row["engine_full"] for row in rows}


def retention_statements(
    profile: ServerProfile,
    database: str,
    ttl_days: int | None,
    query: Callable[[str], list[dict[str, Any]]],
) -> list[str]:
    """What brings the existing personal-data tables of ``database`` to ``ttl_days`` (see the module).

    ``query`` reads the server (the sink's own). Modern servers: a ``MODIFY TTL`` for each
    table whose TTL is not the period's, a ``REMOVE TTL`` for one that has a TTL when
    ``ttl_days`` is None. 18.16: a ``DELETE`` of the rows stored more than ``ttl_days`` ago, for
    each table that holds some. The caller runs them.
    """
    validate_identifier(database)
    personal = [name for name, table in TABLES.items() if table.personal_data]
    statements: list[str] = []
    if profile.ttl:
        for name, engine in table_engines(query, database, personal).items():
            table = f"{database}.{name}"
            ttl = re.search(r"\bTTL (.+?)(?: SETTINGS |$)", engine)
            if ttl_days is None:
                if ttl:
                    statements.append(f"ALTER TABLE {table} REMOVE TTL")
            elif ttl is None or ttl.group(1).strip() != f"ingested_at + toIntervalDay({int(ttl_days)})":
                statements.append(f"ALTER TABLE {table} MODIFY TTL ingested_at + INTERVAL {int(ttl_days)} DAY")
        return statements
    if ttl_days is None:
        return statements
    horizon = f"subtractDays(now(), {int(ttl_days)})"  # a function 18.16 already has
    for name in personal:
        expired = query(f"SELECT count() AS n FROM {database}.{name} WHERE ingested_at < {horizon}")
        if expired and int(expired[0]["n"]) > 0:
            statements.append(f"ALTER TABLE {database}.{name} DELETE WHERE ingested_at < {horizon}")
    return statements


# --- rows ----------------------------------------------------------------------------

Convert = Callable[[Any], Any]


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def json_text(value: Any) -> str:
    """A dict as the JSON text stored in a ``String`` column: keys sorted, so equal dicts give equal text."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _converter(col: Column, profile: ServerProfile) -> Convert | None:
    """Per-value conversion for ``col``; None when the model value is stored as is."""
    if col.kind is Kind.DATETIME:
        return _to_utc
    if col.kind is Kind.BOOL:
        return int
    if col.kind is Kind.JSON or (col.kind is Kind.MAP and not profile.map_type):
        return json_text
    return None


class _AbsentModel(dict[str, Any]):
    """Stands for an optional nested model that is None: every attribute reads None."""

    def __missing__(self, key: str) -> None:
        return None


_ABSENT = _AbsentModel()

RowBuilder = Callable[[BaseModel, dict[str, Any] | None], Any]


def _compile_rows(table: Table, tables: dict[str, Table], profile: ServerProfile) -> RowBuilder:
    """Generate the row builder of ``table`` (and, for a root table, of its item tables).

    The builder is one Python function whose row is a dict display with constant keys:
    about twice as fast as filling a dict in a loop over a column list, and rows_for runs
    for every event. Values are read from the model's ``__dict__`` (where pydantic keeps
    validated values), not through attribute access.
    """
    namespace: dict[str, Any] = {"_ABSENT": _ABSENT}
    lines = ["def build(record, parent):", "    v = record.__dict__"]
    sources: dict[str, str] = {}  # nested model attribute -> local holding its __dict__
    entries: list[str] = []
    for col in table.columns:
        if col.inherited:
            entries.append(f"{col.name!r}: parent[{col.name!r}]")
            continue
        if len(col.path) == 1:
            source = "v"
        elif len(col.path) == 2:
            attr = col.path[0]
            if attr not in sources:
                local = sources[attr] = f"n{len(sources)}"
                lines.append(f"    {local} = v[{attr!r}]")
                lines.append(f"    {local} = _ABSENT if {local} is None else {local}.__dict__")
            source = sources[attr]
        else:
            raise TypeError(f"{table.name}.{col.name}: models nested more than one level deep are not supported")
        access = f"{source}[{col.path[-1]!r}]"
        conv = _converter(col, profile)
        if conv is None:
            expr = access
        else:
            name = f"_c{len(namespace)}"
            namespace[name] = conv
            expr = f"(None if (x := {access}) is None else {name}(x))" if col.nullable else f"{name}({access})"
        entries.append(f"{col.name!r}: {expr}")
    lines.append("    row = {" + ", ".join(entries) + "}")
    children = [child for child in tables.values() if child.parent == table.name]
    if table.parent is not None:
        if children:
            raise TypeError(f"{table.name}: item tables cannot have item tables of their own")
        lines.append("    return row")
    else:
        outputs = [f"{table.name!r}: [row]"]
        for child in children:
            name = f"_child{len(namespace)}"
            namespace[name] = _compile_rows(child, tables, profile)
            outputs.append(f"{child.name!r}: [{name}(item, row) for item in v[{child.via!r}]]")
        lines.append("    return {" + ", ".join(outputs) + "}")
    source_text = "\n".join(lines) + "\n"
    exec(compile(source_text, f"<vigie.sinks.ddl rows of {table.name}>", "exec"), namespace)
    builder: RowBuilder = namespace["build"]
    builder.__doc__ = source_text  # the generated code, for debugging
    return builder


class RowPlans:
    """Row extraction for every model on one server profile, planned once."""

    def __init__(self, profile: ServerProfile = MODERN) -> None:
        self.profile = profile
        self._builders: dict[type[BaseModel], RowBuilder] = {
            table.model: _compile_rows(table, TABLES, profile) for table in TABLES.values() if table.parent is None
        }

    def rows_for(self, record: BaseModel) -> dict[str, list[dict[str, Any]]]:
        """The rows ``record`` adds, per table: a declaration gives one ``declarations``
        row and one ``declaration_items`` row per goods item.

        Datetimes are UTC-aware ``datetime`` objects, booleans 0/1, dicts JSON text (or a
        dict for a ``Map`` column), bytes unchanged: text transports encode them.
        """
        try:
            build = self._builders[type(record)]
        except KeyError:
            raise TypeError(f"no table stores {type(record).__name__}") from None
        rows: dict[str, list[dict[str, Any]]] = build(record, None)
        return rows


@lru_cache(maxsize=4)
def _plans_for(modern: bool) -> RowPlans:
    return RowPlans(MODERN if modern else LEGACY)


def rows_for(record: BaseModel, profile: ServerProfile = MODERN) -> dict[str, list[dict[str, Any]]]:
    """Rows of each table ``record`` lands in, ready for a server of ``profile``.

    See :meth:`RowPlans.rows_for`. Plans are cached per profile tier.
    """
    return _plans_for(profile.modern).rows_for(record)


# --- column writers (columnar sinks) ----------------------------------------------------

ColumnBatch = Sequence[Sequence[Any]]
"""One sequence per column, in :attr:`Table.columns` order, each holding that column's values."""

ColumnLists = dict[str, list[list[Any]]]
"""Per table, one list per column of :attr:`Table.columns`: what a columnar sink buffers."""

RowWriter = Callable[[BaseModel], int]
"""``write(record)``: append the record's rows to the column lists; return how many rows."""


def empty_columns() -> ColumnLists:
    """One empty list per column of every table, for :func:`column_writers` to append to."""
    return {name: [[] for _ in table.columns] for name, table in TABLES.items()}


def _compile_writer(table: Table, tables: dict[str, Table], columns: ColumnLists) -> RowWriter:
    """Generate the writer of root ``table`` and its item tables, bound to ``columns``.

    Each value is one call of a list's bound ``append`` on a value looked up in the model's
    ``__dict__`` (where pydantic keeps validated values): no tuple per row and no
    transposition at flush, as values land in their column list straight away. Inherited
    columns of an item table are read once per record, not once per item. The lists must be
    emptied in place (``clear``), never replaced: the writer holds their ``append``.
    """
    if table.parent is not None:
        raise TypeError(f"{table.name}: writers start at a root table")
    namespace: dict[str, Any] = {"_ABSENT": _ABSENT}
    counter = iter(range(10**6))

    def appends_of(target: Table, source: str, indent: str, body: list[str]) -> None:
        """Append statements for ``target``'s columns read from ``source`` (``p_NAME`` for
        inherited ones); nested models are bound to locals first."""
        nested: dict[str, str] = {}
        for index, col in enumerate(target.columns):
            if col.inherited:
                value = f"p_{col.name}"
            elif len(col.path) == 1:
                value = f"{source}[{col.path[0]!r}]"
            elif len(col.path) == 2:
                attr = col.path[0]
                if attr not in nested:
                    local = nested[attr] = f"n{next(counter)}"
                    body.append(f"{indent}{local} = {source}[{attr!r}]")
                    body.append(f"{indent}{local} = _ABSENT if {local} is None else {local}.__dict__")
                value = f"{nested[attr]}[{col.path[1]!r}]"
            else:
                raise TypeError(f"{target.name}.{col.name}: models nested more than one level deep are not supported")
            append = f"_a{next(counter)}"
            namespace[append] = columns[target.name][index].append
            body.append(f"{indent}{append}({value})")

    lines = ["def write(record):", "    v = record.__dict__"]
    # Inherited values first: a record missing one fails before any list grows.
    children = [t for t in tables.values() if t.parent == table.name]
    for child in children:
        if any(t.parent == child.name for t in tables.values()):
            raise TypeError(f"{child.name}: item tables cannot have item tables of their own")
        for col in child.columns:
            if col.inherited:
                source = table.column(col.name)
                if len(source.path) != 1:
                    raise TypeError(f"{child.name}.{col.name}: inherited columns must be top-level fields")
                lines.append(f"    p_{col.name} = v[{source.path[0]!r}]")
    appends_of(table, "v", "    ", lines)
    counted = ["1"]
    for k, child in enumerate(children):
        lines.append(f"    items{k} = v[{child.via!r}]")
        lines.append(f"    for item in items{k}:")
        lines.append("        w = item.__dict__")
        appends_of(child, "w", "        ", lines)
        counted.append(f"len(items{k})")
    lines.append(f"    return {' + '.join(counted)}")
    source_text = "\n".join(lines) + "\n"
    exec(compile(source_text, f"<vigie.sinks.ddl writer of {table.name}>", "exec"), namespace)
    writer: RowWriter = namespace["write"]
    writer.__doc__ = source_text  # the generated code, for debugging
    return writer


def column_writers(columns: ColumnLists) -> dict[type[BaseModel], RowWriter]:
    """The writer of every stored model, appending its rows to ``columns`` (:func:`empty_columns`).

    >>> columns = empty_columns()
    >>> writers = column_writers(columns)
    >>> writers[type(declaration)](declaration)  # doctest: +SKIP
    4
    >>> len(columns["declarations"][0]), len(columns["declaration_items"][0])  # doctest: +SKIP
    (1, 3)

    A record that lacks a field raises ``KeyError`` with some of its values already appended:
    the caller truncates the lists back (see :class:`vigie.sinks.base.RowBuffer`).
    """
    return {table.model: _compile_writer(table, TABLES, columns) for table in TABLES.values() if table.parent is None}


# --- Native blocks (chdb) ---------------------------------------------------------------

_NATIVE_KINDS = {
    Kind.STRING: K_STRING,
    Kind.BYTES: K_BYTES,
    Kind.INT: K_INT,
    Kind.FLOAT: K_FLOAT,
    Kind.BOOL: K_BOOL,
    Kind.DATETIME: K_DATETIME,
    Kind.JSON: K_JSON,
    Kind.ARRAY: K_ARRAY,
    Kind.MAP: K_MAP,
}
_INT_WIDTHS = {"UInt8": 1, "UInt16": 2, "UInt32": 4, "UInt64": 8, "Int64": 8}


def native_type(col: Column, profile: ServerProfile) -> str:
    """The type a Native block gives ``col`` on ``profile``: the column's own, ``LowCardinality``
    left out (ClickHouse builds the dictionary on insert)."""
    return dataclasses.replace(col, low_cardinality=False).clickhouse_type(profile)


def _native_spec(col: Column, profile: ServerProfile) -> tuple[Any, ...]:
    """``col`` as :class:`~vigie.sinks._native_block.NativeBlocks` takes it."""
    kind = Kind.JSON if col.kind is Kind.MAP and not profile.map_type else col.kind
    type_name = native_type(col, profile)
    width = 8
    if kind is Kind.INT:
        width = _INT_WIDTHS[col.int_type]
    elif kind is Kind.DATETIME and not profile.datetime64:
        width = 4  # DateTime: UInt32 seconds
    element = -1 if col.element is None else _NATIVE_KINDS[col.element]
    signed = kind is Kind.INT and col.int_type == "Int64"
    return (col.name, type_name, _NATIVE_KINDS[kind], element, col.nullable, width, signed, col.path, col.inherited)


def native_blocks(profile: ServerProfile = MODERN, serialization_flags: bool = False) -> NativeBlocks:
    """An empty buffer of every table as ClickHouse ``Native`` columns for ``profile``.

    Each written record is encoded at once into its table's columns (and its items' into the
    item table's); :meth:`~vigie.sinks._native_block.NativeBlocks.batch` gives the block an
    ``INSERT ... FORMAT Native`` stores as is, columns in :attr:`Table.columns` order (or, with
    ``serialization_flags``, the body of a native-protocol data packet for a server of
    revision 54454 or later).

    >>> blocks = native_blocks()
    >>> blocks.rows("scores")
    0
    """
    specs = {name: [_native_spec(col, profile) for col in table.columns] for name, table in TABLES.items()}
    roots = {
        table.model: (name, [(child.name, child.via) for child in TABLES.values() if child.parent == name])
        for name, table in TABLES.items()
        if table.parent is None
    }
    return NativeBlocks(specs, roots, serialization_flags)
