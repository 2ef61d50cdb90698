"""``vigie flink``: run the PyFlink scoring job (:mod:`vigie.streams.flink_job`) on a local MiniCluster,
or, with ``--cluster``, as a job submitted to a Flink cluster
(``flink run -pym vigie.streams.flink_cli run --cluster``).

::

    vigie flink run --bootstrap 127.0.0.1:9092                       # runs until Ctrl-C (checkpoints kept)
    vigie flink run --bootstrap 127.0.0.1:9092 --from-checkpoint latest
    vigie flink run --bounded --sink chdb:vigie-data/clickhouse      # drain the topics, load ClickHouse, stop

``--sink chdb:PATH`` feeds embedded ClickHouse from the job's *output topics* (and the valid
input events) with a :class:`SinkLoader` running beside the job: chdb cannot be loaded inside
Flink's Python thread mode, and reading the committed outputs keeps the store exactly in
step with Kafka (the tables are idempotent on record ids, offsets are committed after each
flush). Ctrl-C cancels the job; its checkpoints are retained for ``--from-checkpoint``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from vigie.schemas import Alert, DeadLetter, EventRejected, RiskScore, decode_event
from vigie.sinks.open import SinkSpecError, open_sink

from .flink_job import CLUSTER_SUBMISSION, FlinkJobSettings, build_job, latest_checkpoint, submitted_by_flink
from .health import Counts, health_reporter
from .options import DEFAULT_DEADLINE_LAG_H, DeadlineLagHours
from .runner import tune_garbage_collector
from .topics import DEFAULT_PREFIX

__all__ = ["SinkLoader", "flink_app", "open_sink", "resolve_checkpoint"]

log = logging.getLogger(__name__)

flink_app = typer.Typer(
    help="The PyFlink scoring job: on a local MiniCluster, or submitted to a cluster (--cluster).", no_args_is_help=True
)


# --------------------------------------------------------------------------------------------
# Output topics -> a Sink (ClickHouse)
# --------------------------------------------------------------------------------------------


def _header(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode()
    return None


class SinkLoader:
    """Copies the job's committed outputs and the valid input events into a :class:`~vigie.sinks.base.Sink`.

    Reads the input topics (records that fail validation are skipped: they arrive as dead
    letters), the scores, alerts and dead-letter topics with ``isolation.level=read_committed``,
    writes each batch to the sink, flushes, then commits the offsets: at least once into
    tables that are idempotent on record ids, so each record is stored once.

    ``run()`` loops until :meth:`stop` (call it once the job has ended), then drains the topics
    until they stay quiet for ``drain_quiet_s`` and returns. ``on_batch`` sees each batch's
    records (the CLI counts alerts with it).
    """

    def __init__(
        self,
        settings: FlinkJobSettings,
        sink: Any,
        *,
        group_id: str | None = None,
        on_batch: Callable[[list[BaseModel]], None] | None = None,
        drain_quiet_s: float = 3.0,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.group_id = group_id or f"{settings.group_id}-sink"
        self.on_batch = on_batch
        self.drain_quiet_s = drain_quiet_s
        names = settings.names
        self.inputs = set(settings.input_topics)
        self.kinds = {names.scores: "score", names.alerts: "alert", names.dead_letter: "dead-letter"}
        self.topics = [*settings.input_topics, *self.kinds]
        self.records = 0
        self.counts = Counts()
        """What was loaded: the job's input events, scores, alerts and dead letters."""
        self.health = health_reporter(sink, "flink")
        """Samples :attr:`counts` into the sink's ``pipeline_metrics`` (the boards' "Runtimes" row)."""
        self._stop = threading.Event()
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop.set()

    def _record(self, topic: str, value: bytes, headers: Any) -> BaseModel | None:
        if topic in self.inputs:
            try:
                return decode_event(value)
            except EventRejected:
                return None
        kind = self.kinds[topic]
        if kind == "score":
            return RiskScore.model_validate_json(value)
        if kind == "alert":
            return Alert.model_validate_json(value)
        received = _header(headers, "vigie.received-at")
        return DeadLetter(
            dead_letter_id=_header(headers, "vigie.dead-letter-id") or "",
            received_at=datetime.fromisoformat(received) if received else datetime.now().astimezone(),
            source=_header(headers, "vigie.source") or topic,
            reason=_header(headers, "vigie.reason") or "",
            field=_header(headers, "vigie.field") or None,
            raw_size=int(_header(headers, "vigie.raw-size") or len(value)),
            raw=value,
        )

    def _count(self, batch: list[BaseModel]) -> None:
        """Add ``batch`` to :attr:`counts`; a health sample when one is due."""
        counts = self.counts
        for record in batch:
            if isinstance(record, RiskScore):
                counts.scores += 1
            elif isinstance(record, Alert):
                counts.alerts += 1
            elif isinstance(record, DeadLetter):
                counts.dead_letters += 1
            else:
                counts.events += 1
        if self.health is not None:
            self.health.maybe(counts)

    def run(self) -> None:
        """Load until stopped, then until the topics stay quiet. Errors are kept in :attr:`error`."""
        from confluent_kafka import Consumer

        consumer = Consumer(
            {
                "bootstrap.servers": self.settings.bootstrap,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "fetch.max.bytes": 64 * 1024 * 1024,
            }
        )
        try:
            consumer.subscribe(self.topics)
            quiet = 0
            while True:
                messages = consumer.consume(2000, timeout=0.5)
                batch: list[BaseModel] = []
                for message in messages:
                    if message.error() is not None:
                        continue
                    record = self._record(message.topic(), message.value() or b"", message.headers())
                    if record is not None:
                        batch.append(record)
                if batch:
                    self.sink.write(batch)
                    self.sink.flush()
                    self.records += len(batch)
                    self._count(batch)
                    if self.on_batch is not None:
                        self.on_batch(batch)
                if messages:
                    consumer.commit(asynchronous=False)
                    quiet = 0
                elif consumer.assignment():
                    quiet += 1
                # Stopped (the job has ended): drain until the topics stay quiet for `drain_quiet_s`.
                if self._stop.is_set() and quiet * 0.5 >= self.drain_quiet_s:
                    if self.health is not None:
                        self.health.final(self.counts)
                    return
        except BaseException as exc:
            self.error = exc
            log.exception("loading the sink failed")
        finally:
            consumer.close()


