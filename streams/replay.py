"""`vigie replay`: any CSV of declarations through the engine, with prequential evaluation when labelled.

The mapping file (YAML) names the CSV columns; every key of ``columns`` but the required
five is optional::

    columns:
      date: sgd.date              # required: acceptance date (ISO 8601 unless date_format is given)
      operator: importer.id       # required: importer; an EORI, or any id (made into one, see below)
      commodity_code: tariff.code # required: HS6, CN8 or TARIC10 digits (shorter codes are zero-padded)
      origin: country             # required: ISO 3166 alpha-2 country of origin
      value: cif.value            # required: customs value, EUR
      mass: gross.weight          # net mass, kg (required by the schema: a row without it is dead-lettered)
      quantity: quantity          # supplementary units
      taxes: total.taxes          # duty and taxes paid, EUR
      fraud: illicit              # label for evaluation: 1/0, true/false, yes/no
      revenue: revenue            # revenue at risk when fraudulent, EUR
      id: sgd.id                  # stable declaration id (default: the line number)
      office: office.id           # customs office
      declarant: declarant.id     # declarant (default: the importer)
      description: item.desc      # goods description
    date_format: "%y-%m-%d"       # strptime format (optional)
    delimiter: ","                # (optional) one character
    defaults:                     # (optional) values for what no column gives
      office: FR000000
      transport_mode: sea
      operator_country: FR        # prefix of the EORIs made from other ids

Each row becomes a one-item :class:`~vigie.schemas.ImportDeclaration` (taxes go to the duty,
the duty rate is taxes / value) and goes through the same strict validation as any event:
a row that cannot be mapped (bad date, missing value, unknown country...) is dead-lettered
with the reason and the row (as a CSV line), and the replay goes on; so is a row whose mapped
columns hold bytes that are not UTF-8, and a row dated before 2000 (the engine's accepted
range). The command exits with 1 when no row at all could be replayed. Rows are processed in date
order (stable for equal dates). Ids that are not EORIs become ``<operator_country>`` plus the
id's letters and digits (a hash when longer than 15 characters); offices likewise.

When ``fraud`` is mapped, the replay is the prequential evaluation of ``vigie evaluate``:
each row is scored before anything is learned from it, and labels are revealed only for
the rows the engine alerts on (their control outcome comes a few hours later).
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from vigie.operators import ScoringPipeline
from vigie.operators.fusion import LearnedFusion
from vigie.schemas import DeadLetter, EventRejected, ImportDeclaration, dead_letter, decode_event, encode_event

from .evaluate import PrequentialEvaluator, Truth, build_detectors, print_report, save_png

REQUIRED = ("date", "operator", "commodity_code", "origin", "value")
OPTIONAL = ("mass", "quantity", "taxes", "fraud", "revenue", "id", "office", "declarant", "description")
_TRUE = frozenset(("1", "true", "yes", "y", "t", "fraud", "illicit", "positive"))
_FALSE = frozenset(("0", "false", "no", "n", "f", "", "clean", "licit", "negative"))
_ALNUM = re.compile(r"[^A-Za-z0-9]")
_EORI = re.compile(r"^[A-Z]{2}[A-Za-z0-9]{1,15}$")
_OFFICE = re.compile(r"^[A-Z]{2}[A-Z0-9]{6}$")


@dataclass(frozen=True)
class Mapping:
    """A parsed mapping file (see the module docstring)."""

    columns: dict[str, str]
    date_format: str | None = None
    delimiter: str = ","
    defaults: dict[str, str] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        return "fraud" in self.columns

    @classmethod
    def load(cls, path: Path) -> Mapping:
        """Parse and check a mapping file; a ``ValueError`` names the file and the faulty key."""
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
            raise ValueError(f"{path}: expected a mapping with a 'columns' section")
        columns = _scalars(path, "columns", data["columns"])
        unknown = set(columns) - set(REQUIRED) - set(OPTIONAL)
        if unknown:
            raise ValueError(f"{path}: unknown field(s) {sorted(unknown)}; known: {', '.join(REQUIRED + OPTIONAL)}")
        missing = [k for k in REQUIRED if k not in columns]
        if missing:
            raise ValueError(f"{path}: required field(s) not mapped: {', '.join(missing)}")
        defaults = _scalars(path, "defaults", data.get("defaults") or {})
        date_format = data.get("date_format")
        if date_format is not None and (not isinstance(date_format, str) or not date_format.strip()):
            raise ValueError(f'{path}: date_format must be a strptime format in quotes, e.g. "%d/%m/%Y"')
        delimiter = data.get("delimiter", ",")
        if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
            raise ValueError(
                f'{path}: delimiter must be one character (not a quote or line break), e.g. ";" (got {delimiter!r})'
            )
        return cls(columns, date_format, delimiter, defaults)


def _scalars(path: Path, section: str, value: Any) -> dict[str, str]:
    """``section`` as a dict of strings: keys and values must be plain strings or integers (a column
    may be named ``2024``); lists, mappings, booleans and nulls are mistakes, reported here rather
    than as a traceback half-way through the CSV."""
    if not isinstance(value, dict):
        raise ValueError(f"{path}: '{section}' must be a mapping of names to values, not {type(value).__name__}")
    out: dict[str, str] = {}
    for key, item in value.items():
        for part, what in ((key, "key"), (item, "value")):
            if isinstance(part, bool) or not isinstance(part, str | int) or str(part).strip() == "":
                raise ValueError(f"{path}: {section}: {what} {part!r} of {key!r} must be a non-empty string")
        out[str(key)] = str(item)
    return out


class RowRejected(ValueError):
    """A row that cannot become a declaration; ``field`` is the mapping field at fault."""

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field


def _digest(text: str, n: int) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest().upper()[:n]


def _as_eori(value: str, country: str) -> str:
    if _EORI.match(value):
        return value
    clean = _ALNUM.sub("", value).upper()
    if not clean:
        raise RowRejected(f"operator id {value!r} has no letter or digit", "operator")
    return country + (clean if len(clean) <= 15 else _digest(clean, 15))


def _as_office(value: str, country: str) -> str:
    if _OFFICE.match(value):
        return value
    clean = _ALNUM.sub("", value).upper()
    return country + (clean.rjust(6, "0") if 0 < len(clean) <= 6 else _digest(value, 6))


def _number(row: dict[str, str], mapping: Mapping, name: str, required: bool = True) -> float | None:
    column = mapping.columns.get(name)
    raw = (row.get(column) or "").strip() if column else ""
    if not raw:
        if required:
            raise RowRejected(f"{name} (column {column!r}) is empty", name)
        return None
    try:
        value = float(raw.replace(" ", "").replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw)
    except ValueError:
        raise RowRejected(f"{name} (column {column!r}) is not a number: {raw!r}", name) from None
    if value != value or value in (float("inf"), float("-inf")):
        raise RowRejected(f"{name} (column {column!r}) is not finite: {raw!r}", name)
    return value


def parse_date(raw: str, date_format: str | None) -> datetime:
    """A timezone-aware datetime; naive dates and times are taken as UTC."""
    text = raw.strip()
    if not text:
        raise RowRejected("date is empty", "date")
    try:
        when = datetime.strptime(text, date_format) if date_format else datetime.fromisoformat(text)
    except ValueError:
        expected = date_format or "ISO 8601"
        raise RowRejected(f"date {text!r} does not match {expected}", "date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def row_to_declaration(
    row: dict[str, str], line: int, when: datetime, mapping: Mapping, source: str
) -> tuple[ImportDeclaration, Truth | None]:
    """One CSV row as a validated declaration (and its label), or :class:`RowRejected` / :class:`EventRejected`."""
    cols, defaults = mapping.columns, mapping.defaults
    country = defaults.get("operator_country", "FR")
    row_id = (row.get(cols["id"]) or "").strip() if "id" in cols else ""
    row_id = row_id or f"line{line}"
    operator = (row.get(cols["operator"]) or "").strip()
    if not operator:
        raise RowRejected(f"operator (column {cols['operator']!r}) is empty", "operator")
    importer = _as_eori(operator, country)
    declarant_raw = (row.get(cols["declarant"]) or "").strip() if "declarant" in cols else ""
    declarant = _as_eori(declarant_raw, country) if declarant_raw else importer
    code = _ALNUM.sub("", (row.get(cols["commodity_code"]) or "")).strip()
    if not code.isdigit() or not 4 <= len(code) <= 10:
        raise RowRejected(f"commodity code {code!r} is not 4 to 10 digits", "commodity_code")
    cn = code[:8].ljust(8, "0")
    taric = code if len(code) == 10 else None
    origin = (row.get(cols["origin"]) or "").strip().upper()
    value = _number(row, mapping, "value")
    assert value is not None
    if value <= 0:
        raise RowRejected(f"value must be positive (got {value})", "value")
    mass = _number(row, mapping, "mass", required="mass" in cols)
    if mass is None:
        raise RowRejected("net mass is not mapped: add a 'mass' column to the mapping", "mass")
    quantity = _number(row, mapping, "quantity", required=False)
    taxes = _number(row, mapping, "taxes", required=False) or 0.0
    office_raw = (row.get(cols["office"]) or "").strip() if "office" in cols else ""
    office = _as_office(office_raw, country) if office_raw else defaults.get("office", "FR000000")
    description = (row.get(cols["description"]) or "").strip() if "description" in cols else ""
    event_id = f"replay-{_digest(f'{source}/{row_id}', 24).lower()}"
    mrn = f"{when.year % 100:02d}{country}{_digest(f'mrn/{source}/{row_id}', 14)}"
    data: dict[str, Any] = {
        "event_type": "declaration",
        "event_id": event_id,
        "event_time": when.isoformat(),
        "source_system": "vigie-replay",
        "mrn": mrn,
        "declarant_eori": declarant,
        "importer_eori": importer,
        "seller": {"name": "unknown seller", "country": origin},
        "customs_office": office,
        "transport_mode_at_border": defaults.get("transport_mode", "sea"),
        "goods_items": [
            {
                "item_number": 1,
                "cn_code": cn,
                "taric_code": taric,
                "description": description or f"goods of CN {cn}",
                "origin_country": origin,
                "dispatch_country": origin,
                "net_mass_kg": mass,
                "supplementary_units": quantity if quantity and quantity > 0 else None,
                "supplementary_unit_code": "p/st" if quantity and quantity > 0 else None,
                "invoice_amount": value,
                "invoice_currency": "EUR",
                "customs_value_eur": value,
                "duty_rate_pct": min(1000.0, max(0.0, 100.0 * taxes / value)),
                "duty_eur": max(0.0, taxes),
                "vat_eur": 0.0,
            }
        ],
    }
    event = decode_event(orjson.dumps(data))  # the same strict validation as any inbound event
    assert isinstance(event, ImportDeclaration)
    truth = None
    if mapping.labelled:
        label = (row.get(cols["fraud"]) or "").strip().lower()
        if label not in _TRUE | _FALSE:
            raise RowRejected(f"fraud label {label!r} is not one of 1/0, true/false, yes/no", "fraud")
        if label in _TRUE:
            revenue = _number(row, mapping, "revenue", required=False) if "revenue" in cols else None
            truth = Truth(revenue_eur=max(0.0, revenue or 0.0), consignment=event_id, item_number=1)
    return event, truth


@dataclass
class ReplaySummary:
    rows: int = 0
    declarations: int = 0
    alerts: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)


def _raw_line(row: dict[str, str], fieldnames: list[str], delimiter: str) -> bytes:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator="").writerow([row.get(name, "") for name in fieldnames])
    # surrogateescape gives back the bytes that were not UTF-8, as they were in the file.
    return out.getvalue().encode("utf-8", "surrogateescape")


def _check_utf8(row: dict[str, str], mapping: Mapping) -> None:
    """Raise :class:`RowRejected` if a mapped column of ``row`` held bytes that are not UTF-8.

    The file is read with ``errors="surrogateescape"``, so such bytes arrive as lone surrogates
    instead of stopping the whole replay with a ``UnicodeDecodeError``; unmapped columns are not
    read, so their bytes do not matter.
    """
    for name, column in mapping.columns.items():
        value = row.get(column)
        if not value:
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = ord(value[exc.start]) - 0xDC00
            raise RowRejected(
                f"{name} (column {column!r}) is not valid UTF-8: byte 0x{byte:02x}; save the CSV as UTF-8", name
            ) from None


def replay_csv(
    csv_path: Path,
    mapping: Mapping,
    pipeline: ScoringPipeline,
    on_row: Any = None,
) -> tuple[ReplaySummary, PrequentialEvaluator]:
    """Replay ``csv_path`` in date order through ``pipeline``; dead-letter the rows that do not map."""
    summary = ReplaySummary()
    source = f"file:{csv_path.resolve()}"
    evaluator = PrequentialEvaluator(pipeline, legacy="none")
    dated: list[tuple[datetime, int, dict[str, str]]] = []
    with open(csv_path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f, delimiter=mapping.delimiter)
        fieldnames = list(reader.fieldnames or [])
        absent = [c for c in mapping.columns.values() if c not in fieldnames]
        if absent:
            raise typer.BadParameter(
                f"column(s) {absent} named by the mapping are not in {csv_path.name}: {fieldnames}"
            )
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            summary.rows += 1
            try:
                _check_utf8(row, mapping)
                when = parse_date(row.get(mapping.columns["date"]) or "", mapping.date_format)
            except RowRejected as rejected:
                summary.dead_letters.append(_letter(row, fieldnames, mapping, f"{source}:{line}", rejected))
                continue
            dated.append((when, line, row))
    dated.sort(key=lambda d: (d[0], d[1]))
    for when, line, row in dated:
        try:
            event, truth = row_to_declaration(row, line, when, mapping, source)
        except (RowRejected, EventRejected) as rejected:
            summary.dead_letters.append(_letter(row, fieldnames, mapping, f"{source}:{line}", rejected))
        else:
            before = len(evaluator.alerts)
            evaluator.feed(event, truth)
            summary.declarations += 1
            summary.alerts += len(evaluator.alerts) - before
        if on_row is not None:
            on_row()
    evaluator.finish()
    return summary, evaluator


def _letter(
    row: dict[str, str], fieldnames: list[str], mapping: Mapping, source: str, rejected: RowRejected | EventRejected
) -> DeadLetter:
    reason = EventRejected(f"row cannot be replayed: {rejected.reason}", rejected.field)
    return dead_letter(_raw_line(row, fieldnames, mapping.delimiter), source, reason)


def replay_command(
    csv_path: Annotated[Path, typer.Option("--csv", exists=True, dir_okay=False, help="CSV of declarations.")],
    mapping_path: Annotated[
        Path, typer.Option("--mapping", exists=True, dir_okay=False, help="YAML naming the CSV's columns.")
    ],
    dead_letters: Annotated[
        Path | None, typer.Option(help="Write the rows that could not be replayed here (JSON lines).")
    ] = None,
    alerts_out: Annotated[
        Path | None, typer.Option("--alerts", help="Write the alerts raised here (JSON lines).")
    ] = None,
    capacity: Annotated[float, typer.Option(min=0.0001, max=0.5, help="Share of each office's flow alerted.")] = 0.01,
    detectors: Annotated[str, typer.Option(help="'all', 'default' or a comma list of detectors.")] = "all",
    png: Annotated[Path | None, typer.Option(help="Save precision/revenue curves (labelled data only).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the evaluation figures as JSON.")] = None,
) -> None:
    """Replay a CSV of declarations through the engine, in date order; evaluate when labels are mapped."""
    console = Console() if sys.stdout.isatty() else Console(width=170)
    try:
        mapping = Mapping.load(mapping_path)
    except (ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--mapping") from None
    pipeline = ScoringPipeline(build_detectors(detectors), LearnedFusion(capacity=capacity))
    with open(csv_path, "rb") as f:
        total = max(0, sum(1 for _ in f) - 1)
    columns = [TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console, transient=not console.is_terminal) as progress:
        task = progress.add_task("rows", total=total)
        summary, evaluator = replay_csv(csv_path, mapping, pipeline, lambda: progress.advance(task))
    table = Table(title=f"Replay of {csv_path.name}", show_header=False)
    table.add_row("rows read", f"{summary.rows:,}")
    table.add_row("declarations replayed", f"{summary.declarations:,}")
    table.add_row("alerts", f"{summary.alerts:,}")
    table.add_row("dead letters", f"{len(summary.dead_letters):,}")
    reasons: dict[str, int] = {}
    for letter in summary.dead_letters:
        reasons[letter.reason] = reasons.get(letter.reason, 0) + 1
    for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        table.add_row(f"  {n:,} x", reason)
    console.print(table)
    if dead_letters is not None:
        dead_letters.write_bytes(b"".join(encode_event(d) + b"\n" for d in summary.dead_letters))
    if alerts_out is not None:
        alerts_out.write_bytes(b"".join(encode_event(a.alert) + b"\n" for a in evaluator.alerts))
    if summary.rows and not summary.declarations:
        # Nothing was replayed: most likely the mapping (date_format, delimiter, defaults) is wrong.
        console.print(f"every one of the {summary.rows:,} rows was dead-lettered: nothing replayed")
        raise typer.Exit(1)
    if not mapping.labelled:
        console.print("no fraud label mapped: scored without evaluation")
        return
    report = evaluator.report()
    print_report(console, report)
    if png is not None:
        span = timedelta(seconds=evaluator.records[-1].when - evaluator.records[0].when) if evaluator.records else None
        save_png(
            png, evaluator.curves(), [d.name for d in pipeline.detectors], f"Vigie replay of {csv_path.name} ({span})"
        )
        console.print(f"curves saved to {png}")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
