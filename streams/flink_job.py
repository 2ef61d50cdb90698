"""The scoring pipeline as a PyFlink DataStream job: Kafka in, keyed operator state, Kafka out.

Run it with ``vigie flink run`` (:mod:`vigie.streams.flink_cli`) or from Python::

    from vigie.streams.flink_job import FlinkJobSettings, run_job

    run_job(FlinkJobSettings(bootstrap="127.0.0.1:9092", bounded=True))   # returns when the input is drained

Two layouts (``FlinkJobSettings.layout``; ``auto``: fused at parallelism 1, split above).

*Fused* (:class:`ScoreEvents`): the four sources, keyed to one subtask that decodes each
event (rejects -> ``P.dead-letter``), runs a real :class:`~vigie.operators.ScoringPipeline`
on it (every detector, fusion, ENS link, outcome join) and fires the deadline rules whose
time the stream passed (:class:`EventCore`) -> ``P.scores``, ``P.alerts``. One record per
event crosses into Python and its state is one snapshot plus a log of event bytes, so it
costs little beyond the in-process pipeline; it cannot use more than one slot.

*Split*, to scale the keyed detectors out (``P`` = topic prefix, :mod:`vigie.streams.topics`)::

    P.ens, P.declarations,     SQL Kafka source, format raw (original bytes) + topic/partition/offset
    P.excise, P.outcomes  -->  parse (p): decode_event + topic check ------------> P.dead-letter (side output)
                                 |  every keyed detector's units(event), one record per unit,
                                 |  the last one carrying the event's envelope (its bytes, its unit count)
                                 |  key_by "detector/state key" (an event without units: its envelope, by event)
                                 v
                               score (p): score_learn_one (score, then learn) on the state key's keyed
                                 |  state (a snapshot + a log of units since); deadline rules register
                                 |  event-time timers; envelopes pass through
                                 |  key_by constant
                                 v
                               pipeline (1): gathers each event's unit scores, in input order, and
                                 hands the event to a real ScoringPipeline ------> P.scores, P.alerts

*Keyed detectors* (the ones that need nothing from the runtime: undervaluation, excise,
atypical flow, operator behaviour) are scored in the ``score`` stage: their state is Flink
keyed state, per state key a snapshot (``state.to_bytes()``) and a log of the units learned
since (:class:`ScoreUnits`); this is where the
work and the state scale out (``--parallelism``). *Runtime-fed detectors* (those declaring
``consumes``, e.g. the ENS pre-arrival detector, which gets a declaration together with its
ENS and learns from control outcomes joined to what it said) run inside the ``pipeline``
stage, where the runtime's joins live.

The ``pipeline`` stage is one subtask holding a real :class:`~vigie.operators.ScoringPipeline`
whose keyed detectors are stand-ins returning the gathered scores (:class:`GatheredScores`).
Everything that is not a keyed detector (ENS registry, fusion and its alert budget, the join
of control outcomes, the outcome feedback) is therefore the pipeline's own code with its own
state: no scoring logic lives in this module. Its state reaches Flink's checkpoints as a
snapshot of :meth:`ScoringPipeline.state_dict` (taken every ``snapshot_every`` events) plus
a ListState log of what it processed since; a restored subtask loads the snapshot and
replays the log. Why not a keyed stage with feedback to the detectors: DataStream iterations
are gone in Flink 2, and outcome feedback must reach a detector's state before the next
event to score as the in-process runner does.

Equivalence with the in-process runner: with one input partition and ``parallelism`` 1 the
parse, score and pipeline stages see the events in the order of that partition, so the
scores and alerts are exactly :func:`vigie.streams.runner.run_file`'s on the same lines
(``input_topic`` reads every event type from one topic, as the file runner reads one file).
With the four input topics, the source interleaves them as it reads them: each topic stays
in order, and each state key sees its units in that interleaved order. With ``parallelism``
above 1, the pipeline stage takes events in the order their envelopes arrive.

Deadline timers (:mod:`vigie.operators.deadlines`): a detector can expose deadlines (epoch
seconds to be woken at) and ``expire(key, state, now)`` (scores of what fell due, updating
the state). The excise detector has them for its ledgers of open e-ADs: an e-AD with no
report of receipt or export by its deadline gets its gap score when the event-time watermark
passes the deadline, even if the consignor sends nothing more. The fused layout's pipeline
keeps its own timers (as the in-process runner's, with this lag); the split layout's score
stage registers Flink event-time timers per state key.
Watermarks follow the events' ``event_time`` minus ``out_of_orderness_s``; at the end of a
bounded input only deadlines the stream's time has passed fire (the rest stay open).

Delivery: checkpoints (``checkpoint_interval_ms``, aligned) hold the Kafka offsets and every
state; the Kafka sinks write in transactions committed with each checkpoint (exactly once
for ``read_committed`` consumers). Without checkpoints the sinks are at least once.
``from_checkpoint`` restores a retained checkpoint (kept on cancellation); the job graph
must be the same (same settings but the checkpoint). A restored job keeps the stopping
offsets its source had: a job started unbounded stays unbounded after a restore, even with
``bounded``.

Speed: in the split layout every event crosses three Python stages; in thread mode they
share one interpreter, so one GIL. What bounds it is not the scoring but Flink's cost per
record: an event is ~3 records (one per keyed unit) between parse, score and pipeline, and
each record costs a Java-Python hop with a pickle each way in every stage it enters, plus
its state access (about 1.6 ms of JVM CPU per event on one slot here, against ~0.1 ms in
process). The fused layout sends one record per event through one Python function; its
figures are in ``bench/RESULTS.md`` (``bench/flink.py --job-layout``). More slots scale
the split layout's parse and score stages only where there are free cores. Keyed stages
take their key from the first field of their records, read by Flink's own selector
(:func:`_keyed_by_first_field`): PyFlink's ``key_by`` with a Python key selector would add
a Python function, a hop and a copy of each record, before every keyed stage. Scores and
alerts leave Python as (key, value, id) rows and the insert into the sink makes the id the
``vigie.id`` header (:func:`_insert_messages`): a header map from Python cost more per
message than its JSON.

Kafka message formats (the same as the Faust workers'): scores keyed by subject event id,
alerts keyed by office, both JSON with header ``vigie.id``; dead letters keyed by their id,
value the original bytes unchanged, reason and source in ``vigie.*`` headers.

Thread mode (``python.execution-mode=thread``, the default here) runs the Python functions
in the JVM through pemja. Two constraints follow: this module imports nothing that loads
pybind11 extensions (scipy, via River) at import time, since such an import hangs on a pemja
thread; :func:`load_operators` imports the operators from a Python thread first. And chdb
cannot be loaded there at all, which is why ClickHouse is fed from the output topics by
:class:`vigie.streams.flink_cli.SinkLoader`, not from inside the job.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import sys
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import unquote, urlparse

import orjson
from pyflink.common import Configuration, Duration, Row, Types, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    DataStream,
    KeyedProcessFunction,
    KeyedStream,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
    StreamExecutionEnvironment,
)
from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

from vigie.schemas import EventRejected, RiskScore, dead_letter, decode_event, encode_event

from .topics import DEFAULT_PREFIX, LARGE_MESSAGE_BYTES, TopicNames, check_topic

if TYPE_CHECKING:
    from pyflink.common.job_client import JobClient
    from pyflink.table import StreamTableEnvironment

    from vigie.operators import ScoringPipeline
    from vigie.operators.base import Operator, OperatorState
    from vigie.operators.pipeline import PipelineResult
    from vigie.schemas import Alert

__all__ = [
    "DETECTOR_CLASSES",
    "EventCore",
    "FlinkJob",
    "FlinkJobSettings",
    "GatheredScores",
    "PipelineCore",
    "add_missing_jars",
    "build_job",
    "flink_configuration",
    "kafka_connector_jars",
    "latest_checkpoint",
    "load_operators",
    "make_detectors",
    "make_pipeline",
    "run_job",
    "submitted_by_flink",
]

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
FLINK_JARS_DIR = REPO_ROOT / "deploy" / "jars" / "flink"
FETCH_SCRIPT = REPO_ROOT / "deploy" / "kafka" / "fetch-jars.sh"

MAX_WATERMARK = 2**63 - 1
"""``Long.MAX_VALUE``: the watermark Flink sends at the end of a bounded input."""

DEAD_LETTER_MAX_RAW = LARGE_MESSAGE_BYTES - 64 * 1024
"""Dead-letter values are the original bytes, cut to this size (header ``vigie.truncated``)."""

SINK_BATCH_BYTES = 1 << 20
"""``batch.size`` of the Kafka sinks' producers. At the client's 16 KB default and its 5 ms linger, a
score stream (about 900 bytes a message) went out in produce requests of a few dozen messages, and
the requests, not the messages, cost: about 100 us of the Flink JVM per message, more than the job's
Python. Larger batches that linger longer cut the job's time by about a third (bench/flink.py)."""
EXACTLY_ONCE_LINGER_MS = 100
AT_LEAST_ONCE_LINGER_MS = 20

