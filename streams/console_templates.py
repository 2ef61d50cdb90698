"""HTML pages, CSS, JavaScript and SVG charts of the officer console, as Python strings.

The ``streams`` folder ships no package data, so the console's front end lives here. Pages
are rendered on the server with every value passed through :func:`html.escape`; the two
scripts (the live feed and the supervisor's refresh) build the DOM with ``textContent``
only, never ``innerHTML``, and are served from ``/static`` so that the Content Security
Policy can forbid inline scripts.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

__all__ = [
    "CONSOLE_CSS",
    "FEED_JS",
    "SUPERVISOR_JS",
    "alert_detail_page",
    "alerts_page",
    "bar_chart_svg",
    "error_page",
    "login_page",
    "operator_page",
    "page",
    "supervisor_page",
]

INFRINGEMENT_TYPES = (
    "undervaluation",
    "misclassification",
    "false_origin",
    "splitting",
    "false_description",
    "smuggling",
    "excise_diversion",
    "excise_shortage",
    "other",
)


def e(value: Any) -> str:
    """Escape ``value`` for HTML text and attribute values (``None``: empty; booleans: yes/no)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else html.escape(str(value), quote=True)


def eur(value: Any) -> str:
    """A EUR amount with thousands separators and no decimals, or a dash."""
    try:
        return f"{float(value):,.0f} EUR"
    except (TypeError, ValueError):
        return "-"


def hours(value: Any) -> str:
    """Signed hours before arrival ('+5.2 h'), 'arrived 3.0 h ago', or a dash when unknown."""
    if value is None:
        return "-"
    value = float(value)
    return f"{value:+.1f} h" if value >= 0 else f"arrived {-value:.1f} h ago"


def page(title: str, body: str, user: Mapping[str, Any] | None = None, csrf: str | None = None) -> str:
    """The common layout: header with navigation for the user's role, then ``body``."""
    nav = ""
    if user is not None:
        links = []
        role = user.get("role")
        if role in ("officer", "supervisor"):
            links.append('<a href="/alerts">Alerts</a>')
        if role == "supervisor":
            links.append('<a href="/supervisor">Supervisor</a>')
        if role == "operator":
            links.append('<a href="/operator">My flows</a>')
        scope = ", ".join(user.get("offices") or ()) or user.get("eori") or ""
        logout = (
            f'<form method="post" action="/logout" class="inline">'
            f'<input type="hidden" name="csrf_token" value="{e(csrf)}">'
            f'<button type="submit" id="logout">Log out</button></form>'
        )
        nav = (
            f'<nav>{" ".join(links)}<span class="who">{e(user.get("name"))} ({e(role)}'
            f"{' - ' + e(scope) if scope else ''})</span>{logout}</nav>"
        )
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{e(title)} - Vigie</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/console.css"></head>'
        f'<body><header><a class="brand" href="/">Vigie</a>{nav}</header><main>{body}</main></body></html>'
    )


def error_page(status: int, message: str, user: Mapping[str, Any] | None = None, csrf: str | None = None) -> str:
    return page(f"Error {status}", f'<h1>Error {status}</h1><p class="error">{e(message)}</p>', user, csrf)


def login_page(csrf: str, next_url: str = "/", error: str | None = None) -> str:
    """The login form; ``csrf`` is the pre-session token also set as a cookie (double submit)."""
    message = f'<p class="error" id="login-error">{e(error)}</p>' if error else ""
    body = (
        "<h1>Sign in</h1>"
        f"{message}"
        '<form method="post" action="/login" class="login">'
        f'<input type="hidden" name="csrf_token" value="{e(csrf)}">'
        f'<input type="hidden" name="next" value="{e(next_url)}">'
        '<label>Account <input name="username" id="username" autocomplete="username" required></label>'
        '<label>Password <input name="password" id="password" type="password" autocomplete="current-password" '
        "required></label>"
        '<button type="submit" id="login-submit">Sign in</button>'
        "</form>"
    )
    return page("Sign in", body)


def _options(values: Iterable[str], selected: str | None = None, empty: str | None = "all") -> str:
    out = [f'<option value="">{e(empty)}</option>'] if empty is not None else []
    for value in values:
        mark = " selected" if value == selected else ""
        out.append(f'<option value="{e(value)}"{mark}>{e(value)}</option>')
    return "".join(out)


