"""Kafka -> Flink -> Kafka throughput of the PyFlink job on one slot, and start-up to first alert.

Generates a seeded stream, starts a Kafka broker (``vigie.streams.kafka_dev``) unless
``--bootstrap`` is given, creates the topics and publishes the whole stream as a backlog
(the four input topics keyed as :mod:`vigie.streams.topics` says, or ``--layout mixed``: one
topic, one partition). Then it builds the job (:mod:`vigie.streams.flink_job`, bounded,
checkpoints on, exactly-once sinks) and times, with a ``read_uncommitted`` consumer on the
output topics: the Python-side build (gateway JVM, table environment), job submission to
the first score written, to the first alert written and committed (visible to
``read_committed`` readers, i.e. after a checkpoint), and the drain of the backlog (first
score written to the job's end). Records the figures in bench/RESULTS.md under "flink" (the
job's fused layout, the default at one slot) or "flink, split layout".

Run: .venv/bin/python bench/flink.py [--hours 2] [--rate 1500] [--layout topics|mixed]
     [--job-layout fused|split] [--mode thread|process] [--parallelism 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstat import cpu_seconds, stat_fields
from results import record

from vigie.schemas import encode_event
from vigie.schemas.generator import GeneratorConfig, generate
from vigie.streams.flink_job import FlinkJobSettings, build_job, make_pipeline
from vigie.streams.kafka_dev import KafkaBroker
from vigie.streams.topics import INPUT_KINDS, key_for

KIND_OF = {event_type: kind for kind, event_type in INPUT_KINDS.items()}


class OutputWatch:
    """Times the first score and alert on the output topics (uncommitted and committed reads), and
    when the uncommitted scores reach ``half`` (with the Flink JVM's CPU then): the second half
    of a drain runs on a warm JIT, as a long-running job does."""

    def __init__(self, bootstrap: str, scores: str, alerts: str, half: int) -> None:
        self.bootstrap = bootstrap
        self.half = half
        self.seen_scores = 0
        self.half_time: float | None = None
        self.half_cpu = 0.0
        self.topics = [scores, alerts]
        self.scores, self.alerts = scores, alerts
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.counts = {scores: 0, alerts: 0}
        self._stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=("read_uncommitted",), daemon=True),
            threading.Thread(target=self._run, args=("read_committed",), daemon=True),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join()

    def _run(self, isolation: str) -> None:
        from confluent_kafka import Consumer

        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "isolation.level": isolation})  # fmt: skip
        consumer.subscribe(self.topics)
        try:
            while not self._stop.is_set():
                for message in consumer.consume(1000, timeout=0.2):
                    if message.error() is not None:
                        continue
                    now = time.monotonic()
                    topic = message.topic()
                    self.first.setdefault(f"{isolation}:{topic}", now)
                    self.last[f"{isolation}:{topic}"] = now
                    if isolation == "read_committed":
                        self.counts[topic] += 1
                    elif topic == self.scores:
                        self.seen_scores += 1
                        if self.seen_scores == self.half:
                            self.half_time, self.half_cpu = now, flink_cpu_seconds()
        finally:
            consumer.close()


def publish(producer: Any, events: list[Any], topic_of: Callable[[Any], str]) -> None:
    """Send the backlog (keyed as the topics module says) and wait for every acknowledgement."""
    for event in events:
        while True:
            try:
                producer.produce(topic_of(event), key=key_for(event), value=encode_event(event))
                break
            except BufferError:
                producer.poll(0.2)
    if producer.flush(60):
        raise SystemExit("the broker did not acknowledge the whole backlog")


def flink_jvms() -> Iterator[tuple[int, list[str]]]:
    """This process's Flink JVMs (its children running PyFlink's gateway, where the job runs
    locally): each one's pid and :func:`procstat.stat_fields`."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_fields(stat)
            if int(fields[1]) == os.getpid() and b"pyflink" in (stat.parent / "cmdline").read_bytes():
                yield int(stat.parent.name), fields
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile


