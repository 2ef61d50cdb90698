# cython: language_level=3, boundscheck=True, wraparound=False
"""Hot path of :class:`~vigie.operators.ens_risk.EnsPreArrivalDetector`: its units, and the
scoring and learning of an ENS item or a declared item, in C where it counts.

It must stay equal to the Python semantics the detector documents, bit for bit: the same
float operations in the same order (libm's ``log`` and ``exp`` are what :mod:`math` calls),
the correctly rounded decimals ``round`` and float formatting give, the same dict insertion
order in the state, and the same checkpoint (the state is the Python
:class:`~vigie.operators.ens_risk.EnsRiskState`). A score and the learning that follows it
share their look-ups (:func:`score_learn_one`); the detector's ``process`` loop, its units read
from the events' field values and its scores built without a keyword call into ``risk_score``
are here too (``tests/test_ens_hot_paths.py`` compares each with its Python reference).
"""

cimport cython
from cpython.datetime cimport PyDateTime_CheckExact, datetime_tzinfo, import_datetime
from libc.math cimport exp, log

from vigie.models.feedback import LabelledOutcome
from vigie.operators._score import build_score, score_id
from vigie.operators.base import Operator, epoch_seconds
from vigie.operators.ens_link import EnsSummary, LinkedDeclaration, vague_description
from vigie.schemas import EntrySummaryDeclaration, ImportDeclaration


import_datetime()


FLAG_PRIORS: dict[str, float] = {
    "vague": 1.7,
    "route_upstream": 3.0,
    "new_consignee": 1.0,
    "new_pair": 0.4,
    "origin_route": 3.0,
    "hs6_mismatch": 0.8,
    "duty_gap": 2.5,
    "mass_gap": 4.0,
}
# Prior log-odds added by each signal at full severity (before outcomes adjust them).
FLAGS: tuple[str, ...] = tuple(FLAG_PRIORS)

cdef tuple _FLAG_NAMES = FLAGS
cdef double _FLAG_PRIOR[8]  # FLAG_PRIORS by position, read in C (the dict is the reference)
for _i, _name in enumerate(FLAGS):
    _FLAG_PRIOR[_i] = FLAG_PRIORS[_name]
del _i, _name

# Positions in FLAGS (bit i of a flag mask is FLAGS[i]).
cdef enum:
    VAGUE = 0
    ROUTE_UPSTREAM = 1
    NEW_CONSIGNEE = 2
    NEW_PAIR = 3
    ORIGIN_ROUTE = 4
    HS6_MISMATCH = 5
    DUTY_GAP = 6
    MASS_GAP = 7

cdef enum:
    MAX_SIGNALS = 5  # a declared item raises at most vague, origin_route, hs6_mismatch, duty_gap, mass_gap

SWEEP_EVERY = 2_000  # learn calls between sweeps of idle entries in a chapter
cdef double _MAD_TO_SIGMA = 1.4826
cdef double _DEFAULT_LOG_RATIO = log(1.15)  # usual gross/net of packed goods, until the HS6 has a reference
cdef double _DEFAULT_RATIO_SPREAD = 0.15


include "_exact.pxi"


cdef inline double _logit(double p) noexcept:
    """log(p / (1 - p)) of ``p`` clipped to [1e-6, 1 - 1e-6]."""
    if p < 1e-6:
        p = 1e-6
    elif p > 1 - 1e-6:
        p = 1 - 1e-6
    return log(p / (1 - p))


cdef inline double _sigmoid(double x) noexcept:
    """1 / (1 + exp(-x)), computed without overflow on either side."""
    cdef double e
    if x >= 0:
        return 1.0 / (1.0 + exp(-x))
    e = exp(x)
    return e / (1.0 + e)


include "_datetimes.pxi"
include "_fields.pxi"


cdef double _hours_between(start, end) except? -1.0:
    """``(end - start).total_seconds() / 3600.0``. Datetimes with the same tzinfo subtract their
    wall-clock times, and total_seconds() divides the exact microseconds by 10**6 (a correctly
    rounded quotient, as of the two exact doubles here below 2**53 microseconds)."""
    cdef long long microseconds
    if PyDateTime_CheckExact(start) and PyDateTime_CheckExact(end) and datetime_tzinfo(start) is datetime_tzinfo(end):
        microseconds = _wall_microseconds(end) - _wall_microseconds(start)
        if -_EXACT_MICROSECONDS < microseconds < _EXACT_MICROSECONDS:
            return <double>microseconds / 1e6 / 3600.0
    return (end - start).total_seconds() / 3600.0


