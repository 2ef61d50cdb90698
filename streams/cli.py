"""The ``vigie`` command line (typer)."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vigie.operators import NoisyOrAlerting, ScoringPipeline
from vigie.operators.fusion import LearnedFusion
from vigie.schemas.generator import GeneratorConfig, write_stream
from vigie.schemas.jsonschema import export_json_schemas
from vigie.sinks.grafana import grafana_app

from .console_cli import audit_app_cli, console_app_cli
from .evaluate import evaluate_command
from .faust_app import faust_app_cli
from .flink_cli import flink_app
from .health import health_reporter
from .kafka_dev import dev_app
from .live import LiveAlertView
from .options import DEFAULT_DEADLINE_LAG_H, DeadlineLagHours
from .publish import publish_command
from .replay import replay_command
from .runner import RUNNER_GC_THRESHOLDS, CheckpointMismatch, RunSummary, run_file, tune_garbage_collector

if TYPE_CHECKING:
    from vigie.sinks.chdb_sink import ChdbSink  # chdb loads a large library: imported when a store opens


app = typer.Typer(
    help="Vigie: streaming customs risk engine. `vigie run` scores a generated stream into embedded ClickHouse.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
schema_app = typer.Typer(help="Event schemas for integrators.", no_args_is_help=True)
app.add_typer(schema_app, name="schema")
app.add_typer(dev_app, name="dev")
app.add_typer(grafana_app, name="grafana", help="Supervisors' Grafana boards: export and provision.")
app.add_typer(faust_app_cli, name="faust", help="Faust workers on Kafka.")
app.add_typer(flink_app, name="flink", help="The PyFlink job on Kafka.")
app.command("publish")(publish_command)
app.command("evaluate")(evaluate_command)
app.command("replay")(replay_command)
app.add_typer(console_app_cli, name="console", help="Officer console (web): live alerts, outcomes, access control.")
app.add_typer(audit_app_cli, name="audit", help="Tamper-evident audit log.")

# Logs and CI are not terminals: give tables room instead of the 80-column default.
console = Console() if sys.stdout.isatty() else Console(width=160)
DataDir = Annotated[Path, typer.Option("--data-dir", help="Where embedded ClickHouse and checkpoints live.")]
DEFAULT_DATA_DIR = Path("vigie-data")


# The generator's ranges (GeneratorConfig checks them too): said as option errors, not tracebacks.
DurationHours = Annotated[float, typer.Option(min=0.01, max=24 * 366, help="Hours of arrivals to simulate.")]
Rate = Annotated[float, typer.Option(min=0.01, max=1e6, help="Consignments arriving per hour.")]
FraudShare = Annotated[float, typer.Option(min=0.0, max=1.0, help="Share of fraudulent consignments.")]


def _config(seed: int, duration_hours: float, rate: float, fraud_share: float) -> GeneratorConfig:
    return GeneratorConfig(seed=seed, duration_hours=duration_hours, rate_per_hour=rate, fraud_share=fraud_share)


@app.command()
def generate(
    out: Annotated[Path, typer.Option(help="Events, one JSON object per line.")] = Path("events.jsonl"),
    truth: Annotated[Path, typer.Option(help="Ground truth of injected frauds (never read by the engine).")] = Path(
        "truth.jsonl"
    ),
    seed: int = 7,
    duration_hours: DurationHours = 24.0,
    rate: Rate = 1500.0,
    fraud_share: FraudShare = 0.04,
) -> None:
    """Write a seeded synthetic stream of customs events (JSON lines) and its ground truth."""
    stats = write_stream(_config(seed, duration_hours, rate, fraud_share), out, truth)
    console.print(f"wrote {stats.n_events:,} events to {out} and the ground truth to {truth}")
    table = Table(show_header=False, title="Generated")
    for event_type, n in sorted(stats.events_per_type.items()):
        table.add_row(event_type, f"{n:,}")
    table.add_row("fraudulent consignments", f"{stats.n_fraud_consignments:,} of {stats.n_consignments:,}")
    for pattern, n in sorted(stats.fraud_consignments_per_pattern.items()):
        table.add_row(f"  {pattern}", f"{n:,}")
    table.add_row("revenue at risk", f"{stats.revenue_at_risk_eur:,.0f} EUR")
    console.print(table)


@app.command()
def run(
    input: Annotated[
        Path | None, typer.Option("--input", exists=True, dir_okay=False, help="Score this JSON-lines file.")
    ] = None,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint for the same input.")] = False,
    threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Alert on a noisy-OR fused risk at this threshold (0.5: about 1% of flow) instead of the learned "
            "fusion, which alerts within each office's control budget and learns from control outcomes.",
        ),
    ] = None,
    seed: int = 7,
    duration_hours: DurationHours = 24.0,
    rate: Rate = 1500.0,
    fraud_share: FraudShare = 0.04,
    live: Annotated[bool, typer.Option(help="Show live alerts in the terminal.")] = True,
    deadline_lag: DeadlineLagHours = DEFAULT_DEADLINE_LAG_H,
    retention_days: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Days the store keeps rows naming persons or operators, counted from storage (default: the "
            "store's period, 1826 for a new store); applied to existing tables too.",
        ),
    ] = None,
) -> None:
    """Score events in process into embedded ClickHouse (chdb) under --data-dir.

    With no --input, a stream is generated first (see `vigie generate` for the options).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if input is None:
        # Named by everything that shapes it: --resume with other options is another input, refused
        # by the checkpoint, instead of a new file under the old name resumed part-way through.
        shape = f"seed{seed}-{duration_hours:g}h-{rate:g}ph-fraud{fraud_share:g}"
        input = data_dir / "generated" / f"events-{shape}.jsonl"
        truth = input.with_name(f"truth-{shape}.jsonl")
        input.parent.mkdir(parents=True, exist_ok=True)
        if resume and input.is_file() and truth.is_file():
            console.print(f"resuming on the stream generated before: {input}")
        else:
            console.print(f"generating a synthetic stream into {input} ...")
            stats = write_stream(_config(seed, duration_hours, rate, fraud_share), input, truth)
            console.print(f"{stats.n_events:,} events generated (ground truth kept apart in {truth})")
    with open(input, "rb") as lines:
        total = sum(1 for _ in lines)
    alerting = NoisyOrAlerting(threshold=threshold) if threshold is not None else LearnedFusion()
    pipeline = ScoringPipeline(alerting=alerting, deadline_lag=timedelta(hours=deadline_lag))
    retention = {} if retention_days is None else {"ttl_days": retention_days, "enforce_ttl": True}
    sink = _open_store(data_dir, **retention)
    health = health_reporter(sink, "runner")  # the supervisors' pipeline-health panels
    tune_garbage_collector(RUNNER_GC_THRESHOLDS)
    try:
        if live:
            with LiveAlertView(console, total_lines=total) as view:

                def progress(summary: RunSummary) -> None:
                    view.on_progress(summary)
                    if health is not None:
                        health.maybe(summary)

                summary = run_file(
                    input, pipeline, sink, data_dir / "checkpoint.json", resume, view.on_result, progress
                )
            console.print()
        else:
            summary = run_file(input, pipeline, sink, data_dir / "checkpoint.json", resume,
                               on_progress=health.maybe if health is not None else None)  # fmt: skip
        if health is not None:
            health.final(summary)
    except CheckpointMismatch as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        sink.close()
    _print_summary(summary, data_dir)
    if summary.dead_letters:
        # As `vigie publish`: a file with rejected lines is not a clean run (the lines are kept, with their reason).
        console.print(
            f"[red]{summary.dead_letters:,} line(s) rejected[/red]: stored with their reason and original bytes in "
            f'vigie.dead_letters (`vigie sql "SELECT source, field, reason FROM vigie.dead_letters FINAL"`)'
        )
        raise typer.Exit(code=1)


