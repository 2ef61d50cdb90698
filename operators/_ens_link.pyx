# cython: language_level=3, boundscheck=True, wraparound=False
"""Hot path of the ENS registry (:mod:`vigie.operators.ens_link`): the compact summary written
when an ENS is registered, and the frozen records built for every declaration linked to one.

It must stay equal to the Python semantics: :func:`summary_json` gives the bytes orjson writes
for ``EnsSummary.of(ens).to_list()``, and :func:`frozen` the instance the dataclass's own
``__init__`` builds from the same values.
"""

import dataclasses
from datetime import UTC

import orjson

from cpython.datetime cimport (
    PyDateTime_CheckExact, datetime_day, datetime_hour, datetime_microsecond, datetime_minute, datetime_month,
    datetime_second, datetime_tzinfo, datetime_year, import_datetime,
)
from cpython.object cimport PyObject_GenericSetAttr
from libc.stdio cimport snprintf

import_datetime()

cdef dict _FIELDS = {}  # frozen dataclass -> its field names, in __init__ order


def frozen(cls, *values):
    """``cls(*values)`` for a frozen dataclass whose ``__init__`` only sets its fields: that
    ``__init__`` sets each with ``object.__setattr__`` (the frozen class forbids plain
    assignment), which this does from C, without the Python call per field."""
    cdef tuple names = _FIELDS.get(cls)
    cdef Py_ssize_t i
    if names is None:
        names = _FIELDS[cls] = _init_fields(cls)
    if len(values) != len(names):
        raise TypeError(f"{cls.__name__} takes {len(names)} values, {len(values)} given")
    record = object.__new__(cls)
    for i in range(len(names)):
        PyObject_GenericSetAttr(record, names[i], values[i])
    return record


cdef tuple _init_fields(cls):
    """The field names ``cls.__init__`` sets, after checking that it does nothing else."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen dataclass whose __init__ only sets its fields")
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        raise TypeError(f"{cls.__name__} has fields its __init__ does not set")
    return tuple(f.name for f in fields)


def frozen_rows(cls, rows) -> tuple:
    """``tuple(cls(*row) for row in rows)``, each built by :func:`frozen`."""
    return tuple([frozen(cls, *row) for row in rows])


cdef str _isoformat(when):
    """``when.isoformat()``; written here for a datetime in UTC (``+00:00``), the common case."""
    cdef char text[40]
    cdef int n, microsecond
    if not PyDateTime_CheckExact(when) or datetime_tzinfo(when) is not UTC:
        return when.isoformat()
    microsecond = datetime_microsecond(when)
    if microsecond:
        n = snprintf(
            text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02d.%06d+00:00", datetime_year(when),
            datetime_month(when), datetime_day(when), datetime_hour(when), datetime_minute(when),
            datetime_second(when), microsecond,
        )
    else:
        n = snprintf(
            text, sizeof(text), "%04d-%02d-%02dT%02d:%02d:%02d+00:00", datetime_year(when), datetime_month(when),
            datetime_day(when), datetime_hour(when), datetime_minute(when), datetime_second(when),
        )
    return text[:n].decode("ascii")


def summary_json(ens, vague) -> bytes:
    """``orjson.dumps(EnsSummary.of(ens).to_list())``, built straight from the ENS (the same list,
    without the objects), as an exact-size bytes object (orjson's keep an over-allocated buffer).
    ``vague``: the description check, :func:`~vigie.operators.ens_link.vague_description`."""
    consignor = ens.consignor
    items = [
        [it.item_number, it.hs_code, it.gross_mass_kg, it.packages, vague(it.description)] for it in ens.goods_items
    ]
    row = [
        ens.ens_reference, ens.event_id, _isoformat(ens.event_time), consignor.country, consignor.name,
        ens.consignee.eori, list(ens.countries_of_routing), items,
    ]
    return bytes(memoryview(orjson.dumps(row)))