# --- units ------------------------------------------------------------------------------------
cdef class EnsItem:
    """One ENS goods item at filing; ``chapter``: its state key, the HS chapter of ``hs6``."""

    cdef readonly object event_id, ens_reference, filed, eta, office, transport_mode
    cdef readonly object consignee_eori, consignor_country, consignor_name, hs6, route_start, chapter
    cdef readonly long item_number, packages
    cdef readonly double gross_mass_kg
    cdef readonly bint vague

    def __init__(
        self, event_id, ens_reference, long item_number, filed, eta, office, transport_mode, consignee_eori,
        consignor_country, consignor_name, hs6, double gross_mass_kg, long packages, bint vague, route_start,
    ):
        self.event_id, self.ens_reference, self.item_number = event_id, ens_reference, item_number
        self.filed, self.eta, self.office, self.transport_mode = filed, eta, office, transport_mode
        self.consignee_eori, self.consignor_country = consignee_eori, consignor_country
        self.consignor_name, self.hs6, self.route_start = consignor_name, hs6, route_start
        self.gross_mass_kg, self.packages, self.vague = gross_mass_kg, packages, vague
        self.chapter = _chapter(hs6)


cdef inline object _chapter(code):
    """``code[:2]``, the HS chapter of an HS or CN code (sliced in C when it is a str, as it always is)."""
    return (<str>code)[:2] if type(code) is str else code[:2]


cdef class DeclaredItem:
    """One declared goods item, with the ENS item filed for it when the runtime linked one.

    ``taxes_eur``: duty + VAT + excise declared for the item; the ``ens_*``, ``route_start`` and
    ``consignor_country`` fields are ``None`` (``ens_vague`` False) when no ENS is linked.
    ``chapter``: the state key, the HS chapter of the ENS HS6 (of the CN code if none).
    """

    cdef readonly object event_id, mrn, event_time, office, importer_eori, cn_code, origin_country, dispatch_country
    cdef readonly object ens_reference, ens_hs6, ens_gross_mass_kg, route_start, consignor_country, chapter
    cdef readonly long item_number
    cdef readonly double net_mass_kg, customs_value_eur, duty_rate_pct, taxes_eur
    cdef readonly bint ens_vague
    cdef object cn6  # the CN code's HS6

    def __init__(
        self, event_id, mrn, long item_number, event_time, office, importer_eori, cn_code, origin_country,
        dispatch_country, double net_mass_kg, double customs_value_eur, double duty_rate_pct, double taxes_eur,
        ens_reference=None, ens_hs6=None, ens_gross_mass_kg=None, bint ens_vague=False, route_start=None,
        consignor_country=None,
    ):
        self.event_id, self.mrn, self.item_number, self.event_time = event_id, mrn, item_number, event_time
        self.office, self.importer_eori, self.cn_code = office, importer_eori, cn_code
        self.origin_country, self.dispatch_country, self.net_mass_kg = origin_country, dispatch_country, net_mass_kg
        self.customs_value_eur, self.duty_rate_pct, self.taxes_eur = customs_value_eur, duty_rate_pct, taxes_eur
        self.ens_reference, self.ens_hs6, self.ens_gross_mass_kg = ens_reference, ens_hs6, ens_gross_mass_kg
        self.ens_vague, self.route_start, self.consignor_country = ens_vague, route_start, consignor_country
        self._derive()

    cdef void _derive(self) except *:
        """Set what follows from the fields: ``cn6`` and ``chapter``."""
        cn_code = self.cn_code
        self.cn6 = (<str>cn_code)[:6] if type(cn_code) is str else cn_code[:6]
        self.chapter = _chapter(self.ens_hs6) if self.ens_hs6 else _chapter(cn_code)

    @property
    def linked(self) -> bool:
        return self.ens_hs6 is not None


