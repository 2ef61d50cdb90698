# cython: language_level=3, boundscheck=True, wraparound=False
"""Hot path of the ENS registry (:mod:`vigie.operators.ens_link`): the compact summary written
when an ENS is registered, and the frozen records built for every declaration linked to one.

It must stay equal to the Python semantics: :func:`summary_json` gives the bytes orjson writes
for ``EnsSummary.of(ens).to_list()``, :func:`summary_from_json` the record ``EnsSummary.from_list``
builds from what ``orjson.loads`` reads (both through ``_json.pxi``, which writes and reads such
JSON without orjson's allocations), and :func:`frozen` the instance the dataclass's own
``__init__`` builds from the same values.
"""

import dataclasses
from datetime import UTC, datetime

import orjson

from cpython.datetime cimport (
    PyDateTime_CheckExact, datetime_day, datetime_hour, datetime_microsecond, datetime_minute, datetime_month,
    datetime_second, datetime_tzinfo, datetime_year, import_datetime,
)
from cpython.object cimport PyObject_GenericSetAttr
from cpython.unicode cimport PyUnicode_DecodeASCII

include "_json.pxi"
include "_fields.pxi"

import_datetime()

cdef dict _FIELDS = {}  # frozen dataclass -> its field names, in __init__ order
cdef object _new = object.__new__  # bound once: ``object.__new__(cls)`` written out looks the method up per call


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
    record = _new(cls)
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


cdef object _frozen(cls, values):
    """:func:`frozen` of the list or tuple ``values``, without a call's argument packing."""
    cdef tuple names = _FIELDS.get(cls)
    cdef Py_ssize_t i, n = len(values)
    if names is None:
        names = _FIELDS[cls] = _init_fields(cls)
    if n != len(names):
        raise TypeError(f"{cls.__name__} takes {len(names)} values, {n} given")
    record = _new(cls)
    for i in range(n):
        PyObject_GenericSetAttr(record, names[i], values[i])
    return record


def frozen_rows(cls, rows) -> tuple:
    """``tuple(cls(*row) for row in rows)``, each built by :func:`frozen`."""
    return tuple([_frozen(cls, row) for row in rows])


def summary_from_json(bytes summary, cls, item_cls):
    """``cls.from_list(orjson.loads(summary))`` for :class:`~vigie.operators.ens_link.EnsSummary` ``cls``
    and its item class ``item_cls``: the same record, read without orjson's allocations (``_json.pxi``).

    >>> from vigie.schemas.generator import GeneratorConfig, generate
    >>> from vigie.schemas import EntrySummaryDeclaration
    >>> from vigie.operators.ens_link import EnsItemSummary, EnsSummary, vague_description
    >>> stream = generate(GeneratorConfig(duration_hours=1))
    >>> blobs = [summary_json(e, vague_description) for e, _ in stream if isinstance(e, EntrySummaryDeclaration)]
    >>> all(summary_from_json(b, EnsSummary, EnsItemSummary) == EnsSummary.from_list(orjson.loads(b)) for b in blobs)
    True
    >>> name = 'Say "hi" ' + chr(92) + " co"  # a quote and a backslash: escaped, so read by orjson
    >>> odd = orjson.dumps(["R", "e", "2026-03-02T00:00:00+00:00", "FR", name, None, [], [[1, "x", 1e-07, 2, True]]])
    >>> summary_from_json(odd, EnsSummary, EnsItemSummary) == EnsSummary.from_list(orjson.loads(odd))
    True
    """
    data = _json_loads(summary)
    if type(data) is not list or len(data) != 8:
        return cls.from_list(data)  # whatever it raises
    ref, event_id, filed, country, name, consignee, routing, items = data
    item_summaries = tuple([_frozen(item_cls, row) for row in items])
    return _frozen(cls, (ref, event_id, datetime.fromisoformat(filed), country, name, consignee, tuple(routing),
                         item_summaries))


cdef inline int _digits(char* text, int at, int value, int width) noexcept:
    """Write ``value`` (0 <= value < 10**width) as ``width`` digits, zero-padded, at ``text[at]``; returns the end."""
    cdef int i
    for i in range(width - 1, -1, -1):
        text[at + i] = c"0" + <char>(value % 10)
        value //= 10
    return at + width