def _open_store(data_dir: Path, **options: Any) -> ChdbSink:
    """The embedded store under ``data_dir``; one line, not a traceback, when another process holds it."""
    from vigie.sinks.chdb_sink import ChdbSink, ChdbStoreInUse

    try:
        return ChdbSink(data_dir / "clickhouse", **options)
    except ChdbStoreInUse as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _print_summary(summary: RunSummary, data_dir: Path) -> None:
    table = Table(title="Run summary", show_header=False)
    table.add_row(
        "lines read",
        f"{summary.lines_read:,}" + (f" (+{summary.lines_skipped:,} resumed)" * bool(summary.lines_skipped)),
    )
    for event_type, n in sorted(summary.events_by_type.items()):
        table.add_row(f"  {event_type}", f"{n:,}")
    if summary.resent:
        table.add_row("re-sent events skipped", f"{summary.resent:,} (event_id processed already)")
    table.add_row("risk scores", f"{summary.scores:,}")
    table.add_row("alerts", f"{summary.alerts:,}")
    table.add_row("dead letters", f"{summary.dead_letters:,}")
    for field, n in summary.dead_letter_reasons.most_common(5):
        table.add_row(f"  rejected at {field}", f"{n:,}")
    table.add_row("throughput", f"{summary.events_per_second:,.0f} lines/s in {summary.seconds:.1f} s")
    table.add_row("stored in", str(data_dir / "clickhouse") + "  (query with `vigie sql`)")
    console.print(table)


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(help="SQL to run on the embedded store, e.g. 'SELECT count() FROM vigie.alerts'")
    ],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Query the embedded ClickHouse store and print rows as JSON lines."""

    if not (data_dir / "clickhouse").is_dir():  # opening would create an empty store and answer from it
        raise typer.BadParameter(
            f"no store at {data_dir / 'clickhouse'}: give the --data-dir of a `vigie run` (a worker's "
            "`--sink chdb:DIR/clickhouse` goes with `--data-dir DIR`)",
            param_hint="--data-dir",
        )
    sink = _open_store(data_dir)
    try:
        rows = sink.query(query)
    except RuntimeError as exc:  # ClickHouse's own message (unknown column, syntax...), not a traceback
        typer.echo(f"error: {str(exc).strip().splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    finally:
        sink.close()
    for row in rows:
        typer.echo(json.dumps(row, default=str, ensure_ascii=False))


@schema_app.command("export")
def schema_export(directory: Annotated[Path, typer.Argument(help="Folder to write the JSON Schemas into.")]) -> None:
    """Write the JSON Schema of every event type (what integrators validate against)."""
    for path in export_json_schemas(directory):
        console.print(f"wrote {path}")


def main() -> None:
    app()
