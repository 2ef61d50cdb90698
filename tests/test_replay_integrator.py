"""`vigie replay` on the inputs integrators really have: no revenue, bad mapping values, bytes that are
not UTF-8, and a file of which nothing can be replayed."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import orjson
import pytest
import typer
from click.testing import Result
from typer.testing import CliRunner

from tests.test_replay import DETECTORS, HEADER, MAPPING, _pipeline, _rows
from vigie.streams.replay import Mapping, replay_command, replay_csv


def _invoke(data: Path, mapping: Path, *extra: str) -> Result:
    app = typer.Typer()
    app.command()(replay_command)
    args = ["--csv", str(data), "--mapping", str(mapping), "--detectors", DETECTORS, *extra]
    return CliRunner().invoke(app, args)


def _csv(tmp_path: Path, rows: list[list[str]], header: list[str] = HEADER) -> Path:
    data = tmp_path / "declarations.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return data


# -- item 1: labels without revenue ------------------------------------------------------------


def test_labelled_replay_without_a_revenue_column_says_revenue_is_not_available(tmp_path: Path) -> None:
    data = _csv(tmp_path, _rows())
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels="  fraud: fraud"))
    json_out = tmp_path / "report.json"
    result = _invoke(data, mapping, "--json", str(json_out))
    assert result.exit_code == 0, result.output
    assert "P@5%" in result.output and "n/a: the labelled frauds carry no revenue" in result.output
    alerts = orjson.loads(json_out.read_bytes())["alerts"]
    assert alerts["revenue_share"] == 0.0 and alerts["revenue_at_risk_eur"] == 0.0


def test_labelled_replay_with_empty_revenue_on_the_frauds(tmp_path: Path) -> None:
    rows = [row[:-1] + ([""] if row[-2] == "1" else [row[-1]]) for row in _rows()]
    assert sum(row[-2] == "1" for row in rows) == 20
    data = _csv(tmp_path, rows)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels="  fraud: fraud\n  revenue: revenue"))
    result = _invoke(data, mapping)
    assert result.exit_code == 0, result.output
    assert "n/a: the labelled frauds carry no revenue" in result.output


def test_revenue_share_is_still_a_figure_when_revenue_is_mapped(tmp_path: Path) -> None:
    data = _csv(tmp_path, _rows())
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels="  fraud: fraud\n  revenue: revenue"))
    result = _invoke(data, mapping)
    assert result.exit_code == 0, result.output
    assert "of all revenue at risk" in result.output and "n/a" not in result.output


# -- item 8: mapping values of the wrong type --------------------------------------------------

BASE = "columns:\n  date: date\n  operator: importer\n  commodity_code: hs\n  origin: country\n  value: value\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('delimiter: ";;"\n', "delimiter must be one character"),
        ('delimiter: ""\n', "delimiter must be one character"),
        ("delimiter: 5\n", "delimiter must be one character"),
        ("date_format: 20250301\n", "date_format must be a strptime format"),
        ("date_format: [a]\n", "date_format must be a strptime format"),
        ("defaults: [office, FR000000]\n", "'defaults' must be a mapping"),
        ("defaults:\n  office: [FR000000]\n", "defaults: value ['FR000000'] of 'office'"),
        ("defaults:\n  office:\n", "defaults: value None of 'office'"),
        ("defaults:\n  operator_country: {a: b}\n", "of 'operator_country' must be a non-empty string"),
    ],
)
def test_mapping_values_of_the_wrong_type_are_usage_errors(tmp_path: Path, extra: str, message: str) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(BASE + extra)
    with pytest.raises(ValueError, match=re.escape(message)):
        Mapping.load(mapping)
    result = _invoke(_csv(tmp_path, _rows(24)), mapping)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--mapping" in result.output


@pytest.mark.parametrize("columns", ["  value: [a, b]\n", "  value:\n", "  value: true\n"])
def test_column_names_of_the_wrong_type_are_usage_errors(tmp_path: Path, columns: str) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(BASE.replace("  value: value\n", columns))
    with pytest.raises(ValueError, match=r"columns: value .* of 'value' must be a non-empty string"):
        Mapping.load(mapping)


def test_numeric_column_names_still_map(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(BASE + "  mass: 2024\ndelimiter: ';'\ndefaults:\n  office: FR000000\n")
    loaded = Mapping.load(mapping)
    assert loaded.columns["mass"] == "2024" and loaded.delimiter == ";"


# -- item 8: bytes that are not UTF-8, and nothing replayed -----------------------------------


def _bytes_csv(tmp_path: Path, rows: list[list[str]], bad: bytes) -> Path:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    writer.writerows(rows)
    data = tmp_path / "declarations.csv"
    # A Latin-1 row among UTF-8 ones, as spreadsheets export them: its description is not UTF-8.
    data.write_bytes(out.getvalue().encode() + bad)
    return data


def test_a_row_with_bytes_that_are_not_utf8_is_dead_lettered(tmp_path: Path) -> None:
    bad = b"LAT1,02/03/2025,IMP\xe91,610910,BD,100,10,,0,0,0\r\n"
    data = _bytes_csv(tmp_path, _rows(24), bad)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels=""))
    summary, _ = replay_csv(data, Mapping.load(mapping), _pipeline())
    assert summary.rows == 28 and summary.declarations == 24
    (latin,) = [d for d in summary.dead_letters if d.raw.startswith(b"LAT1")]
    assert latin.reason == (
        "row cannot be replayed: operator (column 'importer') is not valid UTF-8: byte 0xe9; save the CSV as UTF-8"
    )
    assert latin.field == "operator" and latin.raw == bad.rstrip(b"\r\n")  # the row's own bytes


def test_bad_bytes_in_an_unmapped_column_do_not_matter(tmp_path: Path) -> None:
    bad = b"LAT2,02/03/2025,IMP1,610910,BD,100,10,,0,0,\xe9\r\n"  # revenue is not mapped here
    data = _bytes_csv(tmp_path, _rows(24), bad)
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels=""))
    summary, _ = replay_csv(data, Mapping.load(mapping), _pipeline())
    assert summary.declarations == 25


def test_exit_code_is_1_when_every_row_is_dead_lettered(tmp_path: Path) -> None:
    data = _csv(tmp_path, _rows(24))
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels="  fraud: fraud").replace("%d/%m/%Y", "%Y-%m-%d"))
    letters = tmp_path / "dead.jsonl"
    result = _invoke(data, mapping, "--dead-letters", str(letters))
    assert result.exit_code == 1, result.output
    assert "every one of the 27 rows was dead-lettered" in result.output
    assert len(letters.read_bytes().splitlines()) == 27  # written before leaving


def test_a_row_dated_before_2000_is_dead_lettered_with_the_range(tmp_path: Path) -> None:
    rows = [*_rows(24), ["OLD1", "02/03/1990", "IMP1", "610910", "BD", "100", "10", "", "0", "0", "0"]]
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(MAPPING.format(labels=""))
    summary, _ = replay_csv(_csv(tmp_path, rows), Mapping.load(mapping), _pipeline())
    (old,) = [d for d in summary.dead_letters if d.raw.startswith(b"OLD1")]
    assert old.field == "event_time" and "outside the accepted range 2000-01-01 to 2099-12-31" in old.reason