def alerts_page(
    user: Mapping[str, Any], csrf: str, offices: Sequence[str], detectors: Sequence[str], modes: Sequence[str]
) -> str:
    """The live feed: filters and an alert table the feed script fills from ``/api/stream``."""
    body = (
        '<h1>Live alerts <span id="feed-status" class="status">connecting...</span></h1>'
        '<form id="filters" class="filters">'
        f'<label>Office <select name="office" id="filter-office">{_options(offices)}</select></label>'
        f'<label>Detector <select name="detector" id="filter-detector">{_options(detectors)}</select></label>'
        f'<label>Transport <select name="mode" id="filter-mode">{_options(modes)}</select></label>'
        '<label>Sort <select name="sort" id="filter-sort">'
        '<option value="priority">risk, then time left</option><option value="time">time left</option>'
        '<option value="eur">EUR at stake</option></select></label>'
        "</form>"
        '<p class="hint">Time left is counted to the arrival announced by the ENS, on the stream clock '
        '(<span id="feed-clock">-</span>).</p>'
        '<table class="alerts"><thead><tr><th>Risk</th><th>Time left</th><th>EUR at stake</th><th>Office</th>'
        "<th>Declaration</th><th>Operator</th><th>Mode</th><th>Why</th><th></th></tr></thead>"
        '<tbody id="alerts-body"></tbody></table>'
        '<script src="/static/feed.js"></script>'
    )
    return page("Alerts", body, user, csrf)


