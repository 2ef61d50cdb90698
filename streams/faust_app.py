"""Faust workers: the scoring pipeline on Kafka, state in changelog-backed tables.

Run one or more workers of one deployment (they share the partitions of a consumer group)::

    vigie faust topics --bootstrap 127.0.0.1:9092 --partitions 3     # optional: the worker creates them too
    vigie faust worker --bootstrap 127.0.0.1:9092 --sink chdb:vigie-data/clickhouse

(``python -m vigie.streams.faust_app worker ...`` is the same command.)

Topology
--------
Three agents per worker, each consuming in batches (``stream.take_events(n, within=...)``)
and calling the runtime-free stages of :mod:`vigie.streams.faust_stages` (read its docstring
for the topology and why):

1. ``ingest`` reads the four input topics, validates each message with the shared codec,
   sends what fails to the dead-letter topic, writes accepted events to the sink, keeps each
   ENS in the ``ens-links`` table, repartitions the detectors' units by *state key* on the
   internal ``units`` topic, and forwards each event to the internal ``fusion`` topic;
2. ``score`` reads ``units``: each state key lives in one partition, its operator state in
   one table per detector (``state-<detector>``); it runs ``score_one`` then ``learn_one``
   and sends each unit's score to ``fusion``;
3. ``fuse`` reads ``fusion`` (one partition: the pipeline's global state), gathers each
   event with its unit scores, runs the pipeline on it (fusion, alert budget, outcome join;
   the detectors stand in with the gathered scores), emits scores and alerts to Kafka and the
   sink, and sends outcome feedback back to ``units``. Its state is checkpointed into the
   ``fusion`` table every ``fusion_checkpoint_s``; its offsets are committed only then
   (``stream.noack_take`` and explicit acks), so a restart resumes exactly from a checkpoint.

Why repartition: a declaration's items touch several state keys (undervaluation keeps
state per origin and CN chapter, the ENS detector per HS chapter), so no input key can
co-locate all the state an event needs; keying the input by state key would also make the
integrators depend on detector internals. The detectors (most of the work and of the
state) scale with the partitions; the fusion is one partition, as it is one model.

State: Faust tables with ``store='memory://'`` and compacted changelog topics
(``<app id>-<table>-changelog``), restored when a worker starts or takes over a partition.
Each write names its changelog partition (the partition of the message owning the key), so
batches that mix partitions stay correct. An operator state is read once per batch and
written back once per batch. Topics and changelogs all have the same number of partitions,
so Faust co-assigns partition ``p`` of everything to one worker.

Delivery: at least once. The producer is flushed before offsets are committed; the sink is
flushed at the end of each batch, before the batch is acknowledged. If producing or the
sink fails, the worker exits at once (code 70) *without* committing, and is restarted by its
supervisor: the batch is read again. Replays are absorbed (see :mod:`~vigie.streams.faust_stages`):
ids are deterministic, states do not learn a replayed unit twice, fusion restarts from its
checkpoint. A replay may send the same score or alert (same id) to Kafka twice; the sink
keeps one (``ReplacingMergeTree``, read with ``FINAL``).

Dead letters: the message value is the original bytes, unchanged; the key is the dead-letter
id; headers ``vigie.reason``, ``vigie.field``, ``vigie.source`` (``kafka:TOPIC:PARTITION:OFFSET``),
``vigie.topic``, ``vigie.partition``, ``vigie.offset``, ``vigie.dead-letter-id``,
``vigie.received-at``, ``vigie.raw-size``. The sink's ``dead_letters`` table gets the same.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import faust
import typer
from aiokafka.partitioner import murmur2

from vigie.operators import NoisyOrAlerting, ScoringPipeline
from vigie.sinks.base import Sink
from vigie.sinks.open import open_sink

from .faust_stages import FUSION_KEY, FuseStage, IngestStage, InMessage, KeyValueStore, ScoreStage, StageOutput
from .topics import DEFAULT_PREFIX, LARGE_MESSAGE_BYTES, TopicNames, create_topics, describe_partitions

__all__ = ["FAIL_STOP_EXIT_CODE", "PartitionedTable", "TableStore", "VigieFaustApp", "WorkerSettings", "faust_app_cli"]

log = logging.getLogger("vigie.streams.faust")

FAIL_STOP_EXIT_CODE = 70
"""Exit code of a worker that stopped because Kafka or the sink failed mid-batch."""


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker connects and batches. ``partitions`` None: take the topics' count."""

    bootstrap: str = "127.0.0.1:9092"
    prefix: str = DEFAULT_PREFIX
    app_id: str = "vigie-scoring"
    partitions: int | None = None
    replication_factor: int = 1
    create_topics: bool = True
    batch_size: int = 500
    batch_within_s: float = 0.25
    sink: str = "none"
    """``none``, or ``chdb:PATH`` (embedded ClickHouse; one worker process per path)."""
    threshold: float | None = None
    """None: the pipeline's default (learned) fusion; a number: noisy-OR alerting at that threshold."""
    fusion_checkpoint_s: float = 5.0
    """Seconds between checkpoints of the fusion state; the fusion offsets are committed at that pace."""
    data_dir: Path = Path("vigie-data/faust")
    commit_interval_s: float = 1.0
    session_timeout_s: float = 30.0
    """A crashed worker's partitions move to the others after this long (Kafka's minimum is 6 s)."""
    gather_timeout_s: float = 900.0
    """An event still missing unit scores after this long is dropped (logged) so fusion goes on."""
    log_level: str = "info"
    extra_faust: dict[str, Any] = field(default_factory=dict)