cdef str _isoformat(when):
    """``when.isoformat()``; written here for a datetime in UTC (``+00:00``), the common case
    (``%04d-%02d-%02dT%02d:%02d:%02d[.%06d]+00:00``, the digits written without snprintf's parsing)."""
    cdef char text[40]
    cdef int n, microsecond
    if not PyDateTime_CheckExact(when) or datetime_tzinfo(when) is not UTC:
        return when.isoformat()
    n = _digits(text, 0, datetime_year(when), 4)  # 1 to 9999: always 4 digits
    text[n] = c"-"
    n = _digits(text, n + 1, datetime_month(when), 2)
    text[n] = c"-"
    n = _digits(text, n + 1, datetime_day(when), 2)
    text[n] = c"T"
    n = _digits(text, n + 1, datetime_hour(when), 2)
    text[n] = c":"
    n = _digits(text, n + 1, datetime_minute(when), 2)
    text[n] = c":"
    n = _digits(text, n + 1, datetime_second(when), 2)
    microsecond = datetime_microsecond(when)
    if microsecond:
        text[n] = c"."
        n = _digits(text, n + 1, microsecond, 6)
    memcpy(text + n, b"+00:00", 6)
    n += 6
    return PyUnicode_DecodeASCII(text, n, NULL)


def summary_json(ens, vague) -> bytes:
    """``orjson.dumps(EnsSummary.of(ens).to_list())``, built straight from the ENS (the same list,
    without the objects), as an exact-size bytes object (orjson's keep an over-allocated buffer),
    written by ``_json.pxi`` (the same bytes). ``vague``: the description check,
    :func:`~vigie.operators.ens_link.vague_description`.

    >>> from vigie.schemas.generator import GeneratorConfig, generate
    >>> from vigie.schemas import EntrySummaryDeclaration
    >>> from vigie.operators.ens_link import EnsSummary, vague_description
    >>> stream = generate(GeneratorConfig(duration_hours=1))
    >>> ens = [e for e, _ in stream if isinstance(e, EntrySummaryDeclaration)]
    >>> all(summary_json(e, vague_description) == orjson.dumps(EnsSummary.of(e).to_list()) for e in ens)
    True
    """
    cdef JsonBuffer out
    consignor = ens.consignor
    _json_open(&out)
    try:  # written as it is read, without the list: the common case
        if _summary_write(&out, _fields(ens), _fields(consignor), vague):
            return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        _json_close(&out)
    items = [
        [it.item_number, it.hs_code, it.gross_mass_kg, it.packages, vague(it.description)] for it in ens.goods_items
    ]
    row = [
        ens.ens_reference, ens.event_id, _isoformat(ens.event_time), consignor.country, consignor.name,
        ens.consignee.eori, list(ens.countries_of_routing), items,
    ]
    return _json_dumps(row, 0)


cdef bint _summary_write(JsonBuffer* out, dict ens, dict consignor, vague) except -1:
    """Write :func:`summary_json`'s list straight from the ENS, given by the field values of it and of its
    consignor (``_fields.pxi``); False when ``_json.pxi`` is not sure of a value."""
    cdef dict item
    _json_put(out, "[", 1)
    for value in (ens["ens_reference"], ens["event_id"], _isoformat(ens["event_time"]), consignor["country"],
                  consignor["name"], _fields(ens["consignee"])["eori"], ens["countries_of_routing"]):
        if not _json_write(out, value, 1):
            return False
        _json_put(out, ",", 1)
    _json_put(out, "[", 1)
    first = True
    for it in ens["goods_items"]:
        if not first:
            _json_put(out, ",", 1)
        first = False
        item = _fields(it)
        _json_put(out, "[", 1)
        for value in (item["item_number"], item["hs_code"], item["gross_mass_kg"], item["packages"]):
            if not _json_write(out, value, 2):
                return False
            _json_put(out, ",", 1)
        if not _json_write(out, vague(item["description"]), 2):
            return False
        _json_put(out, "]", 1)
    _json_put(out, "]]", 2)
    return True