def units(detector, event):
    """The detector's ``units(event)``: ``(state key, unit)`` pairs, a list but for control
    feedback (the detector's ``_feedback_units``)."""
    cdef type kind = type(event)
    # The exact classes first (none is a subclass of another): an isinstance() on a pydantic
    # model class goes through its metaclass.
    if kind is EntrySummaryDeclaration:
        return ens_units(event)
    if kind is LinkedDeclaration:
        return declared_units(event.declaration, event.ens)
    if kind is ImportDeclaration:
        return declared_units(event, None)
    if isinstance(event, EntrySummaryDeclaration):
        return ens_units(event)
    if isinstance(event, LinkedDeclaration):
        return declared_units(event.declaration, event.ens)
    if isinstance(event, ImportDeclaration):
        return declared_units(event, None)
    if isinstance(event, LabelledOutcome):
        return detector._feedback_units(event)
    return ()


cpdef list ens_units(ens):
    """``(HS chapter, EnsItem)`` per goods item of an ENS (what EnsSummary.of keeps, read straight
    from it: the pydantic models' field values, ``_fields.pxi``)."""
    cdef dict fields = _fields(ens), consignor = _fields(fields["consignor"]), item
    event_id, reference, filed, eta = fields["event_id"], fields["ens_reference"], fields["event_time"], fields["eta"]
    office, mode = fields["first_office_of_entry"], str(fields["transport_mode"])
    consignee = _fields(fields["consignee"])["eori"]
    country, name = consignor["country"], consignor["name"]
    route_start = fields["countries_of_routing"][0]
    cdef list units = []
    cdef EnsItem unit
    for it in fields["goods_items"]:
        item = _fields(it)
        unit = EnsItem.__new__(EnsItem)
        unit.event_id, unit.ens_reference, unit.item_number = event_id, reference, item["item_number"]
        unit.filed, unit.eta, unit.office, unit.transport_mode = filed, eta, office, mode
        unit.consignee_eori, unit.consignor_country, unit.consignor_name = consignee, country, name
        unit.hs6, unit.gross_mass_kg, unit.packages = item["hs_code"], item["gross_mass_kg"], item["packages"]
        unit.vague, unit.route_start = vague_description(item["description"]), route_start
        unit.chapter = _chapter(unit.hs6)
        units.append((unit.chapter, unit))
    return units


cpdef list declared_units(decl, ens):
    """``(HS chapter, DeclaredItem)`` per goods item of a declaration, with its ENS item when
    ``ens`` (an EnsSummary or None) has one of the same number; the chapter is the ENS HS6's."""
    cdef dict fields = _fields(decl), item
    event_id, mrn, when = fields["event_id"], fields["mrn"], fields["event_time"]
    office, importer = fields["customs_office"], fields["importer_eori"]
    cdef list units = []
    cdef DeclaredItem unit
    cdef bint summary = type(ens) is EnsSummary  # its items looked up here as its item() does, without the call
    ens_items = ens.items if summary else None
    for it in fields["goods_items"]:
        item = _fields(it)
        unit = DeclaredItem.__new__(DeclaredItem)
        unit.event_id, unit.mrn, unit.item_number, unit.event_time = event_id, mrn, item["item_number"], when
        unit.office, unit.importer_eori, unit.cn_code = office, importer, item["cn_code"]
        unit.origin_country, unit.dispatch_country = item["origin_country"], item["dispatch_country"]
        unit.net_mass_kg, unit.customs_value_eur = item["net_mass_kg"], item["customs_value_eur"]
        unit.duty_rate_pct = item["duty_rate_pct"]
        unit.taxes_eur = item["duty_eur"] + item["vat_eur"] + (item["excise_eur"] or 0.0)
        if summary:
            ens_item = _summary_item(ens_items, unit.item_number)
        else:
            ens_item = ens.item(unit.item_number) if ens is not None else None
        if ens_item is not None:
            unit.ens_reference, unit.ens_hs6 = ens.ens_reference, ens_item.hs6
            unit.ens_gross_mass_kg = ens_item.gross_mass_kg
            unit.ens_vague, unit.route_start = ens_item.vague, ens.routing[0]
            unit.consignor_country = ens.consignor_country
        unit._derive()
        units.append((unit.chapter, unit))
    return units


cdef object _summary_item(items, long number):
    """``EnsSummary.item(number)`` of a summary whose items are ``items``: the first with that
    ``item_number``, None if none."""
    for it in items:
        if it.item_number == number:
            return it
    return None


