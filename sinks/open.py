"""One way for every runtime to open the sink its configuration names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .base import Sink


def open_sink(spec: str) -> Sink | None:
    """Open the sink ``spec`` names, or return ``None`` for ``none``.

    - ``none`` (or empty): no sink;
    - ``chdb:PATH`` or a bare path: embedded ClickHouse in that directory;
    - ``clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE][?senders=N]``: a ClickHouse
      server over the native protocol (user ``default`` with no password, port 9000 and
      database ``vigie`` by default; percent-encode special characters in the password).
      ``senders``: connections inserting a flush's tables side by side (2 by default; a
      flush holds at most a handful of table groups, so more than 4 rarely helps).

    >>> open_sink("none") is None
    True
    >>> open_sink("clickhouse://db.example/vigie?batch=5")
    Traceback (most recent call last):
    ValueError: clickhouse:// sink: unknown parameter(s) batch (known: senders)
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
            **_url_options(url.query),
        )
    from .chdb_sink import ChdbSink

    return ChdbSink(Path(spec.removeprefix("chdb:")))


def _url_options(query: str) -> dict[str, int]:
    """The keyword arguments a ``clickhouse://`` URL's query string sets; unknown ones refused."""
    params = parse_qs(query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(params) - {"senders"})
    if unknown:
        raise ValueError(f"clickhouse:// sink: unknown parameter(s) {', '.join(unknown)} (known: senders)")
    options: dict[str, int] = {}
    if "senders" in params:
        value = params["senders"][-1]
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"clickhouse:// sink: senders must be a whole number >= 1, got {value!r}")
        options["senders"] = int(value)
    return options
