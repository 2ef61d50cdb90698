"""What Grafana and its ClickHouse plugin do to a panel's SQL before ClickHouse sees it.

No Grafana server runs in the test suite, so the dashboards' queries are expanded here the
way the ``grafana-clickhouse-datasource`` plugin (v4) expands them, then run on ClickHouse.
The steps, in Grafana's order:

1. ``$__conditionalAll(condition, $var)`` (plugin front end, ``applyConditionalAll``): the
   condition, or ``1=1`` when the variable is set to *All* (or empty).
2. Template variables (Grafana's ``templateSrv.replace`` with the plugin's formatter):
   ``$var``, ``${var}``, ``${var:format}``. Without a format, a multi-value variable becomes
   ``'a','b'`` and a single value is inserted as is. Formats: ``singlequote``,
   ``doublequote``, ``sqlstring``, ``csv``, ``pipe``, ``raw``. Global variables:
   ``$__interval`` (``30s``, ``5m``...), ``$__interval_ms``, ``$__from``, ``$__to`` (epoch
   milliseconds), ``$__range_s``. Unknown ``$names`` are left alone (they are macros).
3. Server-side macros (plugin back end, ``pkg/macros``, applied through grafana/sqlds:
   ``$__name`` on a word boundary, arguments in balanced parentheses split on top-level
   commas and trimmed):

   ===========================  =========================================================
   ``$__timeFilter(c)``         ``c >= toDateTime(FROM_S) AND c <= toDateTime(TO_S)``
   ``$__timeFilter_ms(c)``      same with ``fromUnixTimestamp64Milli(FROM_MS)``
   ``$__dateFilter(c)``         ``c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')``
   ``$__dateTimeFilter(d, t)``  both of the above, parenthesised (alias ``$__dt``)
   ``$__fromTime``              ``toDateTime(FROM_S)`` (``$__toTime`` likewise)
   ``$__fromTime_ms``           ``fromUnixTimestamp64Milli(FROM_MS)`` (``$__toTime_ms``)
   ``$__timeInterval(c)``       ``toStartOfInterval(toDateTime(c), INTERVAL N second)``
   ``$__timeInterval_ms(c)``    ``toStartOfInterval(toDateTime64(c, 3), INTERVAL N millisecond)``
   ``$__interval_s``            ``N``: the query interval in whole seconds, at least 1
   ===========================  =========================================================

   Dates are the UTC dates of the range ends, seconds are truncated (Go's ``Unix()``).

The query interval is Grafana's: the range divided by the panel's max data points, rounded
to a "nice" step (:func:`round_interval`), raised to the panel's minimum interval.

Sources: the plugin's ``pkg/macros/macros.go`` and ``src/data/CHDatasource.ts``
(``applyTemplateVariables``, ``applyConditionalAll``, ``getMacroArgs``), grafana/sqlds'
macro matching, and Grafana's documented variable formats. Not reproduced: ad hoc filters,
``$__timeFilter`` inside string literals (the newest plugin skips those using a SQL parser),
variables with custom *All* values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = [
    "ALL",
    "MacroError",
    "QueryContext",
    "apply_conditional_all",
    "calculate_interval",
    "expand_macros",
    "format_interval",
    "interpolate_variables",
    "parse_interval",
    "render_query",
    "round_interval",
]

ALL = "$__all"
"""The value Grafana gives a variable set to *All*."""


class MacroError(ValueError):
    """A macro with the wrong number of arguments or unbalanced parentheses (the plugin fails the query)."""


VariableValue = str | Sequence[str]


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What Grafana knows when it runs one panel query.

    ``variables`` holds each template variable's current value (a string, a list for a
    multi-value variable, or :data:`ALL`); ``options`` the values *All* stands for.
    """

    start: datetime
    end: datetime
    interval: timedelta
    variables: Mapping[str, VariableValue] = field(default_factory=dict)
    options: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("time range ends must be timezone-aware")
        if self.end < self.start:
            raise ValueError("time range ends before it starts")

    @classmethod
    def for_panel(
        cls,
        start: datetime,
        end: datetime,
        max_data_points: int = 1000,
        min_interval: str | None = None,
        variables: Mapping[str, VariableValue] | None = None,
        options: Mapping[str, Sequence[str]] | None = None,
    ) -> QueryContext:
        """A context with Grafana's interval for a panel (see :func:`calculate_interval`)."""
        interval = calculate_interval(end - start, max_data_points, min_interval)
        return cls(start, end, interval, dict(variables or {}), dict(options or {}))