def flink_cpu_seconds() -> float:
    """User + system CPU seconds so far of this process's Flink JVMs (the gateway running the job,
    its Python functions included in thread mode): steadier than wall time on a shared machine."""
    return sum(cpu_seconds(fields) for _, fields in flink_jvms())


PYTHON_STAGES = ("parse", "score", "pipeline")
"""The job's stages that run Python functions (``.name(...)`` in vigie.streams.flink_job): a task thread
is named after its operator chain, which begins with the stage's name."""


def thread_group(name: str) -> str:
    """The group a JVM thread's name (``/proc/.../comm``, at most 15 characters) belongs to.

    >>> [thread_group(n) for n in ["score -> (Map -", "C2 CompilerThre", "C1 CompilerThre", "GC Thread#3"]]
    ['task: score', 'JIT compiler', 'JIT compiler', 'garbage collector']
    >>> [thread_group(n) for n in ["G1 Conc#0", "kafka-producer-", "Source Data Fet", "Thread-12", "java"]]
    ['garbage collector', 'Kafka clients', 'Kafka clients', 'other', 'other']
    """
    for stage in PYTHON_STAGES:
        if name == stage or name.startswith(stage + " "):
            return f"task: {stage}"
    if "CompilerThre" in name:
        return "JIT compiler"
    if name.startswith(("GC Thread", "G1 ")):
        return "garbage collector"
    if name.startswith(("kafka-", "Source Data Fet")):
        return "Kafka clients"
    return "other"