DETECTOR_CLASSES: dict[str, str] = {
    "undervaluation": "vigie.operators.undervaluation:UndervaluationDetector",
    "ens_pre_arrival": "vigie.operators.ens_risk:EnsPreArrivalDetector",
    "excise": "vigie.operators.excise:ExciseDetector",
    "atypical_flow": "vigie.operators.atypical:AtypicalFlowDetector",
    "operator_behaviour": "vigie.operators.behaviour:OperatorBehaviourDetector",
}
"""Detectors the job can be asked for by name (``--detectors``), built with their defaults."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlinkJobSettings:
    """Everything the job is built from. Plain values only: the functions ship it to the workers."""

    bootstrap: str = "127.0.0.1:9092"
    prefix: str = DEFAULT_PREFIX
    input_topic: str | None = None
    """Read every event type from this one topic (no topic/event type check), instead of the
    four ``prefix + kind`` input topics."""
    group_id: str = "vigie-flink"
    starting_offsets: Literal["earliest", "latest", "group"] = "earliest"
    """Where a job started without a checkpoint begins; a restored job resumes at its checkpoint."""
    bounded: bool = False
    """Stop at the offsets that were the latest when the job started (backfills, tests, benches)."""
    parallelism: int = 1
    """Parallelism of the parse and score stages (the pipeline stage is always 1)."""
    layout: Literal["auto", "fused", "split"] = "auto"
    """``fused``: one subtask decodes, scores and fuses each event (:class:`ScoreEvents`), one
    record per event through Flink. ``split``: parse and score stages at ``parallelism``, then
    the pipeline stage (:class:`ScoreUnits`, :class:`RunPipeline`). ``auto``: fused at
    parallelism 1, split above."""
    checkpoint_interval_ms: int = 10_000
    """0 turns checkpointing off (and the Kafka sinks fall back to at least once)."""
    checkpoint_dir: Path = Path("vigie-data/flink/checkpoints")
    from_checkpoint: Path | None = None
    """A retained checkpoint (``.../chk-N``) or savepoint to restore."""
    checkpoints_retained: int = 3
    state_backend: Literal["hashmap", "rocksdb"] = "hashmap"
    execution_mode: Literal["thread", "process"] = "thread"
    restart_attempts: int = 0
    """Fixed-delay restarts after a failure (0: fail at once, the supervisor restarts from a checkpoint)."""
    detectors: tuple[str, ...] = ()
    """Detector names (see :data:`DETECTOR_CLASSES`); empty: the pipeline's default detectors."""
    fusion: Literal["noisy-or", "learned"] = "noisy-or"
    threshold: float = 0.5
    """Noisy-OR alert threshold (as ``vigie run --threshold``)."""
    out_of_orderness_s: float = 3600.0
    """Event-time watermark lag: how late (event time) a record may come and still count before a deadline."""
    snapshot_every: int = 20_000
    """Events between two snapshots of the pipeline stage's state (the log in between is replayed on restore)."""
    transactional_id_prefix: str = "vigie-flink"
    transaction_timeout_ms: int = 600_000
    """Kafka transaction timeout; must stay under the broker's ``transaction.max.timeout.ms`` (15 min)."""
    sink_linger_ms: int | None = None
    """How long the Kafka sinks' producers wait to fill a batch (``linger.ms``). None: 100 ms with
    exactly-once sinks, whose records are read only once the checkpoint commits them, seconds later;
    20 ms at least once, where it adds to the latency of every alert. See :data:`SINK_BATCH_BYTES`."""
    job_name: str = "vigie-scoring"
    log_dir: Path | None = None
    """Where the Flink JVM writes its log (``$FLINK_LOG_DIR``); None: ``<checkpoint_dir>/../log``."""
    jars: tuple[Path, ...] = ()
    """Connector jars; empty: ``deploy/jars/flink`` (fetched with Maven when missing)."""
    cluster: bool = False
    """Submitted to a Flink cluster (PythonDriver, ``flink run``, the Kubernetes operator): the
    cluster's own configuration keeps its addresses, slots, Python executable and checkpoint
    storage; the job sets only job-level options and appends the connector jars to the
    submitter's ``pipeline.jars``. Refused outside Flink's PythonDriver (it would silently run
    in a local MiniCluster). False: a local MiniCluster on loopback."""
    extra_config: tuple[tuple[str, str], ...] = ()
    """Further Flink configuration entries, applied last."""

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.prefix)

    @property
    def input_topics(self) -> list[str]:
        return [self.input_topic] if self.input_topic else self.names.inputs

    @property
    def checkpointing(self) -> bool:
        return self.checkpoint_interval_ms > 0

    @property
    def resolved_sink_linger_ms(self) -> int:
        """:attr:`sink_linger_ms`, or its default for the sinks' delivery guarantee."""
        if self.sink_linger_ms is not None:
            return self.sink_linger_ms
        return EXACTLY_ONCE_LINGER_MS if self.checkpointing else AT_LEAST_ONCE_LINGER_MS

    @property
    def fused(self) -> bool:
        """True when the job runs the fused layout (see :attr:`layout`)."""
        return self.layout == "fused" or (self.layout == "auto" and self.parallelism == 1)


# --------------------------------------------------------------------------------------------
# Operators: imported late, from a Python thread
# --------------------------------------------------------------------------------------------

_import_lock = threading.Lock()


def load_operators(modules: Iterable[str] = ()) -> None:
    """Import ``vigie.operators`` (and ``modules``) from a fresh Python thread.

    Why a thread: in thread mode the functions run on a JVM thread that pemja attached to
    the interpreter, and importing a pybind11 extension there (scipy's, pulled in by River)
    waits forever for a GIL state it already holds. A thread started by Python has a proper
    one; once imported, the modules are shared by every thread. In a normal process this is
    just an import.
    """
    wanted = ["vigie.operators", "vigie.operators.pipeline", *modules]
    with _import_lock:
        missing = [m for m in wanted if m not in sys.modules]
        if not missing:
            return
        errors: list[BaseException] = []

        def run() -> None:
            try:
                for module in missing:
                    importlib.import_module(module)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

        thread = threading.Thread(target=run, name="vigie-import", daemon=True)
        thread.start()
        thread.join()
        if errors:
            raise errors[0]