class PartitionedTable(faust.Table):  # type: ignore[misc]
    """A Faust table whose writes say which changelog partition they go to.

    Faust sends a write to the partition of the event being processed, which inside a
    ``take_events`` batch is not the event that owns the key. :class:`TableStore` sets
    :attr:`write_partition` around each write instead.
    """

    write_partition: int | None = None

    def partition_for_key(self, key: Any) -> int | None:
        if self.write_partition is not None:
            return self.write_partition
        partition: int | None = super().partition_for_key(key)
        return partition


class TableStore(KeyValueStore):
    """:class:`~vigie.streams.faust_stages.KeyValueStore` over a :class:`PartitionedTable` of bytes."""

    def __init__(self, table: PartitionedTable) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self.table.get(key)
        return value

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.table.write_partition = partition
        try:
            self.table[key] = value
        finally:
            self.table.write_partition = None

    def delete(self, partition: int, key: bytes) -> None:
        self.table.write_partition = partition
        try:
            if key in self.table:
                del self.table[key]
        finally:
            self.table.write_partition = None

    def keys(self) -> list[bytes]:
        return list(self.table.keys())


class _Worker(faust.Worker):  # type: ignore[misc]
    """A Faust worker whose libraries log at INFO at most: their DEBUG records format every message."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for name in ("faust", "aiokafka", "mode"):
            logging.getLogger(name).setLevel(max(level, logging.INFO))


def _fail_stop(what: str, exc: BaseException) -> None:
    """Exit now, without committing: the unacknowledged batch will be read again."""
    log.critical("%s failed (%r): exiting without committing offsets; restart the worker", what, exc, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(FAIL_STOP_EXIT_CODE)


class VigieFaustApp:
    """The Faust app of one worker: topics, tables, the three agents, the sink.

    ``partitions`` must be the partition count of the deployment's topics (see
    :func:`prepare_topics`). ``sink`` receives events, dead letters, scores and alerts
    (None: Kafka only).
    """

    def __init__(
        self,
        settings: WorkerSettings,
        partitions: int,
        *,
        pipeline: ScoringPipeline | None = None,
        sink: Sink | None = None,
    ) -> None:
        self.settings = settings
        self.partitions = partitions
        self.names = TopicNames(settings.prefix)
        if pipeline is None:
            alerting = NoisyOrAlerting(threshold=settings.threshold) if settings.threshold is not None else None
            pipeline = ScoringPipeline(alerting=alerting)
        self.pipeline = pipeline
        self.sink = sink
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.app = faust.App(
            settings.app_id,
            broker=[f"kafka://{host}" for host in settings.bootstrap.split(",")],
            store="memory://",
            datadir=str(settings.data_dir),
            topic_replication_factor=settings.replication_factor,
            topic_partitions=partitions,
            topic_allow_declare=True,
            web_enabled=False,
            producer_max_request_size=LARGE_MESSAGE_BYTES,
            producer_max_batch_size=1024 * 1024,
            producer_linger=0.005,
            consumer_auto_offset_reset="earliest",
            broker_commit_interval=settings.commit_interval_s,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 4),
            stream_recovery_delay=0.1,
            stream_ack_exceptions=False,
            stream_wait_empty=False,  # unacknowledged fusion messages are replayed from the checkpoint
            processing_guarantee="at_least_once",
            **settings.extra_faust,
        )
        self.topics = {name: self._raw_topic(name) for name in [*self.names.inputs, *self._outputs()]}

        self.ens_links = self._table("ens-links")
        self.states = {d.name: self._table(f"state-{d.name}") for d in self.pipeline.detectors}
        self.checkpoints = self._table("fusion")

        self.ingest = IngestStage(
            self.names, self.pipeline.detectors, TableStore(self.ens_links), owned=self._owned(self.names.ens)
        )
        self.score = ScoreStage(self.names, self.pipeline.detectors, {n: TableStore(t) for n, t in self.states.items()})
        self.fuse = FuseStage(
            self.names, self.pipeline, TableStore(self.checkpoints), gather_timeout_s=settings.gather_timeout_s
        )
        self.fusion_partition = (murmur2(FUSION_KEY) & 0x7FFFFFFF) % partitions
        self.batches = 0
        self.checkpoints_taken = 0
        self.app.on_partitions_assigned.connect(self._on_assigned)
        self._agents()

    def stats(self) -> str:
        """Counters worth a log line: batches, replays absorbed, duplicates ignored."""
        return (
            f"{self.batches} batches; {self.fuse.completed} events fused; {self.checkpoints_taken} fusion "
            f"checkpoint(s); {self.score.replayed_units} replayed unit(s) scored without learning; "
            f"{self.score.feedback_units} feedback unit(s) learned; {self.fuse.skipped} fusion message(s) already in "
            f"the restored checkpoint; {self.fuse.duplicates} duplicate(s) ignored"
        )

    async def _on_assigned(self, sender: Any, assigned: Any = (), **kwargs: Any) -> None:
        """After a rebalance: live operator states may be stale; fusion too if it moved away."""
        self.score.invalidate()
        if not any(tp.topic == self.names.fusion and tp.partition == self.fusion_partition for tp in assigned):
            self.fuse.invalidate()

    def _outputs(self) -> list[str]:
        n = self.names
        return [n.units, n.fusion, n.scores, n.alerts, n.dead_letter]

    def _raw_topic(self, name: str) -> Any:
        return self.app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.partitions,
        )

    def _table(self, name: str) -> PartitionedTable:
        table = PartitionedTable(
            self.app,
            name=name,
            beacon=self.app.tables.beacon,
            key_type=bytes,
            value_type=bytes,
            partitions=self.partitions,
            extra_topic_configs={"max.message.bytes": str(LARGE_MESSAGE_BYTES)},
        )
        self.app.tables.add(table)
        return table

    def _owned(self, topic: str) -> Callable[[], set[int] | None]:
        def owned() -> set[int] | None:
            try:
                assignment = self.app.consumer.assignment()
            except Exception:
                return None
            return {tp.partition for tp in assignment if tp.topic == topic}

        return owned

    def _agents(self) -> None:
        size, within = self.settings.batch_size, self.settings.batch_within_s
        names = self.names
        inputs = self.app.topic(
            *names.inputs, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

        async def ingest(stream: Any) -> None:
            async for events in stream.take_events(size, within=within):
                await self._run("ingest", self.ingest.process, events)

        async def score(stream: Any) -> None:
            async for events in stream.take_events(size, within=within):
                await self._run("score", self.score.process, events)

        async def fuse(stream: Any) -> None:
            # Acknowledged only once a checkpoint covers them: a restart resumes from there.
            unacked: list[Any] = []
            last = time.monotonic()
            async for events in stream.noack_take(size, within=within):
                await self._run("fuse", self.fuse.process, events)
                unacked.extend(events)
                if time.monotonic() - last >= self.settings.fusion_checkpoint_s or len(unacked) >= 50_000:
                    began = time.perf_counter()
                    written = self.fuse.checkpoint()
                    self.checkpoints_taken += 1
                    for event in unacked:
                        await stream.ack(event)
                    log.debug("fusion checkpoint %d: %d bytes in %.0f ms, %d messages acknowledged",
                              self.fuse.seq, written, 1000 * (time.perf_counter() - began), len(unacked))
                    unacked.clear()
                    last = time.monotonic()

        self.app.agent(inputs, name="vigie-ingest")(ingest)
        self.app.agent(self.topics[names.units], name="vigie-score")(score)
        self.app.agent(self.topics[names.fusion], name="vigie-fuse")(fuse)

    async def _run(self, stage: str, process: Callable[[list[InMessage]], StageOutput], events: list[Any]) -> None:
        batch = [
            InMessage(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events
        ]
        began = time.perf_counter()
        output = process(batch)
        computed = time.perf_counter()
        try:
            for message in output.messages:
                await self.topics[message.topic].send(
                    key=message.key, value=message.value, headers=message.headers or None
                )
            if self.sink is not None and output.records:
                self.sink.write(output.records)
                self.sink.flush()
        except Exception as exc:
            _fail_stop(f"{stage}: producing or writing to the sink", exc)
        self.batches += 1
        log.debug(
            "%s: %d in, %d out, %d records; %.1f ms computing, %.1f ms producing and sinking",
            stage, len(batch), len(output.messages), len(output.records),
            1000 * (computed - began), 1000 * (time.perf_counter() - computed),
        )


# --------------------------------------------------------------------------------------------
# Running a worker
# --------------------------------------------------------------------------------------------


def prepare_topics(settings: WorkerSettings) -> int:
    """Create missing topics (when asked) and return the deployment's partition count."""
    names = TopicNames(settings.prefix)
    if settings.create_topics:
        counts = create_topics(
            settings.bootstrap,
            names,
            settings.partitions or 3,
            replication_factor=settings.replication_factor,
        )
    else:
        wanted = [names.name(kind) for kind in names.all_kinds()]
        counts = describe_partitions(settings.bootstrap, wanted)
        missing = sorted(set(wanted) - set(counts))
        if missing:
            raise RuntimeError(f"missing topics {missing}: run `vigie faust topics` or pass --create-topics")
    found = set(counts.values())
    if len(found) != 1:
        raise RuntimeError(f"the deployment's topics must all have the same partition count: {counts}")
    (partitions,) = found
    if settings.partitions and settings.partitions != partitions:
        log.warning("topics have %d partitions (not %d): using %d", partitions, settings.partitions, partitions)
    return partitions