# --- interval -------------------------------------------------------------------------------

# (upper bound exclusive, result) in milliseconds: Grafana rounds the raw interval to a step
# readers recognise (10 ms ... 1 y).
_ROUND_STEPS_MS: tuple[tuple[float, int], ...] = (
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1_500, 1_000),
    (3_500, 2_000),
    (7_500, 5_000),
    (12_500, 10_000),
    (17_500, 15_000),
    (25_000, 20_000),
    (45_000, 30_000),
    (90_000, 60_000),
    (210_000, 120_000),
    (450_000, 300_000),
    (750_000, 600_000),
    (1_050_000, 900_000),
    (1_500_000, 1_200_000),
    (2_700_000, 1_800_000),
    (5_400_000, 3_600_000),
    (9_000_000, 7_200_000),
    (16_200_000, 10_800_000),
    (32_400_000, 21_600_000),
    (86_400_000, 43_200_000),
    (604_800_000, 86_400_000),
    (1_814_400_000, 604_800_000),
    (3_628_800_000, 2_592_000_000),
)
_YEAR_MS = 31_536_000_000

_UNITS_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000, "y": _YEAR_MS}


def round_interval(raw: timedelta) -> timedelta:
    """Grafana's rounding of a raw interval: 4 min -> 5 min, 40 s -> 30 s, 2 h -> 2 h.

    >>> round_interval(timedelta(minutes=4))
    datetime.timedelta(seconds=300)
    """
    ms = raw / timedelta(milliseconds=1)
    for bound, step in _ROUND_STEPS_MS:
        if ms < bound:
            return timedelta(milliseconds=step)
    return timedelta(milliseconds=_YEAR_MS)


def parse_interval(text: str) -> timedelta:
    """``'1m'`` -> 60 s. One integer and one unit (ms, s, m, h, d, w, y), like a panel's min interval.

    A leading ``>`` (Grafana's "at least") is accepted and ignored.
    """
    match = re.fullmatch(r">?\s*(\d+)(ms|s|m|h|d|w|y)", text.strip())
    if not match:
        raise ValueError(f"not an interval: {text!r} (expected e.g. '30s', '1m', '1h')")
    return timedelta(milliseconds=int(match.group(1)) * _UNITS_MS[match.group(2)])


def format_interval(interval: timedelta) -> str:
    """Grafana's text for ``$__interval``: the largest unit that divides it (``'5m'``, ``'30s'``)."""
    ms = round(interval / timedelta(milliseconds=1))
    for unit in ("y", "w", "d", "h", "m", "s"):
        size = _UNITS_MS[unit]
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def calculate_interval(span: timedelta, max_data_points: int = 1000, min_interval: str | None = None) -> timedelta:
    """The interval Grafana gives a query: ``round_interval(span / max_data_points)``, at least
    ``min_interval`` (the panel's "Min interval"; Grafana's floor is 1 ms).

    >>> calculate_interval(timedelta(days=1), 1000)
    datetime.timedelta(seconds=60)
    >>> calculate_interval(timedelta(hours=1), 1000, "1m")
    datetime.timedelta(seconds=60)
    """
    if max_data_points < 1:
        raise ValueError("max_data_points must be >= 1")
    interval = round_interval(span / max_data_points)
    floor = parse_interval(min_interval) if min_interval else timedelta(milliseconds=1)
    return max(interval, floor)