def resolve_checkpoint(spec: str | None, checkpoint_dir: Path) -> Path | None:
    """``--from-checkpoint``: ``latest`` (newest under the checkpoint dir), ``auto`` (the same, or a
    fresh start when there is none yet), a checkpoint root, or a ``chk-N``.

    ``auto`` is for deployments that restart the submitting container: the first submission
    starts fresh, every later one resumes where the previous job's last checkpoint stopped.
    Any other spec that finds no complete checkpoint is a usage error.
    """
    if spec is None:
        return None
    if spec == "auto":
        return latest_checkpoint(checkpoint_dir)
    where = checkpoint_dir if spec == "latest" else Path(spec)
    found = latest_checkpoint(where)
    if found is None:
        raise typer.BadParameter(f"no complete checkpoint (chk-N/_metadata) in {where}", param_hint="--from-checkpoint")
    return found


# --------------------------------------------------------------------------------------------
# vigie flink run
# --------------------------------------------------------------------------------------------


@flink_app.command("run")
def run_command(
    bootstrap: Annotated[
        str, typer.Option("--bootstrap", "-b", envvar="VIGIE_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers.")
    ] = "127.0.0.1:9092",
    prefix: Annotated[str, typer.Option(help="Topic name prefix of the deployment.")] = DEFAULT_PREFIX,
    input_topic: Annotated[
        str | None, typer.Option(help="Read every event type from this one topic instead of the four input topics.")
    ] = None,
    from_checkpoint: Annotated[
        str | None,
        typer.Option(
            help="Resume from a retained checkpoint: 'latest', a checkpoint dir or a chk-N dir; 'auto': the latest "
            "under --checkpoint-dir if there is one, else start fresh (for restarted deployments)."
        ),
    ] = None,
    checkpoint_dir: Annotated[Path, typer.Option(help="Where checkpoints are written.")] = Path(
        "vigie-data/flink/checkpoints"
    ),
    checkpoint_interval: Annotated[
        float, typer.Option(help="Seconds between checkpoints; 0 turns them off (sinks at least once).")
    ] = 10.0,
    sink_linger_ms: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Milliseconds the Kafka sinks wait to fill a batch; default 100 with checkpoints (exactly "
            "once: records are visible at the commit anyway), 20 without.",
        ),
    ] = None,
    parallelism: Annotated[int, typer.Option(min=1, help="Parallelism of the parse and score stages.")] = 1,
    layout: Annotated[
        str,
        typer.Option(
            help="'fused' (one subtask decodes, scores and fuses: fewest records), 'split' (parse and score "
            "stages at --parallelism, then the pipeline stage) or 'auto' (fused at parallelism 1)."
        ),
    ] = "auto",
    sink: Annotated[
        str,
        typer.Option(
            envvar="VIGIE_CLICKHOUSE_URL",
            help="'none', 'chdb:PATH' (embedded ClickHouse) or 'clickhouse://USER:PASSWORD@HOST:PORT/DB', "
            "loaded from the committed output topics.",
        ),
    ] = "none",
    bounded: Annotated[bool, typer.Option(help="Stop once the topics are drained (as they were at start).")] = False,
    detectors: Annotated[
        str, typer.Option(help="Comma-separated detector names; empty: the pipeline's defaults.")
    ] = "",
    fusion: Annotated[
        str, typer.Option(help="'noisy-or' (label-free, as vigie run --threshold) or 'learned' (as vigie run).")
    ] = "noisy-or",
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Noisy-OR alert threshold.")] = 0.5,
    deadline_lag: DeadlineLagHours = DEFAULT_DEADLINE_LAG_H,
    mode: Annotated[str, typer.Option(help="Python execution mode: 'thread' or 'process'.")] = "thread",
    state_backend: Annotated[str, typer.Option(help="'hashmap' or 'rocksdb' (incremental checkpoints).")] = "hashmap",
    group_id: Annotated[str, typer.Option(help="Kafka consumer group of the job.")] = "vigie-flink",
    restart_attempts: Annotated[int, typer.Option(min=0, help="Restarts after a failure before giving up.")] = 3,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Submitted to a Flink cluster (PythonDriver, Kubernetes operator): keep the cluster's addresses, "
            "slots and checkpoint storage instead of a local MiniCluster.",
        ),
    ] = False,
) -> None:
    """Run the scoring job: Kafka inputs -> keyed detectors -> pipeline -> Kafka scores/alerts (exactly once)."""
    if fusion not in ("noisy-or", "learned"):
        raise typer.BadParameter("expected 'noisy-or' or 'learned'", param_hint="--fusion")
    if mode not in ("thread", "process"):
        raise typer.BadParameter("expected 'thread' or 'process'", param_hint="--mode")
    if layout not in ("auto", "fused", "split"):
        raise typer.BadParameter("expected 'auto', 'fused' or 'split'", param_hint="--layout")
    if state_backend not in ("hashmap", "rocksdb"):
        raise typer.BadParameter("expected 'hashmap' or 'rocksdb'", param_hint="--state-backend")
    settings = FlinkJobSettings(
        bootstrap=bootstrap,
        prefix=prefix,
        input_topic=input_topic,
        group_id=group_id,
        bounded=bounded,
        parallelism=parallelism,
        layout=layout,  # type: ignore[arg-type]
        checkpoint_interval_ms=int(checkpoint_interval * 1000),
        sink_linger_ms=sink_linger_ms,
        checkpoint_dir=checkpoint_dir,
        from_checkpoint=resolve_checkpoint(from_checkpoint, checkpoint_dir),
        restart_attempts=restart_attempts,
        detectors=tuple(d.strip() for d in detectors.split(",") if d.strip()),
        fusion=fusion,  # type: ignore[arg-type]
        threshold=threshold,
        out_of_orderness_s=deadline_lag * 3600.0,
        execution_mode=mode,  # type: ignore[arg-type]
        state_backend=state_backend,  # type: ignore[arg-type]
        cluster=cluster,
    )
    try:
        store = open_sink(sink)
    except SinkSpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--sink") from None
    loader: SinkLoader | None = None
    thread: threading.Thread | None = None
    alerts = 0

    def count(batch: list[BaseModel]) -> None:
        nonlocal alerts
        alerts += sum(1 for record in batch if isinstance(record, Alert))

    if store is not None:
        loader = SinkLoader(settings, store, on_batch=count)
        thread = threading.Thread(target=loader.run, name="vigie-sink-loader", daemon=True)
        thread.start()
    if settings.from_checkpoint is not None:
        typer.echo(f"restoring {settings.from_checkpoint}", err=True)
    elif from_checkpoint == "auto":
        typer.echo(f"no complete checkpoint under {checkpoint_dir} yet: starting fresh", err=True)
    if cluster and not submitted_by_flink():
        raise typer.BadParameter(
            f"is for a job submitted by Flink: {CLUSTER_SUBMISSION}; without it the job runs on a local MiniCluster",
            param_hint="--cluster",
        )
    tune_garbage_collector()  # this process loads the sink; the job's functions tune their own interpreter
    job = build_job(settings)
    client = job.submit()
    typer.echo(f"job {client.get_job_id()} submitted ({', '.join(settings.input_topics)})", err=True)
    # The local MiniCluster shuts down with the job, so wait on the job's result (in a thread,
    # to keep Ctrl-C for cancelling) rather than polling its status.
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            client.get_job_execution_result().result()
            outcome.append(None)
        except BaseException as exc:  # the job failed or was cancelled
            outcome.append(exc)

    waiter = threading.Thread(target=wait, name="vigie-flink-wait", daemon=True)
    waiter.start()
    status = "finished"
    try:
        while waiter.is_alive():
            waiter.join(0.5)
        if outcome and outcome[0] is not None:
            status = "failed"
            typer.echo(f"job failed: {outcome[0]}", err=True)
    except KeyboardInterrupt:
        typer.echo("cancelling the job (checkpoints are retained)", err=True)
        client.cancel().result()
        waiter.join(60)
        status = "cancelled"
    finally:
        if loader is not None and thread is not None:
            loader.stop()
            thread.join()
            store.close()  # type: ignore[union-attr]
            if loader.error is not None:
                raise typer.Exit(1)
    loaded = f"; {loader.records:,} records loaded into the sink, {alerts:,} alerts" if loader is not None else ""
    typer.echo(f"job {status}{loaded}", err=True)
    if status == "failed":
        raise typer.Exit(1)


@flink_app.command("checkpoints")
def checkpoints_command(
    checkpoint_dir: Annotated[Path, typer.Argument(help="Checkpoint root.")] = Path("vigie-data/flink/checkpoints"),
) -> None:
    """Print the newest complete checkpoint under the directory (what --from-checkpoint latest restores)."""
    found = latest_checkpoint(checkpoint_dir)
    if found is None:
        typer.echo(f"no complete checkpoint under {checkpoint_dir}", err=True)
        raise typer.Exit(1)
    typer.echo(str(found))


if __name__ == "__main__":
    flink_app()