_gc_tuned: list[bool] = []
_gc_lock = threading.Lock()


def worker_setup() -> None:
    """What every Python function of the job does in ``open``: :func:`worker_logging`, and the
    scoring process's garbage-collector thresholds (:func:`vigie.streams.runner.tune_garbage_collector`)
    once per interpreter. In thread mode that interpreter lives in the Flink JVM, not in the
    process that built the job, so the submitter's own tuning does not reach it."""
    worker_logging()
    if _gc_tuned:
        return
    load_operators(["vigie.streams.runner"])  # it imports the operators: from a Python thread
    from .runner import tune_garbage_collector

    with _gc_lock:
        if not _gc_tuned:
            tune_garbage_collector()
            _gc_tuned.append(True)


def worker_logging() -> None:
    """Send the Python logs of the job's functions to ``$FLINK_LOG_DIR/vigie-flink-python.log``.

    In thread mode they run inside the gateway JVM, whose stderr is a pipe nobody reads:
    enough warnings there would fill it and block the job.
    """
    logger = logging.getLogger("vigie")
    if any(getattr(h, "vigie_flink", False) for h in logger.handlers):
        return
    directory = Path(os.environ.get("FLINK_LOG_DIR") or tempfile.gettempdir())
    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "vigie-flink-python.log")
    handler.vigie_flink = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(threadName)s] %(message)s"))
    logger.addHandler(handler)  # a handler on the way: Python's last-resort stderr handler is not used
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def make_detectors(names: Sequence[str] = ()) -> list[Operator[Any, Any]]:
    """Detectors by name (:data:`DETECTOR_CLASSES`), in the given order; none: the pipeline's defaults."""
    load_operators(DETECTOR_CLASSES[n].split(":")[0] for n in names if n in DETECTOR_CLASSES)
    from vigie.operators import default_detectors

    if not names:
        return default_detectors()
    defaults = {d.name: d for d in default_detectors()}
    detectors: list[Operator[Any, Any]] = []
    for name in names:
        if name in DETECTOR_CLASSES:
            module, cls = DETECTOR_CLASSES[name].split(":")
            detectors.append(getattr(importlib.import_module(module), cls)())
        elif name in defaults:
            detectors.append(defaults[name])
        else:
            known = sorted(set(DETECTOR_CLASSES) | set(defaults))
            raise ValueError(f"unknown detector {name!r}: expected one of {', '.join(known)}")
    return detectors


def make_pipeline(settings: FlinkJobSettings, detectors: list[Operator[Any, Any]] | None = None) -> ScoringPipeline:
    """The in-process pipeline this job is equivalent to (same detectors, same fusion)."""
    load_operators()
    from vigie.operators import NoisyOrAlerting, ScoringPipeline
    from vigie.operators.fusion import LearnedFusion

    detectors = detectors if detectors is not None else make_detectors(settings.detectors)
    alerting = NoisyOrAlerting(threshold=settings.threshold) if settings.fusion == "noisy-or" else LearnedFusion()
    # Keyed detectors' stand-ins (the split layout) have no deadlines: Flink's timers wake those.
    lag = timedelta(seconds=settings.out_of_orderness_s)
    return ScoringPipeline(detectors=detectors, alerting=alerting, deadline_lag=lag)


def runtime_fed(detector: Operator[Any, Any]) -> bool:
    """True for detectors that want enriched inputs from the runtime (``consumes``): they run in the pipeline stage."""
    return bool(getattr(detector, "consumes", ()))


# --------------------------------------------------------------------------------------------
# The pipeline stage's logic, without Flink
# --------------------------------------------------------------------------------------------


class GatheredScores:
    """Stand-in for a keyed detector inside the pipeline stage's :class:`ScoringPipeline`.

    It returns the scores the score stage computed for the current event, so that the
    pipeline's fusion, ENS link and outcome join see what they would have seen in process.
    """

    consumes: frozenset[str] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name
        self.current: list[RiskScore] = []

    def process(self, event: Any, store: Any) -> list[RiskScore]:
        return self.current


class PipelineCore:
    """A :class:`ScoringPipeline` whose keyed detectors are :class:`GatheredScores`.

    ``process(event, scores)`` gives the same :class:`PipelineResult` as the in-process
    pipeline when ``scores`` maps each keyed detector to the scores its units got (in unit
    order). Deadline scores (:meth:`expired`) are fused as a subject of their own.
    """

    def __init__(self, settings: FlinkJobSettings) -> None:
        real = make_detectors(settings.detectors)
        self.keyed = [d.name for d in real if not runtime_fed(d)]
        self.stand_ins = {name: GatheredScores(name) for name in self.keyed}
        detectors = [d if runtime_fed(d) else self.stand_ins[d.name] for d in real]
        self.pipeline = make_pipeline(settings, detectors)  # type: ignore[arg-type]

    def process(self, event: Any, scores: dict[str, list[RiskScore]]) -> PipelineResult:
        for name, stand_in in self.stand_ins.items():
            stand_in.current = scores.get(name, [])
        try:
            return self.pipeline.process(event)
        finally:
            for stand_in in self.stand_ins.values():
                stand_in.current = []

    def expired(self, scores: list[RiskScore]) -> Alert | None:
        """Fuse deadline scores (all about one overdue subject) with the office's queue; the alert, if any."""
        return self.pipeline.decide_finding(scores) if scores else None

    def state_bytes(self) -> bytes:
        return orjson.dumps(self.pipeline.state_dict(), option=orjson.OPT_SERIALIZE_NUMPY)

    def load_state_bytes(self, data: bytes) -> None:
        self.pipeline.load_state_dict(orjson.loads(data))


class EventCore:
    """The fused layout's logic without Flink: a real :class:`ScoringPipeline`, its deadline timers included.

    :meth:`process` scores one event exactly as the in-process pipeline does, deadlines the
    stream's time passed included (:mod:`vigie.operators.deadlines`: their scores and alerts
    are in the result, as later findings), with the job's ``out_of_orderness_s`` as the
    timers' lag. Given the event's ``source`` (``topic:partition``), the deadline clock follows
    the slowest source, at most a day behind the latest (:class:`~vigie.operators.deadlines.SourceClock`,
    as the Faust workers'), so a partition read ahead does not make a deadline fall due early.
    Everything, pending deadlines and the clock included, is in :meth:`state_bytes`, and a core
    fed the same events from the same state gives the same outputs: that is how the Flink
    function restores (snapshot + replay).
    """

    def __init__(self, settings: FlinkJobSettings) -> None:
        self.pipeline = make_pipeline(settings)
        from vigie.operators.deadlines import SourceClock  # loaded by make_pipeline (load_operators)
        from vigie.operators.pipeline import event_ms

        self.clock = SourceClock()
        self._event_ms = event_ms

    def process(self, event: Any, source: str | None = None) -> PipelineResult:
        """The event's result: its scores and alerts, then those of the deadlines it made due."""
        if source is None or self.pipeline.timers is None:
            return self.pipeline.process(event)
        return self.pipeline.process(event, self.clock.tick(source, self._event_ms(event)))

    def state_bytes(self) -> bytes:
        state = {"pipeline": self.pipeline.state_dict(), "clock": self.clock.to_dict()}
        return orjson.dumps(state, option=orjson.OPT_SERIALIZE_NUMPY)

    def load_state_bytes(self, data: bytes) -> None:
        state = orjson.loads(data)
        if "clock" not in state:  # a snapshot from before the clock: the pipeline's state alone
            state = {"pipeline": state, "clock": None}
        self.pipeline.load_state_dict(state["pipeline"])
        if state["clock"] is not None:
            self.clock.load_dict(state["clock"])