# --- step 1: $__conditionalAll -----------------------------------------------------------------

_VAR_IN_ARG = re.compile(r"(?<=\$\{)\w+(?=\})|(?<=\$)\w+")


def _call_args(sql: str, open_paren: int) -> tuple[list[str], int] | None:
    """Arguments of the call whose ``(`` is at ``open_paren`` (top-level commas) and the index
    after its ``)``; None when the parentheses never balance."""
    depth = 0
    args: list[str] = []
    start = open_paren + 1
    for i in range(open_paren, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i])
                return args, i + 1
        elif ch == "," and depth == 1:
            args.append(sql[start:i])
            start = i + 1
    return None


def apply_conditional_all(sql: str, variables: Mapping[str, VariableValue]) -> str:
    """Replace each ``$__conditionalAll(condition, $var)``, innermost-last as the plugin does
    (it scans from the end): the condition, or ``1=1`` when ``var`` is *All* or empty."""
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    while index != -1:
        parsed = _call_args(sql, index + len(macro) - 1)
        if parsed is None or len(parsed[0]) != 2:
            return sql  # the plugin leaves a malformed call in place
        (condition, var_arg), end = parsed
        phrase = condition
        found = _VAR_IN_ARG.search(var_arg.strip())
        if found:
            value = variables.get(found.group(0))
            text = ",".join(value) if isinstance(value, list | tuple) else ("" if value is None else str(value))
            if text in ("", ALL):
                phrase = "1=1"
        sql = sql[:index] + phrase + sql[end:]
        index = sql.rfind(macro)
    return sql


# --- step 2: template variables ----------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)")


def _values(name: str, value: VariableValue, options: Mapping[str, Sequence[str]]) -> list[str] | str:
    if value == ALL or (isinstance(value, list | tuple) and list(value) == [ALL]):
        return list(options.get(name, []))
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return str(value)


def _format(value: list[str] | str, fmt: str | None) -> str:
    items = value if isinstance(value, list) else [value]
    if fmt is None:
        # The plugin's formatter: lists become a quoted SQL list, single values go in raw.
        return "'" + "','".join(items) + "'" if isinstance(value, list) else value
    if fmt == "singlequote":
        return ",".join("'" + v.replace("'", "\\'") + "'" for v in items)
    if fmt == "doublequote":
        return ",".join('"' + v.replace('"', '\\"') + '"' for v in items)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in items)
    if fmt == "csv" or fmt == "raw":
        return ",".join(items)
    if fmt == "pipe":
        return "|".join(items)
    raise MacroError(f"unsupported variable format {fmt!r}")


def _globals(ctx: QueryContext) -> dict[str, str]:
    interval_ms = round(ctx.interval / timedelta(milliseconds=1))
    return {
        "__interval": format_interval(ctx.interval),
        "__interval_ms": str(interval_ms),
        "__from": str(round(ctx.start.timestamp() * 1000)),
        "__to": str(round(ctx.end.timestamp() * 1000)),
        "__range_s": str(int((ctx.end - ctx.start).total_seconds())),
    }


def interpolate_variables(sql: str, ctx: QueryContext) -> str:
    """Grafana's template-variable substitution with the ClickHouse plugin's formatter."""
    builtins = _globals(ctx)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fmt = match.group(2)
        if name in builtins:
            return builtins[name]
        if name not in ctx.variables:
            return match.group(0)  # a macro ($__timeFilter...) or an unknown name: left alone
        return _format(_values(name, ctx.variables[name], ctx.options), fmt)

    return _VARIABLE.sub(replace, sql)


# --- step 3: the plugin's server-side macros -------------------------------------------------