def feedback_context(detector, scores) -> list | None:
    """What to remember about a scored subject so that its control can teach this detector.

    One row per scored item: ``[item_number, chapter key, hs6, country, flag mask]``.
    """
    cdef list rows = []
    cdef dict values  # the score's field values (_fields.pxi)
    for score in scores:
        values = _fields(score)
        fields = values["reason_fields"]
        chapter = fields.get("chapter")
        if chapter is None:
            continue
        rows.append([values["item_number"], chapter, fields["hs6"], fields["country"], int(fields["flag_mask"] or 0)])
    return rows or None


# --- learned quantities -------------------------------------------------------------------------
cdef double _rate(dict groups, key, double prior, double weight, double* controls, double* positives) except? -1.0:
    """Shrunk hit rate of group ``key``; its controls and positives into the pointers."""
    cdef double n, hits
    g = groups.get(key)
    if g is None:
        controls[0] = positives[0] = 0.0
        return prior
    n, hits = g[0], g[1]
    controls[0], positives[0] = n, hits
    return (hits + weight * prior) / (n + weight)


# The group keys of one item's (hs6, country), built once for its rate and its amount recovered, and
# only when the chapter has groups (None otherwise: nothing to look up): "hs6|country", "hs6|*", "*|country".
cdef double _group_rate(
    detector, dict groups, pair_key, hs6_key, country_key, double* controls, double* positives,
) except? -1.0:
    """Shrunk hit rate of (hs6, country) (its group keys), backing off to the HS6, the country, the
    chapter and ``prior_rate`` as the detector's module says; its controls and positives into the pointers."""
    cdef double prior = detector.prior_rate, weight, r0, rc, rh, l0, blended, unused
    if not groups:  # no control learned in this chapter yet: every level is the prior
        controls[0] = positives[0] = 0.0
        return _sigmoid(_logit(prior) + _logit(prior) - _logit(prior))
    weight = detector.prior_weight
    r0 = _rate(groups, "*|*", prior, weight, &unused, &unused)
    rc = _rate(groups, country_key, r0, weight, &unused, &unused)
    rh = _rate(groups, hs6_key, r0, weight, &unused, &unused)
    l0 = _logit(r0)
    blended = _sigmoid((l0 if rc == r0 else _logit(rc)) + (l0 if rh == r0 else _logit(rh)) - l0)
    return _rate(groups, pair_key, blended, weight, controls, positives)


cdef double _mean_recovered(dict groups, pair_key, hs6_key, country_key) except? -1.0:
    """EUR recovered per positive control of the closest group that has one (0 if none)."""
    if not groups:
        return 0.0
    for key in (pair_key, hs6_key, country_key, "*|*"):
        g = groups.get(key)
        if g is not None and g[1] > 0:
            return g[2] / g[1]
    return 0.0


cdef double _flag_weight(detector, dict flags, int flag, double base_rate) except? -1.0:
    """Log-odds signal ``FLAGS[flag]`` adds at full severity: its prior, moved towards what outcomes showed."""
    cdef double prior_w = _FLAG_PRIOR[flag], observed, weight
    counts = flags.get(_FLAG_NAMES[flag])
    if counts is None or counts[0] == 0:
        return prior_w
    observed = _logit((counts[1] + 0.5) / (counts[0] + 1.0)) - _logit(base_rate)
    weight = detector.flag_weight
    return (weight * prior_w + counts[0] * observed) / (weight + counts[0])


cdef struct Combined:
    double score
    double rate
    double controls
    double positives
    long mask


# The signals one item raised, in the order found (their texts in a list beside).
cdef struct Signals:
    int n
    int flag[MAX_SIGNALS]
    double severity[MAX_SIGNALS]


cdef inline void _add(Signals* signals, list texts, int flag, double severity, str text) except *:
    signals.flag[signals.n] = flag
    signals.severity[signals.n] = severity
    signals.n += 1
    texts.append(text)


