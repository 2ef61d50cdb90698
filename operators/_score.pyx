"""Hot path of :meth:`vigie.operators.base.Operator.risk_score`: the score id and the score object.

Every detector builds several scores per event, so the two costs of a score that do not
depend on the detector are done here in C:

* :func:`score_id` is ``str(uuid.uuid5(namespace, "detector/subject/item"))``: a copy of a SHA-1
  already fed the namespace, fed the name, then the version and variant bits and the hex text
  in C (building ``UUID`` objects, or slicing the hex digest in Python, costs more than the hash);
  :func:`uuid5_text` is the same for any namespace and name (alert ids use it);
* :func:`build_score` is what ``RiskScore.model_construct`` does for a score whose values are
  already right, without its per-field loop.

Both must give exactly what the Python they replace gives: the same id text, and a model
equal field by field (value and type) to a validated score. ``tests/test_operator_contract.py``
checks the ids against ``uuid.uuid5`` and the scores against validation.
"""

from libc.stdint cimport uint8_t
from libc.string cimport memcpy

from cpython.datetime cimport PyDateTime_CheckExact, import_datetime
from cpython.object cimport PyObject_GenericSetAttr
from cpython.unicode cimport PyUnicode_DecodeASCII

include "_datetimes.pxi"

import_datetime()

import hashlib
import uuid
from datetime import UTC

from vigie.schemas import RiskScore

SCORE_NAMESPACE = uuid.UUID("6f1c1d0e-5b0a-4e55-9d7c-0b7e3a9c2f10")
"""The uuid5 namespace of score ids (changing it changes every id, so every sink's key)."""

cdef bytes _NAMESPACE = SCORE_NAMESPACE.bytes
cdef frozenset _FIELDS = frozenset(RiskScore.model_fields)
cdef object _new = object.__new__
cdef const char* _HEX = b"0123456789abcdef"
cdef object _sha1 = hashlib.sha1


cpdef object epoch_seconds(when):
    """``when.timestamp()`` for an aware ``datetime``: the same float, from its fields in C (CPython
    builds two ``timedelta`` objects and divides Python ints; every event time is read so).

    The instant in whole microseconds, ``when``'s wall clock minus its UTC offset, is exact; below
    2**53 microseconds (years 1685-2255), dividing it by 10**6 as doubles is the correctly rounded
    quotient CPython computes. Anything else (naive, a subclass, out of that range) is ``when.timestamp()``.

    >>> from datetime import datetime, timedelta, timezone
    >>> zones = [UTC, timezone(timedelta(hours=-5, minutes=-30)), timezone(timedelta(seconds=1, microseconds=7))]
    >>> times = [datetime(2026, 3, 2, 13, 45, 7, 123456, tzinfo=zone) for zone in zones]
    >>> times += [datetime(1970, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)]
    >>> times += [datetime(2255, 6, 5, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC), datetime(2026, 3, 2)]
    >>> all(epoch_seconds(t) == t.timestamp() for t in times)
    True
    """
    cdef long long micros
    if not PyDateTime_CheckExact(when) or not _utc_microseconds(when, &micros):
        return when.timestamp()  # a subclass; naive (local time, the C library's business)
    if not -_EXACT_MICROSECONDS < micros < _EXACT_MICROSECONDS:
        return when.timestamp()
    return <double> micros / 1e6


cdef dict _PRIMED = {}
"""Namespace bytes -> a SHA-1 already fed them: copying it costs less than a new hash (OpenSSL
looks the algorithm up by name on every ``hashlib.sha1()``) and the namespace is hashed once."""
cdef int _PRIMED_MAX = 64  # ids use two namespaces; a caller inventing more must not grow this for ever


cdef object _primed(bytes namespace):
    primed = _PRIMED.get(namespace)
    if primed is None:
        primed = _sha1(namespace)
        if len(_PRIMED) < _PRIMED_MAX:
            _PRIMED[namespace] = primed
    return primed


cdef object _SCORE_SHA1 = _primed(_NAMESPACE)  # score ids skip even the look-up


cdef str _uuid5_text(object primed, str name):
    """``str(uuid.uuid5(UUID(bytes=namespace), name))`` given ``primed``, a SHA-1 fed the namespace's 16
    bytes: the hash of those then the name's UTF-8, its first 16 bytes with the version (5) and
    RFC 4122 variant bits set, as hex text."""
    hasher = primed.copy()
    hasher.update(name.encode())
    cdef bytes hashed = hasher.digest()
    cdef uint8_t digest[16]
    cdef char text[36]
    cdef int i, j = 0
    memcpy(digest, <char*>hashed, 16)
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    for i in range(16):
        if i == 4 or i == 6 or i == 8 or i == 10:
            text[j] = b"-"
            j += 1
        text[j] = _HEX[digest[i] >> 4]
        text[j + 1] = _HEX[digest[i] & 0x0F]
        j += 2
    return PyUnicode_DecodeASCII(text, 36, NULL)


cpdef str uuid5_text(bytes namespace, str name):
    """``str(uuid.uuid5(uuid.UUID(bytes=namespace), name))``, without building ``UUID`` objects.

    >>> namespace = uuid.UUID("0b3e8a52-1d7c-4a43-8f0e-5c2d9e6b7a14")
    >>> names = ["e1", "", "événement/2", "x" * 200]
    >>> all(uuid5_text(namespace.bytes, n) == str(uuid.uuid5(namespace, n)) for n in names)
    True
    """
    if len(namespace) != 16:
        raise ValueError(f"a uuid namespace is 16 bytes, not {len(namespace)}")
    return _uuid5_text(_primed(namespace), name)


cpdef str score_id(str detector, str subject_event_id, object item_number):
    """Deterministic id of a score: ``str(uuid.uuid5(SCORE_NAMESPACE, f"{detector}/{subject}/{item or 0}"))``.

    >>> score_id("undervaluation", "e1", 2) == str(uuid.uuid5(SCORE_NAMESPACE, "undervaluation/e1/2"))
    True
    """
    return _uuid5_text(_SCORE_SHA1, f"{detector}/{subject_event_id}/{item_number or 0}")


def build_score(
    str detector,
    str identifier,
    str subject_event_id,
    str subject_type,
    str subject_reference,
    object item_number,
    object event_time,
    str office,
    object operator_eori,
    object cn_code,
    object origin_country,
    object score,
    object eur_at_stake,
    str reason,
    object reason_fields,
):
    """A :class:`RiskScore` with id ``identifier`` holding these values as they are (no validation,
    no conversion).

    The values go into the model's ``__dict__`` in its field order, so a dump is byte-identical
    to a validated score's; every field counts as set, as after ``model_construct``.
    """
    values = {
        "event_type": "risk_score",
        "score_id": identifier,
        "detector": detector,
        "subject_event_id": subject_event_id,
        "subject_type": subject_type,
        "subject_reference": subject_reference,
        "item_number": item_number,
        "event_time": event_time,
        "office": office,
        "operator_eori": operator_eori,
        "cn_code": cn_code,
        "origin_country": origin_country,
        "score": score,
        "eur_at_stake": eur_at_stake,
        "reason": reason,
        "reason_fields": reason_fields,
    }
    built = _new(RiskScore)
    PyObject_GenericSetAttr(built, "__dict__", values)
    PyObject_GenericSetAttr(built, "__pydantic_fields_set__", set(_FIELDS))
    PyObject_GenericSetAttr(built, "__pydantic_extra__", None)
    PyObject_GenericSetAttr(built, "__pydantic_private__", None)
    return built
