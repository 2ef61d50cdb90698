"""One way for every runtime to open the sink its configuration names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .base import Sink


def open_sink(spec: str) -> Sink | None:
    """Open the sink ``spec`` names, or return ``None`` for ``none``.

    - ``none`` (or empty): no sink;
    - ``chdb:PATH[?ttl_days=N]`` or a bare path: embedded ClickHouse in that directory;
    - ``clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE][?senders=N&ttl_days=N]``: a
      ClickHouse server over the native protocol (user ``default`` with no password, port 9000
      and database ``vigie`` by default; percent-encode special characters in the password).
      ``senders``: connections inserting a flush's tables side by side (2 by default; a
      flush holds at most a handful of table groups, so more than 4 rarely helps).

    ``ttl_days``: how long tables holding personal data keep rows (default 1826, five years, for
    tables created; ``none``: no limit). Given in the spec, it is applied to existing tables too
    (see :mod:`vigie.sinks.ddl`); without it, an existing store keeps its period.

    >>> open_sink("none") is None
    True
    >>> open_sink("clickhouse://db.example/vigie?batch=5")
    Traceback (most recent call last):
    ValueError: clickhouse:// sink: unknown parameter(s) batch (known: senders, ttl_days)
    >>> sink_options("chdb", "ttl_days=none"), sink_options("clickhouse://", "senders=3&ttl_days=365")
    ({'ttl_days': None, 'enforce_ttl': True}, {'senders': 3, 'ttl_days': 365, 'enforce_ttl': True})
    """
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return None
    if spec.startswith("clickhouse://"):
        from .native_sink import NativeSink

        url = urlsplit(spec)
        database = url.path.strip("/") or "vigie"
        return NativeSink(
            url.hostname or "127.0.0.1",
            url.port or 9000,
            database,
            user=unquote(url.username) if url.username else "default",
            password=unquote(url.password) if url.password else "",
            **sink_options("clickhouse://", url.query),
        )
    from .chdb_sink import ChdbSink

    path, _, query = spec.removeprefix("chdb:").partition("?")
    return ChdbSink(Path(path), **sink_options("chdb", query))  # type: ignore[arg-type]


def sink_options(kind: str, query: str) -> dict[str, int | bool | None]:
    """The keyword arguments a sink spec's query string sets (``senders`` for a server, ``ttl_days``);
    unknown ones refused."""
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    known = ["senders", "ttl_days"] if kind == "clickhouse://" else ["ttl_days"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"{kind} sink: unknown parameter(s) {', '.join(unknown)} (known: {', '.join(known)})")
    options: dict[str, int | bool | None] = {}
    if "senders" in params:
        value = params["senders"][-1]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{kind} sink: senders must be a whole number >= 1, got {value!r}")
        options["senders"] = int(value)
    if "ttl_days" in params:
        value = params["ttl_days"][-1]
        if value.lower() == "none":
            options["ttl_days"] = None
        elif value.isdigit() and int(value) >= 1:
            options["ttl_days"] = int(value)
        else:
            raise ValueError(f"{kind} sink: ttl_days must be a whole number of days >= 1 or 'none', got {value!r}")
        options["enforce_ttl"] = True  # set explicitly: existing tables take it too
    return options