# --------------------------------------------------------------------------------------------
# Records between the stages (pickled tuples) and towards Kafka (rows)
# --------------------------------------------------------------------------------------------
#
# parse -> score:     ("u", route key, event time ms, event uid, detector, unit index, pickled unit, envelope)
#                     ("e", "event/<uid>", event time ms, event uid, raw bytes, 0)   an event without units
# score -> pipeline:  ("e", event uid, raw bytes, 0)
#                     ("s", event uid, detector, unit index, score fields | None, envelope)
# Envelope: (raw bytes, unit count) on an event's last unit, None on the others.
#                     ("t", [score fields, ...])   deadline scores of one overdue subject
# Event uid: "topic:partition:offset", unique even when an integrator re-sends an event_id.
# Each record travels as Row(key of the next stage, tuple) (KEYED_RECORD), keyed by that first field in Java.

_BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
KAFKA_ROW = Types.ROW_NAMED(["k", "v", "headers"], [_BYTES, _BYTES, Types.MAP(Types.STRING(), _BYTES)])
"""A Kafka record for the SQL sinks: key, value, headers (a dead letter's)."""
MESSAGE_ROW = Types.ROW_NAMED(["k", "v", "id"], [_BYTES, _BYTES, _BYTES])
"""A score or an alert for Kafka: key, value and its id, which the insert into the sink turns into
the ``vigie.id`` header (:func:`_insert_messages`). A header map built in Python cost about 25 us
per message between pemja, the conversion to table rows and the sink: more than its JSON."""

KEYED_RECORD = Types.ROW([Types.STRING(), Types.PICKLED_BYTE_ARRAY()])
"""A record between the split layout's stages: the next stage's key, then the (pickled) record."""
PIPELINE = "pipeline"
"""The one key of the stages that run on one subtask (the fused stage, the split layout's pipeline)."""

DEAD_LETTERS = OutputTag("dead-letters", KAFKA_ROW)
ALERTS = OutputTag("alerts", MESSAGE_ROW)


def _fields(score: RiskScore | None) -> dict[str, Any] | None:
    """A score as a plain dict of its fields: pickles several times faster than the model."""
    return None if score is None else dict(score.__dict__)


def _score(fields: dict[str, Any]) -> RiskScore:
    return RiskScore.model_construct(**fields)


def _score_row(score: RiskScore) -> Row:
    return Row(score.subject_event_id.encode(), encode_event(score), score.score_id.encode())


def _alert_row(alert: Alert) -> Row:
    return Row(alert.office.encode(), encode_event(alert), alert.alert_id.encode())


def dead_letter_row(raw: bytes, topic: str, partition: int, offset: int, rejected: EventRejected) -> Row:
    """The dead-letter record of a rejected message (key, original bytes, ``vigie.*`` headers)."""
    source = f"kafka:{topic}:{partition}:{offset}"
    letter = dead_letter(raw, source, rejected)
    headers = {
        "vigie.reason": letter.reason.encode(),
        "vigie.field": (letter.field or "").encode(),
        "vigie.source": source.encode(),
        "vigie.topic": topic.encode(),
        "vigie.partition": str(partition).encode(),
        "vigie.offset": str(offset).encode(),
        "vigie.dead-letter-id": letter.dead_letter_id.encode(),
        "vigie.received-at": letter.received_at.isoformat().encode(),
        "vigie.raw-size": str(len(raw)).encode(),
    }
    value = raw
    if len(raw) > DEAD_LETTER_MAX_RAW:
        value = raw[:DEAD_LETTER_MAX_RAW]
        headers["vigie.truncated"] = b"1"
    return Row(letter.dead_letter_id.encode(), value, headers)


# --------------------------------------------------------------------------------------------
# Flink functions (they must live in this installed module: the workers import them by name)
# --------------------------------------------------------------------------------------------


def accept_input(value: Row, names: TopicNames, mixed: bool) -> tuple[bytes, str, int, int, Any]:
    """A source row's bytes, topic, partition and offset, then its decoded event or the
    :class:`EventRejected` saying why not (invalid, or not the event type of its topic unless
    ``mixed``)."""
    raw = bytes(value[0]) if value[0] is not None else b""
    topic, partition, offset = value[1], int(value[2]), int(value[3])
    try:
        event = decode_event(raw)
        if not mixed:
            check_topic(names.kind_of(topic), event)
    except EventRejected as rejected:
        return raw, topic, partition, offset, rejected
    return raw, topic, partition, offset, event