cdef str _combine(
    detector, state, dict groups, pair_key, hs6_key, country_key, Signals* signals, list texts, Combined* out,
):
    """Score = sigmoid(logit(similar hit rate) + sum of weight x severity of the active signals),
    with the hit rate's figures, into ``out``; returns the active signals' texts, heaviest first
    (ties in the order found), joined by "; "."""
    cdef double logit
    cdef double w[MAX_SIGNALS]
    cdef int order[MAX_SIGNALS]
    cdef int active = 0, i, j, k
    out.rate = _group_rate(detector, groups, pair_key, hs6_key, country_key, &out.controls, &out.positives)
    out.mask = 0
    logit = _logit(out.rate)
    if signals.n:
        flags = state.flags
        for i in range(signals.n):
            if signals.severity[i] <= 0:
                continue
            w[i] = _flag_weight(detector, flags, signals.flag[i], out.rate) * signals.severity[i]
            logit += w[i]
            out.mask |= 1 << signals.flag[i]
            # Stable insertion by decreasing weight (list.sort on -weight keeps ties in order).
            j = active
            while j > 0 and -w[i] < -w[order[j - 1]]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
            active += 1
    out.score = _sigmoid(logit)
    return "; ".join([texts[order[k]] for k in range(active)])


cdef str _similar_text(hs6, country, Combined* c):
    """What outcomes of similar consignments showed, for the reason text."""
    if c.controls <= 0:
        return f"no control yet of HS {hs6} from {country} (prior hit rate {exact_fixed(100 * c.rate, 0, False)}%)"
    return (
        f"similar consignments (HS {hs6} from {country}) were positive in {exact_fixed(c.positives, 0, False)} of "
        f"{exact_fixed(c.controls, 0, False)} control(s) (hit rate {exact_fixed(100 * c.rate, 0, False)}% after shrinkage)"
    )


cdef _running_mean(list acc, double value, double horizon=200.0):
    """Running mean ``acc = [count, mean]`` that turns into an exponential average after ``horizon``."""
    cdef double count = acc[0] + 1.0, mean = acc[1]
    acc[0] = count
    acc[1] = mean + (value - mean) / _min(count, horizon)


cdef object _base_risk_score = Operator.risk_score
cdef object _operator_process = Operator.process


cdef object _risk_score(
    detector, subject_event_id, str subject_type, subject_reference, item_number, event_time, office,
    operator_eori, cn_code, origin_country, double score, double eur_at_stake, str reason, dict fields,
):
    """``detector.risk_score(...)`` with these values: :meth:`~vigie.operators.base.Operator.risk_score`'s
    own two calls made from here (no keyword call into Python), unless the detector's class overrides it."""
    if type(detector).risk_score is not _base_risk_score:
        return detector.risk_score(
            subject_event_id=subject_event_id, subject_type=subject_type, subject_reference=subject_reference,
            item_number=item_number, event_time=event_time, office=office, operator_eori=operator_eori,
            cn_code=cn_code, origin_country=origin_country, score=score, eur_at_stake=eur_at_stake, reason=reason,
            reason_fields=fields,
        )
    name = detector.name
    return build_score(
        name, score_id(name, subject_event_id, item_number), subject_event_id, subject_type, subject_reference,
        item_number, event_time, office, operator_eori, cn_code, origin_country, score,
        exact_round(eur_at_stake, 2), reason, fields,
    )


# --- one ENS item -------------------------------------------------------------------------------
cdef object _UNKNOWN = object()  # a look-up scoring did not make (learning makes it)


