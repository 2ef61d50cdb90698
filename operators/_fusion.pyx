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
"""

from cpython cimport array
from libc.math cimport exp, log, log10, log1p, pow, rint
from libc.stdlib cimport free, malloc
from libc.string cimport memmove

import array

include "_exact.pxi"

cdef array.array _DOUBLES = array.array("d")
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

    def features(self, scores, subject, double key, double evidence, dict per_detector, dict best) -> array.array:
        """The learning record of ``subject`` (see the class); fills ``per_detector`` and ``best``.

        ``per_detector``: detector -> its highest score, ``best``: detector -> that score (the
        last one of equal highest scores), both in the order detectors first scored.
        """
        cdef array.array out = array.clone(_DOUBLES, self._n + 1, zero=False)
        cdef double* values = out.data.as_doubles
        cdef Py_ssize_t i, base = self._n_scores
        cdef double clean = 1.0, declared
        cdef set items = set()
        cdef dict per_item = {}
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
            items.add(item)
            _keep_largest(per_item, item, s.eur_at_stake)
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
        values[base + 2] = log10(1.0 + <double> sum(per_item.values()))  # detectors_stake(scores)
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
        values[base + 9] = log1p(<double> len(items))
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
    >>> window.threshold(0.05)  # 5 % of the window lies strictly above it
    0.94
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
        """The value that about ``share`` of the window exceeds (at least one value exceeds it)."""
        cdef Py_ssize_t n = self._count
        cdef Py_ssize_t k = <Py_ssize_t> rint(share * <double> n)  # round(): half to even
        if k < 1:
            k = 1
        if k > n - 1:
            k = n - 1
        if n == 0:
            raise IndexError("threshold of an empty window")
        return self._sorted[n - k - 1]

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