class ParseAndSplit(ProcessFunction):  # type: ignore[misc]
    """Decode and validate each message; dead-letter what fails; split events into keyed units."""

    def __init__(self, settings: FlinkJobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_setup()
        detectors = make_detectors(self.settings.detectors)
        self.keyed = [d for d in detectors if not runtime_fed(d)]
        self.names = self.settings.names
        self.mixed = self.settings.input_topic is not None

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        raw, topic, partition, offset, event = accept_input(value, self.names, self.mixed)
        if isinstance(event, EventRejected):
            yield DEAD_LETTERS, dead_letter_row(raw, topic, partition, offset, event)
            return
        uid = f"{topic}:{partition}:{offset}"
        when = int(event.event_time.timestamp() * 1000)
        try:
            units = [
                (f"{d.name}/{key}", d.name, index, unit)
                for d in self.keyed
                for index, (key, unit) in enumerate(d.units(event))
            ]
        except Exception as exc:  # a detector failed on this event: keep the bytes, say why
            log.exception("splitting %s %s into units failed", event.event_type, event.event_id)
            rejected = EventRejected(f"internal error while splitting into units: {exc!r}")
            yield DEAD_LETTERS, dead_letter_row(raw, topic, partition, offset, rejected)
            return
        # The event's envelope (its bytes, its unit count) rides on its last unit: every record
        # costs a Python hop in each stage, more than the scoring itself. Units are pickled here,
        # not by Flink: the score stage logs these very bytes in its keyed state.
        last = len(units) - 1
        for position, (route, name, index, unit) in enumerate(units):
            envelope = (raw, len(units)) if position == last else None
            unit_record = ("u", route, when, uid, name, index, pickle.dumps(unit, pickle.HIGHEST_PROTOCOL), envelope)
            yield Row(route, unit_record)
        if not units:  # on its own, through the score stage (passed on as it is)
            route = f"event/{uid}"
            yield Row(route, ("e", route, when, uid, raw, 0))


class SnapshotLog:
    """One key's state in Flink as a *snapshot* (ValueState ``snapshot``) plus a *log* (ListState
    ``log``) of what was applied since, the snapshot retaken every ``every`` entries.

    Writing a whole state after every event would cost more than scoring it; appending the
    entry costs little. A restored subtask loads the snapshot and replays the log through the
    same calls, which give the same state.
    """

    def __init__(self, runtime_context: RuntimeContext, every: int) -> None:
        pickled = Types.PICKLED_BYTE_ARRAY()
        self.snapshot = runtime_context.get_state(ValueStateDescriptor("snapshot", pickled))
        self.log = runtime_context.get_list_state(ListStateDescriptor("log", pickled))
        self.every = every
        self.logged = 0

    def restore(self, what: str, settings: FlinkJobSettings, load: Callable[[bytes], None],
                apply: Callable[[Any], Any]) -> None:  # fmt: skip
        """``load`` the snapshot if there is one, then ``apply`` each log entry in order; logs what it did."""
        snapshot = self.snapshot.value()
        if snapshot is not None:
            load(snapshot)
        replayed = 0
        for entry in self.log.get() or ():
            apply(entry)
            replayed += 1
        self.logged = replayed
        if snapshot is not None or replayed:
            log.info("%s of %s (group %s) restored: snapshot %s, %d event(s) replayed", what, settings.job_name,
                     settings.group_id, "loaded" if snapshot is not None else "none", replayed)  # fmt: skip

    def record(self, entry: Any, state_bytes: Callable[[], bytes]) -> None:
        """Log ``entry``, just applied, or retake the snapshot (``state_bytes()``) and clear the log."""
        self.logged += 1
        if self.logged >= self.every:
            self.snapshot.update(state_bytes())
            self.log.clear()
            self.logged = 0
        else:
            self.log.add(entry)


class ScoreEvents(KeyedProcessFunction):  # type: ignore[misc]
    """The fused layout: decode, score and fuse each event in one subtask (:class:`EventCore`).

    One record per event crosses from Flink into Python, against about three per event and
    stage in the split layout, where each record's hop and pickles cost more than its scoring.
    Keyed state (one key, ``pipeline``): ``snapshot``, the core's state at some point, and
    ``log``, the bytes of every valid event processed since (replayed on restore), retaken
    every ``snapshot_every`` events. Rejected messages go to the dead-letter side output.
    """

    def __init__(self, settings: FlinkJobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_setup()
        load_operators()
        self.state = SnapshotLog(runtime_context, self.settings.snapshot_every)
        self.core: EventCore | None = None
        self.names = self.settings.names
        self.mixed = self.settings.input_topic is not None

    def _start(self) -> EventCore:
        core = EventCore(self.settings)
        self.state.restore("scoring stage", self.settings, core.load_state_bytes,
                           lambda entry: self._replay(core, entry))  # fmt: skip
        return core

    def _replay(self, core: EventCore, entry: tuple[str, bytes] | bytes) -> None:
        """Apply a log entry again: ``(source, bytes)`` of an event (or its bytes alone, logged before the clock)."""
        source, raw = entry if isinstance(entry, tuple) else (None, entry)
        self._apply(core, decode_event(raw), source)

    @staticmethod
    def _apply(core: EventCore, event: Any, source: str | None = None) -> PipelineResult | None:
        """``core.process(event, source)``; None when a detector failed on it (the same on replay)."""
        try:
            return core.process(event, source)
        except Exception:
            log.exception("scoring %s %s failed", event.event_type, event.event_id)
            return None

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if self.core is None:
            self.core = self._start()
        raw, topic, partition, offset, event = accept_input(value, self.names, self.mixed)
        if isinstance(event, EventRejected):
            yield DEAD_LETTERS, dead_letter_row(raw, topic, partition, offset, event)
            return
        source = f"{topic}:{partition}"
        done = self._apply(self.core, event, source)
        if done is None:  # keep the bytes, say why
            rejected = EventRejected("internal error while scoring (see the job's log)")
            yield DEAD_LETTERS, dead_letter_row(raw, topic, partition, offset, rejected)
        else:
            for score in done.scores:  # the event's, then the deadlines' it made due
                yield _score_row(score)
            for alert in done.alerts:
                yield ALERTS, _alert_row(alert)
        self.state.record((source, raw), self.core.state_bytes)


class UnitTime(TimestampAssigner):  # type: ignore[misc]
    """Event time of a unit record (milliseconds), for the watermarks that drive deadline timers."""

    def extract_timestamp(self, value: Any, record_timestamp: int) -> int:
        return int(value[1][2])


class ScoreUnits(KeyedProcessFunction):  # type: ignore[misc]
    """``score_learn_one`` (score, then learn) on the state of the unit's key, held in Flink keyed state.

    A key's state is a *snapshot* (ValueState, ``state.to_bytes()``) plus a *log* (ListState) of
    what it learned since: the unit's pickle as the parse stage sent it, or a deadline check.
    Writing the whole state after every unit cost more than the scoring (an atypical-flow
    chapter model is ~50 KB, 340 us to serialise); appending the unit's bytes costs nothing
    new, and the snapshot is retaken every ``SNAPSHOT_EVERY`` entries. Restoring a key
    (first use after a restore, or after leaving the cache) loads the snapshot and replays
    the log through the same calls, which give the same state (the Operator contract).

    Parsed states of the last ``CACHED_STATES`` keys stay in memory (least recently used
    out). Every unit's effect is in Flink state as soon as it is processed, so a checkpoint
    never lacks what the cache holds.
    """

    CACHED_STATES = 20_000
    SNAPSHOT_EVERY = 100
    """Log entries after which a key's snapshot is retaken and its log cleared (bounds the replay)."""

    def __init__(self, settings: FlinkJobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_setup()
        detectors = make_detectors(self.settings.detectors)
        from vigie.operators.deadlines import deadline_rule, wake_up_ms  # imported by make_detectors

        self.wake_up_ms = wake_up_ms
        self.detectors = {d.name: d for d in detectors if not runtime_fed(d)}
        self.rules = {name: rule for name, d in self.detectors.items() if (rule := deadline_rule(d)) is not None}
        # Bytes, pickled: pemja hands bytes to the JVM an order of magnitude faster than str.
        pickled = Types.PICKLED_BYTE_ARRAY()
        self.snapshot = runtime_context.get_state(ValueStateDescriptor("operator-state", pickled))
        self.log = runtime_context.get_list_state(ListStateDescriptor("operator-log", pickled))
        # route -> [state, log entries since its snapshot]
        self.cache: OrderedDict[str, list[Any]] = OrderedDict()
        self.stream_time_ms = -(2**63)
        self.lag_ms = int(self.settings.out_of_orderness_s * 1000)

    def _load(self, route: str, name: str) -> list[Any]:
        cached = self.cache.get(route)
        if cached is not None:
            self.cache.move_to_end(route)
            return cached
        detector = self.detectors[name]
        stored = self.snapshot.value()
        state = detector.new_state() if stored is None else detector.state_type.from_bytes(stored)
        logged = 0
        for entry in self.log.get() or ():
            self._replay(route, name, state, entry)
            logged += 1
        cached = self.cache[route] = [state, logged]
        if len(self.cache) > self.CACHED_STATES:
            self.cache.popitem(last=False)
        return cached

    def _replay(self, route: str, name: str, state: OperatorState, entry: tuple[str, Any]) -> None:
        """Apply a log entry again: a unit learned (its score is discarded) or a deadline check."""
        if entry[0] == "u":
            self.detectors[name].score_learn_one(pickle.loads(entry[1]), state)
        else:
            self.rules[name].expire(route.split("/", 1)[1], state, datetime.fromtimestamp(entry[1] / 1000.0, UTC))

    def _logged(self, cached: list[Any], entry: tuple[str, Any]) -> None:
        """Record in Flink state what was just applied to ``cached``'s state (or retake its snapshot)."""
        cached[1] += 1
        if cached[1] >= self.SNAPSHOT_EVERY:
            self.snapshot.update(cached[0].to_bytes())
            self.log.clear()
            cached[1] = 0
        else:
            self.log.add(entry)

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if value[0] == "e":
            _, _, _, uid, raw, count = value
            yield Row(PIPELINE, ("e", uid, raw, count))
            return
        _, route, when, uid, name, index, pickled_unit, envelope = value
        self.stream_time_ms = max(self.stream_time_ms, when)
        detector = self.detectors[name]
        cached = self._load(route, name)
        state = cached[0]
        unit = pickle.loads(pickled_unit)
        # One pass over the unit: the same score and state as score_one then learn_one (Operator contract).
        score = detector.score_learn_one(unit, state)
        self._logged(cached, ("u", pickled_unit))
        rule = self.rules.get(name)
        if rule is not None:
            key = route.split("/", 1)[1]
            for deadline in rule.deadlines(key, unit, state):
                ctx.timer_service().register_event_time_timer(self.wake_up_ms(deadline))
        yield Row(PIPELINE, ("s", uid, name, index, _fields(score), envelope))

    def on_timer(self, timestamp: int, ctx: KeyedProcessFunction.OnTimerContext) -> Iterator[Any]:
        end_of_input = ctx.timer_service().current_watermark() >= MAX_WATERMARK
        # The last real watermark would have been stream time - lag - 1 ms.
        if end_of_input and timestamp > self.stream_time_ms - self.lag_ms - 1:
            return  # end of a bounded input, before the stream's time reached this deadline: still open
        route: str = ctx.get_current_key()
        name, key = route.split("/", 1)
        rule = self.rules.get(name)
        if rule is None:
            return
        cached = self._load(route, name)
        scores = rule.expire(key, cached[0], datetime.fromtimestamp(timestamp / 1000.0, UTC))
        if scores:
            self._logged(cached, ("x", timestamp))
            by_subject: dict[str, list[dict[str, Any] | None]] = {}
            for score in scores:
                by_subject.setdefault(score.subject_event_id, []).append(_fields(score))
            for subject_scores in by_subject.values():
                yield Row(PIPELINE, ("t", subject_scores))


class RunPipeline(KeyedProcessFunction):  # type: ignore[misc]
    """Gathers each event's unit scores and runs the pipeline on complete events, in input order.

    Keyed state (one key, ``pipeline``): ``snapshot``, the pipeline's state at some point,
    and ``log``, what it processed since (replayed on restore). The events being gathered
    need no state: checkpoints are aligned, the parse stage emits all of an event's units
    and its envelope before it forwards a barrier, and the score stage forwards their
    results before the barrier too, so when the barrier has reached this stage from every
    score subtask, every event before it is complete and processed.
    """

    def __init__(self, settings: FlinkJobSettings) -> None:
        self.settings = settings

    def open(self, runtime_context: RuntimeContext) -> None:
        worker_setup()
        load_operators()
        self.state = SnapshotLog(runtime_context, self.settings.snapshot_every)
        self.core: PipelineCore | None = None
        # uid -> [raw | None, unit count | None, {detector: {index: score fields | None}}, scores received]
        self.pending: dict[str, list[Any]] = {}
        self.order: deque[str] = deque()

    def _start(self) -> PipelineCore:
        core = PipelineCore(self.settings)
        self.state.restore("pipeline stage", self.settings, core.load_state_bytes, lambda e: self._apply(core, e))
        return core

    @staticmethod
    def _apply(core: PipelineCore, entry: tuple[Any, ...]) -> tuple[PipelineResult | None, Alert | None]:
        if entry[0] == "t":
            return None, core.expired([_score(fields) for fields in entry[1]])
        _, raw, gathered = entry
        scores = {name: [_score(fields) for fields in fields_list] for name, fields_list in gathered.items()}
        return core.process(decode_event(raw), scores), None

    def process_element(self, value: Any, ctx: KeyedProcessFunction.Context) -> Iterator[Any]:
        if self.core is None:
            self.core = self._start()
        kind = value[0]
        if kind == "t":
            yield from self._run(("t", value[1]))
            return
        uid = value[1]
        entry = self.pending.get(uid)
        if entry is None:
            entry = self.pending[uid] = [None, None, {}, 0]
        if kind == "e":
            entry[0], entry[1] = value[2], value[3]
            self.order.append(uid)
        else:
            _, _, name, index, fields, envelope = value
            entry[2].setdefault(name, {})[index] = fields
            entry[3] += 1
            if envelope is not None:  # the event's last unit
                entry[0], entry[1] = envelope
                self.order.append(uid)
        while self.order:
            raw, count, gathered, received = self.pending[self.order[0]]
            if raw is None or received < count:
                return
            del self.pending[self.order.popleft()]
            scores = {
                name: [fields for _, fields in sorted(by_index.items()) if fields is not None]
                for name, by_index in gathered.items()
            }
            yield from self._run(("e", raw, scores))

    def _run(self, entry: tuple[Any, ...]) -> Iterator[Any]:
        assert self.core is not None
        result, alert = self._apply(self.core, entry)
        if result is not None:
            for score in result.scores:
                yield _score_row(score)
            alerts = result.alerts  # its own, then later findings' on earlier subjects
        else:
            for fields in entry[1]:
                yield _score_row(_score(fields))
            alerts = [alert] if alert is not None else []
        for alert in alerts:
            yield ALERTS, _alert_row(alert)
        self.state.record(entry, self.core.state_bytes)


# --------------------------------------------------------------------------------------------
# Building and running the job
# --------------------------------------------------------------------------------------------


def kafka_connector_jars(settings: FlinkJobSettings | None = None) -> list[Path]:
    """The Flink Kafka connector jar(s), fetched into ``deploy/jars/flink`` with Maven when missing."""
    if settings is not None and settings.jars:
        return [Path(j).resolve() for j in settings.jars]
    jars = sorted(FLINK_JARS_DIR.glob("flink-sql-connector-kafka-*.jar"))
    if not jars and FETCH_SCRIPT.is_file():
        import subprocess

        proc = subprocess.run(["bash", str(FETCH_SCRIPT), "flink"], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"fetching the Flink Kafka connector failed:\n{proc.stdout}{proc.stderr}")
        jars = sorted(FLINK_JARS_DIR.glob("flink-sql-connector-kafka-*.jar"))
    if not jars:
        raise RuntimeError(f"no flink-sql-connector-kafka jar in {FLINK_JARS_DIR}: deploy/kafka/fetch-jars.sh flink")
    return jars


_CLUSTER_OWNED = frozenset(
    {
        "python.executable",
        "python.client.executable",
        "jobmanager.rpc.address",
        "taskmanager.host",
        "rest.address",
        "web.upload.dir",
        "taskmanager.numberOfTaskSlots",
        "execution.checkpointing.dir",
        "state.backend.type",
        "state.backend.incremental",
    }
)
"""Options a cluster's own configuration sets, left alone with ``cluster=True``."""

SUBMITTED_BY_FLINK_ENV = "PYFLINK_GATEWAY_PORT"
"""Set by Flink's PythonDriver (``flink run -py/-pym``, the Kubernetes operator) for the Python
program it starts: PyFlink then talks to the submitting JVM instead of launching its own."""


def submitted_by_flink() -> bool:
    """True when this process is a Python program started by Flink's PythonDriver (``flink run``)."""
    return SUBMITTED_BY_FLINK_ENV in os.environ


def flink_configuration(settings: FlinkJobSettings) -> dict[str, str]:
    """The Flink configuration of the job (also what a cluster deployment would set)."""
    conf: dict[str, str] = {
        "python.execution-mode": settings.execution_mode,
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "pipeline.jars": ";".join(p.as_uri() for p in kafka_connector_jars(settings)),
        "parallelism.default": str(settings.parallelism),
        # Only loopback: the local MiniCluster's RPC, blob server and REST endpoint.
        "jobmanager.bind-host": "127.0.0.1",
        "jobmanager.rpc.address": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "rest.address": "127.0.0.1",
        # The REST endpoint's upload folder (Flink's default is /tmp/flink-web-upload, left behind).
        "web.upload.dir": str(Path(settings.checkpoint_dir).resolve().parent / "web-upload"),
        "state.backend.type": settings.state_backend,
        "restart-strategy.type": "fixed-delay" if settings.restart_attempts > 0 else "none",
        # Enough slots for the stages of one parallel pipeline.
        "taskmanager.numberOfTaskSlots": str(max(1, settings.parallelism)),
    }
    if settings.restart_attempts > 0:
        conf["restart-strategy.fixed-delay.attempts"] = str(settings.restart_attempts)
        conf["restart-strategy.fixed-delay.delay"] = "5 s"
    if settings.state_backend == "rocksdb":
        conf["state.backend.incremental"] = "true"
    if settings.checkpointing:
        conf.update(
            {
                "execution.checkpointing.interval": f"{settings.checkpoint_interval_ms} ms",
                "execution.checkpointing.mode": "EXACTLY_ONCE",
                # Aligned barriers: the pipeline stage relies on them (see RunPipeline).
                "execution.checkpointing.unaligned.enabled": "false",
                "execution.checkpointing.dir": Path(settings.checkpoint_dir).resolve().as_uri(),
                "execution.checkpointing.externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
                "execution.checkpointing.num-retained": str(settings.checkpoints_retained),
                "execution.checkpointing.min-pause": f"{min(1000, settings.checkpoint_interval_ms // 2)} ms",
            }
        )
    if settings.from_checkpoint is not None:
        conf["execution.state-recovery.path"] = Path(settings.from_checkpoint).resolve().as_uri()
    if settings.cluster:
        # The cluster decides where it listens, how many slots it has, which Python its workers
        # run and where checkpoints go (e.g. s3:// in the FlinkDeployment): do not override them.
        for key in [k for k in conf if k in _CLUSTER_OWNED or k.endswith((".bind-host", ".bind-address"))]:
            del conf[key]
        # The submitter's pipeline.jars hold Flink's Python runtime (and `flink run -j` jars): setting
        # the option would replace them, so build_job appends the connector to them instead.
        del conf["pipeline.jars"]
    if settings.execution_mode == "process":
        # Defaults (1,000 records, 1 s) measured ~1.2k events/s here; larger bundles amortise the RPC.
        conf["python.fn-execution.bundle.size"] = "5000"
        conf["python.fn-execution.bundle.time"] = "200"
    conf.update(dict(settings.extra_config))
    return conf


def _prepare_process(settings: FlinkJobSettings) -> None:
    """Environment the gateway JVM inherits: the venv's ``bin`` first on PATH (thread mode
    finds libpython through it) and a log directory of our own (not inside site-packages).
    Nothing to do under ``flink run``: the gateway is the submitting JVM, already running."""
    if submitted_by_flink():
        return
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if not path.startswith(bin_dir + os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + path
    log_dir = settings.log_dir or Path(settings.checkpoint_dir).resolve().parent / "log"
    if "FLINK_LOG_DIR" not in os.environ:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        os.environ["FLINK_LOG_DIR"] = str(Path(log_dir).resolve())


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _with(options: dict[str, str]) -> str:
    return ", ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


_TABLE_NAME = re.compile(r"[^A-Za-z0-9_]")


def _source_ddl(settings: FlinkJobSettings, table: str) -> str:
    startup = {"earliest": "earliest-offset", "latest": "latest-offset", "group": "group-offsets"}
    options = {
        "connector": "kafka",
        "topic": ";".join(settings.input_topics),
        "properties.bootstrap.servers": settings.bootstrap,
        "properties.group.id": settings.group_id,
        "properties.auto.offset.reset": "earliest",
        "properties.isolation.level": "read_committed",
        "properties.max.partition.fetch.bytes": str(LARGE_MESSAGE_BYTES),
        "scan.startup.mode": startup[settings.starting_offsets],
        "format": "raw",
    }
    if settings.bounded:
        options["scan.bounded.mode"] = "latest-offset"
    return (
        f"CREATE TEMPORARY TABLE {table} (`raw` BYTES, `topic` STRING METADATA VIRTUAL, "
        f"`partition` INT METADATA VIRTUAL, `offset` BIGINT METADATA VIRTUAL) WITH ({_with(options)})"
    )


def _sink_ddl(settings: FlinkJobSettings, table: str, topic: str, kind: str, parallelism: int) -> str:
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": settings.bootstrap,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.parallelism": str(parallelism),
        "properties.max.request.size": str(LARGE_MESSAGE_BYTES),
        "properties.batch.size": str(SINK_BATCH_BYTES),
        "properties.linger.ms": str(settings.resolved_sink_linger_ms),
    }
    if settings.checkpointing:
        options["sink.delivery-guarantee"] = "exactly-once"
        options["sink.transactional-id-prefix"] = f"{settings.transactional_id_prefix}-{kind}"
        options["properties.transaction.timeout.ms"] = str(settings.transaction_timeout_ms)
    else:
        options["sink.delivery-guarantee"] = "at-least-once"
    return (
        f"CREATE TEMPORARY TABLE {table} (`k` BYTES, `v` BYTES, `headers` MAP<STRING, BYTES> METADATA) "
        f"WITH ({_with(options)})"
    )


def _jar_path(url: str) -> str:
    """The file of a ``pipeline.jars`` entry (``file:/a.jar``, ``file:///a.jar``, ``local:///a.jar`` or a path)."""
    parsed = urlparse(url)
    return os.path.realpath(unquote(parsed.path) if parsed.scheme else url)


def add_missing_jars(env: StreamExecutionEnvironment, jars: Sequence[Path]) -> list[Path]:
    """Append to the environment's ``pipeline.jars`` those of ``jars`` it lacks; returns them.

    Under ``flink run`` the option already lists Flink's Python runtime jar and the ``-j`` jar:
    they are kept (without them the job graph fails on the cluster with ClassNotFoundException
    for Flink's Python operators), and a jar given both ways is listed once.
    """
    from pyflink.util.java_utils import get_j_env_configuration

    # PyFlink's own add_jars reads the option the same way, from the Java environment's configuration.
    current = get_j_env_configuration(env._j_stream_execution_environment).getString("pipeline.jars", "")
    present = {_jar_path(str(url)) for url in Configuration.parse_list_value(current) if url}
    missing = [jar for jar in jars if _jar_path(str(jar)) not in present]
    if missing:
        env.add_jars(*(Path(jar).resolve().as_uri() for jar in missing))
    return missing


@dataclass
class FlinkJob:
    """A built job, ready to :meth:`execute` (blocking) or :meth:`submit` (returns a JobClient)."""

    settings: FlinkJobSettings
    env: StreamExecutionEnvironment
    table_env: StreamTableEnvironment
    flink_config: dict[str, str] = field(default_factory=dict)

    def execute(self) -> None:
        self.env.execute(self.settings.job_name)

    def submit(self) -> JobClient:
        return self.env.execute_async(self.settings.job_name)


CLUSTER_SUBMISSION = (
    "flink run -m HOST:PORT -pym vigie.streams.flink_cli -j CONNECTOR.jar run --cluster ... "
    "(or the Kubernetes operator's PythonDriver)"
)
"""How a job in cluster mode is started; started any other way it would run in a local MiniCluster."""


def build_job(settings: FlinkJobSettings) -> FlinkJob:
    """Build the DataStream job described in this module's docstring (starts the Flink gateway if needed)."""
    from pyflink.table import StreamTableEnvironment

    if settings.cluster and not submitted_by_flink():
        # Started on its own, PyFlink would run the job in a local MiniCluster without the cluster's settings.
        raise RuntimeError(f"cluster mode is for a job submitted by Flink: {CLUSTER_SUBMISSION}")
    _prepare_process(settings)
    conf_values = flink_configuration(settings)
    conf = Configuration()
    for key, value in conf_values.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    if settings.cluster:
        add_missing_jars(env, kafka_connector_jars(settings))
    env.set_parallelism(settings.parallelism)
    if settings.checkpointing:
        if not settings.cluster:  # a cluster writes to its own checkpoint storage
            Path(settings.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        env.enable_checkpointing(settings.checkpoint_interval_ms)
    t_env = StreamTableEnvironment.create(env)
    names = settings.names
    suffix = _TABLE_NAME.sub("_", settings.job_name)
    source_table, scores_table = f"vigie_in_{suffix}", f"vigie_scores_{suffix}"
    alerts_table, dead_table = f"vigie_alerts_{suffix}", f"vigie_dead_letters_{suffix}"
    t_env.execute_sql(_source_ddl(settings, source_table))
    t_env.execute_sql(_sink_ddl(settings, scores_table, names.scores, "scores", 1))
    t_env.execute_sql(_sink_ddl(settings, alerts_table, names.alerts, "alerts", 1))
    t_env.execute_sql(_sink_ddl(settings, dead_table, names.dead_letter, "dead-letter", settings.parallelism))

    if settings.fused:
        outputs = (
            _pipeline_keyed_source(t_env, source_table)
            .process(ScoreEvents(settings), output_type=MESSAGE_ROW)
            .name("score")
            .uid("vigie-score-events")
            .set_parallelism(1)
            .set_max_parallelism(1)
        )
        dead_letters = outputs.get_side_output(DEAD_LETTERS)
    else:
        outputs, dead_letters = _split_stages(settings, t_env.to_data_stream(t_env.from_path(source_table)))
    statements = t_env.create_statement_set()
    _insert_messages(t_env, statements, scores_table, outputs)
    _insert_messages(t_env, statements, alerts_table, outputs.get_side_output(ALERTS))
    statements.add_insert(dead_table, t_env.from_data_stream(dead_letters))
    statements.attach_as_datastream()
    return FlinkJob(settings, env, t_env, conf_values)


def _insert_messages(t_env: StreamTableEnvironment, statements: Any, table: str, messages: DataStream) -> None:
    """Add to ``statements`` the insert of ``messages`` (:data:`MESSAGE_ROW`) into the Kafka sink ``table``,
    each message's id as its ``vigie.id`` header (the map is built by Flink's generated code)."""
    from pyflink.table import DataTypes
    from pyflink.table.expressions import col, lit, map_

    header = map_(lit("vigie.id").cast(DataTypes.STRING()), col("id"))
    statements.add_insert(table, t_env.from_data_stream(messages).select(col("k"), col("v"), header))


SOURCE_ROW = Types.ROW_NAMED(
    ["raw", "topic", "partition", "offset"], [_BYTES, Types.STRING(), Types.INT(), Types.LONG()]
)
"""A source row as the keyed stages get it: the message's bytes, topic, partition and offset."""


def _keyed_by_first_field(stream: DataStream, value_type: Any) -> KeyedStream:
    """``stream``, rows ``(key string, value)``, keyed by their first field in Java; keyed stages get the value.

    ``key_by`` with a Python key selector puts a Python function before the keyed stage: each
    record, bytes and all, crosses into Python and back to get its key, which costs about as
    much as the crossing into the stage itself. Here the key is already the record's first
    field and Flink's own row-field selector (PyFlink's ``KeyByKeySelector``) reads it.
    """
    from pyflink.java_gateway import get_gateway

    key_type = Types.ROW([Types.STRING()]).get_java_type_info()
    j_keyed = stream._j_data_stream.keyBy(get_gateway().jvm.KeyByKeySelector(), key_type)
    return KeyedStream(j_keyed, value_type, stream)


def _pipeline_keyed_source(t_env: StreamTableEnvironment, source_table: str) -> KeyedStream:
    """The source's rows (:data:`SOURCE_ROW`) under the fused stage's one key, ``pipeline``, set in SQL.

    ``to_append_stream`` (not ``to_data_stream``): Flink's keyed Python operator takes rows typed
    as ``RowTypeInfo``, which only the former gives.
    """
    query = f"SELECT '{PIPELINE}' AS k, ROW(`raw`, `topic`, `partition`, `offset`) AS v FROM {source_table}"
    keyed_rows = t_env.to_append_stream(
        t_env.sql_query(query), Types.ROW_NAMED(["k", "v"], [Types.STRING(), SOURCE_ROW])
    )
    return _keyed_by_first_field(keyed_rows, SOURCE_ROW)


def _split_stages(settings: FlinkJobSettings, rows: DataStream) -> tuple[DataStream, DataStream]:
    """The split layout's parse, score and pipeline stages: (score rows with the alerts side output, dead letters)."""
    parsed = rows.process(ParseAndSplit(settings), output_type=KEYED_RECORD).name("parse").uid("vigie-parse")
    units = parsed
    detectors = make_detectors(settings.detectors)
    from vigie.operators.deadlines import deadline_rule  # imported by make_detectors (load_operators)

    if any(deadline_rule(d) is not None for d in detectors if not runtime_fed(d)):
        # Event time only matters to deadline timers: without them, no watermark operator per unit.
        lag = Duration.of_millis(int(settings.out_of_orderness_s * 1000))
        watermarks = (
            WatermarkStrategy.for_bounded_out_of_orderness(lag)
            .with_timestamp_assigner(UnitTime())
            .with_idleness(Duration.of_seconds(30))
        )
        units = parsed.assign_timestamps_and_watermarks(watermarks).name("event-time").uid("vigie-event-time")
    unit_scores = (
        _keyed_by_first_field(units, Types.PICKLED_BYTE_ARRAY())
        .process(ScoreUnits(settings), output_type=KEYED_RECORD)
        .name("score")
        .uid("vigie-score")
    )
    outputs = (
        _keyed_by_first_field(unit_scores, Types.PICKLED_BYTE_ARRAY())
        .process(RunPipeline(settings), output_type=MESSAGE_ROW)
        .name("pipeline")
        .uid("vigie-pipeline")
        .set_parallelism(1)
        .set_max_parallelism(1)
    )
    return outputs, parsed.get_side_output(DEAD_LETTERS)


def run_job(settings: FlinkJobSettings) -> None:
    """Build and run the job until it ends (a bounded input drained) or fails."""
    build_job(settings).execute()


_CHK = re.compile(r"^chk-(\d+)$")


def latest_checkpoint(directory: Path | str) -> Path | None:
    """The most recent complete checkpoint (``chk-N`` with ``_metadata``) under ``directory``.

    ``directory`` may be the checkpoint root (one sub-folder per job id), a job's folder, or
    a ``chk-N`` folder itself. Among several jobs the newest checkpoint wins.
    """
    root = Path(directory)
    if _CHK.match(root.name) and (root / "_metadata").is_file():
        return root
    found: list[tuple[float, int, Path]] = []
    for metadata in root.glob("**/chk-*/_metadata"):
        chk = metadata.parent
        match = _CHK.match(chk.name)
        if match:
            found.append((metadata.stat().st_mtime, int(match.group(1)), chk))
    return max(found)[2] if found else None