cdef object _score_ens(detector, EnsItem unit, state, double when, bint learn):
    """The score of an ENS item; then, if ``learn``, what it teaches (with the look-ups the score made)."""
    cdef Signals signals
    cdef list texts = []
    cdef Combined c
    cdef str found
    cdef dict groups
    cdef double maturity, taxes, lead_h, novelty
    cdef bint new_consignee = False, new_pair = False
    seen, pair, last = _UNKNOWN, None, _UNKNOWN
    signals.n = 0
    hs6, country, consignee = unit.hs6, unit.consignor_country, unit.consignee_eori
    if unit.vague:
        _add(&signals, texts, VAGUE, 1.0, "goods description too vague to risk-assess")
    if unit.route_start != country:
        text = f"routing starts in {unit.route_start} although the consignor is in {country}"
        _add(&signals, texts, ROUTE_UPSTREAM, 1.0, text)
    warmup = detector.warmup_items
    maturity = _min(1.0, state.n_ens / max(warmup, 1))
    if consignee and maturity > 0:
        novelty = detector.novelty_s
        seen = (<dict?>state.consignees).get(consignee)
        new_consignee = seen is None or when - seen[1] > novelty
        if new_consignee:
            text = f"consignee {consignee} new to HS chapter {unit.chapter}"
            _add(&signals, texts, NEW_CONSIGNEE, maturity, text)
        else:
            pair = f"{consignee}|{unit.consignor_name}"
            last = (<dict?>state.pairs).get(pair)
            new_pair = last is None or when - last > novelty
            if new_pair:
                text = f"consignor {unit.consignor_name!r} new for this consignee"
                _add(&signals, texts, NEW_PAIR, maturity, text)
    groups = state.groups
    pair_key = hs6_key = country_key = None
    if groups:
        pair_key, hs6_key, country_key = f"{hs6}|{country}", f"{hs6}|*", f"*|{country}"
    found = _combine(detector, state, groups, pair_key, hs6_key, country_key, &signals, texts, &c)
    ref = (<dict?>state.refs).get(hs6)
    taxes = exp(ref.tax[1]) * unit.gross_mass_kg if ref is not None and ref.tax[0] > 0 else 0.0
    lead_h = _hours_between(unit.filed, unit.eta)
    tail = f"; such goods usually pay about {exact_fixed(taxes, 0, True)} EUR of duty and taxes." if taxes > 0 else "."
    reason = (
        f"ENS {unit.ens_reference} item {unit.item_number} (HS {hs6}, {exact_fixed(unit.gross_mass_kg, 0, True)} kg, "
        f"{country} to consignee {consignee or 'unknown'}): {found or 'no warning sign on the filing'}; "
        f"{_similar_text(hs6, country, &c)}. Arrival expected at {unit.office} in {exact_fixed(lead_h, 1, True)} h{tail}"
    )
    fields = {
        "chapter": unit.chapter,
        "hs6": hs6,
        "country": country,
        "flag_mask": <double>c.mask,
        "route_start": unit.route_start,
        "vague": <double>unit.vague,
        "new_consignee": <double>new_consignee,
        "new_pair": <double>new_pair,
        "similar_controls": c.controls,
        "similar_positives": c.positives,
        "similar_hit_rate": exact_round(c.rate, 4),
        "lead_time_hours": exact_round(lead_h, 2),
        "estimated_taxes_eur": exact_round(taxes, 2),
    }
    score = _risk_score(
        detector, unit.event_id, "ens", unit.ens_reference, unit.item_number, unit.filed, unit.office, consignee,
        None, country, c.score, taxes, reason, fields,
    )
    if learn:
        _learn_ens(unit, state, when, seen, pair, last)
    return score


cdef _learn_ens(EnsItem unit, state, double when, seen, pair, last):
    """What an ENS item teaches; ``seen``: its consignee's entry, ``pair`` and ``last``: its
    consignee-consignor key and entry, as scoring looked them up (``_UNKNOWN`` if it did not)."""
    cdef list span = state.span
    n_ens = state.n_ens = state.n_ens + 1
    if n_ens == 1:
        span[0] = span[1] = when
    else:
        if when < span[0]:
            span[0] = when
        if when > span[1]:
            span[1] = when
    consignee = unit.consignee_eori
    if not consignee:
        return
    cdef dict consignees = state.consignees, pairs
    if seen is _UNKNOWN:
        seen = consignees.get(consignee)
    if seen is None:
        consignees[consignee] = [when, when, 1.0]
    else:
        if when < seen[0]:
            seen[0] = when
        if when > seen[1]:
            seen[1] = when
        seen[2] += 1.0
    pairs = state.pairs
    if last is _UNKNOWN:
        pair = f"{consignee}|{unit.consignor_name}"
        last = pairs.get(pair)
    if last is None or when > last:
        pairs[pair] = when