class ThreadCpu:
    """CPU seconds of the threads of the Flink JVMs from :meth:`start` on, by :func:`thread_group`.

    Polls ``/proc/PID/task`` every ``interval`` seconds and keeps each thread's last reading, so a
    thread that ends between two polls (a task thread when the job finishes) loses at most one
    interval. Why: the job's CPU alone does not say which thread bounds the drain; one thread at
    100% of the drain's wall time does (a slot runs its chain on one thread)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._seen: dict[tuple[int, int], tuple[str, float, float]] = {}  # (pid, tid) -> name, first, last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ThreadCpu:
        self._poll()  # the baseline of the threads already running
        self._thread.start()
        return self

    def stop(self) -> dict[str, tuple[float, float]]:
        """Stop polling; by group, largest first: CPU seconds, and those of its busiest thread."""
        self._stop.set()
        self._thread.join()
        self._poll()
        groups: dict[str, tuple[float, float]] = {}
        for name, first, last in self._seen.values():
            group = thread_group(name)
            cpu, busiest = groups.get(group, (0.0, 0.0))
            groups[group] = (cpu + last - first, max(busiest, last - first))
        return dict(sorted(groups.items(), key=lambda item: -item[1][0]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def _poll(self) -> None:
        for pid, _ in flink_jvms():
            for task in Path(f"/proc/{pid}/task").glob("[0-9]*"):
                try:
                    name = (task / "comm").read_text().strip()
                    cpu = cpu_seconds(stat_fields(task / "stat"))
                except (OSError, IndexError):
                    continue  # gone meanwhile
                key = (pid, int(task.name))
                known = self._seen.get(key)
                self._seen[key] = (name, known[1] if known else cpu, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=1500.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--layout", choices=("topics", "mixed"), default="topics")
    parser.add_argument("--mode", choices=("thread", "process"), default="thread")
    parser.add_argument("--job-layout", choices=("fused", "split"), default="fused", help="the job's layout")
    parser.add_argument("--checkpoint-interval", type=float, default=5.0, help="seconds")
    parser.add_argument("--detectors", default="", help="comma-separated; empty: the pipeline's defaults")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    parser.add_argument("--parallelism", type=int, default=1, help="slots (split layout above 1); input partitions")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    if args.parallelism > 1 and args.job_layout == "fused":
        parser.error("the fused layout runs on one slot: use --job-layout split with --parallelism above 1")
    slots = args.parallelism

    events = [e for e, _ in generate(GeneratorConfig(seed=args.seed, duration_hours=args.hours,
                                                     rate_per_hour=args.rate))]  # fmt: skip
    n = len(events)
    work = Path(tempfile.mkdtemp(prefix="vigie-bench-flink-"))
    broker = None if args.bootstrap else KafkaBroker(work / "kafka", heap="1g").start()
    bootstrap = args.bootstrap or broker.bootstrap_servers  # type: ignore[union-attr]
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    mixed = prefix + "events" if args.layout == "mixed" else None
    detectors = tuple(d for d in args.detectors.split(",") if d)
    settings = FlinkJobSettings(
        bootstrap=bootstrap, prefix=prefix, input_topic=mixed, bounded=True, execution_mode=args.mode,
        checkpoint_interval_ms=int(args.checkpoint_interval * 1000), checkpoint_dir=work / "checkpoints",
        log_dir=work / "flink-log", detectors=detectors, group_id=f"bench-{prefix}",
        transactional_id_prefix=f"bench-{prefix}", layout=args.job_layout, parallelism=slots,
    )  # fmt: skip
    try:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        inputs = settings.input_topics
        outputs = [settings.names.scores, settings.names.alerts, settings.names.dead_letter]
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topics = [NewTopic(t, slots, 1) for t in inputs] + [NewTopic(t, 1, 1) for t in outputs]
        for future in admin.create_topics(topics).values():
            future.result(30)
        started = time.perf_counter()
        publish(Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "partitioner": "murmur2_random"}),
                events, lambda event: mixed or prefix + KIND_OF[event.event_type])  # fmt: skip
        publish_s = time.perf_counter() - started

        reference = make_pipeline(settings)
        started = time.perf_counter()
        expected_scores = sum(len(reference.process(event).scores) for event in events)
        in_process = n / (time.perf_counter() - started)

        watch = OutputWatch(bootstrap, settings.names.scores, settings.names.alerts, expected_scores // 2)
        watch.start()
        t0 = time.monotonic()
        job = build_job(settings)
        t_built = time.monotonic()
        cpu_before = flink_cpu_seconds()  # the gateway's start-up and the job graph's build
        threads = ThreadCpu().start()
        client = job.submit()
        t_submitted = time.monotonic()
        client.get_job_execution_result().result()  # returns when the bounded job has finished, raises if it failed
        t_end = time.monotonic()
        job_cpu_s = flink_cpu_seconds() - cpu_before
        thread_cpu = threads.stop()
        time.sleep(2.0)  # let the committed reader catch up
        watch.stop()

        first_score = watch.first[f"read_uncommitted:{settings.names.scores}"]
        first_alert = watch.first.get(f"read_uncommitted:{settings.names.alerts}")
        committed_alert = watch.first.get(f"read_committed:{settings.names.alerts}")
        last_score = watch.last[f"read_uncommitted:{settings.names.scores}"]
        drain_s = last_score - first_score
        rate = n / drain_s
        # Second half: from half the scores out to the last (events taken as spread like their scores).
        warm_rate = warm_cpu_rate = float("nan")
        if watch.half_time is not None and last_score > watch.half_time:
            warm_rate = (n / 2) / (last_score - watch.half_time)
            warm_cpu_rate = (n / 2) / max(1e-9, cpu_before + job_cpu_s - watch.half_cpu)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    def since(t: float | None) -> str:
        return f"{t - t_submitted:.1f} s" if t is not None else "none"

    print(
        f"{n:,} events; build {t_built - t0:.1f} s; first score {since(first_score)}, "
        f"first alert {since(first_alert)} (committed {since(committed_alert)}); "
        f"drain {drain_s:.1f} s = {rate:,.0f} events/s; job CPU {job_cpu_s:.1f} s = {n / job_cpu_s:,.0f} events per "
        f"CPU-second; second half {warm_rate:,.0f} events/s, {warm_cpu_rate:,.0f} per CPU-second; "
        f"in process {in_process:,.0f} events/s"
    )
    job_s = t_end - t_submitted
    tasks = {group: value for group, value in thread_cpu.items() if group.startswith("task: ")}
    for group, (cpu, busiest) in tasks.items():
        print(f"{group}: {cpu:.1f} s CPU = {cpu / n * 1e6:,.0f} us/event; its busiest thread "
              f"{busiest:.1f} s, busy {busiest / job_s:.0%} of submit to job end")  # fmt: skip
    print("threads: " + ", ".join(f"{group} {cpu:.1f} s" for group, (cpu, _) in thread_cpu.items()))
    if args.no_record:
        return
    load = os.getloadavg()[0]
    slot_text = f"{slots} slot" + ("s" if slots > 1 else "")
    cores_used = job_cpu_s / max(1e-9, t_end - t_submitted)
    committed_scores, committed_alerts = watch.counts[settings.names.scores], watch.counts[settings.names.alerts]
    fused = args.job_layout == "fused"
    record(
        ("flink" if fused else "flink, split layout") + (f", parallelism {slots}" if slots > 1 else ""),
        command=(
            f".venv/bin/python bench/flink.py --hours {args.hours:g} --rate {args.rate:g} --layout {args.layout} "
            f"--job-layout {args.job_layout} --mode {args.mode} --checkpoint-interval {args.checkpoint_interval:g}"
            + (f" --detectors {args.detectors}" if args.detectors else "")
            + (f" --parallelism {slots}" if slots > 1 else "")
        ),
        table=[
            ("measure", "value"),
            ("events (backlog on " + ("one topic" if mixed else "the four input topics") + ")", f"{n:,}"),
            ("scores / alerts committed", f"{committed_scores:,} / {committed_alerts:,}"),
            ("build (gateway JVM, table environment, job graph)", f"{t_built - t0:.1f} s"),
            ("submit to first score written", since(first_score)),
            ("submit to first alert written", since(first_alert)),
            ("submit to first alert committed (read_committed)", since(committed_alert)),
            (f"Kafka -> Flink -> Kafka, backlog drain, {slot_text}", f"{rate:,.0f} events/s"),
            *([("per slot", f"{rate / slots:,.0f} events/s")] if slots > 1 else []),
            ("conservative: events / (submit to job end)", f"{n / (t_end - t_submitted):,.0f} events/s"),
            ("events per CPU-second of the Flink JVM, submit to job end", f"{n / job_cpu_s:,.0f}"),
            ("second half of the drain (warm JIT): events/s", f"{warm_rate:,.0f}"),
            ("second half: events per CPU-second of the Flink JVM", f"{warm_cpu_rate:,.0f}"),
            *[
                (
                    f"`{group[6:]}` stage's threads: CPU per event; busiest thread's busy share of submit to job end",
                    f"{cpu / n * 1e6:,.0f} us; {busiest / job_s:.0%}",
                )
                for group, (cpu, busiest) in tasks.items()
            ],
            ("same events in process (`ScoringPipeline.process`, no I/O)", f"{in_process:,.0f} events/s"),
        ],
        notes=[
            f"Parallelism {slots} ({slot_text}; input topics of {slots} partition{'s' if slots > 1 else ''}), "
            f"python.execution-mode={args.mode}, checkpoints every "
            f"{args.checkpoint_interval:g} s, exactly-once Kafka sinks, bounded source; detectors: "
            + (", ".join(detectors) or "the pipeline's defaults")
            + f", fusion {settings.fusion}.",
            "Drain: from the first score written to the last (as a read_uncommitted consumer sees them); "
            f"the job then took {t_end - last_score:.1f} s more to end (final checkpoint, commit, shutdown). "
            "CPU: user + system time of the Flink JVM (Python functions included, thread mode) from submission "
            "to the job's end, start-up and checkpoints included; unlike wall time it does not depend on what "
            "else the machine runs. Second half: from the moment half as many score messages as the in-process "
            "pipeline gives were written to the last one, with the JVM's CPU from then to the job's end; the JIT "
            "compiler, a third of the JVM's CPU in the first 30 s, is down to a few percent after a minute, so "
            "this is closer to what a long-running job does. "
            + (
                "Fused layout: each event is one record into one Python function that decodes it and runs the "
                "in-process pipeline (keyed state: a log entry per event, a snapshot every "
                f"{settings.snapshot_every:,} events)."
                if fused
                else "Split layout: every event crosses parse, score (keyed state: a log entry per unit, a snapshot "
                "every 100 entries of a key) and the single pipeline subtask (fusion, ENS link, runtime-fed "
                "detectors), which bounds the rate: the same code as the in-process pipeline plus Flink's "
                "per-record and state costs."
            ),
            "Two changes of 2026-11-24. Keys: every keyed stage reads its key from the first field of its records "
            "with Flink's own selector (the fused stage's key is a column of the source query); before, PyFlink's "
            "key_by with a Python key selector put one more Python function before each keyed stage, every record "
            "(an event's bytes, a unit) crossing into Python and back for its key. Headers: a score's or an alert's "
            "vigie.id header is built by the insert into the Kafka sink from an id column; before, the Python "
            "function built a header map per message, about 25 us each between pemja, the conversion to table "
            "rows and the sink. The last one-slot runs before both: "
            + (
                "1,803 events/s drained, 2,195 in the second half (1,879 per JVM CPU-second)."
                if fused
                else "410 events/s drained, 459 in the second half (397 per JVM CPU-second)."
            ),
            "Later on 2026-11-24 the Kafka sinks' producers batch up to 1 MiB and linger 100 ms with exactly-once "
            "sinks (vigie.streams.flink_job.SINK_BATCH_BYTES; a reader sees the records at the commit anyway): "
            "with the client's 16 KB and 5 ms the score messages left in small produce requests, about 100 us "
            "of the Flink JVM per message (on a 32,067-event backlog the job took 23-28 s into Kafka, 14.7 s "
            "into a blackhole sink, 16.5-17 s with the batching); and scores and alerts are written as JSON by "
            "orjson (vigie.schemas.encode_event, the same bytes as pydantic's in about half the time). The last "
            "runs before both: "
            + (
                "2,203 events/s drained, 3,150 in the second half (2,723 per JVM CPU-second)."
                if fused
                else "789 events/s drained on one slot, 784 in the second half (675 per JVM CPU-second); "
                "674 on two slots."
            ),
            *(
                [
                    f"{slot_text} on {os.cpu_count()} cores: the Flink JVM used {cores_used:.1f} cores on average from "
                    "submission to the job's end (the broker and the bench's consumers share the machine); the "
                    "parse and score stages run on every slot, the pipeline stage on one."
                ]
                if slots > 1
                else []
            ),
            "Threads of the Flink JVM, CPU from submission to the job's end (bench/flink.py ThreadCpu, "
            "/proc every 0.5 s): "
            + ", ".join(f"{group} {cpu:.1f} s" for group, (cpu, _) in thread_cpu.items())
            + ". A slot runs its operator chain on one thread (a stage's Python function, the conversions "
            "around it and the operators chained to it, the Kafka sinks' record serialisation included): a "
            "stage thread busy nearly all the time bounds the drain, and its CPU per event is what the slot "
            "spends per event.",
            f"Publish (plain producer, no validation): {n / publish_s:,.0f} events/s.",
            f"{datetime.now(UTC).date()}, Python {platform.python_version()}, {platform.machine()}, "
            f"{os.cpu_count()} cores shared with the broker (JVM), the Flink JVM and the bench's consumers; "
            f"1-minute load average {load:.1f} at the end.",
        ],
    )


if __name__ == "__main__":
    main()
