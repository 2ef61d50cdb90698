# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The atypical-flow detector's hot path in C: feature engineering, the chapter's profile, the score's fields.

:mod:`.atypical` documents the detector; this module computes, for every goods item, what it
describes, and must stay equal to those Python semantics *bit for bit* (a golden digest of
every score and state checks it): each double is computed by the same IEEE operations in the
same order as the Python expression written next to it, ``min``/``max`` keep Python's
argument order (which matters for NaN), float ``%`` keeps Python's sign rule, and the
rounding of reason fields goes through ``exact_round`` (``_exact.pxi``), which is Python's ``round`` exactly.

What it holds:

* :class:`ItemFlow`, the unit of work (one goods item), with C fields;
* :class:`ChapterModel`, the C part of a chapter's state (the base of
  :class:`.atypical.AtypicalFlowState`, which adds the snapshot format);
* :class:`FlowScorer`, the detector's configuration and its score / learn steps.
"""

import builtins
from datetime import UTC

from libc.math cimport copysign, exp, fabs, fmod, log10, pow

cimport cython

from vigie.schemas import ImportDeclaration

from ._robust import RankedWindow
from ._score import build_score, score_id
from .base import Operator, epoch_seconds

include "_exact.pxi"
include "_fields.pxi"

FEATURES = (
    "value_per_kg",
    "net_mass",
    "value_vs_group",
    "route",
    "new_declarant",
    "hour",
    "procedure",
    "transport_mode",
)
"""The HST input, in this order (see :mod:`.atypical` for what each feature means)."""

MODES = {"sea": 0.0, "air": 0.25, "road": 0.5, "rail": 0.75, "postal": 1.0}
"""Transport mode encoding: HST splits isolate categories as well as they isolate ranges."""

cdef enum:
    N_FEATURES = 8
    N_MODES = 5
    MODE_FEATURE = 7  # transport_mode, the one categorical feature: its standout is computed apart

cdef tuple _STANDOUT_FIELDS = tuple(f"{name}_standout" for name in FEATURES)
# The reason fields of a score, in their order (copying this is cheaper than growing a dict key by key).
cdef dict _FIELDS = dict.fromkeys(
    ("hst_score", "typical_hst_score", "rarity", "top_features", "observations")
    + tuple(name for pair in zip(FEATURES, _STANDOUT_FIELDS) for name in pair)
    + ("value_per_kg_eur", "group_value_per_kg_eur")
)
cdef tuple _MODE_NAMES = tuple(MODES)
cdef dict _MODE_INDEX = {name: i for i, name in enumerate(MODES)}
cdef double _MODE_CODES[N_MODES]
cdef int _NAME_RANK[N_FEATURES]  # position of each feature name in alphabetical order: ties in the top features


cdef void _fill_tables() except *:
    cdef Py_ssize_t i
    for i in range(N_MODES):
        _MODE_CODES[i] = MODES[_MODE_NAMES[i]]
    for i in range(N_FEATURES):
        _NAME_RANK[i] = sorted(FEATURES).index(FEATURES[i])


_fill_tables()

cdef double _TAIL = 0.1  # share of the calibration window the rarity's exponential tail is fitted to
cdef double _DAY_S = 86_400.0
cdef double _STANDOUT_FLOOR = 0.02  # smallest spread a feature's standout is measured against
cdef double _GROUP_DECADES = 1.0  # value_vs_group saturates at this many powers of ten from the group median

cdef object _py_float = builtins.float  # float(str) exactly as Python parses it


# ---------------------------------------------------------------------- exact arithmetic helpers


@cython.cdivision(True)
cdef inline double _scale(double value, double low, double high) noexcept:
    """``min(1.0, max(0.0, (value - low) / (high - low)))`` (``high > low``)."""
    cdef double t = (value - low) / (high - low)
    if not t > 0.0:  # max(0.0, t) keeps 0.0 unless t is greater (NaN included)
        t = 0.0
    return t if t < 1.0 else 1.0


@cython.cdivision(True)
cdef inline double _py_mod(double value, double divisor) noexcept:
    """Python's float ``value % divisor``: the remainder takes the divisor's sign, and 0.0 is signed like it."""
    cdef double mod = fmod(value, divisor)
    if mod != 0.0:
        if (divisor < 0.0) != (mod < 0.0):
            mod += divisor
    else:
        mod = copysign(0.0, divisor)
    return mod


# ---------------------------------------------------------------------- the unit


@cython.final
@cython.no_gc  # strings, a number and a datetime: no cycle goes through a unit, and units are many
cdef class ItemFlow:
    """One goods item seen by the atypical-flow detector."""

    cdef readonly object event_id
    cdef readonly object mrn
    cdef readonly object item_number
    cdef readonly object event_time
    cdef readonly object office
    cdef readonly object importer_eori
    cdef readonly object cn_code
    cdef readonly object origin_country
    cdef readonly object dispatch_country
    cdef readonly object procedure_code
    cdef readonly object transport_mode
    cdef readonly double net_mass_kg
    cdef readonly double customs_value_eur

    def __init__(
        self, event_id, mrn, item_number, event_time, office, importer_eori, cn_code, origin_country,
        dispatch_country, procedure_code, transport_mode, double net_mass_kg, double customs_value_eur,
    ):
        self.event_id = event_id
        self.mrn = mrn
        self.item_number = item_number
        self.event_time = event_time
        self.office = office
        self.importer_eori = importer_eori
        self.cn_code = cn_code
        self.origin_country = origin_country
        self.dispatch_country = dispatch_country
        self.procedure_code = procedure_code
        self.transport_mode = transport_mode
        self.net_mass_kg = net_mass_kg
        self.customs_value_eur = customs_value_eur

    def __repr__(self) -> str:
        return (
            f"ItemFlow(event_id={self.event_id!r}, item_number={self.item_number!r}, cn_code={self.cn_code!r}, "
            f"origin_country={self.origin_country!r}, net_mass_kg={self.net_mass_kg!r}, "
            f"customs_value_eur={self.customs_value_eur!r})"
        )


def item_flows(event) -> list:
    """``(CN chapter, ItemFlow)`` for each goods item of an import declaration ``event``."""
    cdef ItemFlow unit
    cdef dict item
    # A pydantic model keeps its fields in __dict__: reading them there skips the model's attribute hook.
    cdef dict declaration = _fields(event)
    event_id, mrn, when = declaration["event_id"], declaration["mrn"], declaration["event_time"]
    office, importer = declaration["customs_office"], declaration["importer_eori"]
    procedure, mode = declaration["procedure_code"], str(declaration["transport_mode_at_border"])
    out = []
    for goods in declaration["goods_items"]:
        item = _fields(goods)
        unit = ItemFlow.__new__(ItemFlow)
        unit.event_id, unit.mrn, unit.event_time, unit.office = event_id, mrn, when, office
        unit.importer_eori, unit.procedure_code, unit.transport_mode = importer, procedure, mode
        unit.item_number, unit.cn_code = item["item_number"], item["cn_code"]
        unit.origin_country, unit.dispatch_country = item["origin_country"], item["dispatch_country"]
        unit.net_mass_kg, unit.customs_value_eur = item["net_mass_kg"], item["customs_value_eur"]
        out.append((unit.cn_code[:2], unit))
    return out


# ---------------------------------------------------------------------- the chapter's state


def _evict_oldest(dict entries, dict times) -> None:
    """Drop the tenth of ``entries`` (at least one) with the earliest ``times[name]``, ties by name."""
    oldest = sorted(entries, key=lambda k: (times[k], k))
    for k in oldest[: max(1, len(oldest) // 10)]:
        del entries[k]


@cython.auto_pickle(False)  # the state pickles through its snapshot (see AtypicalFlowState.__reduce__)
cdef class ChapterModel:
    """What one CN chapter has learned, as the hot path reads it; :class:`.atypical.AtypicalFlowState`
    says what each field means and saves it. ``mean``, ``spread`` and ``mode_share`` are kept as
    C arrays and shown as a list, a list and a dict (``{}`` until the first item is learned)."""

    cdef public object hst
    cdef public object calibration
    cdef public dict groups
    cdef public dict pairs
    cdef public double last_sweep
    cdef public long long seen
    cdef public Py_ssize_t group_window
    cdef public Py_ssize_t max_groups
    cdef public Py_ssize_t max_pairs
    cdef public double alpha
    cdef double _mean[N_FEATURES]
    cdef double _spread[N_FEATURES]
    cdef double _share[N_MODES]
    cdef bint _shared  # whether the mode shares exist yet

    def __repr__(self) -> str:
        return (f"<{type(self).__name__}: {self.seen} items learned, {len(self.groups)} unit-value windows, "
                f"{len(self.pairs)} (importer, CN4) pairs>")

    @property
    def mean(self) -> list:
        """Exponentially weighted mean of each feature, in ``FEATURES`` order."""
        return [self._mean[i] for i in range(N_FEATURES)]

    @mean.setter
    def mean(self, values) -> None:
        _load_features(self._mean, values)

    @property
    def spread(self) -> list:
        """Exponentially weighted mean absolute deviation of each feature, in ``FEATURES`` order."""
        return [self._spread[i] for i in range(N_FEATURES)]

    @spread.setter
    def spread(self, values) -> None:
        _load_features(self._spread, values)

    @property
    def mode_share(self) -> dict:
        """Weighted share of each transport mode (``{}`` before the first item)."""
        if not self._shared:
            return {}
        return {name: self._share[i] for i, name in enumerate(_MODE_NAMES)}

    @mode_share.setter
    def mode_share(self, dict shares) -> None:
        self._shared = bool(shares)
        for i, name in enumerate(_MODE_NAMES):
            self._share[i] = shares.get(name, 0.0)

    cdef inline double _mode_share(self, int mode) noexcept:
        """``mode_share.get(name, 0.0)`` of the mode at index ``mode`` of ``MODES`` (-1: not a known mode)."""
        if mode < 0 or not self._shared:
            return 0.0
        return self._share[mode]

    cdef object _group_median(self, object name, Py_ssize_t min_size):
        """Median log10 value per kg of group ``name``, if it holds at least ``min_size`` values (else None)."""
        window = self.groups.get(name)
        if window is None or window.size < min_size:
            return None
        return window.median()

    cdef void _add_to_group(self, object name, object value, object when) except *:
        window = self.groups.get(name)
        if window is None:
            if len(self.groups) >= self.max_groups:
                _evict_oldest(self.groups, {k: w.last_seen for k, w in self.groups.items()})
            # Sorted as it is fed: the median is read off it, with no selection per item.
            window = RankedWindow(self.group_window)
            self.groups[name] = window
        window.add(value, when)

    cdef void _see_pair(self, object pair, object when, double horizon_s) except *:
        """Record that ``pair`` (importer|CN4) was declared at ``when``; forget idle pairs."""
        cdef double now = when
        if now - self.last_sweep >= _DAY_S:
            self.pairs = {k: t for k, t in self.pairs.items() if now - t <= horizon_s}
            self.last_sweep = now
        pairs = self.pairs
        latest = pairs.get(pair)
        if latest is None and len(pairs) >= self.max_pairs:
            _evict_oldest(pairs, pairs)
        if latest is None or when > latest:  # max(pairs.get(pair, when), when)
            pairs[pair] = when

    cdef void _update_stats(self, const double* x, int mode) noexcept:
        """Fold one item's features (and its mode's index in ``MODES``, -1 if none) into the chapter's
        exponentially weighted profile."""
        cdef double a = self.alpha if self.seen else 1.0  # the first item sets the mean; the spread starts at 0
        cdef double m, share
        cdef Py_ssize_t i
        for i in range(N_FEATURES):
            m = self._mean[i]
            self._mean[i] = m + a * (x[i] - m)
            if self.seen:
                self._spread[i] += a * (fabs(x[i] - m) - self._spread[i])
        for i in range(N_MODES):
            share = self._share[i] if self._shared else 0.0
            self._share[i] = share + a * ((1.0 if i == mode else 0.0) - share)
        self._shared = True
        self.seen += 1


cdef void _load_features(double* out, values) except *:
    """Copy one float per feature (a sequence in ``FEATURES`` order) into ``out``."""
    if len(values) != N_FEATURES:
        raise ValueError(f"expected {N_FEATURES} values, one per feature of {FEATURES}, got {len(values)}")
    for i in range(N_FEATURES):
        out[i] = values[i]


# ---------------------------------------------------------------------- the detector's steps


cdef struct Item:
    # What the steps derive from one unit once: its point and the numbers behind it.
    double x[N_FEATURES]
    double log_vpk  # log10 of the customs value per kg
    double ref_median  # the reference group's median log10 value per kg (when there is a reference)
    double standouts[N_FEATURES]
    int mode  # index of the transport mode in MODES, -1 when it is none of them


cdef class FlowScorer:
    """The atypical-flow detector's configuration (see :class:`.atypical.AtypicalFlowDetector`) and steps.

    :meth:`score`, :meth:`learn` and :meth:`score_learn` are the detector's ``score_one``,
    ``learn_one`` and ``score_learn_one``; the scores are built by the ``risk_score`` they are
    given (the detector's :meth:`~.base.Operator.risk_score`).
    """

    cdef readonly Py_ssize_t window_size
    cdef readonly Py_ssize_t min_group
    cdef readonly Py_ssize_t min_calibration
    cdef readonly double novelty_horizon_s
    cdef readonly double min_tail
    cdef readonly double p_half
    cdef readonly double standout

    def __init__(
        self, Py_ssize_t window_size, Py_ssize_t min_group, Py_ssize_t min_calibration, double novelty_horizon_s,
        double min_tail, double p_half, double standout,
    ):
        self.window_size = window_size
        self.min_group = min_group
        self.min_calibration = min_calibration
        self.novelty_horizon_s = novelty_horizon_s
        self.min_tail = min_tail
        self.p_half = p_half
        self.standout = standout

    def __reduce__(self):
        return FlowScorer, (
            self.window_size, self.min_group, self.min_calibration, self.novelty_horizon_s, self.min_tail,
            self.p_half, self.standout,
        )

    # ------------------------------------------------------------------ features

    cdef object _reference(self, ChapterModel state, object group, object cn4):
        """``(name, median)`` of the group the value is compared with: ``group`` ((CN4, origin)),
        else ``cn4`` when the pair has too few values; None when neither has enough."""
        median = state._group_median(group, self.min_group)
        if median is not None:
            return group, median
        median = state._group_median(cn4, self.min_group)
        if median is not None:
            return cn4, median
        return None

    cdef void _point(
        self, ItemFlow unit, ChapterModel state, object reference, object pair, double when, Item* item
    ) except *:
        """The item's point in [0, 1]^8, from the state as it was before the item."""
        cdef double* x = item.x
        cdef double log_vpk = log10(unit.customs_value_eur / unit.net_mass_kg)
        item.log_vpk = log_vpk
        x[0] = _scale(log_vpk, -2.0, 5.0)
        x[1] = _scale(log10(unit.net_mass_kg), -2.0, 8.0)
        if reference is None:
            x[2] = 0.5
        else:
            item.ref_median = reference[1]
            x[2] = _scale(log_vpk - item.ref_median, -_GROUP_DECADES, _GROUP_DECADES)
        x[3] = 1.0 if unit.dispatch_country != unit.origin_country else 0.0
        x[4] = 0.0 if pair in state.pairs else 1.0
        x[5] = _py_mod(when, _DAY_S) / _DAY_S
        x[6] = 0.0 if unit.procedure_code == "4000" else 1.0
        code = _MODE_INDEX.get(unit.transport_mode)
        item.mode = -1 if code is None else code
        x[7] = 0.0 if item.mode < 0 else _MODE_CODES[item.mode]  # MODES.get(mode, 0.0)

    def reference(self, ItemFlow unit, ChapterModel state) -> tuple | None:
        """The group the unit's value is compared with and its median log10 value per kg, or None."""
        cn4 = unit.cn_code[:4]
        return self._reference(state, f"{cn4}:{unit.origin_country}", cn4)

    def features(self, ItemFlow unit, ChapterModel state) -> list:
        """The unit's point in [0, 1]^8 (in ``FEATURES`` order), from the state as it is."""
        cdef Item item
        cn4 = unit.cn_code[:4]
        reference = self._reference(state, f"{cn4}:{unit.origin_country}", cn4)
        self._point(unit, state, reference, f"{unit.importer_eori}|{cn4}", epoch_seconds(unit.event_time), &item)
        return [item.x[i] for i in range(N_FEATURES)]

    # ------------------------------------------------------------------ steps

    def score(self, ItemFlow unit, ChapterModel state, risk_score):
        """The unit's score against the state, which is not changed, built by ``risk_score``
        (the detector's :meth:`~.base.Operator.risk_score`)."""
        return self._step(unit, state, risk_score, False, None, epoch_seconds(unit.event_time))

    def learn(self, ItemFlow unit, ChapterModel state) -> None:
        """Learn the unit."""
        self._step(unit, state, None, True, None, epoch_seconds(unit.event_time))

    def score_learn(self, ItemFlow unit, ChapterModel state, risk_score):
        """:meth:`score` then :meth:`learn`, extracting the features and scoring them with the trees once."""
        return self._step(unit, state, risk_score, True, None, epoch_seconds(unit.event_time))

    def process(self, detector, event, store) -> list:
        """``Operator.process(detector, event, store)`` for an ``AtypicalFlowDetector`` ``detector``: the same
        scores and states, with the loop over the items in C and the scores built as
        :meth:`~.base.Operator.risk_score` builds them. A subclass that overrides a step goes through
        ``Operator.process``."""
        cdef list scores = []
        cdef ItemFlow unit
        if not _plain(type(detector)):
            return Operator.process(detector, event, store)
        if not isinstance(event, ImportDeclaration):
            return scores
        pairs = item_flows(event)
        if not pairs:
            return scores
        name = detector.name
        unit = pairs[0][1]
        when = epoch_seconds(unit.event_time)  # one event: one time
        for key, unit in pairs:
            state = store.get(key)
            if state is None:
                state = detector.new_state()
            scores.append(self._step(unit, <ChapterModel?> state, None, True, name, when))
            store[key] = state
        return scores

    cdef object _step(
        self, ItemFlow unit, ChapterModel state, object risk_score, bint learn, object name, object when
    ):
        """Score the unit (event time ``when``, epoch s) with ``risk_score``, or as
        :meth:`~.base.Operator.risk_score` does for the detector ``name`` (unless both are None), then,
        with ``learn``, learn it."""
        cdef Item item
        cn4 = unit.cn_code[:4]
        group = f"{cn4}:{unit.origin_country}"
        pair = f"{unit.importer_eori}|{cn4}"
        reference = self._reference(state, group, cn4)
        self._point(unit, state, reference, pair, when, &item)
        raw = self._raw_score(state, &item, learn)
        result = None
        if risk_score is not None or name is not None:
            if raw is None or state.calibration.size < self.min_calibration:
                score, reason, fields = self._warm_up_score(unit, state)
            else:
                score, reason, fields = self._score_point(unit, state, &item, raw, reference)
        if name is not None:  # what Operator.risk_score builds, without its keyword call
            result = build_score(
                name, score_id(name, unit.event_id, unit.item_number), unit.event_id, "declaration", unit.mrn,
                unit.item_number, unit.event_time, unit.office, unit.importer_eori, unit.cn_code,
                unit.origin_country, score, 0.0, reason, fields,
            )  # fmt: skip
        elif risk_score is not None:
            result = risk_score(
                subject_event_id=unit.event_id,
                subject_type="declaration",
                subject_reference=unit.mrn,
                item_number=unit.item_number,
                event_time=unit.event_time,
                office=unit.office,
                operator_eori=unit.importer_eori,
                cn_code=unit.cn_code,
                origin_country=unit.origin_country,
                score=score,
                eur_at_stake=0.0,  # an atypical flow does not say how much revenue is missing
                reason=reason,
                reason_fields=fields,
            )
        if learn:
            self._learn(unit, state, &item, raw, group, cn4, pair, when)
        return result

    cdef object _raw_score(self, ChapterModel state, Item* item, bint learn):
        """The trees' raw score of the item's point (None during their first window); with ``learn``,
        the trees then count the point too (nothing reads the trees between the two)."""
        hst = state.hst
        first = hst.first_window
        point = _as_tuple(item.x)
        if learn:
            raw = hst.score_learn_values(point)
        elif not first:
            raw = hst.score_values(point)
        return None if first else raw

    cdef void _learn(
        self, ItemFlow unit, ChapterModel state, Item* item, object raw, object group, object cn4, object pair,
        object when,
    ) except *:
        """Learn, but in the trees (see :meth:`_raw_score`), the unit whose point is ``item`` and raw
        trees' score ``raw`` (None in the first window)."""
        if raw is not None:
            state.calibration.add(raw, 0.0)
        log_vpk = item.log_vpk
        state._add_to_group(group, log_vpk, when)
        state._add_to_group(cn4, log_vpk, when)
        state._see_pair(pair, when, self.novelty_horizon_s)
        state._update_stats(item.x, item.mode)

    cdef tuple _warm_up_score(self, ItemFlow unit, ChapterModel state):
        cdef Py_ssize_t needed = self.window_size + self.min_calibration
        reason = (
            f"No reference model yet for chapter {unit.cn_code[:2]}: {state.seen} item(s) learned, "
            f"{needed} needed (one window of {self.window_size} for the trees, then {self.min_calibration} "
            "to calibrate their scores)."
        )
        return 0.0, reason, {"observations": <double> state.seen, "hst_score": None}

    cdef double _rarity(self, double raw, ChapterModel state, double* median) except? -1:
        """Estimated share of the chapter's recent items at least as isolated as ``raw``; their median
        goes to ``median``.

        Up to the 90th percentile of the recent raw scores, the empirical share; beyond it, a
        peaks-over-threshold tail ``0.1 * exp(-(raw - q90) / beta)`` with ``beta`` the mean
        excess of the top tenth over ``q90`` (at least ``min_tail``). Raw scores are bounded
        above, so an exponential tail overstates far rarities: it errs on the quiet side.
        """
        calibration = state.calibration
        median[0] = calibration.quantile(0.5)
        cdef double q90 = calibration.quantile(0.9)
        cdef double beta, excess
        cdef Py_ssize_t count
        if raw <= q90:
            return <double> calibration.count_at_least(raw) / <double> calibration.size
        count, total = calibration.sum_above(q90)  # the top tenth, summed smallest first
        beta = self.min_tail
        if count:
            excess = <double> total / <double> count - q90
            if not beta > excess:  # max(excess, min_tail)
                beta = excess
        return _TAIL * exp(-(raw - q90) / beta)

    cdef void _standouts(self, Item* item, ItemFlow unit, ChapterModel state) noexcept:
        """Each feature's standout (see the detector's docstring), in ``FEATURES`` order."""
        cdef Py_ssize_t i
        cdef double spread, share, floor
        for i in range(MODE_FEATURE):
            spread = state._spread[i]
            if spread < _STANDOUT_FLOOR:  # max(spread, floor)
                spread = _STANDOUT_FLOOR
            item.standouts[i] = fabs(item.x[i] - state._mean[i]) / spread
        share = state._mode_share(item.mode)
        floor = 2.0 * share * (1.0 - share)
        if _STANDOUT_FLOOR > floor:  # max(2.0 * share * (1.0 - share), floor)
            floor = _STANDOUT_FLOOR
        item.standouts[MODE_FEATURE] = (1.0 - share) / floor

    cdef tuple _score_point(self, ItemFlow unit, ChapterModel state, Item* item, object raw_score, object reference):
        """``(score, reason, fields)`` of a unit whose point is ``item``, raw trees' score ``raw_score``
        and value ``reference``."""
        cdef double raw = raw_score
        cdef double rarity, median, score
        cdef int top[N_FEATURES]
        cdef int n_top = 0, i, j, k
        cdef Py_ssize_t window = state.calibration.size
        rarity = self._rarity(raw, state, &median)
        score = 1.0 / (1.0 + rarity / self.p_half)

        self._standouts(item, unit, state)
        # The three largest standouts at or above the threshold, ties by name (a stable insertion sort).
        for i in range(N_FEATURES):
            if item.standouts[i] >= self.standout:
                j = n_top
                while j > 0 and _before(item.standouts, i, top[j - 1]):
                    top[j] = top[j - 1]
                    j -= 1
                top[j] = i
                n_top += 1
        if n_top > 3:
            n_top = 3
        details = [self._describe(top[k], item, unit, state, reference) for k in range(n_top)]
        if score >= 0.5:
            verdict = "atypical among"
        elif raw <= median:
            verdict = "typical of"
        else:
            verdict = "within the usual range of"
        head = (
            f"Item {unit.item_number} (CN {unit.cn_code} from {unit.origin_country}) is {verdict} chapter "
            f"{unit.cn_code[:2]}'s recent flows: isolation {exact_fixed(raw, 3, False)} vs "
            f"{exact_fixed(median, 3, False)} typical, {_rarity_text(rarity, window)}"
        )
        if details:
            reason = f"{head}; stands out: " + "; ".join(details) + "."
        elif score >= 0.5:
            reason = f"{head}; no single feature stands out: it is the combination that is rare."
        else:
            reason = f"{head}."

        fields = _FIELDS.copy()  # every key in place: the values below only replace None
        fields["hst_score"] = exact_round(raw, 6)
        fields["typical_hst_score"] = exact_round(median, 6)
        fields["rarity"] = _py_float(format(rarity, ".4g"))
        fields["top_features"] = ",".join([FEATURES[top[k]] for k in range(n_top)])
        fields["observations"] = <double> state.seen
        for i in range(N_FEATURES):
            fields[FEATURES[i]] = exact_round(item.x[i], 4)
            fields[_STANDOUT_FIELDS[i]] = exact_round(item.standouts[i], 2)
        fields["value_per_kg_eur"] = exact_round(unit.customs_value_eur / unit.net_mass_kg, 4)
        if reference is not None:
            fields["group_value_per_kg_eur"] = exact_round(pow(10.0, item.ref_median), 4)
        return score, reason, fields

    # ------------------------------------------------------------------ reasons

    cdef str _describe(self, int feature, Item* item, ItemFlow unit, ChapterModel state, object reference):
        """One feature of the item against the chapter's typical item, in an officer's words."""
        cdef double mean = state._mean[feature]
        cdef double median, typical
        if feature == 0:
            typical = pow(10.0, mean * 7.0 - 2.0)
            return (
                f"value {exact_fixed(unit.customs_value_eur / unit.net_mass_kg, 2, True)} EUR/kg vs about "
                f"{exact_fixed(typical, 2, True)} typical"
            )
        if feature == 1:
            typical = pow(10.0, mean * 10.0 - 2.0)
            return (
                f"net mass {exact_fixed(unit.net_mass_kg, 0, True)} kg vs about {exact_fixed(typical, 0, True)} kg "
                "typical"
            )
        cn4 = unit.cn_code[:4]
        if feature == 2:
            if reference is None:
                return "no value reference for its CN4 yet"
            median = item.ref_median
            ratio = pow(10.0, item.log_vpk - median)
            where = f"CN4 {cn4} from {unit.origin_country}" if ":" in reference[0] else f"CN4 {cn4}"
            return (
                f"value per kg {ratio:.2g} times the median of {where} "
                f"({exact_fixed(pow(10.0, median), 2, True)} EUR/kg)"
            )
        share = f"{exact_fixed(100.0 * mean, 0, False)}% of the chapter's recent items"
        if feature == 3:
            if item.x[3]:
                return f"dispatched from {unit.dispatch_country}, origin {unit.origin_country} (so are {share})"
            return (
                f"dispatched from its origin {unit.origin_country}, unlike {exact_fixed(100.0 * mean, 0, False)}% of "
                "recent items"
            )
        if feature == 4:
            if item.x[4]:
                return f"importer {unit.importer_eori} never declared CN4 {cn4} before (new pairs: {share})"
            return f"importer {unit.importer_eori} has declared CN4 {cn4} before, unlike most recent items"
        if feature == 5:
            return f"declared at {unit.event_time.astimezone(UTC):%H:%M} UTC, an unusual hour for this chapter"
        if feature == 6:
            return f"procedure {unit.procedure_code} (not 4000 for {share})"
        mode_share = state._mode_share(item.mode)
        mode = "post" if unit.transport_mode == "postal" else unit.transport_mode
        return f"transport by {mode} ({exact_fixed(100.0 * mode_share, 0, False)}% of the chapter's recent items)"


cdef tuple _HOOKS = ("units", "new_state", "score_one", "learn_one", "score_learn_one", "risk_score")
cdef object _detector_class():
    from .atypical import AtypicalFlowDetector

    return AtypicalFlowDetector


include "_steps.pxi"


cdef inline bint _before(const double* standouts, int a, int b) noexcept:
    """Whether feature ``a`` ranks before feature ``b``: larger standout first, then by name."""
    if standouts[a] != standouts[b]:
        return standouts[a] > standouts[b]
    return _NAME_RANK[a] < _NAME_RANK[b]


cdef inline tuple _as_tuple(const double* x):
    return (x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7])


cdef str _rarity_text(double share, Py_ssize_t window):
    """A rarity as officers say it, e.g. ``"as isolated as about 1 in 81 recent items"``."""
    if share >= 0.5:
        return "as isolated as half of the recent items or more"
    if share * <double> window < 1.0:
        return (
            f"more isolated than all of the last {window} items (tail estimate: 1 in "
            f"{exact_fixed(1.0 / share, 0, True)})"
        )
    return f"as isolated as about 1 in {exact_fixed(1.0 / share, 0, True)} recent items"
