"""Command-line options shared by the runtimes' commands (`vigie run`, `vigie faust worker`, `vigie flink run`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vigie.operators.pipeline import DEFAULT_DEADLINE_LAG

DEFAULT_DEADLINE_LAG_H = DEFAULT_DEADLINE_LAG.total_seconds() / 3600.0

DeadlineLagHours = Annotated[
    float,
    typer.Option(
        "--deadline-lag",
        min=0.0,
        help="Hours (event time) a record may come late and still count before a deadline: an e-AD is checked "
        "for its receipt once the stream's time, less this, passes its deadline (a Faust worker's time: its "
        "slowest input partition's, at most a day behind the latest).",
    ),
]
