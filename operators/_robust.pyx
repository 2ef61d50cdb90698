# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Robust location and scale of a small buffer: median and MAD, in C; and the ring buffer they read.

The undervaluation detector calls this for every goods item it scores, on ring buffers
of at most a few hundred values, so an allocation-free quickselect beats numpy's
per-call overhead by an order of magnitude. :class:`UnitValueWindow` keeps those ring
buffers in C too, so that adding a value and reading the median cost a method call each.
"""

from libc.math cimport INFINITY, fabs
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcpy, memmove


cdef double _select(double* a, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """k-th smallest of a[0:n] (0-based), reordering a in place (Hoare quickselect)."""
    cdef Py_ssize_t lo = 0, hi = n - 1, i, j
    cdef double pivot, tmp
    while lo < hi:
        pivot = a[(lo + hi) >> 1]
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                tmp = a[i]; a[i] = a[j]; a[j] = tmp
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            return a[k]
    return a[k]


cdef double _median(double* a, Py_ssize_t n) noexcept nogil:
    cdef double upper = _select(a, n, n >> 1)
    cdef double lower
    if n & 1:
        return upper
    # Everything left of position n/2 is <= upper after the select: the lower middle is their max.
    lower = a[0]
    for i in range(1, n >> 1):
        if a[i] > lower:
            lower = a[i]
    return 0.5 * (lower + upper)


cdef void _median_mad(const double* values, double* work, Py_ssize_t n, double* med, double* mad) noexcept nogil:
    """Median and MAD of values[0:n] into ``med`` and ``mad``, using ``work`` (n doubles) as scratch."""
    cdef Py_ssize_t i
    memcpy(work, values, n * sizeof(double))
    med[0] = _median(work, n)
    for i in range(n):
        work[i] = fabs(values[i] - med[0])
    mad[0] = _median(work, n)


cdef int _compare(const void* a, const void* b) noexcept nogil:
    cdef double x = (<const double*> a)[0], y = (<const double*> b)[0]
    return (x > y) - (x < y)


def median_mad(double[::1] values, Py_ssize_t n):
    """Median and median absolute deviation of ``values[:n]``; ``values`` is not modified.

    Returns ``(nan, nan)`` when ``n`` is 0.

    >>> import numpy as np
    >>> median_mad(np.array([1.0, 2.0, 3.0, 4.0, 100.0]), 5)
    (3.0, 1.0)
    """
    if n <= 0:
        return float("nan"), float("nan")
    if n > values.shape[0]:
        raise ValueError(f"n={n} exceeds the buffer length {values.shape[0]}")
    cdef double* work = <double*> malloc(n * sizeof(double))
    if work == NULL:
        raise MemoryError()
    cdef double med, mad
    try:
        with nogil:
            _median_mad(&values[0], work, n, &med, &mad)
    finally:
        free(work)
    return med, mad


cdef class UnitValueWindow:
    """The last ``capacity`` values of one group (log unit values, ratios, scores), as a ring buffer.

    ``seen`` counts every value ever added (the buffer holds the most recent ones, in buffer
    order: insertion order until it is full, then rotated at ``pos``, the next slot written);
    ``last_seen`` is the latest event time (epoch seconds) passed to :meth:`add`, for idle-key
    eviction. The median and MAD are computed on demand and kept until the next :meth:`add`.

    >>> window = UnitValueWindow(4)
    >>> for value in (1.0, 2.0, 3.0, 4.0, 100.0):
    ...     window.add(value, 10.0)
    >>> window.size, window.seen, window.held(), window.median_mad()
    (4, 5, [100.0, 2.0, 3.0, 4.0], (3.5, 1.0))
    >>> window
    UnitValueWindow(capacity=4, size=4, seen=5, median=3.5, mad=1.0, last_seen=10.0)
    >>> UnitValueWindow.from_dict(window.to_dict(), 4).to_dict() == window.to_dict()
    True
    """

    cdef double* _values
    cdef double* _work
    cdef readonly Py_ssize_t capacity
    cdef readonly Py_ssize_t pos
    cdef readonly long long seen
    cdef readonly double last_seen
    cdef double _median
    cdef double _mad
    cdef bint _fresh

    def __cinit__(self, Py_ssize_t capacity):
        if capacity < 1:
            raise ValueError(f"a window holds at least one value (capacity {capacity})")
        self._values = <double*> malloc(capacity * sizeof(double))
        self._work = <double*> malloc(capacity * sizeof(double))
        if self._values == NULL or self._work == NULL:
            raise MemoryError()
        self.capacity = capacity
        self.pos = 0
        self.seen = 0
        self.last_seen = 0.0
        self._fresh = False

    def __dealloc__(self):
        free(self._values)
        free(self._work)

    @property
    def size(self) -> int:
        """How many values the window holds now."""
        return self.seen if self.seen < self.capacity else self.capacity

    cdef void _loaded(self) noexcept:
        """Hook run once :meth:`from_dict` has filled the buffer (subclasses derive their indexes)."""
        pass

    cpdef void add(self, double value, double when):
        """Write ``value`` over the oldest held one (once full); ``when``: its event time, epoch s."""
        self._values[self.pos] = value
        self.pos += 1
        if self.pos == self.capacity:
            self.pos = 0
        self.seen += 1
        if when > self.last_seen:
            self.last_seen = when
        self._fresh = False

    cpdef tuple median_mad(self):
        """Median and MAD of the values held; ``(nan, nan)`` when empty."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        if n == 0:
            return float("nan"), float("nan")
        if not self._fresh:
            _median_mad(self._values, self._work, n, &self._median, &self._mad)
            self._fresh = True
        return self._median, self._mad

    cpdef double median(self):
        """The median of the values held (nan when empty)."""
        return self.median_mad()[0]

    def held(self) -> list:
        """The values held, in buffer order (as :meth:`to_dict` saves them)."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        return [self._values[i] for i in range(n)]

    def sorted_values(self) -> list:
        """The values held, smallest first."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        memcpy(self._work, self._values, n * sizeof(double))
        qsort(self._work, n, sizeof(double), _compare)
        return [self._work[i] for i in range(n)]

    def __repr__(self) -> str:
        median, mad = self.median_mad()
        return (f"{type(self).__name__}(capacity={self.capacity}, size={self.size}, seen={self.seen}, "
                f"median={median!r}, mad={mad!r}, last_seen={self.last_seen!r})")

    def to_dict(self) -> dict:
        return {"values": self.held(), "pos": self.pos, "seen": self.seen, "last": self.last_seen}

    @classmethod
    def from_dict(cls, dict data, Py_ssize_t capacity) -> UnitValueWindow:
        """Rebuild a window saved with :meth:`to_dict`, with room for ``capacity`` values."""
        cdef UnitValueWindow window = cls(capacity)
        held = data["values"]
        if len(held) > capacity:
            raise ValueError(f"{len(held)} values saved for a window of {capacity}")
        for i, value in enumerate(held):
            window._values[i] = value
        window.pos, window.seen, window.last_seen = data["pos"], data["seen"], data["last"]
        if not 0 <= window.pos < capacity:
            raise ValueError(f"window position {window.pos} outside a window of {capacity}")
        if len(held) != min(window.seen, capacity):
            raise ValueError(f"{len(held)} values saved for a window of {capacity} that has seen {window.seen}")
        window._loaded()
        return window

    def __reduce__(self):
        return _restore_window, (type(self), self.to_dict(), self.capacity)


