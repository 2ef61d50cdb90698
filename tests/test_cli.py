"""The `vigie` commands other than run (which has its own end-to-end tests)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vigie.schemas import decode_event
from vigie.streams.cli import app

cli = CliRunner()


def test_schema_export_writes_one_schema_per_event_type(tmp_path: Path) -> None:
    result = cli.invoke(app, ["schema", "export", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(
        f"{t}.schema.json" for t in ("ens", "declaration", "excise", "outcome", "risk_score", "alert", "dead_letter")
    )
    schema = json.loads((tmp_path / "out" / "declaration.schema.json").read_text())
    assert schema["$id"] == "urn:vigie:schema:declaration:1.0"
    assert "customs_value_eur" in json.dumps(schema)


def test_generate_is_seeded_and_keeps_truth_apart(tmp_path: Path) -> None:
    outputs = []
    for name in ("a", "b"):
        result = cli.invoke(
            app,
            [
                "generate",
                "--out",
                str(tmp_path / f"{name}.jsonl"),
                "--truth",
                str(tmp_path / f"{name}-truth.jsonl"),
                "--duration-hours",
                "1",
                "--seed",
                "11",
            ],
        )
        assert result.exit_code == 0, result.output
        outputs.append((tmp_path / f"{name}.jsonl").read_bytes())
    assert outputs[0] == outputs[1]
    lines = outputs[0].splitlines()
    assert all(decode_event(line) for line in lines)
    assert b"patterns" not in outputs[0]  # the ground truth never travels with the events
    truth_ids = {json.loads(t)["event_id"] for t in (tmp_path / "a-truth.jsonl").read_text().splitlines()}
    assert truth_ids and truth_ids <= {json.loads(line)["event_id"] for line in lines}


def test_sql_reads_the_embedded_store(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    cli.invoke(app, ["generate", "--out", str(events), "--truth", str(tmp_path / "t.jsonl"), "--duration-hours", "1"])
    data_dir = tmp_path / "data"
    assert cli.invoke(app, ["run", "--input", str(events), "--data-dir", str(data_dir), "--no-live"]).exit_code == 0
    result = cli.invoke(app, ["sql", "SELECT count() AS n FROM vigie.ens FINAL", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    expected = sum(1 for line in events.read_bytes().splitlines() if b'"event_type":"ens"' in line)
    assert json.loads(result.output.strip())["n"] == expected


def test_run_sets_the_retention_of_personal_data(tmp_path: Path) -> None:
    events = tmp_path / "e.jsonl"
    cli.invoke(app, ["generate", "--out", str(events), "--truth", str(tmp_path / "t.jsonl"), "--duration-hours", "1"])
    data_dir = tmp_path / "data"
    args = ["run", "--input", str(events), "--data-dir", str(data_dir), "--no-live", "--retention-days", "90"]
    assert cli.invoke(app, args).exit_code == 0
    sql = "SELECT engine_full FROM system.tables WHERE database = 'vigie' AND name = 'scores'"
    result = cli.invoke(app, ["sql", sql, "--data-dir", str(data_dir)])
    assert "TTL ingested_at + toIntervalDay(90)" in json.loads(result.output.strip())["engine_full"]
    assert cli.invoke(app, [*args[:-1], "0"]).exit_code == 2, "a period of at least a day"


def test_sql_refuses_a_data_dir_without_a_store(tmp_path: Path) -> None:
    result = cli.invoke(app, ["sql", "SELECT 1", "--data-dir", str(tmp_path / "typo")])
    assert result.exit_code == 2 and "no store at" in result.output
    assert not (tmp_path / "typo").exists(), "no empty store created"


def test_run_refuses_out_of_range_generator_options(tmp_path: Path) -> None:
    for option, value in [("--fraud-share", "2"), ("--rate", "-5"), ("--duration-hours", "0")]:
        result = cli.invoke(app, ["run", "--data-dir", str(tmp_path), "--no-live", option, value])
        assert result.exit_code == 2 and option in result.output, (option, result.output)


def test_resume_with_other_generator_options_is_refused_not_resumed_part_way(tmp_path: Path) -> None:
    """The generated file is named by its options: resuming with others is another input, which the checkpoint
    refuses, instead of regenerating a different stream under the old name and skipping its first lines."""
    data_dir = str(tmp_path / "d")
    first = cli.invoke(app, ["run", "--data-dir", data_dir, "--no-live", "--duration-hours", "1"])
    assert first.exit_code == 0, first.output
    again = cli.invoke(app, ["run", "--data-dir", data_dir, "--no-live", "--duration-hours", "1", "--resume"])
    assert again.exit_code == 0 and "resuming on the stream generated before" in again.output
    assert "lines read" in again.output and "resumed" in again.output
    other = cli.invoke(app, ["run", "--data-dir", data_dir, "--no-live", "--duration-hours", "2", "--resume"])
    assert other.exit_code == 2 and "remove it or pass the same input" in " ".join(other.output.split())


def test_sql_says_clickhouses_error_in_a_line_and_a_busy_store_in_another(tmp_path: Path) -> None:
    import subprocess
    import sys

    from vigie.sinks.chdb_sink import ChdbSink

    data_dir = tmp_path / "data"
    ChdbSink(data_dir / "clickhouse").close()
    bad = cli.invoke(app, ["sql", "SELECT no_such_column FROM vigie.alerts", "--data-dir", str(data_dir)])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.splitlines()) == 1
    holder = ChdbSink(data_dir / "clickhouse")  # another process's view: this one holds the store
    try:
        other = subprocess.run(
            [str(Path(sys.executable).with_name("vigie")), "sql", "SELECT 1", "--data-dir", str(data_dir)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.close()
    assert other.returncode == 2 and "in use by another process" in other.stderr, other.stderr[-500:]
