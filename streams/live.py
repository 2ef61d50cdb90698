"""Live alerts in the terminal while the in-process runner scores (rich)."""

from __future__ import annotations

import heapq
from types import TracebackType

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vigie.operators import PipelineResult
from vigie.schemas import Alert

from .runner import RunSummary


class LiveAlertView:
    """Shows the highest-risk alerts raised so far and a progress line.

    Officers read the table top-down: fused risk, office, time before arrival, EUR at
    stake and the strongest reason. Rendering is throttled by rich (4 refreshes a second),
    so the runner only pays for keeping the top alerts.
    """

    def __init__(self, console: Console | None = None, top: int = 10, total_lines: int | None = None) -> None:
        self.console = console or Console()
        self.top = top
        self.total_lines = total_lines
        self._alerts: list[tuple[float, int, Alert]] = []  # min-heap of the top alerts by risk
        self._seq = 0
        self._summary = RunSummary()
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveAlertView:
        self._live.__enter__()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._live.update(self._render())
        self._live.__exit__(exc_type, exc, tb)

    def on_result(self, result: PipelineResult) -> None:
        for alert in result.alerts:
            self._seq += 1
            item = (alert.fused_risk + min(alert.eur_at_stake, 1e9) * 1e-12, self._seq, alert)
            if len(self._alerts) < self.top:
                heapq.heappush(self._alerts, item)
            elif item > self._alerts[0]:
                heapq.heapreplace(self._alerts, item)

    def on_progress(self, summary: RunSummary) -> None:
        self._summary = summary
        self._live.update(self._render())

    def _render(self) -> Group:
        table = Table(title="Live alerts (highest fused risk first)", expand=True, show_lines=False)
        table.add_column("risk", justify="right", no_wrap=True)
        table.add_column("office", no_wrap=True)
        table.add_column("before arrival", justify="right", no_wrap=True)
        table.add_column("EUR at stake", justify="right", no_wrap=True)
        table.add_column("declaration / reason", overflow="fold", ratio=1)
        for _, _, alert in sorted(self._alerts, reverse=True):
            lead = "-" if alert.lead_time_hours is None else f"{alert.lead_time_hours:+.1f} h"
            table.add_row(
                f"{alert.fused_risk:.3f}",
                alert.office,
                lead,
                f"{alert.eur_at_stake:,.0f}",
                f"{alert.subject_reference}: {alert.reasons[0]}",
            )
        s = self._summary
        done = f"{s.lines_read + s.lines_skipped:,}"
        if self.total_lines:
            done += f"/{self.total_lines:,}"
        progress = Text(
            f"lines {done}  events {s.events:,}  scores {s.scores:,}  alerts {s.alerts:,}  "
            f"dead letters {s.dead_letters:,}  {s.events_per_second:,.0f} lines/s"
        )
        return Group(table, progress)
