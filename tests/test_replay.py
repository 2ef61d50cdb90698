"""`vigie replay`: CSV + mapping, date order, dead letters, prequential evaluation when labelled."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from vigie.operators import ScoringPipeline, UndervaluationDetector
from vigie.operators.ens_risk import EnsPreArrivalDetector
from vigie.streams.replay import Mapping, replay_command, replay_csv


def _pipeline(**kwargs: Any) -> ScoringPipeline:
    """The detectors under test: undervaluation and the ENS pre-arrival detector."""
    return ScoringPipeline([UndervaluationDetector(), EnsPreArrivalDetector()], **kwargs)


DETECTORS = "undervaluation,ens_pre_arrival"
HEADER = ["id", "date", "importer", "hs", "country", "value", "kg", "qty", "taxes", "fraud", "revenue"]
MAPPING = """
columns:
  id: id
  date: date
  operator: importer
  commodity_code: hs
  origin: country
  value: value
  mass: kg
  quantity: qty
  taxes: taxes
{labels}
date_format: "%d/%m/%Y"
"""


def _rows(n: int = 240) -> list[list[str]]:
    rows = []
    for i in range(n):
        fraud = i % 12 == 5
        value = 800.0 + (i % 7) * 10 if fraud else 4000.0 + (i % 7) * 100  # frauds declare a fifth of the value
        day = 1 + (n - i) * 27 // n  # written newest first: the replay must sort by date
        label, revenue = ("1", "1280") if fraud else ("0", "0")
        rows.append([f"D{i:04d}", f"{day:02d}/03/2025", f"IMP{i % 9}", "610910", "BD", f"{value:.2f}", "100",
                     "500", f"{value * 0.32:.2f}", label, revenue])  # fmt: skip
    rows.append(["BAD1", "31/02/2025", "IMP1", "610910", "BD", "100", "10", "", "0", "0", "0"])  # no 31 February
    rows.append(["BAD2", "02/03/2025", "IMP1", "610910", "ZZ", "100", "10", "", "0", "0", "0"])  # no country ZZ
    rows.append(["BAD3", "02/03/2025", "IMP1", "61AB10", "BD", "100", "10", "", "0", "0", "0"])  # not a code
    return rows


def _write(tmp_path: Path, labelled: bool) -> tuple[Path, Path]:
    data, mapping = tmp_path / "declarations.csv", tmp_path / "mapping.yaml"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        writer.writerows(_rows())
    labels = "  fraud: fraud\n  revenue: revenue" if labelled else ""
    mapping.write_text(MAPPING.format(labels=labels))
    return data, mapping


def test_rows_replayed_in_date_order_and_bad_rows_dead_lettered(tmp_path: Path) -> None:
    data, mapping_file = _write(tmp_path, labelled=True)
    summary, evaluator = replay_csv(data, Mapping.load(mapping_file), _pipeline())
    assert summary.rows == 243 and summary.declarations == 240
    reasons = sorted(letter.reason for letter in summary.dead_letters)
    assert any("date '31/02/2025' does not match %d/%m/%Y" in r for r in reasons)
    assert any("unknown country code 'ZZ'" in r for r in reasons)
    assert any("commodity code '61AB10'" in r for r in reasons)
    assert all(letter.raw.startswith(b"BAD") for letter in summary.dead_letters)  # the row itself is kept
    times = [r.when for r in evaluator.records]
    assert times == sorted(times) and times[0] < times[-1]
    # Undervalued rows rise to the top once the reference unit value is learned.
    report = evaluator.report()
    assert report.n_fraud_records == 20
    assert report.ranking["undervaluation"][0.10].precision > 0.6


def test_replay_command_evaluates_labelled_csv(tmp_path: Path) -> None:
    data, mapping = _write(tmp_path, labelled=True)
    app = typer.Typer()
    app.command()(replay_command)
    letters, alerts = tmp_path / "dead.jsonl", tmp_path / "alerts.jsonl"
    args = ["--csv", str(data), "--mapping", str(mapping), "--dead-letters", str(letters), "--alerts", str(alerts),
            "--detectors", DETECTORS]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "declarations replayed" in result.output and "P@5%" in result.output
    dead = [orjson.loads(line) for line in letters.read_bytes().splitlines()]
    assert len(dead) == 3 and all(d["source"].startswith("file:") for d in dead)
    for line in alerts.read_bytes().splitlines():
        assert orjson.loads(line)["subject_type"] == "declaration"


def test_replay_without_labels_only_scores(tmp_path: Path) -> None:
    data, mapping = _write(tmp_path, labelled=False)
    app = typer.Typer()
    app.command()(replay_command)
    result = CliRunner().invoke(app, ["--csv", str(data), "--mapping", str(mapping), "--detectors", DETECTORS])
    assert result.exit_code == 0, result.output
    assert "without evaluation" in result.output and "P@5%" not in result.output


def test_mapping_errors_are_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("columns:\n  date: d\n  operator: o\n")
    with pytest.raises(ValueError, match="commodity_code"):
        Mapping.load(bad)
    bad.write_text("columns:\n  date: d\n  operator: o\n  commodity_code: c\n  origin: x\n  value: v\n  colour: c\n")
    with pytest.raises(ValueError, match="colour"):
        Mapping.load(bad)
    data, mapping = _write(tmp_path, labelled=False)
    mapping.write_text(MAPPING.format(labels="  fraud: is_fraud"))
    app = typer.Typer()
    app.command()(replay_command)
    result = CliRunner().invoke(app, ["--csv", str(data), "--mapping", str(mapping), "--detectors", DETECTORS])
    assert result.exit_code != 0 and "is_fraud" in result.output