# --- one declared item --------------------------------------------------------------------------
cdef object _score_declared(detector, DeclaredItem unit, state, ref):
    """``ref``: the HsReference of the item's ENS HS6 (None if unlinked or not learned yet)."""
    cdef Signals signals
    cdef list texts = []
    cdef Combined c
    cdef str found, head, text
    cdef dict groups
    cdef double duty_gap = 0.0, ratio = 0.0, expected_ratio = 0.0, centre, spread, z, stake
    cdef double gross, median, mad, usual
    cdef bint linked = unit.ens_hs6 is not None, has_ratio = False
    signals.n = 0
    hs6 = unit.ens_hs6 or unit.cn6
    country = unit.consignor_country or unit.dispatch_country
    ens_hs6 = unit.ens_hs6
    if linked:
        if unit.ens_vague:
            _add(&signals, texts, VAGUE, 1.0, "the ENS described the goods too vaguely to risk-assess")
        if unit.route_start != unit.origin_country and unit.route_start != unit.consignor_country:
            text = f"declared origin {unit.origin_country} but the ENS routing starts in {unit.route_start}"
            _add(&signals, texts, ORIGIN_ROUTE, 1.0, text)
        if ens_hs6 != unit.cn6:
            text = f"the carrier filed HS {ens_hs6}, the importer declares CN {unit.cn_code}"
            if ref is not None and ref.duty[0] >= 3:
                usual = ref.duty[1]
                if usual > unit.duty_rate_pct:
                    duty_gap = usual - unit.duty_rate_pct
                    text += (
                        f" (HS {ens_hs6} usually pays {exact_fixed(usual, 1, False)}% duty, "
                        f"{exact_fixed(unit.duty_rate_pct, 1, False)}% declared)"
                    )
            _add(&signals, texts, HS6_MISMATCH, 1.0, text)
            if duty_gap > 0:
                text = f"duty gap {exact_fixed(duty_gap, 1, False)} points"
                _add(&signals, texts, DUTY_GAP, _min(1.0, duty_gap / 10.0), text)
        if unit.ens_gross_mass_kg is not None:
            gross = unit.ens_gross_mass_kg
            ratio = gross / unit.net_mass_kg
            has_ratio = True
            centre, spread = _DEFAULT_LOG_RATIO, _DEFAULT_RATIO_SPREAD
            if ref is not None and ref.ratio.size >= detector.min_ratio_observations:
                median, mad = ref.ratio.median_mad()
                centre, spread = median, _max(_MAD_TO_SIGMA * mad, 0.03)
            expected_ratio = exp(centre)
            z = (log(ratio) - centre) / spread
            if z > 3.0:
                text = (
                    f"ENS gross mass {exact_fixed(gross, 0, True)} kg is {exact_fixed(ratio, 2, False)}x the declared net "
                    f"{exact_fixed(unit.net_mass_kg, 0, True)} kg where {exact_fixed(expected_ratio, 2, False)}x is usual for "
                    f"HS {ens_hs6}: goods weighed but not declared?"
                )
                _add(&signals, texts, MASS_GAP, _min(1.0, (z - 3.0) / 3.0), text)
    groups = state.groups
    pair_key = hs6_key = country_key = None
    if groups:  # the group keys, for the rate and the amount recovered
        pair_key, hs6_key, country_key = f"{hs6}|{country}", f"{hs6}|*", f"*|{country}"
    found = _combine(detector, state, groups, pair_key, hs6_key, country_key, &signals, texts, &c)
    stake = _max(c.score * _mean_recovered(groups, pair_key, hs6_key, country_key), c.score * unit.taxes_eur)
    if duty_gap > 0:
        stake = _max(stake, unit.customs_value_eur * duty_gap / 100.0 * (1.0 + <double>detector.vat_rate))
    if linked:
        head = (
            f"Declaration {unit.mrn} item {unit.item_number} (CN {unit.cn_code} from {unit.origin_country}) "
            f"against ENS {unit.ens_reference}: {found or 'consistent with its ENS'}; "
        )
    else:
        head = f"Declaration {unit.mrn} item {unit.item_number} (CN {unit.cn_code}, no linked ENS): "
    fields = {
        "chapter": unit.chapter,
        "hs6": hs6,
        "country": country,
        "flag_mask": <double>c.mask,
        "linked_ens": unit.ens_reference,
        "ens_hs6": ens_hs6,
        "route_start": unit.route_start,
        "gross_net_ratio": exact_round(ratio, 4) if has_ratio else None,
        "usual_gross_net_ratio": exact_round(expected_ratio, 4) if has_ratio else None,
        "duty_gap_pct": exact_round(duty_gap, 2),
        "similar_controls": c.controls,
        "similar_positives": c.positives,
        "similar_hit_rate": exact_round(c.rate, 4),
    }
    return _risk_score(
        detector, unit.event_id, "declaration", unit.mrn, unit.item_number, unit.event_time, unit.office,
        unit.importer_eori, unit.cn_code, unit.origin_country, c.score, stake,
        f"{head}{_similar_text(hs6, country, &c)}.", fields,
    )


