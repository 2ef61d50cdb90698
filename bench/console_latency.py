"""Officer console: time from an event handed to the engine to its alert on an officer's live feed.

Embedded mode, as ``vigie console serve`` runs it: the console's in-process engine
(:class:`~vigie.streams.console_app.LiveReplay`, noisy-OR alerting at the console's default
threshold) scores events into chdb, the alert watcher polls the store, and the server-sent
events feed (``/api/stream``) pushes each new alert to a signed-in supervisor's client.

The generated stream is split in two: the first ``--warm-hours`` teach the detectors (scored
flat out, not timed), the rest is handed to the engine at a steady ``--rate`` through the
console's own inbox. For every alert on the feed whose event was handed over in the timed
part, latency = arrival on the SSE client - hand-over. Prints the distribution and records
it in bench/RESULTS.md under "console-latency".

Run: .venv/bin/python bench/console_latency.py [--warm-hours 6] [--live-minutes 60] [--rate 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results import record

from vigie.schemas import encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.console_app import SESSION_COOKIE, ConsoleServices, ConsoleSettings, create_app
from vigie.streams.console_auth import AccountStore

SUPERVISOR = "bench-sue"


class FeedClient(threading.Thread):
    """Reads the SSE feed and notes when each alert (by its subject event id) arrived."""

    def __init__(self, url: str, cookie: str) -> None:
        super().__init__(name="bench-sse", daemon=True)
        self.url, self.cookie = url, cookie
        self.arrivals: dict[str, float] = {}
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._response: httpx.Response | None = None

    def close(self) -> None:
        """Hang up, so the server ends the stream itself before it shuts down."""
        self.stop.set()
        if self._response is not None:
            self._response.close()
        self.join(timeout=10)

    def run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self.stop.is_set():  # the server closing the stream at the end is expected
                raise

    def _read(self) -> None:
        with (
            httpx.Client(cookies={SESSION_COOKIE: self.cookie}, timeout=None) as client,
            client.stream("GET", f"{self.url}/api/stream") as response,
        ):
            response.raise_for_status()
            self._response = response
            kind = ""
            for line in response.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    if kind == "snapshot":
                        self.ready.set()
                    elif kind == "alert":
                        alert = json.loads(line[6:])
                        self.arrivals.setdefault(alert["subject_event_id"], time.monotonic())


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warm-hours", type=float, default=6.0, help="stream hours scored before timing")
    parser.add_argument("--live-minutes", type=float, default=60.0, help="stream minutes handed over timed")
    parser.add_argument("--rate", type=float, default=100.0, help="events per second handed to the engine")
    parser.add_argument("--poll", type=float, default=0.5, help="console poll interval (seconds), as serve's")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    hours = args.warm_hours + args.live_minutes / 60
    config = GeneratorConfig(seed=args.seed, duration_hours=hours)
    events = [event for event, _ in generate(config)]  # in event-time order
    split = config.start + timedelta(hours=args.warm_hours)  # arrivals start at config.start
    warm = [e for e in events if e.event_time < split]
    live = [(e.event_id, encode_event(e)) for e in events if e.event_time >= split]
    print(f"{len(warm):,} warm-up events, {len(live):,} timed events at {args.rate:g}/s")

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        accounts = AccountStore(root / "state" / "accounts.json")
        accounts.add_user(SUPERVISOR, "supervisor", "bench-password-0123", offices=["*"])
        settings = ConsoleSettings(data_dir=root, state_dir=root / "state", poll_s=args.poll)
        from vigie.operators import NoisyOrAlerting, ScoringPipeline

        pipeline = ScoringPipeline(alerting=NoisyOrAlerting(threshold=settings.alert_threshold))
        for event in warm:
            pipeline.process(event)
        sink = ChdbSink(root / "clickhouse", max_delay_s=args.poll)
        services = ConsoleServices.create(settings, sink, accounts=accounts, replay_pipeline=pipeline)
        replay = services.replay
        assert replay is not None
        services.start()
        server, thread, url = serve(create_app(services, manage_lifecycle=False))
        token, _ = services.sessions.create(SUPERVISOR)
        feed = FeedClient(url, token)
        feed.start()
        if not feed.ready.wait(30):
            raise RuntimeError("the feed sent no snapshot")

        handed: dict[str, float] = {}
        interval = 1.0 / args.rate
        start = next_at = time.monotonic()
        for event_id, raw in live:
            wait = next_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            next_at += interval
            handed[event_id] = time.monotonic()
            replay.inbox.put(raw)
        feeding_s = time.monotonic() - start
        settle_until = time.monotonic() + 10 * args.poll + 5
        while time.monotonic() < settle_until and replay.inbox.qsize():
            time.sleep(0.1)
        time.sleep(4 * args.poll + 1)  # the last flush, poll and SSE tick
        feed.close()
        time.sleep(0.5)  # the SSE loop notices the hang-up within one tick
        server.should_exit = True
        thread.join(timeout=15)
        alerts_raised = replay.alerts
        services.close()

    latencies = [feed.arrivals[i] - t for i, t in handed.items() if i in feed.arrivals]
    if not latencies:
        raise SystemExit("no alert reached the feed during the timed part: raise --live-minutes")
    under_2s = sum(1 for x in latencies if x <= 2.0) / len(latencies)
    rows = [
        ("measure", "value"),
        ("events handed to the engine (timed)", f"{len(handed):,} in {feeding_s:.1f} s"),
        ("steady rate handed over", f"{len(handed) / feeding_s:,.0f} events/s"),
        ("alerts on the feed from them", f"{len(latencies):,} (engine raised {alerts_raised:,} in all)"),
        ("latency p50", f"{statistics.median(latencies) * 1000:,.0f} ms"),
        ("latency p95", f"{percentile(latencies, 0.95) * 1000:,.0f} ms"),
        ("latency p99", f"{percentile(latencies, 0.99) * 1000:,.0f} ms"),
        ("latency max", f"{max(latencies) * 1000:,.0f} ms"),
        ("alerts on the feed within 2 s", f"{under_2s:.1%}"),
    ]
    for row in rows:
        print(f"{row[0]:<40} {row[1]}")
    command = "python bench/console_latency.py " + " ".join(sys.argv[1:])
    record(
        "console-latency",
        command.strip(),
        rows,
        [
            f"Embedded mode: in-process engine (noisy-OR, threshold {settings.alert_threshold}) -> chdb -> alert "
            f"watcher (poll {args.poll:g} s) -> /api/stream (SSE, 0.2 s tick) -> an httpx client signed in as "
            "a supervisor (every office), all in one process.",
            "Hand-over: the event's JSON line is put on the console's engine inbox (the path officers' outcomes "
            "take); latency ends when the alert's SSE message is parsed by the client. The sink flushes every "
            f"{args.poll:g} s, so the floor is about one flush plus one poll plus one SSE tick.",
            f"Warm-up: {len(warm):,} events ({args.warm_hours:g} h of stream, seed {args.seed}) scored before "
            "timing so reference prices exist.",
            f"{datetime.now(UTC):%Y-%m-%d}, Python {platform.python_version()}, {platform.machine()}, "
            "2 cores shared with other jobs.",
        ],
    )


if __name__ == "__main__":
    main()
