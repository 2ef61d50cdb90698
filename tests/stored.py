"""Records read back from a sink's tables into their models: the round-trip tests' reader."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

from vigie.sinks.base import Sink
from vigie.sinks.ddl import TABLES, Kind, Table


def _decode(kind: Kind, value: Any) -> Any:
    """A column's value as the model holds it, whichever sink's ``query`` read it."""
    if value is None:
        return None
    if (kind is Kind.JSON or kind is Kind.MAP) and isinstance(value, str):  # MAP is JSON text on 18.16
        return orjson.loads(value)
    if kind is Kind.BYTES and isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")  # how chdb's query() hands back non-UTF-8
    return value


def _nest(table: Table, row: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    flattened: set[str] = set()
    for col in table.columns:
        if col.inherited:
            continue
        target = data
        for part in col.path[:-1]:
            flattened.add(part)
            target = target.setdefault(part, {})
        target[col.path[-1]] = _decode(col.kind, row[col.name])
    for key in flattened:  # a flattened optional model whose columns are all NULL was absent
        if all(v is None for v in data[key].values()):
            data[key] = None
    return data


def root_table(record: BaseModel) -> Table:
    """The table a record of this type is stored in (not an item table)."""
    return next(t for t in TABLES.values() if t.model is type(record) and t.parent is None)


def read_back(sink: Sink, record: BaseModel) -> BaseModel:
    """Rebuild ``record`` from the row stored under its id (and its item rows), latest version."""
    table = root_table(record)
    id_column = table.key[0]
    record_id = getattr(record, id_column)
    database = getattr(sink, "database", "vigie")
    rows = sink.query(f"SELECT * FROM {database}.{table.name} FINAL WHERE {id_column} = '{record_id}'")
    assert len(rows) == 1, rows
    data = _nest(table, rows[0])
    for child in TABLES.values():
        if child.parent == table.name:
            assert child.via is not None
            items = sink.query(
                f"SELECT * FROM {database}.{child.name} FINAL WHERE event_id = '{record_id}' ORDER BY item_number"
            )
            data[child.via] = [_nest(child, item) for item in items]
    return table.model.model_validate(data)
