"""Pipeline health samples: what a runtime reports about itself, landed next to the events.

A :class:`PipelineMetrics` record is one sample of one runtime component (the in-process
runner, a Faust worker, the Flink job, a sink) over ``interval_s`` seconds of wall-clock
time. Supervisors' pipeline-health board reads them from ``vigie.pipeline_metrics``
(see :mod:`vigie.sinks.views`) together with what the store itself sees (rows ingested per
minute, dead letters).

>>> from datetime import UTC, datetime
>>> m = PipelineMetrics.sample("runner", "host-1", datetime(2026, 3, 2, tzinfo=UTC), 10.0, events=52_000)
>>> m.events_per_s
5200.0
>>> m.metric_id
'runner:host-1:1772409600000'
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["PipelineMetrics"]


class PipelineMetrics(BaseModel):
    """One sample of a runtime component's throughput and lag.

    Counts cover the sample's interval only (not totals since start), so summing samples
    over any time range gives the events processed in that range.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: Literal["pipeline_metrics"] = "pipeline_metrics"
    metric_id: str = Field(
        min_length=1,
        max_length=200,
        description="component:instance:epoch-milliseconds of `at`; re-sending a sample is idempotent",
    )
    at: AwareDatetime = Field(description="Wall-clock end of the sampled interval")
    component: str = Field(min_length=1, max_length=64, description="'runner', 'faust', 'flink', 'sink', ...")
    instance: str = Field(min_length=1, max_length=128, description="Which worker: host name, pod, subtask")
    interval_s: float = Field(ge=0, le=86_400, allow_inf_nan=False, description="Seconds the sample covers")
    events: int = Field(default=0, ge=0, description="Inbound events processed in the interval")
    events_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False, description="events / interval_s")
    scores: int = Field(default=0, ge=0)
    alerts: int = Field(default=0, ge=0)
    dead_letters: int = Field(default=0, ge=0, description="Inputs rejected in the interval")
    lag_s: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Seconds the component is behind: age of the oldest unflushed row for a sink, "
        "consumer lag expressed in time for a stream worker",
    )
    consumer_lag: int | None = Field(default=None, ge=0, description="Kafka messages behind the log end")
    buffered_rows: int | None = Field(default=None, ge=0, description="Rows a sink holds in memory")

    @classmethod
    def sample(
        cls,
        component: str,
        instance: str,
        at: datetime,
        interval_s: float,
        *,
        events: int = 0,
        scores: int = 0,
        alerts: int = 0,
        dead_letters: int = 0,
        lag_s: float | None = None,
        consumer_lag: int | None = None,
        buffered_rows: int | None = None,
    ) -> PipelineMetrics:
        """A sample with its deterministic id and ``events_per_s`` derived from the counts."""
        millis = round(at.timestamp() * 1000)
        return cls(
            metric_id=f"{component}:{instance}:{millis}",
            at=at,
            component=component,
            instance=instance,
            interval_s=interval_s,
            events=events,
            events_per_s=round(events / interval_s, 3) if interval_s > 0 else 0.0,
            scores=scores,
            alerts=alerts,
            dead_letters=dead_letters,
            lag_s=lag_s,
            consumer_lag=consumer_lag,
            buffered_rows=buffered_rows,
        )