def bar_chart_svg(
    points: Sequence[tuple[str, float]], title: str, width: int = 560, height: int = 140, unit: str = ""
) -> str:
    """A small bar chart (inline SVG, presentation attributes only: allowed by the CSP).

    >>> svg = bar_chart_svg([("03-01", 2), ("03-02", 4)], "declarations per day")
    >>> svg.count("<rect"), "declarations per day" in svg
    (2, True)
    """
    if not points:
        return f'<p class="hint">{e(title)}: no data.</p>'
    top = max(v for _, v in points) or 1.0
    pad_left, pad_bottom, pad_top = 8, 18, 16
    inner_h = height - pad_bottom - pad_top
    step = (width - pad_left) / len(points)
    bar_w = min(max(step * 0.7, 1.0), 40.0)
    parts = [
        f'<svg class="chart" role="img" aria-label="{e(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{pad_left}" y="11" font-size="11" fill="#333">{e(title)} (max {top:,.0f}{e(unit)})</text>',
    ]
    for i, (label, value) in enumerate(points):
        h = inner_h * (value / top)
        x = pad_left + i * step
        y = pad_top + inner_h - h
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="#3568a8">'
            f"<title>{e(label)}: {value:,.0f}{e(unit)}</title></rect>"
        )
    every = max(1, len(points) // 6)
    for i, (label, _) in enumerate(points):
        if i % every == 0:
            x = pad_left + i * step
            parts.append(f'<text x="{x:.1f}" y="{height - 4}" font-size="10" fill="#555">{e(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], table_id: str = "") -> str:
    if not rows:
        return '<p class="hint">None.</p>'
    head = "".join(f"<th>{e(label)}</th>" for _, label in columns)
    body = "".join("<tr>" + "".join(f"<td>{e(row.get(key))}</td>" for key, _ in columns) + "</tr>" for row in rows)
    ident = f' id="{e(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fields(fields: Mapping[str, Any]) -> str:
    if not fields:
        return ""
    items = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in fields.items())
    return f'<ul class="fields">{items}</ul>'


def alert_detail_page(
    user: Mapping[str, Any],
    csrf: str,
    detail: Mapping[str, Any],
    submission_id: str,
    message: str | None = None,
    error: str | None = None,
) -> str:
    """One alert: why, the declaration and its ENS, the operator's history, outcomes, the outcome form."""
    alert = detail["alert"]
    alert_id = alert["alert_id"]
    reasons = "".join(f"<li>{e(r)}</li>" for r in alert.get("reasons") or [])
    contributions = ", ".join(
        f"{e(k)} {float(v):.2f}" for k, v in sorted((alert.get("contributions") or {}).items(), key=lambda kv: -kv[1])
    )
    scores = "".join(
        f'<div class="score"><h3>{e(s["detector"])}: score {float(s["score"]):.2f}'
        f"{' (item ' + e(s['item_number']) + ')' if s.get('item_number') else ''}, {eur(s.get('eur_at_stake'))}</h3>"
        f"<p>{e(s['reason'])}</p>{_fields(s.get('reason_fields') or {})}</div>"
        for s in detail.get("scores") or []
    )
    declaration = detail.get("declaration")
    if declaration:
        decl = (
            f"<p>MRN <strong>{e(declaration['mrn'])}</strong>, accepted {e(declaration['event_time'])} at "
            f"{e(declaration['customs_office'])}; importer {e(declaration['importer_eori'])}, declarant "
            f"{e(declaration['declarant_eori'])}, seller {e(declaration['seller_name'])} "
            f"({e(declaration['seller_country'])}); procedure {e(declaration['procedure_code'])}, "
            f"transport {e(declaration['transport_mode_at_border'])}"
            f"{', container' if declaration.get('container') else ''}.</p>"
            + _table(
                declaration.get("items") or [],
                [
                    ("item_number", "Item"),
                    ("cn_code", "CN"),
                    ("description", "Description"),
                    ("origin_country", "Origin"),
                    ("net_mass_kg", "Net kg"),
                    ("supplementary_units", "Units"),
                    ("customs_value_eur", "Value EUR"),
                    ("duty_eur", "Duty EUR"),
                    ("vat_eur", "VAT EUR"),
                ],
                "declaration-items",
            )
        )
    else:
        decl = '<p class="hint">The declaration is not in the store (yet).</p>'
    ens = detail.get("ens")
    if ens:
        ens_html = (
            f"<p>ENS <strong>{e(ens['ens_reference'])}</strong> filed {e(ens['event_time'])} by carrier "
            f"{e(ens['carrier_eori'])}, {e(ens['transport_mode'])}, loaded at {e(ens['place_of_loading'])}, "
            f"routing {e(' > '.join(ens.get('countries_of_routing') or []))}, first office of entry "
            f"{e(ens['first_office_of_entry'])}, ETA {e(ens['eta'])}; consignor {e(ens['consignor_name'])} "
            f"({e(ens['consignor_country'])}), consignee {e(ens['consignee_name'])} ({e(ens['consignee_country'])}), "
            f"document {e(ens['transport_document'])}.</p>"
        )
    else:
        ens_html = '<p class="hint">No ENS linked to this declaration in the store.</p>'
    history = detail.get("history") or {}
    history_html = bar_chart_svg(
        [(p["day"][5:], float(p["declarations"])) for p in history.get("per_day") or []],
        f"declarations of {alert.get('operator_eori') or 'the operator'} per day",
    ) + bar_chart_svg(
        [(p["day"][5:], float(p["customs_value_eur"])) for p in history.get("per_day") or []],
        "customs value per day",
        unit=" EUR",
    )
    history_html += "<h3>Earlier alerts on this operator (your offices)</h3>" + _table(
        history.get("alerts") or [],
        [
            ("event_time", "When"),
            ("office", "Office"),
            ("subject_reference", "MRN"),
            ("fused_risk", "Risk"),
            ("eur_at_stake", "EUR at stake"),
        ],
    )
    outcomes_html = _table(
        detail.get("outcomes") or [],
        [
            ("event_time", "When"),
            ("officer_id", "Officer"),
            ("controlled", "Controlled"),
            ("positive", "Positive"),
            ("infringement_type", "Infringement"),
            ("duty_recovered_eur", "Duty recovered"),
            ("tax_recovered_eur", "Tax recovered"),
            ("seizure", "Seizure"),
            ("event_id", "Event"),
        ],
        "outcomes",
    )
    notice = f'<p class="notice" id="notice">{e(message)}</p>' if message else ""
    problem = f'<p class="error" id="form-error">{e(error)}</p>' if error else ""
    form = (
        f'<form method="post" action="/alerts/{quote(alert_id)}/outcome" class="outcome" id="outcome-form">'
        f'<input type="hidden" name="csrf_token" value="{e(csrf)}">'
        f'<input type="hidden" name="submission_id" value="{e(submission_id)}">'
        '<label><input type="checkbox" name="controlled" id="controlled" value="1" checked> Controlled</label>'
        '<label><input type="checkbox" name="positive" id="positive" value="1"> Positive (irregularity found)</label>'
        f'<label>Infringement <select name="infringement_type" id="infringement_type">'
        f"{_options(INFRINGEMENT_TYPES, empty='none')}</select></label>"
        '<label>Duty recovered (EUR) <input name="duty_recovered_eur" id="duty_recovered_eur" type="number" '
        'min="0" step="0.01" value="0"></label>'
        '<label>Taxes recovered (EUR) <input name="tax_recovered_eur" id="tax_recovered_eur" type="number" '
        'min="0" step="0.01" value="0"></label>'
        '<label><input type="checkbox" name="seizure" id="seizure" value="1"> Goods seized</label>'
        '<button type="submit" id="record-outcome">Record outcome</button></form>'
    )
    lead = hours(alert.get("hours_left"))
    body = (
        f'<p><a href="/alerts">&larr; all alerts</a></p>{notice}'
        f'<h1>Alert on {e(alert["subject_reference"])} <span class="risk">risk {float(alert["fused_risk"]):.2f}</span>'
        "</h1>"
        f'<p class="facts" id="alert-facts" data-alert-id="{e(alert_id)}">Office {e(alert["office"])}, rank '
        f"{e(alert['rank'])} in the office queue, {eur(alert['eur_at_stake'])} at stake, time left {e(lead)}, "
        f"transport {e(alert.get('transport_mode') or '-')}, operator {e(alert.get('operator_eori') or '-')}, "
        f"selection {e(alert.get('selection'))}. Contributions: {contributions}.</p>"
        f'<h2>Why</h2><ol class="reasons">{reasons}</ol>{scores}'
        f"<h2>Declaration</h2>{decl}<h2>Entry summary declaration</h2>{ens_html}"
        f"<h2>Operator's recent history</h2>{history_html}"
        f"<h2>Recorded outcomes</h2>{outcomes_html}"
        f"<h2>Record the control outcome</h2>{problem}{form}"
    )
    return page(f"Alert {alert['subject_reference']}", body, user, csrf)


def dash(value: Any) -> str:
    """Like :func:`e`, with a dash for a missing value (a rate with nothing to divide by)."""
    return "-" if value is None else e(value)


def _indicator_rows(indicators: Mapping[str, Any]) -> str:
    rows = []
    for office in indicators.get("offices") or []:
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{dash(office.get(k))}</td>"
                for k in (
                    "office",
                    "alerts",
                    "budget",
                    "budget_used_pct",
                    "controlled",
                    "positive",
                    "hit_rate_pct",
                    "recovered_eur",
                )
            )
            + "</tr>"
        )
    return "".join(rows)