def run_worker(settings: WorkerSettings) -> None:
    """Prepare the topics, open the sink, and run a worker until SIGTERM/SIGINT."""
    partitions = prepare_topics(settings)
    sink = open_sink(settings.sink)
    try:
        vigie_app = VigieFaustApp(settings, partitions, sink=sink)
        worker = _Worker(vigie_app.app, loglevel=settings.log_level, quiet=True)
        try:
            worker.execute_from_commandline()
        except SystemExit as done:
            if done.code not in (0, None):
                raise
        finally:
            log.info("stopped: %s", vigie_app.stats())
    finally:
        if sink is not None:
            sink.close()


# --------------------------------------------------------------------------------------------
# vigie faust ...
# --------------------------------------------------------------------------------------------

faust_app_cli = typer.Typer(help="Kafka runtime: Faust workers scoring the input topics.", no_args_is_help=True)

Bootstrap = Annotated[str, typer.Option("--bootstrap", "-b", help="Kafka bootstrap servers, HOST:PORT.")]
Prefix = Annotated[str, typer.Option(help="Topic name prefix of the deployment.")]


@faust_app_cli.command("worker")
def worker_command(
    bootstrap: Bootstrap = "127.0.0.1:9092",
    prefix: Prefix = DEFAULT_PREFIX,
    app_id: Annotated[str, typer.Option(help="Faust app id: consumer group and changelog names.")] = "vigie-scoring",
    sink: Annotated[str, typer.Option(help="'none' or 'chdb:PATH' (embedded ClickHouse).")] = "none",
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Partitions of topics created now (default: existing count, or 3).")
    ] = None,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
    create: Annotated[bool, typer.Option("--create-topics/--no-create-topics", help="Create missing topics.")] = True,
    batch_size: Annotated[int, typer.Option(min=1, help="Messages per batch (stream.take_events).")] = 500,
    batch_within: Annotated[float, typer.Option(min=0.001, help="Seconds to wait for a batch to fill.")] = 0.25,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Use noisy-OR alerting at this fused risk (default: the learned fusion)."),
    ] = None,
    fusion_checkpoint: Annotated[
        float, typer.Option(min=0.1, help="Seconds between checkpoints of the fusion state (and its commits).")
    ] = 5.0,
    data_dir: Annotated[Path, typer.Option(help="Faust's local data directory.")] = Path("vigie-data/faust"),
    session_timeout: Annotated[
        float, typer.Option(min=6.0, help="Seconds before a silent worker's partitions are reassigned.")
    ] = 30.0,
    commit_interval: Annotated[float, typer.Option(min=0.01, help="Seconds between offset commits.")] = 1.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run a Faust worker: input topics in, scores, alerts and dead letters out."""
    settings = WorkerSettings(
        bootstrap=bootstrap,
        prefix=prefix,
        app_id=app_id,
        partitions=partitions,
        replication_factor=replication_factor,
        create_topics=create,
        batch_size=batch_size,
        batch_within_s=batch_within,
        sink=sink,
        threshold=threshold,
        fusion_checkpoint_s=fusion_checkpoint,
        data_dir=data_dir,
        session_timeout_s=session_timeout,
        commit_interval_s=commit_interval,
        log_level=log_level,
    )
    run_worker(settings)


@faust_app_cli.command("topics")
def topics_command(
    bootstrap: Bootstrap = "127.0.0.1:9092",
    prefix: Prefix = DEFAULT_PREFIX,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of every topic created.")] = 3,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Create the deployment's topics (inputs, outputs, internal) that are missing."""
    counts = create_topics(bootstrap, TopicNames(prefix), partitions, replication_factor=replication_factor)
    for name, count in counts.items():
        typer.echo(f"{name}\t{count} partition(s)")


if __name__ == "__main__":
    faust_app_cli()