cdef Py_ssize_t _bisect_left(const double* a, Py_ssize_t n, double x) noexcept nogil:
    """First index i with a[i] >= x in sorted a[0:n] (Python's ``bisect_left``)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if a[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef Py_ssize_t _bisect_right(const double* a, Py_ssize_t n, double x) noexcept nogil:
    """First index i with a[i] > x in sorted a[0:n] (Python's ``bisect_right``)."""
    cdef Py_ssize_t lo = 0, hi = n, mid
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < a[mid]:
            hi = mid
        else:
            lo = mid + 1
    return lo


cdef double _sorted_median(const double* a, Py_ssize_t n) noexcept nogil:
    """Median of sorted a[0:n], n > 0 (as :func:`_median` computes it: the mean of the middle two when n is even)."""
    if n & 1:
        return a[n >> 1]
    return 0.5 * (a[(n >> 1) - 1] + a[n >> 1])


cdef double _sorted_mad(const double* a, Py_ssize_t n, double med) noexcept nogil:
    """Median of |a[i] - med| over sorted a[0:n], n > 0, by merging the deviations outward from ``med``.

    The deviations below ``med`` grow leftwards and those above grow rightwards, so the k-th
    smallest deviation is the k-th step of a two-way merge. ``med - a[i]`` is the double
    ``fabs(a[i] - med)`` (rounding is symmetric), so the order statistics are those of :func:`_median_mad`.
    """
    cdef Py_ssize_t half = n >> 1, left = _bisect_left(a, n, med) - 1, right = left + 1, step
    cdef double below, above, deviation = 0.0, previous = 0.0
    for step in range(half + 1):
        previous = deviation
        below = med - a[left] if left >= 0 else INFINITY
        above = a[right] - med if right < n else INFINITY
        if below <= above:
            deviation = below
            left -= 1
        else:
            deviation = above
            right += 1
    if n & 1:
        return deviation
    return 0.5 * (previous + deviation)


cdef class RankedWindow(UnitValueWindow):
    """A :class:`UnitValueWindow` that also keeps its values sorted, to read quantiles and ranks,
    and the median and MAD without a selection.

    Saved and restored exactly like a :class:`UnitValueWindow` (the sorted copy is derived).

    >>> window = RankedWindow(4)
    >>> for value in (0.3, 0.1, 0.4, 0.2, 0.9):
    ...     window.add(value, 0.0)
    >>> window.sorted_values(), window.quantile(0.5), window.count_at_least(0.4), window.sum_above(0.3)
    ([0.1, 0.2, 0.4, 0.9], 0.30000000000000004, 2, (2, 1.3))
    """

    cdef double* _sorted

    def __cinit__(self, Py_ssize_t capacity):
        self._sorted = <double*> malloc(capacity * sizeof(double))
        if self._sorted == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self._sorted)

    cdef void _loaded(self) noexcept:
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        memcpy(self._sorted, self._values, n * sizeof(double))
        qsort(self._sorted, n, sizeof(double), _compare)

    cpdef void add(self, double value, double when):
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        cdef Py_ssize_t at, leaving
        cdef double* ordered = self._sorted
        if n < self.capacity:
            at = _bisect_right(ordered, n, value)
            memmove(&ordered[at + 1], &ordered[at], (n - at) * sizeof(double))
        else:  # full: the value overwritten leaves; only the values between the two places shift
            leaving = _bisect_left(ordered, n, self._values[self.pos])
            at = _bisect_right(ordered, n, value)
            if at > leaving:
                at -= 1
                memmove(&ordered[leaving], &ordered[leaving + 1], (at - leaving) * sizeof(double))
            else:
                memmove(&ordered[at + 1], &ordered[at], (leaving - at) * sizeof(double))
        ordered[at] = value
        UnitValueWindow.add(self, value, when)

    def sorted_values(self) -> list:
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        return [self._sorted[i] for i in range(n)]

    cpdef tuple median_mad(self):
        """Median and MAD read off the sorted copy, without a selection: the same doubles as
        :meth:`UnitValueWindow.median_mad` (both are order statistics); ``(nan, nan)`` when empty.

        >>> window = RankedWindow(4)
        >>> for value in (1.0, 2.0, 3.0, 4.0, 100.0):
        ...     window.add(value, 10.0)
        >>> window.median_mad()
        (3.5, 1.0)
        """
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        if n == 0:
            return float("nan"), float("nan")
        if not self._fresh:
            self._median = _sorted_median(self._sorted, n)
            self._mad = _sorted_mad(self._sorted, n, self._median)
            self._fresh = True
        return self._median, self._mad

    cpdef double median(self):
        """The median of the values held (nan when empty), read off the sorted copy: the first
        number of :meth:`median_mad`, without computing the MAD."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        if n == 0:
            return float("nan")
        if self._fresh:
            return self._median
        return _sorted_median(self._sorted, n)

    cpdef double quantile(self, double q):
        """The ``q`` quantile of the values held, interpolated linearly (numpy's default method);
        the same double operations as ``low + (high - low) * (q * (n - 1) - int(q * (n - 1)))``."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        if n == 0:
            raise ValueError("quantile of an empty window")
        cdef double position = q * <double> (n - 1)
        cdef Py_ssize_t low = <Py_ssize_t> position
        cdef Py_ssize_t high = low + 1 if low + 1 < n - 1 else n - 1
        return self._sorted[low] + (self._sorted[high] - self._sorted[low]) * (position - <double> low)

    cpdef Py_ssize_t count_at_least(self, double x):
        """How many values held are >= ``x``."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        return n - _bisect_left(self._sorted, n, x)

    cpdef tuple sum_above(self, double x):
        """(count, sum) of the values held that are > ``x``, summed smallest first."""
        cdef Py_ssize_t n = self.seen if self.seen < self.capacity else self.capacity
        cdef Py_ssize_t i = _bisect_right(self._sorted, n, x)
        cdef double total = 0.0
        cdef Py_ssize_t count = n - i
        while i < n:
            total += self._sorted[i]
            i += 1
        return count, total


def first_holding(list windows, double at_least) -> int:
    """Index of the first of ``windows`` (None: a window never fed) that holds at least
    ``at_least`` values; -1 when none does. One C call for a back-off over several windows.

    >>> small, large = UnitValueWindow(8), UnitValueWindow(8)
    >>> for value in range(5):
    ...     large.add(value, 0.0)
    >>> first_holding([None, small, large], 3), first_holding([small, large], 6)
    (2, -1)
    """
    cdef Py_ssize_t held
    return _first_holding(windows, at_least, &held)


cdef Py_ssize_t _first_holding(list windows, double at_least, Py_ssize_t* held) except -2:
    """:func:`first_holding`, also setting ``held`` to how many values that window holds."""
    cdef Py_ssize_t i
    cdef UnitValueWindow window
    for i in range(len(windows)):
        if windows[i] is not None:
            window = <UnitValueWindow?> windows[i]
            held[0] = window.seen if window.seen < window.capacity else window.capacity
            if held[0] >= at_least:
                return i
    return -1


def first_median_mad(list windows, double at_least) -> tuple:
    """``(index, median, MAD, size)`` of the first of ``windows`` (None: never fed) that holds at
    least ``at_least`` values, read as :meth:`UnitValueWindow.median_mad` reads them; when none
    does, ``(-1, nan, nan, seen)`` with ``seen`` the first window's :attr:`~UnitValueWindow.seen`
    (0 when it was never fed). :func:`first_holding` then ``median_mad`` in one C call.

    >>> small, large = RankedWindow(8), RankedWindow(8)
    >>> for value in (1.0, 2.0, 3.0, 4.0, 100.0):
    ...     large.add(value, 0.0)
    >>> small.add(7.0, 0.0)
    >>> first_median_mad([None, small, large], 3), first_median_mad([small, large], 6)
    ((2, 3.0, 1.0, 5), (-1, nan, nan, 1))
    """
    cdef Py_ssize_t held
    cdef Py_ssize_t i = _first_holding(windows, at_least, &held)
    if i >= 0:
        median, mad = (<UnitValueWindow> windows[i]).median_mad()
        return i, median, mad, held
    if not windows or windows[0] is None:
        return -1, float("nan"), float("nan"), 0
    return -1, float("nan"), float("nan"), (<UnitValueWindow?> windows[0]).seen


def add_to_each(list windows, double value, double when) -> None:
    """``window.add(value, when)`` for each of ``windows``, in one C call."""
    for window in windows:
        (<UnitValueWindow?> window).add(value, when)


def _restore_window(type cls, dict data, Py_ssize_t capacity) -> UnitValueWindow:
    """Unpickling (and deepcopy) hook."""
    return cls.from_dict(data, capacity)