def supervisor_page(user: Mapping[str, Any], csrf: str, indicators: Mapping[str, Any]) -> str:
    """The chief's few live indicators (refreshed every 5 s by the supervisor script)."""
    total = indicators.get("total") or {}
    body = (
        "<h1>Today</h1>"
        f'<p class="hint">Alerts of <span id="alert-day">{dash(indicators.get("alert_day"))}</span> and control '
        f'outcomes of <span id="outcome-day">{dash(indicators.get("outcome_day"))}</span> (stream clock). '
        "Grafana has the full board.</p>"
        '<div class="kpis">'
        f'<div class="kpi"><span class="label">hit rate</span><span id="kpi-hit-rate">'
        f"{dash(total.get('hit_rate_pct'))}</span> %</div>"
        f'<div class="kpi"><span class="label">alerts / budget</span><span id="kpi-alerts">{e(total.get("alerts"))}'
        f'</span> / <span id="kpi-budget">{e(total.get("budget"))}</span></div>'
        f'<div class="kpi"><span class="label">recovered</span><span id="kpi-recovered">'
        f"{e(total.get('recovered_eur'))}</span> EUR</div></div>"
        '<table id="indicators"><thead><tr><th>Office</th><th>Alerts</th><th>Budget</th><th>Budget used %</th>'
        "<th>Controlled</th><th>Positive</th><th>Hit rate %</th><th>Recovered EUR</th></tr></thead>"
        f'<tbody id="indicators-body">{_indicator_rows(indicators)}</tbody></table>'
        '<script src="/static/supervisor.js"></script>'
    )
    return page("Supervisor", body, user, csrf)


