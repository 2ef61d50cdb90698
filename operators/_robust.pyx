# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Robust location and scale of a small buffer: median and MAD, in C.

The undervaluation detector calls this for every goods item it scores, on ring buffers
of at most a few hundred values, so an allocation-free quickselect beats numpy's
per-call overhead by an order of magnitude.
"""

from libc.math cimport fabs
from libc.stdlib cimport free, malloc


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
    cdef Py_ssize_t i
    cdef double med, mad
    try:
        with nogil:
            for i in range(n):
                work[i] = values[i]
            med = _median(work, n)
            for i in range(n):
                work[i] = fabs(values[i] - med)
            mad = _median(work, n)
    finally:
        free(work)
    return med, mad
