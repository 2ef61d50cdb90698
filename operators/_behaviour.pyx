# cython: language_level=3, cdivision=True
"""Hot path of the operator behaviour detector (:mod:`.behaviour`), in C.

Its per-declaration types, the Page-Hinkley test, the importer's baseline, and the arithmetic
of the features, the score and the learning step run for every import declaration. They must
stay equal, bit for bit, to the Python semantics they replace (scores and checkpoints are
compared byte for byte): the same operations in the same order on C doubles, the libm
functions CPython's ``math`` calls (``log``, ``exp``, ``pow``, ``sqrt``), ``min`` / ``max`` as
Python's (the first argument wins ties), and the same dicts and lists in the state, so that
:meth:`~.behaviour.BehaviourState.to_dict` writes the same checkpoint. Every denominator is
positive (the schema's masses and values, the configuration's rates and windows), hence
``cdivision``.
"""

import math

from libc.math cimport exp, fabs, log, pow, sqrt
from libc.stdlib cimport free, malloc

from vigie.schemas import ImportDeclaration

from ._score import build_score, score_id
from .base import Operator, epoch_seconds

include "_exact.pxi"

cdef double _DAY = 86400.0  # seconds
cdef double _MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
cdef double _LOG_1_5 = math.log(1.5)  # CPython's, not a value the C compiler folds
cdef double _LOG_5 = math.log(5.0)
cdef enum:
    _STACK_VALUES = 64  # reference rings up to this size are sorted on the stack
cdef int _SIGNALS = 4  # unit value, origin, chapter, volume: the order of behaviour.SIGNALS


include "_fields.pxi"


# --- Page-Hinkley -------------------------------------------------------------------------------
cdef struct TestParams:
    int direction
    double delta
    double threshold
    long min_instances
    double alpha
    double prior_mean
    double prior_weight


cdef TestParams _test_params(object p):
    """A :class:`~.behaviour.PageHinkleyParams` as a C struct."""
    cdef TestParams c
    c.direction = p.direction
    c.delta = p.delta
    c.threshold = p.threshold
    c.min_instances = p.min_instances
    c.alpha = p.alpha
    c.prior_mean = p.prior_mean
    c.prior_weight = p.prior_weight
    return c


cdef struct TestStep:
    long n
    double mean
    double cusum
    double extreme
    double onset
    bint has_onset


cdef class PageHinkley:
    """One-sided Page-Hinkley test with plain, JSON-able fields (River 0.23's update rule).

    ``n`` and ``mean``: observations and their cumulative mean; ``cusum``: the faded sum of
    ``x - mean -/+ delta``; ``extreme``: its minimum (increase test) or maximum (decrease
    test); ``onset``: event time (epoch s) of the first observation after the extremum,
    i.e. where a detected change began. ``extreme`` and ``onset`` are None until known.

    >>> from vigie.operators.behaviour import PageHinkleyParams
    >>> params = PageHinkleyParams(direction=1, delta=0.1, threshold=1.5, min_instances=5, prior_weight=0.0)
    >>> ph = PageHinkley()
    >>> [ph.update(x, float(t), params) for t, x in enumerate([0, 0, 0, 0, 0, 1, 1, 1])]
    [False, False, False, False, False, False, False, True]
    >>> ph.onset, round(ph.statistic(params), 3)
    (5.0, 1.873)
    >>> ph
    PageHinkley(n=8, mean=0.375, cusum=1.3726609047212852, extreme=-0.4999000099995, onset=5.0)
    """

    cdef public long n
    cdef public double mean
    cdef public double cusum
    cdef double _extreme
    cdef double _onset
    cdef bint _has_extreme
    cdef bint _has_onset

    @property
    def extreme(self) -> float | None:
        return self._extreme if self._has_extreme else None

    @extreme.setter
    def extreme(self, value: float | None) -> None:
        self._has_extreme = value is not None
        self._extreme = 0.0 if value is None else value

    @property
    def onset(self) -> float | None:
        return self._onset if self._has_onset else None

    @onset.setter
    def onset(self, value: float | None) -> None:
        self._has_onset = value is not None
        self._onset = 0.0 if value is None else value

    cdef void _step(self, double x, double when, const TestParams* p, TestStep* s) noexcept:
        cdef double previous = p.prior_mean if self.n == 0 else self.mean
        s.n = self.n + 1
        s.mean = previous + (x - previous) / (s.n + p.prior_weight)
        s.cusum = p.alpha * self.cusum + (x - s.mean) - p.direction * p.delta
        s.extreme, s.onset, s.has_onset = self._extreme, self._onset, self._has_onset
        if not self._has_extreme or (s.cusum < s.extreme if p.direction > 0 else s.cusum > s.extreme):
            s.extreme, s.has_onset = s.cusum, False  # a change, if any, starts after this observation
        elif not s.has_onset:
            s.onset, s.has_onset = when, True

    cdef double _stat(self, const TestParams* p) noexcept:
        """Current test statistic (>= 0)."""
        if not self._has_extreme:
            return 0.0
        return _statistic(self.n, self.cusum, self._extreme, p)

    cdef bint _update(self, double x, double when, const TestParams* p) noexcept:
        cdef TestStep s
        self._step(x, when, p, &s)
        self.n, self.mean, self.cusum = s.n, s.mean, s.cusum
        self._extreme, self._has_extreme = s.extreme, True
        self._onset, self._has_onset = s.onset, s.has_onset
        return self._stat(p) > p.threshold

    def __repr__(self) -> str:
        return (f"PageHinkley(n={self.n}, mean={self.mean!r}, cusum={self.cusum!r}, extreme={self.extreme!r}, "
                f"onset={self.onset!r})")

    def statistic(self, p: object) -> float:
        """Current test statistic (>= 0); an alarm is raised when it exceeds the threshold."""
        cdef TestParams c = _test_params(p)
        return self._stat(&c)

    def peek(self, double x, double when, p: object) -> tuple[float, float | None]:
        """Statistic and onset the test would have after ``x``, without changing it."""
        cdef TestParams c = _test_params(p)
        cdef TestStep s
        self._step(x, when, &c, &s)
        return _statistic(s.n, s.cusum, s.extreme, &c), (s.onset if s.has_onset else None)

    def update(self, double x, double when, p: object) -> bool:
        """Add ``x`` observed at ``when``; True when the test crosses its threshold."""
        cdef TestParams c = _test_params(p)
        return self._update(x, when, &c)

    def reset(self) -> None:
        self.n, self.mean, self.cusum = 0, 0.0, 0.0
        self._has_extreme = self._has_onset = False

    def to_list(self) -> list:
        return [self.n, self.mean, self.cusum, self.extreme, self.onset]

    @classmethod
    def from_list(cls, data: list) -> PageHinkley:
        ph = cls()
        ph.n, ph.mean, ph.cusum, ph.extreme, ph.onset = data
        return ph