def operator_page(user: Mapping[str, Any], csrf: str, stats: Mapping[str, Any]) -> str:
    """Vision 360: an operator's own flows (no risk score, no alert)."""
    totals = stats.get("totals") or {}
    body = (
        f"<h1>Your flows: {e(stats.get('eori'))}</h1>"
        f'<p id="operator-totals">{e(totals.get("declarations"))} declarations, {e(totals.get("items"))} goods items, '
        f"customs value {eur(totals.get('customs_value_eur'))}, duty {eur(totals.get('duty_eur'))}, "
        f"import VAT {eur(totals.get('vat_eur'))}; {e(totals.get('controls'))} controls, of which "
        f"{e(totals.get('positive_controls'))} found an irregularity.</p>"
        + bar_chart_svg(
            [(p["day"][5:], float(p["declarations"])) for p in stats.get("per_day") or []], "declarations per day"
        )
        + "<h2>By CN chapter</h2>"
        + _table(
            stats.get("chapters") or [],
            [("chapter", "Chapter"), ("items", "Items"), ("customs_value_eur", "Value EUR"), ("duty_eur", "Duty EUR")],
        )
        + "<h2>By origin</h2>"
        + _table(
            stats.get("origins") or [],
            [("origin_country", "Origin"), ("items", "Items"), ("customs_value_eur", "Value EUR")],
        )
        + "<h2>By office</h2>"
        + _table(stats.get("offices") or [], [("office", "Office"), ("declarations", "Declarations")])
    )
    return page("My flows", body, user, csrf)


