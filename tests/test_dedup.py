"""Re-sent events (an ``event_id`` already processed) are skipped by the pipeline: not scored, not learned twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_pipeline_batches import _in_batches, _one_by_one, _same, _stream
from vigie.operators import ScoringPipeline
from vigie.operators._pipeline import EVICT_EVERY
from vigie.operators.dedup import RecentEventIds
from vigie.schemas import encode_event
from vigie.sinks.chdb_sink import ChdbSink
from vigie.streams.cli import app


def _with_resends(events: tuple[Any, ...], every: int = 7, behind: int = 13) -> tuple[list[Any], set[int]]:
    """``events`` with every ``every``-th event sent again ``behind`` positions later; the copies' positions."""
    out: list[Any] = []
    pending: dict[int, list[Any]] = {}
    copies: set[int] = set()
    for i, event in enumerate(events):
        out.append(event)
        if i % every == 0:
            pending.setdefault(i + behind, []).append(event)
        for again in pending.pop(i, []):
            copies.add(len(out))
            out.append(again)
    return out, copies


def test_a_stream_with_resends_gives_the_results_and_state_of_the_stream_without() -> None:
    events = _stream()[:4_000]
    dirty, copies = _with_resends(events)
    clean_pipeline, dirty_pipeline = ScoringPipeline(), ScoringPipeline()
    clean = _one_by_one(clean_pipeline, events)
    got = _one_by_one(dirty_pipeline, dirty)
    assert [r.duplicate for r in got] == [i in copies for i in range(len(dirty))]
    assert all(not r.scores and not r.alerts for i, r in enumerate(got) if i in copies)
    _same(clean, [r for i, r in enumerate(got) if i not in copies])
    assert dirty_pipeline.duplicates == len(copies) > 500
    assert dirty_pipeline.state_dict() == clean_pipeline.state_dict()
    # Without the id registry, the copies are learned again: the results differ (what the registry prevents).
    unguarded = _one_by_one(ScoringPipeline(duplicate_window=None), dirty)
    assert [r for i, r in enumerate(unguarded) if i not in copies] != clean


@pytest.mark.parametrize("size", [256, 5_000])
def test_batches_skip_the_same_resends_as_one_event_at_a_time(size: int) -> None:
    """Over a sweep of the ids (EVICT_EVERY events) with a one-hour window: an event sent again three hours
    (of stream time) later is processed again, one event at a time and in batches alike."""
    events = list(_stream())
    assert len(events) > EVICT_EVERY
    late = [events[100], events[5_000]]  # sent again at the end: after the sweep, past the window
    soon = [events[EVICT_EVERY + 50]]  # sent again at the end: still inside the window
    dirty, _ = _with_resends(tuple(events), every=97, behind=40)
    dirty += [*late, *soon]
    window = timedelta(hours=1)
    one, batched = ScoringPipeline(duplicate_window=window), ScoringPipeline(duplicate_window=window)
    expected = _one_by_one(one, dirty)
    got = _in_batches(batched, dirty, size)
    _same(expected, got)
    assert [r.duplicate for r in got[-3:]] == [False, False, True]
    assert batched.duplicates == one.duplicates > 100
    assert batched.state_dict() == one.state_dict()
    assert len(batched.seen) < len(events) / 2, "swept"  # type: ignore[arg-type]


def test_the_registry_survives_a_checkpoint_and_an_older_checkpoint_loads_without_it() -> None:
    events = _stream()[:1_000]
    pipeline = ScoringPipeline()
    for event in events:
        pipeline.process(event)
    state = pipeline.state_dict()
    restored = ScoringPipeline()
    restored.load_state_dict(state)
    assert restored.process(events[500]).duplicate
    older = {k: v for k, v in state.items() if k != "seen"}  # a version 3 checkpoint
    from_older = ScoringPipeline()
    from_older.load_state_dict(older)
    assert not from_older.process(events[500]).duplicate and len(from_older.seen) == 1  # type: ignore[arg-type]


def test_the_registry_forgets_in_arrival_order_up_to_the_first_recent_id() -> None:
    seen = RecentEventIds()
    for event_id, when in [("a", 10.0), ("b", 50.0), ("c", 20.0), ("d", 60.0)]:
        assert seen.first_time(event_id, when)
    assert seen.evict_before(30.0) == 1  # "c" came after "b", which is still recent: kept for now
    assert "a" not in seen and "c" in seen
    assert RecentEventIds.from_dict(seen.to_dict()).to_dict() == seen.to_dict()


def test_vigie_run_on_a_file_sent_twice_stores_what_one_copy_gives(tmp_path: Path) -> None:
    """The reviewer's case: every declaration line doubled. The stored scores and alerts are the clean run's."""
    events = _stream()[-3_000:]  # declarations come late in a generated stream (ENS are filed ahead)
    assert sum(e.event_type == "declaration" for e in events) > 1_000
    lines = [encode_event(e) for e in events]
    doubled = [
        copy
        for line, e in zip(lines, events, strict=True)
        for copy in [line] * (2 if e.event_type == "declaration" else 1)
    ]
    runs = {}
    for name, content in [("clean", lines), ("doubled", doubled)]:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"\n".join(content) + b"\n")
        result = CliRunner().invoke(app, ["run", "--input", str(path), "--data-dir", str(tmp_path / name), "--no-live"])
        assert result.exit_code == 0, result.output
        with ChdbSink(tmp_path / name / "clickhouse") as sink:
            runs[name] = (
                sink.query(
                    "SELECT count() AS n, sum(score) AS total, groupArraySorted(100000)(score_id) AS ids"
                    " FROM vigie.scores FINAL"
                )[0]
                | sink.query("SELECT count() AS alerts FROM vigie.alerts FINAL")[0]
            )
    assert runs["doubled"] == runs["clean"]
    assert runs["clean"]["n"] > 3_000