cdef inline double _statistic(long n, double cusum, double extreme, const TestParams* p) noexcept:
    if n < p.min_instances:
        return 0.0
    return (cusum - extreme) if p.direction > 0 else (extreme - cusum)


# --- baseline -------------------------------------------------------------------------------------
cdef void _sort(double* a, Py_ssize_t n) noexcept nogil:
    """Sort a[0:n] ascending (insertion sort, stable like ``sorted``: the rings are short)."""
    cdef Py_ssize_t i, j
    cdef double v
    for i in range(1, n):
        v = a[i]
        j = i
        while j > 0 and a[j - 1] > v:
            a[j] = a[j - 1]
            j -= 1
        a[j] = v


cdef inline double _median(const double* sorted_values, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


cdef class Baseline:
    """The importer's usual behaviour, learned from declarations that left the recent window.

    ``n``: declarations learned; ``times``: event times (epoch s) of the last
    ``rate_window`` declarations that left the recent window (changed or not), whose rate is
    the baseline rate (recent, so that it follows seasonal drifts and a stream's ramp-up). ``origins`` /
    ``chapters``: decayed item counts per origin / chapter; ``items``: their total. ``uv``: per
    ``"CN4:basis"`` group, a ring of recent log unit values ``[values, next position]``,
    in least-recently-updated-first order.
    """

    cdef public long n
    cdef public list times
    cdef public double items
    cdef public dict origins
    cdef public dict chapters
    cdef public dict uv
    # Median and MAD per group, derived from ``uv`` (not state: dropped when a group learns).
    cdef dict _references
    cdef dict _novelty  # novelty rate of "origins" / "chapters", derived likewise

    def __init__(self) -> None:
        self.n = 0
        self.times = []
        self.items = 0.0
        self.origins = {}
        self.chapters = {}
        self.uv = {}
        self._references = {}
        self._novelty = {}

    cdef double _rate(self) noexcept:
        """Declarations per day over the learned period, -1 if it cannot be told yet."""
        cdef Py_ssize_t count = len(self.times)
        cdef double span
        if count < 2:
            return -1.0
        span = <double>self.times[count - 1] - <double>self.times[0]
        if span <= 0:
            return -1.0
        return (count - 1) / span * _DAY

    def rate_per_day(self) -> float | None:
        """Declarations per day over the learned period, None if it cannot be told yet."""
        cdef double rate = self._rate()
        return None if rate < 0.0 else rate

    cdef double _novelty_rate(self, str which):
        """Expected share of items in a category (``which``: "origins" or "chapters") it has (almost) never
        used (Good-Turing).

        The share of baseline items whose category was used about once: an importer that
        keeps trying new origins (many singletons) is not surprising when it tries one more;
        one with a few steady origins is.
        """
        cdef long singletons = 0
        cdef double rate
        if self.items <= 0:
            return 0.0
        cached = self._novelty.get(which)
        if cached is not None:
            return cached
        for count in (self.origins if which == "origins" else self.chapters).values():
            if count < 1.5:
                singletons += 1
        rate = _min(1.0, singletons / self.items)
        self._novelty[which] = rate
        return rate

    cdef tuple _reference(self, str group, Py_ssize_t min_values):
        """Median and MAD of the group's log unit values, and how many, if at least ``min_values`` (else None)."""
        cdef list ring = self.uv.get(group)
        cdef list values
        cdef Py_ssize_t n, i
        cdef double stack[_STACK_VALUES]
        cdef double* work
        cdef double median, mad
        if ring is None:
            return None
        values = ring[0]
        n = len(values)
        if n < min_values:
            return None
        cached = self._references.get(group)
        if cached is not None:
            return cached
        work = &stack[0] if n <= _STACK_VALUES else <double*>malloc(n * sizeof(double))
        if work == NULL:
            raise MemoryError()
        try:
            for i in range(n):
                work[i] = values[i]
            _sort(work, n)
            median = _median(work, n)
            for i in range(n):
                work[i] = fabs(work[i] - median)
            _sort(work, n)
            mad = _median(work, n)
        finally:
            if work != &stack[0]:
                free(work)
        cached = self._references[group] = (median, mad, n)
        return cached

    def __repr__(self) -> str:
        return (f"<Baseline of {self.n} declarations: {len(self.times)} leaving times, {len(self.origins)} origins, "
                f"{len(self.chapters)} chapters, {len(self.uv)} unit-value groups>")

    def to_dict(self) -> dict:
        return {
            "n": self.n,
            "times": self.times,
            "items": self.items,
            "origins": self.origins,
            "chapters": self.chapters,
            "uv": self.uv,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Baseline:
        base = cls()
        base.n, base.times, base.items = data["n"], list(data["times"]), data["items"]
        base.origins = dict(data["origins"])
        base.chapters = dict(data["chapters"])
        base.uv = {k: [list(v[0]), v[1]] for k, v in data["uv"].items()}
        return base


# --- units and features ---------------------------------------------------------------------------
cdef class ItemProfile:
    """One goods item as the behaviour detector sees it.

    ``group``: unit-value reference group ``"CN4:basis"`` (basis ``kg`` or the supplementary
    unit); ``log_uv``: natural log of the customs value per unit of the basis; ``chapter``: HS
    chapter, the first two digits of the CN code.
    """

    cdef readonly object item_number
    cdef readonly str cn_code
    cdef readonly str origin
    cdef readonly str group
    cdef readonly double log_uv
    cdef readonly double quantity
    cdef readonly double customs_value_eur
    cdef readonly double duty_rate_pct
    cdef readonly str chapter

    def __init__(
        self,
        item_number: int,
        str cn_code,
        str origin,
        str group,
        double log_uv,
        double quantity,
        double customs_value_eur,
        double duty_rate_pct,
    ) -> None:
        self.item_number = item_number
        self.cn_code = cn_code
        self.origin = origin
        self.group = group
        self.log_uv = log_uv
        self.quantity = quantity
        self.customs_value_eur = customs_value_eur
        self.duty_rate_pct = duty_rate_pct
        self.chapter = cn_code[:2]


cdef class DeclarationProfile:
    """One import declaration, summarised for its importer's behaviour.

    ``when``: ``event_time`` in epoch seconds; ``total_value_eur``: customs value of its items.
    """

    cdef readonly str event_id
    cdef readonly str mrn
    cdef readonly object event_time
    cdef readonly str office
    cdef readonly str importer_eori
    cdef readonly str procedure_code
    cdef readonly tuple items
    cdef readonly double when
    cdef readonly double total_value_eur

    def __init__(
        self,
        str event_id,
        str mrn,
        event_time: object,
        str office,
        str importer_eori,
        str procedure_code,
        tuple items,
    ) -> None:
        self._set(event_id, mrn, event_time, office, importer_eori, procedure_code, items)

    cdef void _set(
        self,
        str event_id,
        str mrn,
        event_time: object,
        str office,
        str importer_eori,
        str procedure_code,
        tuple items,
    ):
        cdef ItemProfile item
        self.event_id = event_id
        self.mrn = mrn
        self.event_time = event_time
        self.office = office
        self.importer_eori = importer_eori
        self.procedure_code = procedure_code
        self.items = items
        self.when = epoch_seconds(event_time)
        self.total_value_eur = 0.0
        for item in items:
            self.total_value_eur += item.customs_value_eur


cdef class Features:
    """What one declaration shows against its importer's baseline (None: cannot be told).

    ``uv_z``: mean robust z of the items' log unit values (clipped to +-``z_clip``);
    ``uv_log_ratio``: mean log(declared / reference unit value); ``uv_stake_eur``: duty and
    VAT on the value shortfall of items below their reference; ``uv_item``: the most
    deviating item, (item number, CN, origin, declared EUR/unit, reference EUR/unit), and
    ``uv_basis`` its unit; ``origin_share`` / ``chapter_share``: share of items with an
    unfamiliar origin / chapter, ``new_origins`` / ``new_chapters`` the codes;
    ``origin_excess`` / ``chapter_excess``: that share minus the share this importer is
    expected to show anyway (Good-Turing, see :class:`Baseline`); ``volume_log_ratio``:
    log(recent rate / baseline rate).
    """

    cdef readonly object uv_z
    cdef readonly object uv_log_ratio
    cdef readonly double uv_stake_eur
    cdef readonly object uv_item
    cdef readonly str uv_basis
    cdef readonly object origin_share
    cdef readonly object origin_excess
    cdef readonly tuple new_origins
    cdef readonly object chapter_share
    cdef readonly object chapter_excess
    cdef readonly tuple new_chapters
    cdef readonly object volume_log_ratio

    def __cinit__(self) -> None:
        self.uv_basis = "kg"
        self.new_origins = ()
        self.new_chapters = ()

    cdef object _value(self, int signal):
        """The test's input for signal number ``signal`` (None: cannot be told)."""
        if signal == 0:
            return self.uv_z
        if signal == 1:
            return self.origin_excess
        if signal == 2:
            return self.chapter_excess
        return self.volume_log_ratio

    cdef double _deviation(self, int signal):
        """``c_k``: how strongly this declaration itself shows a deviation on signal ``signal``, in [0, 1]."""
        if signal == 0:
            return 0.0 if self.uv_z is None else _max(0.0, _min(1.0, (-<double>self.uv_z - 1.0) / 2.0))
        if signal == 1:
            return self.origin_share or 0.0
        if signal == 2:
            return self.chapter_share or 0.0
        # Rates fluctuate: 1.5 times the usual rate counts for nothing, 5 times for full.
        if self.volume_log_ratio is None:
            return 0.0
        return _max(0.0, _min(1.0, (<double>self.volume_log_ratio - _LOG_1_5) / (_LOG_5 - _LOG_1_5)))

    cdef bint _deviates(self):
        """Whether the declaration departs from the baseline on its own (it then stays out of it during a change)."""
        cdef int signal
        for signal in range(_SIGNALS):
            if self._deviation(signal) >= 0.5:
                return True
        return False

    def entry_features(self) -> dict:
        """What the recent window keeps of these features: ``uv_lr``, ``no`` (new origins), ``nc`` (new chapters)."""
        return self._entry_features()

    cdef dict _entry_features(self):
        return {"uv_lr": self.uv_log_ratio, "no": list(self.new_origins), "nc": list(self.new_chapters)}


# --- the detector's arithmetic -------------------------------------------------------------------
cdef class BehaviourCore:
    """The configuration of one :class:`~.behaviour.OperatorBehaviourDetector` as C numbers, and the
    work it does on every declaration: units, features, the score's numbers, the learning step.

    Built from the detector once; a detector reconfigured afterwards needs a new core.
    """

    cdef tuple signals
    cdef TestParams tests[4]
    cdef double weights[4]
    cdef Py_ssize_t window
    cdef long min_history
    cdef double familiar_share
    cdef Py_ssize_t uv_window
    cdef Py_ssize_t min_uv_reference
    cdef double min_spread
    cdef double prior_uv_sigma
    cdef double prior_weight_uv
    cdef double z_clip
    cdef Py_ssize_t volume_span
    cdef Py_ssize_t rate_window
    cdef long accept_after
    cdef double accept_s
    cdef double new_importer_s
    cdef bint knows_novelty
    cdef double novelty_from
    cdef double large_value_eur
    cdef double largeness_width
    cdef double non_4200_factor
    cdef Py_ssize_t max_items
    cdef Py_ssize_t max_categories
    cdef Py_ssize_t max_uv_groups
    cdef double count_cap
    cdef double min_score
    cdef double vat_rate
    cdef object fmt_time  # behaviour._fmt_time: epoch s -> "YYYY-MM-DD HH:MM" (cached there)

    def __init__(self, detector: object, tuple signals, double vat_rate) -> None:
        cdef int i
        self.signals = signals
        for i in range(_SIGNALS):
            self.tests[i] = _test_params(detector.tests[signals[i]])
            self.weights[i] = detector.signal_weights[signals[i]]
        self.window = detector.window
        self.min_history = detector.min_history
        self.familiar_share = detector.familiar_share
        self.uv_window = detector.uv_window
        self.min_uv_reference = detector.min_uv_reference
        self.min_spread = detector.min_spread
        self.prior_uv_sigma = detector.prior_uv_sigma
        self.prior_weight_uv = detector.prior_weight_uv
        self.z_clip = detector.z_clip
        self.volume_span = detector.volume_span
        self.rate_window = detector.rate_window
        self.accept_after = detector.accept_after
        self.accept_s = detector.accept_days * _DAY
        self.new_importer_s = detector.new_importer_days * _DAY
        self.knows_novelty = detector._novelty_from is not None
        self.novelty_from = detector._novelty_from if self.knows_novelty else 0.0
        self.large_value_eur = detector.large_value_eur
        self.largeness_width = detector.largeness_width
        self.non_4200_factor = detector.non_4200_factor
        self.max_items = detector.max_items
        self.max_categories = detector.max_categories
        self.max_uv_groups = detector.max_uv_groups
        self.count_cap = detector.count_cap
        self.min_score = detector.min_score
        self.vat_rate = vat_rate
        from .behaviour import _fmt_time  # loaded by now: the detector is being built

        self.fmt_time = _fmt_time

    # --- units --------------------------------------------------------------------------------
    def profile(self, event: object) -> DeclarationProfile:
        """The :class:`DeclarationProfile` of an import declaration."""
        return self._profile(event)

    cdef DeclarationProfile _profile(self, object event):
        cdef dict fields = _fields(event), item
        cdef list items = []
        cdef ItemProfile profile
        cdef DeclarationProfile declaration = DeclarationProfile.__new__(DeclarationProfile)
        cdef str cn_code, basis
        cdef double quantity, value
        for goods_item in fields["goods_items"]:
            item = _fields(goods_item)
            if item["supplementary_units"] and item["supplementary_unit_code"]:
                basis, quantity = item["supplementary_unit_code"], item["supplementary_units"]
            else:
                basis, quantity = "kg", item["net_mass_kg"]
            cn_code, value = item["cn_code"], item["customs_value_eur"]
            profile = ItemProfile.__new__(ItemProfile)
            profile.item_number = item["item_number"]
            profile.cn_code = cn_code
            profile.origin = item["origin_country"]
            profile.group = f"{cn_code[:4]}:{basis}"
            profile.log_uv = log(value / quantity)
            profile.quantity = quantity
            profile.customs_value_eur = value
            profile.duty_rate_pct = item["duty_rate_pct"]
            profile.chapter = cn_code[:2]
            items.append(profile)
        declaration._set(
            fields["event_id"],
            fields["mrn"],
            fields["event_time"],
            fields["customs_office"],
            fields["importer_eori"],
            fields["procedure_code"],
            tuple(items),
        )
        return declaration

    # --- features -----------------------------------------------------------------------------
    cpdef Features features(self, DeclarationProfile unit, object state):
        """What ``unit`` shows against the importer's baseline (pure: reads ``state`` only)."""
        cdef Baseline base = state.baseline
        cdef Features feats = Features.__new__(Features)
        cdef tuple items, ref
        cdef ItemProfile item, worst = None
        cdef Py_ssize_t count, k, n_z = 0
        cdef double median, mad, sigma2, spread, z, reference_value, shortfall, duty
        cdef double z_sum = 0.0, ratio_sum = 0.0, worst_z = 0.0, worst_median = 0.0
        cdef double base_rate, span, recent_rate
        cdef list new_o, new_c, window
        if base.n < self.min_history:
            return feats
        items = unit.items[: self.max_items]
        # Unit values against the importer's own references.
        for item in items:
            ref = base._reference(item.group, self.min_uv_reference)
            if ref is None:
                continue
            median, mad, count = ref
            # A few own values give an unstable MAD: shrink it toward a typical within-importer spread.
            sigma2 = (count * pow(_MAD_TO_SIGMA * mad, 2.0) + self.prior_weight_uv * pow(self.prior_uv_sigma, 2.0)) / (
                count + self.prior_weight_uv
            )
            spread = _max(sqrt(sigma2), self.min_spread)
            z = _max(-self.z_clip, _min(self.z_clip, (item.log_uv - median) / spread))
            z_sum += z
            ratio_sum += item.log_uv - median
            n_z += 1
            reference_value = exp(median) * item.quantity
            if reference_value > item.customs_value_eur:
                shortfall = reference_value - item.customs_value_eur
                duty = shortfall * item.duty_rate_pct / 100.0
                feats.uv_stake_eur += duty + self.vat_rate * (shortfall + duty)
            if worst is None or z < worst_z:
                worst, worst_z, worst_median = item, z, median
        if n_z:
            feats.uv_z = z_sum / n_z
            feats.uv_log_ratio = ratio_sum / n_z
            feats.uv_item = (worst.item_number, worst.cn_code, worst.origin, exp(worst.log_uv), exp(worst_median))
            feats.uv_basis = worst.group.split(":", 1)[1]
        # Origin and commodity-chapter mix.
        if base.items > 0 and items:
            new_o, new_c = [], []
            for item in items:
                if <double>base.origins.get(item.origin, 0.0) / base.items < self.familiar_share:
                    new_o.append(item.origin)
            for item in items:
                if <double>base.chapters.get(item.chapter, 0.0) / base.items < self.familiar_share:
                    new_c.append(item.chapter)
            feats.origin_share = len(new_o) / <double>len(items)
            feats.chapter_share = len(new_c) / <double>len(items)
            feats.origin_excess = <double>feats.origin_share - base._novelty_rate("origins")
            feats.chapter_excess = <double>feats.chapter_share - base._novelty_rate("chapters")
            # Distinct codes in order of appearance (most declarations have none: no dict to build then).
            feats.new_origins = tuple(dict.fromkeys(new_o)) if new_o else ()
            feats.new_chapters = tuple(dict.fromkeys(new_c)) if new_c else ()
        # Volume: recent declaration rate against the baseline rate.
        base_rate = base._rate()
        window = state.window
        k = min(self.volume_span, len(window))
        if base_rate >= 0.0 and k >= 1:
            # A burst of same-minute filings is one.
            span = _max(unit.when - <double>window[len(window) - k]["t"], 60.0 * k)
            recent_rate = k / span * _DAY
            feats.volume_log_ratio = _max(-3.0, _min(3.0, log(recent_rate / base_rate)))
        return feats

    # --- scoring ------------------------------------------------------------------------------
    cpdef double new_importer_score(self, DeclarationProfile unit, object state):
        """See :meth:`~.behaviour.OperatorBehaviourDetector.new_importer_score`."""
        cdef object first_seen = state.first_seen
        cdef double first = unit.when if first_seen is None else <double>first_seen
        cdef double youth, value, x, largeness
        if not self.knows_novelty or first < self.novelty_from:
            return 0.0
        youth = _max(0.0, 1.0 - (unit.when - first) / self.new_importer_s)
        if youth <= 0.0:
            return 0.0
        value = _max((<double>state.value_seen + unit.total_value_eur) / (<long>state.seen + 1), 1e-9)
        x = log(value / self.large_value_eur) / self.largeness_width
        largeness = 0.0 if x < -60 else 1.0 / (1.0 + exp(-x))
        return youth * largeness * (1.0 if unit.procedure_code == "4200" else self.non_4200_factor)

    def score(self, DeclarationProfile unit, object state, Features feats) -> tuple | None:
        """The numbers of the score of ``unit``: None under ``min_score``, else ``(levels, parts,
        onsets, behaviour, new, score)``, the first three per signal (``a_k``, ``w_k a_k c_k``, and the
        onsets of the tests this declaration would make cross their threshold)."""
        return self._score(unit, state, feats)

    cdef tuple _score(self, DeclarationProfile unit, object state, Features feats):
        cdef dict tests = state.tests
        cdef object change = state.change
        cdef dict changed = None if change is None else change["signals"]
        cdef double when = unit.when
        cdef double levels[4]
        cdef double parts[4]
        cdef double onsets[4]
        cdef bint crossed[4]
        cdef double stat, clean = 1.0, behaviour, new, score
        cdef int i
        cdef PageHinkley test
        cdef TestStep s
        cdef const TestParams* p
        for i in range(_SIGNALS):
            p = &self.tests[i]
            x = feats._value(i)
            test = tests[self.signals[i]]
            crossed[i] = False
            if x is None:
                stat = test._stat(p)
            else:
                test._step(x, when, p, &s)
                stat = _statistic(s.n, s.cusum, s.extreme, p)
            if changed is not None and self.signals[i] in changed:
                levels[i] = 1.0
            elif stat > p.threshold:
                levels[i] = 1.0
                crossed[i] = True
                onsets[i] = s.onset if x is not None and s.has_onset else when
            else:
                levels[i] = 0.5 * _min(1.0, stat / p.threshold)
            parts[i] = self.weights[i] * levels[i] * feats._deviation(i)
        for i in range(_SIGNALS):
            clean *= 1.0 - parts[i]
        behaviour = 1.0 - clean
        new = self.new_importer_score(unit, state)
        score = 1.0 - (1.0 - behaviour) * (1.0 - new)
        if score < self.min_score:
            return None
        return (
            {self.signals[i]: levels[i] for i in range(_SIGNALS)},
            {self.signals[i]: parts[i] for i in range(_SIGNALS)},
            {self.signals[i]: onsets[i] for i in range(_SIGNALS) if crossed[i]},
            behaviour,
            new,
            score,
        )

    # --- the whole step -------------------------------------------------------------------------
    def process(self, detector: object, event: object, store: object) -> list:
        """``detector.process(event, store)`` (an ``OperatorBehaviourDetector``): score then learn the one
        unit of an import declaration, with no Python step between the profile, the features, the
        score's numbers and the learning; the sentences of a reported score (a few declarations in a
        hundred) are the detector's ``_reason``. A subclass that overrides a step goes through
        ``Operator.process``."""
        cdef DeclarationProfile unit
        cdef Features feats
        if not _plain(type(detector)):
            return Operator.process(detector, event, store)
        if not isinstance(event, ImportDeclaration):
            return []
        unit = self._profile(event)
        key = unit.importer_eori
        state = store.get(key)
        if state is None:
            state = detector.state_type()  # Operator.new_state, without its call
        feats = self.features(unit, state)
        numbers = self._score(unit, state, feats)
        score = None if numbers is None else self._reason(detector, unit, state, feats, numbers, True)
        self._learn(unit, state, feats)
        store[key] = state
        return [] if score is None else [score]

    def reason(
        self, detector: object, DeclarationProfile unit, object state, Features feats, tuple numbers
    ) -> object:
        """``detector._reason(unit, state, feats, numbers)`` (the score of a declaration whose numbers
        :meth:`score` gave), its main sentences and fields built in C; the change's details and the
        new importer's sentence (rarer) are still the detector's."""
        return self._reason(detector, unit, state, feats, numbers, False)

    cdef object _reason(
        self, object detector, DeclarationProfile unit, object state, Features feats, tuple numbers, bint direct
    ):
        """See :meth:`reason`; with ``direct``, the score is built as ``Operator.risk_score`` builds it
        (the detector does not override it), without its keyword call."""
        cdef dict levels, parts, onsets, fields
        cdef list confirmed, sentences
        cdef double behaviour, new, score, at_stake, vat_4200, best
        cdef ItemProfile main, item
        cdef str building, this
        levels, parts, onsets, behaviour_, new_, score_ = numbers
        behaviour, new, score = behaviour_, new_, score_
        signals = self.signals
        change = state.change
        when = unit.when
        fmt_time = self.fmt_time

        confirmed = [s for s in signals if levels[s] >= 1.0 and parts[s] > 0.0]
        since = None
        detected = None
        if confirmed:
            if change is not None:
                since, detected = change["since"], change["detected"]
            if onsets:
                first_onset = min(onsets.values())
                since = first_onset if since is None else min(since, first_onset)
                detected = detected if detected is not None else when
        total = unit.total_value_eur
        at_stake = feats.uv_stake_eur if parts["unit_value"] > 0 else 0.0
        vat_4200 = 0.0
        if unit.procedure_code == "4200" and new >= self.min_score:
            # Python's sum, as the reference (its float summation may change across versions).
            duty = sum([item.customs_value_eur * item.duty_rate_pct / 100.0 for item in unit.items])
            vat_4200 = self.vat_rate * (total + duty)
            at_stake += vat_4200

        sentences = []
        fields = {
            "behaviour_score": exact_round(behaviour, 4),
            "new_importer_score": exact_round(new, 4),
            "declarations_seen": float(state.seen),
            "baseline_declarations": float(state.baseline.n),
            "changed_signals": ",".join(confirmed) or None,
            "change_since": fmt_time(since) if since is not None else None,
            "change_detected": fmt_time(detected) if detected is not None else None,
        }
        if confirmed:
            assert since is not None and detected is not None
            detail = detector._change_details(unit, state, feats, confirmed, since, fields)
            sentences.append(
                f"Importer {unit.importer_eori}: behaviour change since {fmt_time(since)} "
                f"(detected {fmt_time(detected)}): {'; '.join(detail or confirmed)}."
            )
        elif behaviour >= self.min_score:
            building = signals[0]  # max(SIGNALS, key=parts.get): the first of the largest
            best = parts[building]
            for signal in signals[1:]:
                if parts[signal] > best:
                    building, best = signal, parts[signal]
            sentences.append(
                f"Importer {unit.importer_eori}: possible behaviour change building up on "
                f"{building.replace('_', ' ')} (Page-Hinkley test at "
                f"{exact_fixed(100.0 * 2.0 * <double> levels[building], 0, False)} % of its alarm threshold; "
                f"{state.baseline.n} declarations of history)."
            )
        this = _this_declaration(feats)
        if this and (confirmed or behaviour >= self.min_score):
            sentences.append(this)
        if new >= self.min_score:
            sentences.append(detector._new_importer_sentence(unit, state, vat_4200))
            fields["first_seen"] = fmt_time(state.first_seen) if state.first_seen is not None else None
            fields["value_seen_eur"] = round(state.value_seen, 2)
        fields["declaration_value_eur"] = exact_round(total, 2)
        fields["eur_at_stake"] = exact_round(at_stake, 2)
        if not unit.items:
            raise ValueError("max() arg is an empty sequence")
        main = unit.items[0]  # max(unit.items, key=customs value): the first of the largest
        for item in unit.items[1:]:
            if item.customs_value_eur > main.customs_value_eur:
                main = item
        score = _min(1.0, _max(0.0, score))
        if direct:
            name = detector.name
            return build_score(
                name, score_id(name, unit.event_id, None), unit.event_id, "declaration", unit.mrn, None,
                unit.event_time, unit.office, unit.importer_eori, main.cn_code, main.origin, score,
                exact_round(at_stake, 2), " ".join(sentences), fields,
            )  # fmt: skip
        return detector.risk_score(
            subject_event_id=unit.event_id,
            subject_type="declaration",
            subject_reference=unit.mrn,
            item_number=None,
            event_time=unit.event_time,
            office=unit.office,
            operator_eori=unit.importer_eori,
            cn_code=main.cn_code,
            origin_country=main.origin,
            score=score,
            eur_at_stake=at_stake,
            reason=" ".join(sentences),
            reason_fields=fields,
        )

    # --- learning -----------------------------------------------------------------------------
    def learn(self, DeclarationProfile unit, object state, Features feats) -> None:
        """Learn ``unit`` given its features."""
        self._learn(unit, state, feats)

    cdef void _learn(self, DeclarationProfile unit, object state, Features feats) except *:
        cdef double when = unit.when
        cdef bint deviates = feats._deviates()
        cdef dict tests = state.tests
        cdef dict detected = {}
        cdef dict change, old
        cdef list window, times
        cdef Baseline base
        cdef PageHinkley test
        cdef ItemProfile item
        cdef int i
        state.memo = None
        for i in range(_SIGNALS):
            x = feats._value(i)
            if x is None:
                continue
            test = tests[self.signals[i]]
            if test._update(x, when, &self.tests[i]):
                detected[self.signals[i]] = test._onset if test._has_onset else when
                test.reset()
        if detected:
            _register_change(state, detected, when)
        change = state.change
        if change is not None:
            change["normal_streak"] = 0 if deviates else change["normal_streak"] + 1
        window = state.window
        window.append(
            {
                "t": when,
                "v": unit.total_value_eur,
                "f": feats._entry_features(),
                "items": [[item.group, item.log_uv, item.origin, item.chapter] for item in unit.items[: self.max_items]],
                "dev": deviates,
                "q": change is not None and deviates,
            }
        )
        while len(window) > self.window:
            old = window.pop(0)
            # The rate always learns: freezing it during a volume change would keep the change alive forever.
            base = state.baseline
            times = base.times
            times.append(old["t"])
            if len(times) > self.rate_window:
                del times[0]
            if old["q"]:
                if state.change is not None:
                    state.change["quarantined"] += 1
            else:
                self._learn_baseline(base, old)
        if change is not None:
            if change["normal_streak"] >= self.window:
                _end_change(state)  # back to its usual behaviour (or a false alarm)
            elif change["quarantined"] >= self.accept_after or when - <double>change["since"] >= self.accept_s:
                # The new behaviour has lasted: it becomes the norm, learned afresh.
                _end_change(state)
                state.baseline = Baseline()
        state.seen += 1
        state.value_seen += unit.total_value_eur
        if state.first_seen is None:
            state.first_seen = when
        state.last_seen = max(state.last_seen, when)

    cdef void _learn_baseline(self, Baseline base, dict entry):
        cdef list ring, values
        cdef Py_ssize_t pos
        base.n += 1
        base._novelty.clear()
        for group, log_uv, origin, chapter in entry["items"]:
            self._count(base.origins, origin)
            self._count(base.chapters, chapter)
            base.items += 1.0
            ring = base.uv.pop(group, None)  # re-inserted last: the dict stays in LRU order
            base._references.pop(group, None)
            if ring is None:
                ring = [[], 0]
                while len(base.uv) >= self.max_uv_groups:
                    base._references.pop(next(iter(base.uv)), None)
                    del base.uv[next(iter(base.uv))]
            values, pos = ring
            if len(values) < self.uv_window:
                values.append(log_uv)
            else:
                values[pos] = log_uv
            ring[1] = (pos + 1) % self.uv_window
            base.uv[group] = ring
        if base.items > self.count_cap:
            base.items *= 0.5
            for counts in (base.origins, base.chapters):
                for key in counts:
                    counts[key] *= 0.5

    cdef void _count(self, dict counts, object key):
        cdef object weakest = None
        if key not in counts and len(counts) >= self.max_categories:
            # Forget the least used category (ties: the first in insertion order) to stay bounded.
            for candidate, count in counts.items():
                if weakest is None or count < counts[weakest]:
                    weakest = candidate
            del counts[weakest]
        counts[key] = counts.get(key, 0.0) + 1.0


cdef tuple _HOOKS = (
    "units", "new_state", "score_one", "learn_one", "score_learn_one", "_score", "_reason", "_this_declaration",
    "risk_score",
)


cdef str _this_declaration(Features feats):
    """``OperatorBehaviourDetector._this_declaration(unit, feats)``: the sentence on the declaration's most
    deviating item ("" when none is 1 robust SD below its reference)."""
    cdef double declared, reference, below
    if feats.uv_item is None or feats.uv_z is None or feats.uv_z > -1.0:
        return ""
    _, cn, origin, declared_, reference_ = feats.uv_item
    declared, reference = declared_, reference_
    if reference == 0.0:
        raise ZeroDivisionError("float division by zero")
    below = 100.0 * (1.0 - declared / reference)
    basis = feats.uv_basis
    text = (
        f"This declaration: CN {cn} from {origin} at {exact_fixed(declared, 2, True)} EUR/{basis}, "
        f"{exact_fixed(below, 0, False)} % below its usual {exact_fixed(reference, 2, True)} EUR/{basis}"
    )
    if feats.uv_stake_eur > 0:
        text += f"; duty and VAT on the shortfall {exact_fixed(feats.uv_stake_eur, 0, True)} EUR"
    return text + "."
cdef object _detector_class():
    from .behaviour import OperatorBehaviourDetector

    return OperatorBehaviourDetector


include "_steps.pxi"


cdef void _register_change(object state, dict detected, double when):
    """Open (or extend) the importer's change with the signals whose tests just crossed, and quarantine
    the declarations since its onset that already deviated: they are part of it."""
    cdef dict change
    since = min(detected.values())
    if state.change is None:
        state.change = {"since": since, "detected": when, "signals": {}, "quarantined": 0, "normal_streak": 0}
    change = state.change
    change["since"] = min(change["since"], since)
    for signal in detected:
        change["signals"].setdefault(signal, when)
    for entry in state.window:
        if entry["t"] >= change["since"] and entry["dev"]:
            entry["q"] = True


cdef void _end_change(object state):
    state.change = None
    for test in state.tests.values():
        test.reset()
    for entry in state.window:
        entry["q"] = False