CONSOLE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0; color: #1b1f24; background: #f6f7f9; }
header { display: flex; align-items: center; gap: 1.5rem; padding: .6rem 1.2rem; background: #123a66; color: #fff; }
header a { color: #fff; text-decoration: none; margin-right: 1rem; }
header .brand { font-weight: 700; font-size: 1.2rem; }
nav { display: flex; align-items: center; gap: .8rem; flex: 1; }
nav .who { margin-left: auto; opacity: .85; }
form.inline { display: inline; }
main { padding: 1rem 1.5rem; }
table { border-collapse: collapse; background: #fff; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d9dde3; padding: .3rem .5rem; text-align: left; vertical-align: top; font-size: .9rem; }
th { background: #eef1f5; }
tr.new { animation: flash 2s ease-out; }
@keyframes flash { from { background: #fff3b0; } to { background: #fff; } }
.filters, form.outcome, form.login { display: flex; flex-wrap: wrap; gap: .8rem; align-items: center; }
form.login, form.outcome { flex-direction: column; align-items: flex-start; max-width: 28rem; }
.status { font-size: .8rem; font-weight: normal; color: #4a5a6a; }
.hint { color: #5b6673; font-size: .85rem; }
.error { color: #a11; font-weight: 600; }
.notice { color: #145a14; font-weight: 600; }
.risk { background: #a11; color: #fff; border-radius: .3rem; padding: 0 .4rem; font-size: 1rem; }
.score { background: #fff; border-left: 4px solid #3568a8; padding: .2rem .8rem; margin: .5rem 0; }
.score h3 { margin: .3rem 0; font-size: 1rem; }
.kpis { display: flex; gap: 1rem; }
.kpi { background: #fff; padding: .8rem 1.2rem; border: 1px solid #d9dde3; font-size: 1.4rem; }
.kpi .label { display: block; font-size: .8rem; color: #5b6673; }
svg.chart { background: #fff; border: 1px solid #d9dde3; display: block; margin: .4rem 0; }
"""

FEED_JS = r"""
(function () {
  "use strict";
  var body = document.getElementById("alerts-body");
  var filters = document.getElementById("filters");
  var status = document.getElementById("feed-status");
  var clockEl = document.getElementById("feed-clock");
  var alerts = new Map();
  var source = null;

  function query() {
    var params = new URLSearchParams();
    ["office", "detector", "mode"].forEach(function (name) {
      var value = filters.elements[name].value;
      if (value) { params.set(name, value); }
    });
    return params.toString();
  }

  function hoursText(h) {
    if (h === null || h === undefined) { return "-"; }
    return h >= 0 ? "+" + h.toFixed(1) + " h" : "arrived " + (-h).toFixed(1) + " h ago";
  }

  function compare(a, b) {
    var sort = filters.elements.sort.value;
    var ta = a.hours_left === null ? Infinity : (a.hours_left < 0 ? 1e9 - a.hours_left : a.hours_left);
    var tb = b.hours_left === null ? Infinity : (b.hours_left < 0 ? 1e9 - b.hours_left : b.hours_left);
    if (sort === "time") { return ta - tb || b.fused_risk - a.fused_risk; }
    if (sort === "eur") { return b.eur_at_stake - a.eur_at_stake || b.fused_risk - a.fused_risk; }
    return b.fused_risk - a.fused_risk || ta - tb;
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function render() {
    var list = Array.from(alerts.values()).sort(compare);
    var rows = list.map(function (a) {
      var tr = document.createElement("tr");
      tr.id = "alert-" + a.alert_id;
      tr.dataset.alertId = a.alert_id;
      if (a._new) { tr.className = "new"; }
      cell(tr, a.fused_risk.toFixed(2));
      cell(tr, hoursText(a.hours_left));
      cell(tr, Math.round(a.eur_at_stake).toLocaleString("en") + " EUR");
      cell(tr, a.office);
      cell(tr, a.subject_reference);
      cell(tr, a.operator_eori || "-");
      cell(tr, a.transport_mode || "-");
      cell(tr, (a.reasons && a.reasons[0]) || "");
      var td = document.createElement("td");
      var link = document.createElement("a");
      link.href = "/alerts/" + encodeURIComponent(a.alert_id);
      link.textContent = a.has_outcome ? "open (outcome recorded)" : "open";
      link.className = "open-alert";
      td.appendChild(link);
      tr.appendChild(td);
      return tr;
    });
    body.replaceChildren.apply(body, rows);
  }

  function connect() {
    if (source) { source.close(); }
    alerts.clear();
    render();
    status.textContent = "connecting...";
    source = new EventSource("/api/stream?" + query());
    source.addEventListener("snapshot", function (event) {
      var data = JSON.parse(event.data);
      alerts.clear();
      data.alerts.forEach(function (a) { alerts.set(a.alert_id, a); });
      clockEl.textContent = data.clock || "-";
      status.textContent = "live";
      render();
    });
    source.addEventListener("alert", function (event) {
      var a = JSON.parse(event.data);
      a._new = true;
      alerts.set(a.alert_id, a);
      render();
    });
    source.addEventListener("end", function () {
      // The server ended the feed (logout, expired session, disabled account): do not reconnect.
      source.close();
      window.location.assign("/login?next=/alerts");
    });
    source.onerror = function () { status.textContent = "reconnecting..."; };
  }

  filters.addEventListener("change", function (event) {
    if (event.target.name === "sort") { render(); } else { connect(); }
  });
  connect();
})();
"""

SUPERVISOR_JS = r"""
(function () {
  "use strict";
  var keys = ["office", "alerts", "budget", "budget_used_pct", "controlled", "positive", "hit_rate_pct",
              "recovered_eur"];
  function set(id, value) { var el = document.getElementById(id); if (el) { el.textContent = value; } }
  function refresh() {
    fetch("/api/supervisor/indicators", {credentials: "same-origin"}).then(function (r) {
      return r.ok ? r.json() : null;
    }).then(function (data) {
      if (!data) { return; }
      set("alert-day", data.alert_day || "-");
      set("outcome-day", data.outcome_day || "-");
      set("kpi-hit-rate", data.total.hit_rate_pct ?? "-");
      set("kpi-alerts", data.total.alerts);
      set("kpi-budget", data.total.budget);
      set("kpi-recovered", data.total.recovered_eur);
      var rows = data.offices.map(function (o) {
        var tr = document.createElement("tr");
        keys.forEach(function (k) {
          var td = document.createElement("td");
          td.textContent = o[k] === null || o[k] === undefined ? "-" : o[k];
          tr.appendChild(td);
        });
        return tr;
      });
      var body = document.getElementById("indicators-body");
      body.replaceChildren.apply(body, rows);
    }).catch(function () {});
  }
  setInterval(refresh, 5000);
})();
"""
