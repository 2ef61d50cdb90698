"""One way for every runtime to open the sink its configuration names."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import Sink


def open_sink(spec: str) -> Sink | None:
    """Open the sink ``spec`` names, or return ``None`` for ``none``.

    - ``none`` (or empty): no sink;
    - ``chdb:PATH`` or a bare path: embedded ClickHouse in that directory;
    - ``clickhouse://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE]``: a ClickHouse server over the
      native protocol (user ``default`` with no password, port 9000 and database ``vigie`` by
      default; percent-encode special characters in the password).

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
        return NativeSink(
            url.hostname or "127.0.0.1",
            url.port or 9000,
            database,
            user=unquote(url.username) if url.username else "default",
            password=unquote(url.password) if url.password else "",
        )
    from .chdb_sink import ChdbSink

    return ChdbSink(Path(spec.removeprefix("chdb:")))
