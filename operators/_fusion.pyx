# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The per-subject hot path of :meth:`vigie.operators.fusion.LearnedFusion.decide`, in C.

Every subject the engine scores goes through the learned fusion: its raw features, their
z-scores, the logistic regression's probability, the scaler's update and two streaming
quantiles of the alert budget. :class:`FusionKernel` and :class:`RiskWindow` do that work
on C doubles. They must stay equal, bit for bit, to the Python semantics they replace:
:meth:`~vigie.operators.fusion.LearnedFusion._features` as documented there,
:class:`~vigie.models.fusion.FeatureScaler` (River's ``StandardScaler``), and River 0.23's
``LogisticRegression.predict_proba_one`` (``VectorDict`` dot product, then ``sigmoid``).
So every float operation below is the one the Python code does, in the same order (no
reassociation, no fused multiply-add: setup.py builds it with ``-ffp-contract=off``), and
Python's ``min``/``max``/``round`` are spelled out with their exact tie and NaN behaviour.
The River models stay the source of truth: the kernel reads their weights on every call.

:class:`Subject` is what the fusion knows of a subject (a C class: one is built per event), and
:func:`decide` is ``LearnedFusion.decide`` compiled, the same Python operations on the same
objects (the interpreter's own work per line cost more than the arithmetic).
"""

from cpython cimport array
from libc.math cimport exp, log, log10, log1p, pow, rint
from libc.stdlib cimport free, malloc
from libc.string cimport memmove

import array
import sys

include "_exact.pxi"

cdef array.array _DOUBLES = array.array("d")
cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object number, int* overflow) except? -1

cdef enum:
    _ITEMS_HELD = 64  # goods items of one subject kept in C arrays while fusing (beyond: a set and a dict)
cdef bint _PLAIN_SUM = sys.version_info < (3, 12)  # Python 3.12's sum() compensates float rounding: not this
cdef double _FLOOR_LOGIT = -6.9  # log-odds of 0.001: "this detector saw nothing"


cpdef double round_float(double x, int ndigits) except? -1.0:
    """``round(x, ndigits)`` for a float ``x``: the same double, without Python's decimal string
    round trip when the rounding is sure (``_exact.pxi``).

    >>> import random
    >>> rng = random.Random(0)
    >>> values = [rng.random() * 10.0 ** rng.randint(-6, 9) for _ in range(20_000)] + [2.675, -0.001, 1e300, 0.5]
    >>> ties = [k / 32 for k in range(-2_000, 2_000)]  # exact halves at 2 and 4 decimals, and their neighbours
    >>> all(round_float(v, d) == round(v, d) for v in values + ties for d in (0, 2, 4, 6))
    True
    """
    return exact_round(x, ndigits)


def fixed_text(double x, int decimals, bint grouped) -> str:
    """``format(x, ",.{decimals}f")`` if ``grouped``, else ``format(x, ".{decimals}f")`` (``_exact.pxi``).

    >>> import random
    >>> rng = random.Random(1)
    >>> values = [rng.uniform(-1.0, 1.0) * 10.0 ** rng.randint(-4, 12) for _ in range(20_000)] + [-0.001, 2.5, 1e300]
    >>> ties = [k / 32 for k in range(-2_000, 2_000)]
    >>> all(fixed_text(v, d, g) == format(v, f"{',' if g else ''}.{d}f")
    ...     for v in values + ties for d in (0, 1, 2, 4) for g in (False, True))
    True
    """
    return exact_fixed(x, decimals, grouped)


cdef inline double _clipped_logit(double p) noexcept:
    """``log(p / (1 - p))`` with ``p`` clipped to [0.001, 0.999] as ``min(max(p, 0.001), 0.999)`` clips it."""
    if 0.001 > p:  # max(p, 0.001) keeps p unless 0.001 is greater (so NaN stays NaN)
        p = 0.001
    if 0.999 < p:  # min(p, 0.999) likewise
        p = 0.999
    return log(p / (1.0 - p))


def clipped_logit(double p) -> float:
    """Log-odds of ``p``, clipped to +-6.9 (probabilities 0.001 to 0.999).

    >>> clipped_logit(0.5), round(clipped_logit(1.0), 1), round(clipped_logit(-3.0), 1)
    (0.0, 6.9, -6.9)
    """
    return _clipped_logit(p)


cdef inline void _keep_largest(dict per_item, item, stake) except *:
    """``per_item[item] = stake`` if ``stake`` is above what it holds (0.0 when nothing)."""
    if stake > per_item.get(item, 0.0):
        per_item[item] = stake


def detectors_stake(scores) -> float:
    """EUR the detectors put at stake on a subject if it is irregular.

    Per goods item (an item number of ``None`` counting as item 0), the largest
    ``eur_at_stake`` any detector gave it (whatever its score: how likely the item is
    irregular is the fused probability's business), summed over items in the order the
    items first showed a stake.
    """
    cdef dict per_item = {}
    for s in scores:
        _keep_largest(per_item, s.item_number or 0, s.eur_at_stake)
    return sum(per_item.values())


cdef class Subject:
    """What fusion needs to know about the event its scores are about.

    Immutable, compared and hashed on its fields in this order, like the frozen dataclass it
    replaces (built for every subject the engine decides on: a C class costs a tenth of one).

    >>> from datetime import UTC, datetime
    >>> subject = Subject("e1", "declaration", "26FR0002300000001A", "FR002300", datetime(2026, 3, 2, tzinfo=UTC))
    >>> subject.operator_eori is None, subject == Subject(*subject.astuple()), subject.subject_type
    (True, True, 'declaration')
    >>> subject.office = "FR1"
    Traceback (most recent call last):
    ...
    AttributeError: attribute 'office' of 'vigie.operators._fusion.Subject' objects is not writable
    """

    cdef readonly object event_id
    cdef readonly object subject_type
    """``ens``, ``declaration`` or ``excise``."""
    cdef readonly object reference
    cdef readonly object office
    cdef readonly object event_time
    """When the subject was filed (an aware ``datetime``)."""
    cdef readonly object operator_eori
    cdef readonly object transport_mode
    cdef readonly object eta
    """Expected arrival (an aware ``datetime``), when known."""
    cdef readonly object ens_risk
    """Fused risk of the ENS linked to a declaration, as it was when the ENS was filed."""
    cdef readonly object declared_eur
    """What the subject puts in play, when the runtime knows it: the customs value of a
    declaration's goods, the excise duty declared on an excise record."""
    cdef readonly object regime
    """The procedure code of a declaration (``4000``, ``4200``...) or the type of an excise
    record (``e_ad``, ``release_for_consumption``...), when the runtime knows it
    (see :data:`~vigie.operators.fusion.RELIEF_REGIMES`)."""

    __match_args__ = ("event_id", "subject_type", "reference", "office", "event_time", "operator_eori",
                      "transport_mode", "eta", "ens_risk", "declared_eur", "regime")

    def __init__(self, event_id, subject_type, reference, office, event_time, operator_eori=None,
                 transport_mode=None, eta=None, ens_risk=None, declared_eur=None, regime=None):
        self.event_id = event_id
        self.subject_type = subject_type
        self.reference = reference
        self.office = office
        self.event_time = event_time
        self.operator_eori = operator_eori
        self.transport_mode = transport_mode
        self.eta = eta
        self.ens_risk = ens_risk
        self.declared_eur = declared_eur
        self.regime = regime

    def astuple(self) -> tuple:
        """The fields in order (what equality and the hash compare)."""
        return (self.event_id, self.subject_type, self.reference, self.office, self.event_time, self.operator_eori,
                self.transport_mode, self.eta, self.ens_risk, self.declared_eur, self.regime)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.astuple() == (<Subject> other).astuple()

    def __hash__(self):
        return hash(self.astuple())

    def __repr__(self) -> str:
        values = ", ".join(f"{name}={value!r}" for name, value in zip(self.__match_args__, self.astuple()))
        return f"Subject({values})"

    def __reduce__(self):
        return Subject, self.astuple()


cdef class FusionKernel:
    """The learned fusion's raw features, fused logit and scaler update for one subject, on C doubles.

    Built by :meth:`~vigie.operators.fusion.LearnedFusion.bind`, which owns the feature
    layout: ``n_scores`` detector log-odds (``slots``: subject type -> detector -> position),
    then the context features from position ``n_scores`` in
    :data:`~vigie.operators.fusion.CONTEXT_FEATURES` order, the one-hot subject type at
    ``n_scores + 5 + types[subject_type]``. The learning record is those ``len(names)``
    values then the operator key.
    """

    cdef readonly tuple names
    cdef tuple _arguments  # what it was built from, for pickling
    cdef dict _index  # feature name -> position
    cdef dict _slots
    cdef dict _types
    cdef frozenset _relief
    cdef Py_ssize_t _n
    cdef Py_ssize_t _n_scores
    cdef Py_ssize_t* _unscaled
    cdef Py_ssize_t _n_unscaled
    cdef double* _z  # scratch: the model input of the latest :meth:`probability`

    def __cinit__(self, tuple names, Py_ssize_t n_scores, dict slots, dict types, frozenset relief, tuple unscaled):
        self._n = len(names)
        self._n_unscaled = len(unscaled)
        self._z = <double*> malloc((self._n + 1) * sizeof(double))
        self._unscaled = <Py_ssize_t*> malloc((self._n_unscaled + 1) * sizeof(Py_ssize_t))
        if self._z == NULL or self._unscaled == NULL:
            raise MemoryError()
        for i, position in enumerate(unscaled):
            self._unscaled[i] = position
        self.names = names
        self._arguments = (names, n_scores, slots, types, relief, unscaled)
        self._index = {name: i for i, name in enumerate(names)}
        self._n_scores = n_scores
        self._slots = slots
        self._types = types
        self._relief = relief

    def __dealloc__(self):
        free(self._z)
        free(self._unscaled)

    def __reduce__(self):
        return FusionKernel, self._arguments

    def __repr__(self) -> str:
        return f"FusionKernel({len(self.names)} features: {', '.join(self.names)})"

    def features(self, scores, Subject subject, double key, double evidence, dict per_detector,
                 dict best) -> array.array:
        """The learning record of ``subject`` (see the class); fills ``per_detector`` and ``best``.

        ``per_detector``: detector -> its highest score, ``best``: detector -> that score (the
        last one of equal highest scores), both in the order detectors first scored.
        """
        cdef array.array out = array.clone(_DOUBLES, self._n + 1, zero=False)
        cdef double* values = out.data.as_doubles
        cdef Py_ssize_t i, base = self._n_scores
        cdef double clean = 1.0, declared, stake, staked = 0.0
        cdef long long item_keys[_ITEMS_HELD]  # item numbers, in the order they came
        cdef double item_stakes[_ITEMS_HELD]  # each one's largest stake (0.0: none above 0 yet)
        cdef Py_ssize_t staked_order[_ITEMS_HELD]  # items in the order a stake above 0 came (the dict's order)
        cdef Py_ssize_t n_items = 0, n_staked = 0, j
        cdef long long number = 0
        cdef bint in_c = _PLAIN_SUM  # items and stakes in the C arrays; else in a set and a dict
        cdef int overflow = 0
        cdef set items = None if in_c else set()
        cdef dict per_item = None if in_c else {}
        if self._n < base + 10:
            raise IndexError(f"{self._n} features cannot hold {base} scores and the context: bind the detectors first")
        for i in range(base):
            values[i] = _FLOOR_LOGIT
        for i in range(base, self._n):
            values[i] = 0.0
        for s in scores:
            score = s.score
            detector = s.detector
            if score >= per_detector.get(detector, -1.0):
                per_detector[detector] = score
                best[detector] = s
            item = s.item_number or 0
            eur = s.eur_at_stake
            if in_c:
                if type(item) is int and type(eur) is float and n_items < _ITEMS_HELD:
                    number = PyLong_AsLongLongAndOverflow(item, &overflow)
                if overflow or type(item) is not int or type(eur) is not float or n_items == _ITEMS_HELD:
                    in_c = False  # not the common case: the Python containers, filled with what the arrays hold
                    items = {item_keys[j] for j in range(n_items)}
                    per_item = {item_keys[staked_order[j]]: item_stakes[staked_order[j]] for j in range(n_staked)}
            if in_c:
                stake = eur
                for j in range(n_items):
                    if item_keys[j] == number:
                        break
                else:
                    j = n_items
                    n_items += 1
                    item_keys[j] = number
                    item_stakes[j] = 0.0
                if stake > item_stakes[j]:  # _keep_largest: over what it holds, 0.0 when nothing
                    if item_stakes[j] == 0.0:  # its first stake above 0: where the dict would insert it
                        staked_order[n_staked] = j
                        n_staked += 1
                    item_stakes[j] = stake
            else:
                items.add(item)
                _keep_largest(per_item, item, eur)
        if in_c:
            # sum(per_item.values()): Python 3.11 adds the floats one by one from 0.0, in the dict's order
            for j in range(n_staked):
                staked += item_stakes[staked_order[j]]
        else:
            staked = <double> sum(per_item.values())
            n_items = len(items)
        subject_type = subject.subject_type
        slots = self._slots.get(subject_type)  # where this subject type's scores go
        for detector, score in per_detector.items():
            clean *= 1.0 - <double> score
            if slots is not None:
                position = (<dict> slots).get(detector)
                if position is not None:
                    values[<Py_ssize_t> position] = _clipped_logit(score)
        values[base] = _clipped_logit(1.0 - clean)
        values[base + 1] = evidence
        values[base + 2] = log10(1.0 + staked)  # detectors_stake(scores)
        declared_eur = subject.declared_eur
        declared = <double> declared_eur if declared_eur else 0.0
        if 0.0 > declared:  # max(declared, 0.0)
            declared = 0.0
        values[base + 3] = log10(1.0 + declared)
        values[base + 4] = 1.0 if subject.regime in self._relief else 0.0
        offset = self._types.get(subject_type)
        if offset is not None:
            values[base + 5 + <Py_ssize_t> offset] = 1.0
        ens_risk = subject.ens_risk
        values[base + 8] = _clipped_logit(ens_risk) if ens_risk is not None else 0.0
        values[base + 9] = log1p(<double> n_items)
        values[self._n] = key
        return out

    def probability(self, array.array features, scaler, weights, double intercept):
        """River's ``predict_proba_one(x)[True]`` for the model input of ``features`` (see below), to 6 decimals.

        The model input: ``scaler``'s z-scores of the first ``len(names)`` values, but for the
        unscaled positions, left raw (reading marks ``scaler`` touched, as its ``transform_one``
        does). ``weights``: the classifier's weight vector (a River ``VectorDict``),
        ``intercept`` its intercept. River's dot product walks the smaller of the two vectors
        in its own order (the weights on a tie), a missing term counting 0; its ``sigmoid``
        gives exactly 0 or 1 (ints) beyond +-30.
        """
        cdef double* x = features.data.as_doubles
        cdef double* z = self._z
        cdef array.array means_array = scaler.means, stds_array = scaler.stds
        cdef double* means = means_array.data.as_doubles
        cdef double* stds = stds_array.data.as_doubles
        cdef Py_ssize_t i, n = self._n
        cdef double s, dot = 0.0, raw
        if len(features) < n or len(means_array) < n or len(stds_array) < n:
            raise ValueError(f"{len(features)} values for {n} features")
        scaler.touched = True
        for i in range(n):
            s = stds[i]
            z[i] = (x[i] - means[i]) / s if s != 0.0 else 0.0
        for i in range(self._n_unscaled):
            z[self._unscaled[i]] = x[self._unscaled[i]]
        if len(weights) <= n:
            for name, weight in weights.items():
                position = self._index.get(name)
                dot += <double> weight * (z[<Py_ssize_t> position] if position is not None else 0.0)
        else:
            for i in range(n):
                dot += z[i] * <double> weights.get(self.names[i], 0)
        raw = dot + intercept
        if raw < -30:
            return 0  # round(0, 6): an int stays an int
        if raw > 30:
            return 1
        return round_float(1.0 / (1.0 + exp(-raw)), 6)

    def model_input(self, array.array features, scaler) -> dict:
        """``LearnedFusion._model_input(features)``: the classifier's input, feature name -> value in
        feature order, the z-scores of ``scaler.transform_one(features)`` but for the unscaled
        positions, left raw (reading marks ``scaler`` touched, as ``transform_one`` does)."""
        cdef double* x = features.data.as_doubles
        cdef array.array means_array = scaler.means, stds_array = scaler.stds
        cdef double* means = means_array.data.as_doubles
        cdef double* stds = stds_array.data.as_doubles
        cdef Py_ssize_t i, n = self._n
        cdef double s
        cdef dict out = {}
        if len(features) < n or len(means_array) < n or len(stds_array) < n:
            raise ValueError(f"{len(features)} values for {n} features")
        scaler.touched = True
        for i in range(n):
            s = stds[i]
            self._z[i] = (x[i] - means[i]) / s if s != 0.0 else 0.0  # transform_one: (x - m) / s if s else 0.0
        for i in range(self._n_unscaled):
            self._z[self._unscaled[i]] = x[self._unscaled[i]]
        for i in range(n):
            out[self.names[i]] = self._z[i]
        return out

    def learn(self, array.array features, scaler) -> None:
        """``scaler.learn_one(features)``: Welford's update of each feature's count, mean, variance and root."""
        cdef double* x = features.data.as_doubles
        cdef array.array counts_array = scaler.counts, means_array = scaler.means
        cdef array.array variances_array = scaler.variances, stds_array = scaler.stds
        cdef long long* counts = counts_array.data.as_longlongs
        cdef double* means = means_array.data.as_doubles
        cdef double* variances = variances_array.data.as_doubles
        cdef double* stds = stds_array.data.as_doubles
        cdef Py_ssize_t i, n = self._n
        cdef long long count
        cdef double xi, old, mean, v
        if counts_array.ob_descr.typecode != c"q":
            raise TypeError(f"scaler counts are array({counts_array.typecode!r}), not array('q')")
        if (len(features) < n or len(counts_array) < n or len(means_array) < n or len(variances_array) < n
                or len(stds_array) < n):
            raise ValueError(f"{len(features)} values for {n} features")
        for i in range(n):
            xi = x[i]
            old = means[i]
            v = variances[i]
            count = counts[i] + 1
            mean = old + (xi - old) / <double> count
            v = v + ((xi - old) * (xi - mean) - v) / <double> count
            counts[i] = count
            means[i] = mean
            variances[i] = v
            stds[i] = pow(v, 0.5)  # what Python's v ** 0.5 calls for a non-negative v
        scaler.touched = True


cdef class RiskWindow:
    """The last ``size`` priorities of one flow, kept sorted: a streaming quantile.

    The values as they came in a ring (Python objects, so :meth:`to_list` gives back exactly
    what was added), and sorted as C doubles, where :meth:`add` inserts after equal values
    and removes the first equal one, as ``bisect.insort`` and ``bisect_left`` would.

    >>> window = RiskWindow(100)
    >>> for i in range(100):
    ...     window.add(i / 100)
    >>> window.threshold(0.05)  # a new value like the window's exceeds it 5 times in 100
    0.95
    >>> window
    RiskWindow(size=100, held=100, lowest=0.0, highest=0.99)
    """

    cdef readonly Py_ssize_t size
    cdef list _ring
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _start  # ring position of the oldest value
    cdef Py_ssize_t _count
    cdef double* _sorted

    def __cinit__(self, Py_ssize_t size, Py_ssize_t capacity=0):
        if size < 0:
            raise ValueError(f"a window of {size} values")
        # One more than it holds: a value is added before the oldest leaves.
        self._capacity = (size if size > capacity else capacity) + 1
        self._sorted = <double*> malloc(self._capacity * sizeof(double))
        if self._sorted == NULL:
            raise MemoryError()
        self._ring = [None] * self._capacity
        self.size = size
        self._start = 0
        self._count = 0

    def __dealloc__(self):
        free(self._sorted)

    def __repr__(self) -> str:
        if self._count == 0:
            return f"RiskWindow(size={self.size}, held=0)"
        return (f"RiskWindow(size={self.size}, held={self._count}, lowest={self._sorted[0]!r}, "
                f"highest={self._sorted[self._count - 1]!r})")

    def __len__(self) -> int:
        return self._count

    def __reduce__(self):
        return _window_from_list, (type(self), self.size, self.to_list())

    cpdef void add(self, value) except *:
        """Add ``value``; past ``size`` values, the oldest leaves."""
        cdef double v = value
        cdef Py_ssize_t lo = 0, hi = self._count, mid
        cdef double* ordered = self._sorted
        while lo < hi:  # bisect_right
            mid = (lo + hi) >> 1
            if v < ordered[mid]:
                hi = mid
            else:
                lo = mid + 1
        memmove(ordered + lo + 1, ordered + lo, (self._count - lo) * sizeof(double))
        ordered[lo] = v
        self._ring[(self._start + self._count) % self._capacity] = value
        self._count += 1
        if self._count > self.size:
            v = self._ring[self._start]
            self._ring[self._start] = None
            self._start = (self._start + 1) % self._capacity
            self._count -= 1
            lo = 0
            hi = self._count + 1
            while lo < hi:  # bisect_left
                mid = (lo + hi) >> 1
                if ordered[mid] < v:
                    lo = mid + 1
                else:
                    hi = mid
            memmove(ordered + lo, ordered + lo + 1, (self._count - lo) * sizeof(double))

    cpdef double threshold(self, double share) except? -1.0:
        """The value a new value, drawn like the window's, exceeds with probability about ``share``.

        The ``k``-th largest of the ``n`` values held, ``k = round(share x (n + 1))``: a new value
        is above it with probability ``k / (n + 1)``. (The ``k + 1``-th, which ``k`` of the window
        exceed, let ``(k + 1) / (n + 1)`` through: half as much again on a window of 200 at 1 %.)
        At least the largest: a share below ``1 / (n + 1)`` is not honoured (a window of 1,000
        spends at least 0.1 %).
        """
        cdef Py_ssize_t n = self._count
        cdef Py_ssize_t k = <Py_ssize_t> rint(share * <double> (n + 1))  # round(): half to even
        if n == 0:
            raise IndexError("threshold of an empty window")
        if k < 1:
            k = 1
        if k > n:
            k = n
        return self._sorted[n - k]

    @property
    def sorted(self) -> list:
        """The values held, smallest first."""
        return [self._sorted[i] for i in range(self._count)]

    def to_list(self) -> list:
        """The values held, oldest first."""
        return [self._ring[(self._start + i) % self._capacity] for i in range(self._count)]

    @classmethod
    def from_list(cls, Py_ssize_t size, values) -> RiskWindow:
        """The window of ``size`` holding ``values`` (oldest first), as :meth:`to_list` saved them."""
        cdef RiskWindow window = cls(size, len(values))
        cdef Py_ssize_t i
        for i, value in enumerate(values):
            window._ring[i] = value
        for i, value in enumerate(sorted(values)):  # Python's order among equal values
            window._sorted[i] = value
        window._count = len(values)
        return window


def _window_from_list(cls, Py_ssize_t size, values) -> RiskWindow:
    """Unpickle a :class:`RiskWindow` (or subclass ``cls``) saved as its values."""
    return cls.from_list(size, values)


def decide(fusion, scores, Subject subject, queue, decision_type):
    """``LearnedFusion.decide(scores, subject, queue)`` (``fusion`` is the learned fusion, ``decision_type``
    its ``FusionDecision``), compiled: the method's steps, the same calls on the same objects in the same
    order, with Python's arithmetic on Python numbers. Every subject the engine scores comes here.
    """
    cdef FusionKernel kernel = fusion._kernel
    cdef dict per_detector = {}
    cdef dict best = {}
    cdef dict windows = fusion.windows
    cdef dict counts_by_key = fusion.counts
    cdef RiskWindow local, shared, reference = None
    cdef list counts
    # the learning record: operator key (remembered per EORI), its control record's evidence, the features
    eori = subject.operator_eori
    key = fusion._operator_keys.get(eori) if eori else None
    if key is None:
        key = fusion._operator_key(eori)
    operators = fusion.operators
    controlled = operators.counts  # operators.evidence(key) is 0 for an operator never controlled: most
    evidence = operators.evidence(key) if controlled and key >= 0 and int(key) in controlled else 0.0
    features = kernel.features(scores, subject, key, evidence, per_detector, best)
    # the probability, the stake and the priority
    classifier = fusion.classifier
    scaler = fusion.scaler
    p = kernel.probability(features, scaler, classifier._weights, classifier.intercept)
    stake = round_float(10.0 ** fusion._log_stake(features) - 1.0, 2)
    decision = decision_type(p, features, None, round_float(p * stake, 2), stake, subject.event_id)
    subject_type = subject.subject_type
    if fusion.rank_by == "expected_eur" and subject_type != "ens":  # fusion.priority(decision, subject_type)
        priority = p * (1.0 + stake) ** fusion.stake_elasticity
    else:
        priority = p
    fusion.last_decision = decision
    # the budget: the office's window of priorities, else its subject type's, once they hold min_fill
    key = f"{subject.office}|{subject_type}"
    local = windows.get(key)
    shared = fusion.type_windows.get(subject_type)
    min_fill = fusion.min_fill
    if local is not None and len(local) >= min_fill:
        reference = local
    elif shared is not None and len(shared) >= min_fill:
        reference = shared
    selection = None
    threshold = 0.5
    if reference is None:
        selection = "exploitation" if p >= 0.5 else None
    else:
        threshold = reference.threshold(fusion.capacity * (1.0 - fusion.explore_share))
        floor = reference.threshold(fusion.capacity * fusion.band)
        if priority > threshold:
            selection = "exploitation"
        elif priority > floor and fusion._draw(subject.event_id) < fusion.explore_probability:
            selection = "exploration"
    if local is None:
        local = RiskWindow(fusion.window)
        windows[key] = local
    local.add(priority)
    if shared is not None:
        shared.add(priority)
    counts = counts_by_key.get(key)
    if counts is None:
        counts = counts_by_key[key] = [0, 0, 0]
    counts[0] += 1
    # What the model read, for the alert to explain: before the scaler learns this subject.
    z = fusion._model_input(features) if selection is not None else {}
    kernel.learn(features, scaler)
    if selection is None:
        return decision
    counts[1 if selection == "exploitation" else 2] += 1
    decision.alert = fusion._alert(scores, subject, queue, decision, per_detector, best, z, selection, threshold,
                                   priority)
    return decision
