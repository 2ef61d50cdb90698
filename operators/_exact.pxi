# Python's float semantics in C, shared by the hot paths: ``min``/``max`` (argument order
# matters for NaN and ties), rounding and fixed-point formatting of the scores, stakes and
# reason texts. ``include "_exact.pxi"`` is a textual include: the operators/ folder is not
# laid out as the vigie.operators package that a .pxd would need.
#
# ``round(x, n)`` and ``format(x, ".nf")`` round the *exact* binary value of ``x`` to ``n``
# decimals, half to even. ``y = x * 10**n`` is computed with a relative error below 2**-53;
# when ``y`` is farther than that from a half-integer, the exact product rounds to the same
# integer ``r`` as ``y`` does, and ``r / 10**n`` (exact doubles, a correctly rounded
# quotient) is the double Python reads back. Near a tie, beyond 2**52, or for NaN and
# infinities, Python itself decides: the results are identical by construction.

from libc.math cimport fabs, rint, signbit

cdef double _EXACT_PRODUCT_ERROR = 2.0 ** -50  # relative bound (4x generous) on the error of x * 10**n
cdef double _EXACT_BELOW = 2.0 ** 52  # from here on, every double is an integer: nothing left to round
cdef double[23] _EXACT_POW10 = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19,
    1e20, 1e21, 1e22,
]  # exact doubles


cdef inline double _min(double a, double b) noexcept:
    """``min(a, b)`` as Python picks: ``b`` only when strictly smaller."""
    return b if b < a else a


cdef inline double _max(double a, double b) noexcept:
    """``max(a, b)`` as Python picks: ``b`` only when strictly larger."""
    return b if b > a else a


cdef inline bint _exact_scaled(double x, int decimals, double* nearest) noexcept:
    """Write the integer ``round`` would round ``x * 10**decimals`` to into ``nearest``; False
    (nothing written) when that is not sure (near a tie, huge, not finite, ``decimals`` outside 0-22)."""
    cdef double y, r
    if not 0 <= decimals <= 22:
        return False
    y = x * _EXACT_POW10[decimals]
    if not fabs(y) < _EXACT_BELOW:
        return False
    r = rint(y)  # keeps the sign of a negative x that rounds to zero, as Python does
    if 0.5 - fabs(y - r) > fabs(y) * _EXACT_PRODUCT_ERROR:
        nearest[0] = r
        return True
    return False


cdef inline double exact_round(double x, int decimals) except? -1.0:
    """``round(x, decimals)``, the same double."""
    cdef double nearest
    if _exact_scaled(x, decimals, &nearest):
        return nearest / _EXACT_POW10[decimals]
    return round(x, decimals)


cdef str exact_fixed(double x, int decimals, bint grouped):
    """``format(x, ",.{decimals}f")`` when ``grouped``, else ``format(x, ".{decimals}f")``."""
    cdef double nearest
    cdef char[64] text
    cdef int at = 64, digits = 0, i
    cdef unsigned long long whole
    if not _exact_scaled(x, decimals, &nearest):
        return format(x, f"{',' if grouped else ''}.{decimals}f")
    whole = <unsigned long long>fabs(nearest)
    for i in range(decimals):
        at -= 1
        text[at] = c"0" + <char>(whole % 10)
        whole //= 10
    if decimals:
        at -= 1
        text[at] = c"."
    while True:
        if grouped and digits and digits % 3 == 0:
            at -= 1
            text[at] = c","
        at -= 1
        text[at] = c"0" + <char>(whole % 10)
        whole //= 10
        digits += 1
        if whole == 0:
            break
    if signbit(x):  # "-0.00" for a negative number that rounds to zero, as Python writes it
        at -= 1
        text[at] = c"-"
    return text[at:64].decode("ascii")