def _seconds(t: datetime) -> int:
    return int(t.timestamp() // 1)  # Go's Time.Unix(): floor to the second


def _millis(t: datetime) -> int:
    return int(t.timestamp() * 1000 // 1)


def _date(t: datetime) -> str:
    return f"toDate('{t.astimezone(UTC):%Y-%m-%d}')"


def _need(args: list[str], n: int, name: str) -> list[str]:
    if len(args) != n:
        raise MacroError(f"$__{name}: expected {n} argument(s), received {len(args)}")
    return args


def _macros(ctx: QueryContext) -> dict[str, Callable[[list[str]], str]]:
    start, end = ctx.start, ctx.end
    dt_from, dt_to = f"toDateTime({_seconds(start)})", f"toDateTime({_seconds(end)})"
    ms_from = f"fromUnixTimestamp64Milli({_millis(start)})"
    ms_to = f"fromUnixTimestamp64Milli({_millis(end)})"
    seconds = max(int(ctx.interval.total_seconds()), 1)
    millis = max(int(ctx.interval / timedelta(milliseconds=1)), 1)

    def time_filter(args: list[str]) -> str:
        (c,) = _need(args, 1, "timeFilter")
        return f"{c} >= {dt_from} AND {c} <= {dt_to}"

    def time_filter_ms(args: list[str]) -> str:
        (c,) = _need(args, 1, "timeFilter_ms")
        return f"{c} >= {ms_from} AND {c} <= {ms_to}"

    def date_filter(args: list[str]) -> str:
        (c,) = _need(args, 1, "dateFilter")
        return f"{c} >= {_date(start)} AND {c} <= {_date(end)}"

    def date_time_filter(args: list[str]) -> str:
        d, t = _need(args, 2, "dateTimeFilter")
        return f"({d} >= {_date(start)} AND {d} <= {_date(end)}) AND ({t} >= {dt_from} AND {t} <= {dt_to})"

    def time_interval(args: list[str]) -> str:
        (c,) = _need(args, 1, "timeInterval")
        return f"toStartOfInterval(toDateTime({c}), INTERVAL {seconds} second)"

    def time_interval_ms(args: list[str]) -> str:
        (c,) = _need(args, 1, "timeInterval_ms")
        return f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL {millis} millisecond)"

    return {
        "fromTime": lambda _: dt_from,
        "toTime": lambda _: dt_to,
        "fromTime_ms": lambda _: ms_from,
        "toTime_ms": lambda _: ms_to,
        "timeFilter": time_filter,
        "timeFilter_ms": time_filter_ms,
        "dateFilter": date_filter,
        "dateTimeFilter": date_time_filter,
        "dt": date_time_filter,
        "timeInterval": time_interval,
        "timeInterval_ms": time_interval_ms,
        "interval_s": lambda _: str(seconds),
    }


def expand_macros(sql: str, ctx: QueryContext) -> str:
    """Apply the plugin's server-side macros (step 3)."""
    macros = _macros(ctx)
    # \b after the name: $__timeFilter does not match $__timeFilter_ms.
    pattern = re.compile(r"\$__(" + "|".join(sorted(macros, key=len, reverse=True)) + r")\b")
    out: list[str] = []
    pos = 0
    while (match := pattern.search(sql, pos)) is not None:
        out.append(sql[pos : match.start()])
        end = match.end()
        args: list[str] = []
        if end < len(sql) and sql[end] == "(":
            parsed = _call_args(sql, end)
            if parsed is None:
                raise MacroError(f"$__{match.group(1)}: missing closing parenthesis")
            raw_args, end = parsed
            args = [a.strip() for a in raw_args]
            if args == [""]:
                args = []
        out.append(macros[match.group(1)](args))
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def render_query(sql: str, ctx: QueryContext) -> str:
    """The SQL ClickHouse receives for a panel query: steps 1, 2 and 3 in Grafana's order."""
    return expand_macros(interpolate_variables(apply_conditional_all(sql, ctx.variables), ctx), ctx)