cdef _learn_declared(DeclaredItem unit, state, ref, double when):
    """What a linked declaration teaches about its ENS HS6 (``ref``: its HsReference, None if new)."""
    cdef double gross
    if unit.ens_hs6 is None or unit.ens_gross_mass_kg is None:
        return
    if ref is None:
        ref = state.new_reference(unit.ens_hs6)
    gross = unit.ens_gross_mass_kg
    ref.ratio.add(log(gross / unit.net_mass_kg), when)
    if unit.ens_hs6 == unit.cn6:
        _running_mean(ref.duty, unit.duty_rate_pct)
    if unit.taxes_eur > 0:
        _running_mean(ref.tax, log(unit.taxes_eur / gross))


cdef inline object _reference(DeclaredItem unit, state):
    """The HsReference of a linked item's ENS HS6, None if unlinked or not learned yet."""
    return (<dict?>state.refs).get(unit.ens_hs6) if unit.ens_hs6 is not None else None


# --- entry points -------------------------------------------------------------------------------
cdef double _epoch(when) except? -1.0:
    """:func:`~vigie.operators.base.epoch_seconds` of ``when`` (``when.timestamp()``): the same
    microseconds divided the same way, without the Python call; anything unusual is its business."""
    cdef long long micros
    if PyDateTime_CheckExact(when) and _utc_microseconds(when, &micros):
        if -_EXACT_MICROSECONDS < micros < _EXACT_MICROSECONDS:
            return <double>micros / 1e6
    return epoch_seconds(when)


cdef _tick(detector, state, double when):
    """Count one learn call; every SWEEP_EVERY, forget what idled past the novelty horizon."""
    ticks = state.ticks = state.ticks + 1
    if ticks % SWEEP_EVERY == 0:
        detector._sweep(state, when)


def score_one(detector, unit, state):
    """The detector's score of ``unit`` against ``state`` (not mutated); None for control feedback."""
    if isinstance(unit, EnsItem):
        return _score_ens(detector, unit, state, _epoch((<EnsItem>unit).filed), False)
    if isinstance(unit, DeclaredItem):
        return _score_declared(detector, unit, state, _reference(unit, state))
    return None


def learn_one(detector, unit, state) -> None:
    """Update ``state`` with ``unit`` (control feedback: the detector's ``_learn_feedback``)."""
    cdef double when
    if isinstance(unit, EnsItem):
        when = _epoch((<EnsItem>unit).filed)
        _learn_ens(unit, state, when, _UNKNOWN, None, _UNKNOWN)
    elif isinstance(unit, DeclaredItem):
        when = _epoch((<DeclaredItem>unit).event_time)
        _learn_declared(unit, state, _reference(unit, state), when)
    else:
        detector._learn_feedback(unit, state)
        when = unit.when
    _tick(detector, state, when)


cdef object _score_learn(detector, unit, state):
    """:func:`score_learn_one`, callable from C."""
    cdef double when
    if isinstance(unit, EnsItem):
        when = _epoch((<EnsItem>unit).filed)
        result = _score_ens(detector, unit, state, when, True)
    elif isinstance(unit, DeclaredItem):
        when = _epoch((<DeclaredItem>unit).event_time)
        ref = _reference(unit, state)
        result = _score_declared(detector, unit, state, ref)
        _learn_declared(unit, state, ref, when)
    else:
        detector._learn_feedback(unit, state)
        when = unit.when
        result = None
    _tick(detector, state, when)
    return result


def score_learn_one(detector, unit, state):
    """:func:`score_one` then :func:`learn_one`, sharing their look-ups; returns the score."""
    return _score_learn(detector, unit, state)


def process(detector, event, store):
    """The detector's ``process``: :meth:`~vigie.operators.base.Operator.process` (score then learn
    every unit of ``event`` against the keyed ``store``, each state written back) with its loop in C."""
    cdef list scores = []
    cdef bint plain = type(store) is dict  # any other mapping through its own get and __setitem__
    kind = type(detector)
    if kind.units is not units or kind.score_learn_one is not score_learn_one:  # a subclass's own: its loop
        return _operator_process(detector, event, store)
    for key, unit in units(detector, event):
        state = (<dict>store).get(key) if plain else store.get(key)
        if state is None:
            state = detector.new_state()
        score = _score_learn(detector, unit, state)
        if score is not None:
            scores.append(score)
        if plain:
            (<dict>store)[key] = state
        else:
            store[key] = state
    return scores
