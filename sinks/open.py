"""One way for every runtime to open the sink its configuration names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from .base import Sink


def open_sink(spec: str) -> Sink | None:
    """Open the sink ``spec`` names, or return ``None`` for ``none``.

    - ``none`` (or empty): no sink;
    - ``chdb:PATH`` or a bare path: embedded ClickHouse in that directory;
    - ``clickhouse://HOST[:PORT][/DATABASE]``: a ClickHouse server over the native protocol
      (port 9000 and database ``vigie`` by default).

    >>> open_sink("none") is None
    True
    """
    spec = spec.strip()
    if spec.lower() in ("", "none"):
        return None
    if spec.startswith("clickhouse://"):
        from .native_sink import NativeSink

        url = urlsplit(spec)
        database = url.path.strip("/") or "vigie"
        return NativeSink(url.hostname or "127.0.0.1", url.port or 9000, database)
    from .chdb_sink import ChdbSink

    return ChdbSink(Path(spec.removeprefix("chdb:")))
