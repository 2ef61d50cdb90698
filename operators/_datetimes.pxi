# Datetime arithmetic from a datetime's fields in C, shared by the hot paths that read event
# times and the sinks' encoder (``include "_datetimes.pxi"``, a textual include; the including module calls
# ``import_datetime()`` before using it). Every result is what CPython's own datetime
# arithmetic gives: whole microseconds are exact integers, and below 2**53 of them one
# division of two exact doubles is the correctly rounded quotient CPython computes.

from cpython.datetime cimport (
    datetime_day, datetime_hour, datetime_microsecond, datetime_minute, datetime_month, datetime_second,
    datetime_tzinfo, datetime_year, timedelta_days, timedelta_microseconds, timedelta_seconds,
)
from datetime import UTC as _UTC_ZONE

cdef long long _EXACT_MICROSECONDS = 1LL << 53  # whole microseconds below this are exact doubles (years 1685-2255)


cdef inline long long _days_from_civil(long long y, long long m, long long d) noexcept:
    """Days from 1970-01-01 to the proleptic Gregorian date y-m-d (H. Hinnant's algorithm; y >= 1)."""
    y -= m <= 2
    cdef long long era = y // 400
    cdef long long yoe = y - era * 400
    cdef long long doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    cdef long long doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


cdef inline long long _wall_microseconds(when) noexcept:
    """Microseconds from 1970-01-01 00:00 to ``when``'s wall-clock fields (its zone not applied)."""
    cdef long long seconds = (
        _days_from_civil(datetime_year(when), datetime_month(when), datetime_day(when)) * 86400
        + datetime_hour(when) * 3600
        + datetime_minute(when) * 60
        + datetime_second(when)
    )
    return seconds * 1000000 + datetime_microsecond(when)


cdef inline bint _utc_microseconds(when, long long* micros) except -1:
    """Set ``micros`` to the microseconds from 1970-01-01 UTC to ``when`` (its wall clock minus its
    UTC offset) and answer True; False, ``micros`` untouched, when ``when`` is naive or its zone
    gives no offset (the caller decides what such a time means)."""
    cdef long long wall
    zone = datetime_tzinfo(when)
    if zone is None:
        return False
    wall = _wall_microseconds(when)
    if zone is not _UTC_ZONE:
        offset = when.utcoffset()
        if offset is None:
            return False
        wall -= (<long long>timedelta_days(offset) * 86400 + timedelta_seconds(offset)) * 1000000
        wall -= timedelta_microseconds(offset)
    micros[0] = wall
    return True
