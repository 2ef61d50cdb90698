# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Records encoded straight into ClickHouse ``Native`` blocks, one per table, as they are written.

The sinks used to keep one Python list per column and convert whole lists at each flush
(Arrow for chdb). Here each value is encoded into its column's byte buffer the moment the
record is written: a ``Native`` block is ClickHouse's own columnar layout, so a flush only
concatenates the buffers, and ClickHouse reads it with no conversion but ``String`` into
``LowCardinality`` (``input_format_native_allow_types_conversion``, on by default).

What each column kind holds (little-endian, as ClickHouse): strings, JSON text and bytes as a
LEB128 length then the bytes; integers in their column's width; floats as ``Float64``;
booleans as ``UInt8``; datetimes as ticks since 1970-01-01 UTC (milliseconds in an ``Int64``
for ``DateTime64(3)``, seconds in a ``UInt32`` for ``DateTime``: finer digits are dropped,
rounding down, as the Arrow path truncated them), any UTC offset applied and a naive datetime
taken as UTC; ``Nullable`` columns a null map before the values (a default value stands in
for each NULL); arrays and maps their end offsets (``UInt64``) before their elements, a map's
keys before its values.

Writes are all or nothing across every table: :meth:`NativeBlocks.mark` remembers where each
buffer ends and :meth:`NativeBlocks.rollback` goes back there.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.datetime cimport PyDateTime_Check, import_datetime
from cpython.dict cimport PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_AsLongLong, PyLong_AsUnsignedLongLong
from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

import sys

import orjson

include "../operators/_datetimes.pxi"
include "../operators/_fields.pxi"

import_datetime()

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL
    double PyFloat_AsDouble(object value) except? -1.0

cdef enum:  # column kinds
    C_STRING = 0
    C_BYTES = 1
    C_INT = 2
    C_FLOAT = 3
    C_BOOL = 4
    C_DATETIME = 5
    C_JSON = 6
    C_ARRAY = 7
    C_MAP = 8

# The same codes for Python: what NativeBlocks' column specs name.
K_STRING = C_STRING
K_BYTES = C_BYTES
K_INT = C_INT
K_FLOAT = C_FLOAT
K_BOOL = C_BOOL
K_DATETIME = C_DATETIME
K_JSON = C_JSON
K_ARRAY = C_ARRAY
K_MAP = C_MAP

# A buffer above 16 MiB is freed when emptied if it was less than a quarter full: what a huge
# dead letter left behind goes, while a column that fills tens of MiB every batch (the scores'
# reasons at 200,000 rows) keeps its memory instead of growing it again, copy after copy, and
# faulting fresh pages in at every flush.
cdef Py_ssize_t _SHRINK_ABOVE = 16 << 20
cdef object _DUMPS = orjson.dumps
cdef object _intern = sys.intern
cdef object _SORT_KEYS = orjson.OPT_SORT_KEYS
# JSON documents per orjson call: one call per document costs several times the encoding, one
# call for 100,000 documents returns tens of MiB, memory that glibc maps afresh (above its 32 MiB
# mmap threshold) and the kernel faults in page by page at every flush.
cdef Py_ssize_t _DOCUMENTS_PER_CALL = 4096


cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap
    Py_ssize_t mark


cdef int _grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    if cap < b.n + extra:
        cap = b.n + extra
    if cap < 256:
        cap = 256
    cdef char* p = <char*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const void* src, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        _grow(b, n)
    memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int _zeros(Buf* b, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        _grow(b, n)
    memset(b.p + b.n, 0, n)
    b.n += n
    return 0


cdef inline int _byte(Buf* b, uint8_t value) except -1:
    if b.n + 1 > b.cap:
        _grow(b, 1)
    b.p[b.n] = <char>value
    b.n += 1
    return 0


cdef inline int _varint(Buf* b, uint64_t value) except -1:
    if b.n + 10 > b.cap:
        _grow(b, 10)
    while value >= 0x80:
        b.p[b.n] = <char>((value & 0x7F) | 0x80)
        b.n += 1
        value >>= 7
    b.p[b.n] = <char>value
    b.n += 1
    return 0


cdef inline char* _copy(Buf* b, char* out) noexcept:
    if b.n:
        memcpy(out, b.p, b.n)
    return out + b.n


cdef inline void _empty(Buf* b) noexcept:
    if b.cap > _SHRINK_ABOVE and b.n < b.cap // 4:
        PyMem_Free(b.p)
        b.p = NULL
        b.cap = 0
    b.n = 0
    b.mark = 0


# The bytes that change the scanner's state: inside a string only its end and escapes,
# outside one the quotes and brackets. A table look-up per byte skips the rest (keys, digits).
cdef bint _IN_STRING_STOP[256]
cdef bint _OUTSIDE_STOP[256]
memset(_IN_STRING_STOP, 0, sizeof(_IN_STRING_STOP))
memset(_OUTSIDE_STOP, 0, sizeof(_OUTSIDE_STOP))
_IN_STRING_STOP[<unsigned char>b'"'] = True
_IN_STRING_STOP[<unsigned char>b'\\'] = True
_OUTSIDE_STOP[<unsigned char>b'"'] = True
_OUTSIDE_STOP[<unsigned char>b'{'] = True
_OUTSIDE_STOP[<unsigned char>b'}'] = True
_OUTSIDE_STOP[<unsigned char>b'['] = True
_OUTSIDE_STOP[<unsigned char>b']'] = True


cdef Py_ssize_t _document_end(const char* text, Py_ssize_t i, Py_ssize_t n) except -1:
    """Where the JSON value starting at ``text[i]`` ends (exclusive): an object, or ``null``."""
    cdef int depth = 0
    cdef char c
    if text[i] == b'n':
        return i + 4
    while i < n:
        while i < n and not _OUTSIDE_STOP[<unsigned char>text[i]]:
            i += 1
        if i == n:
            break
        c = text[i]
        if c == b'"':
            i += 1
            while i < n:
                while i < n and not _IN_STRING_STOP[<unsigned char>text[i]]:
                    i += 1
                if i < n and text[i] == b'\\':
                    i += 2  # the escaped character cannot end the string
                    continue
                break  # the closing quote (or the end of the text)
        elif c == b'{' or c == b'[':
            depth += 1
        else:  # '}' or ']'
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unterminated JSON document")


cdef inline int _text(Buf* b, const char* data, Py_ssize_t size) except -1:
    _varint(b, <uint64_t>size)
    return _put(b, data, size)


cdef inline int _string(Buf* b, object value) except -1:
    cdef Py_ssize_t size
    cdef const char* data
    if not isinstance(value, str):
        raise TypeError(f"expected str, got {type(value).__name__}")
    data = PyUnicode_AsUTF8AndSize(value, &size)
    return _text(b, data, size)


cdef inline int _float(Buf* b, object value) except -1:
    cdef double x
    if type(value) is float:
        x = PyFloat_AS_DOUBLE(value)
    elif isinstance(value, (int, float)):
        x = PyFloat_AsDouble(value)
    else:
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return _put(b, &x, 8)


cdef inline int _int(Buf* b, object value, int width, bint signed) except -1:
    cdef int64_t s
    cdef uint64_t u
    cdef uint8_t u8
    cdef uint16_t u16
    cdef uint32_t u32
    if not isinstance(value, int):
        raise TypeError(f"expected int, got {type(value).__name__}")
    if signed:  # only Int64 is signed here
        s = PyLong_AsLongLong(value)
        return _put(b, &s, 8)
    if value < 0:
        raise OverflowError(f"{value} is negative, the column is unsigned")
    u = PyLong_AsUnsignedLongLong(value)
    if width == 8:
        return _put(b, &u, 8)
    if u >> (8 * width):
        raise OverflowError(f"{value} does not fit in {8 * width} bits")
    if width == 1:
        u8 = <uint8_t>u
        return _put(b, &u8, 1)
    if width == 2:
        u16 = <uint16_t>u
        return _put(b, &u16, 2)
    u32 = <uint32_t>u
    return _put(b, &u32, 4)


cdef inline int64_t _epoch_microseconds(object value) except? -1:
    """Microseconds from 1970-01-01 UTC to ``value`` (a naive datetime is taken as UTC)."""
    cdef long long micros
    if not PyDateTime_Check(value):
        raise TypeError(f"expected datetime, got {type(value).__name__}")
    if not _utc_microseconds(value, &micros):
        micros = _wall_microseconds(value)  # naive, or a zone without an offset: UTC, as pyarrow took it
    return micros


cdef class _Column:
    """One column's buffers and how a value is encoded into them."""

    cdef readonly str name
    cdef int kind
    cdef int element
    cdef bint nullable
    cdef int width
    cdef bint signed
    cdef int64_t tick  # datetimes: microseconds per stored tick
    cdef bytes header  # the column's name and type, Native-encoded
    cdef object key
    cdef object nested  # the nested model holding the value, or None
    cdef bint inherited
    cdef Buf data
    cdef Buf nulls
    cdef Buf offsets
    cdef Buf values  # a map's Float64 values
    cdef uint64_t items  # array or map elements so far: the last offset
    cdef uint64_t items_mark
    cdef list documents  # JSON columns: each row's dict (None for NULL), encoded at flush
    cdef Py_ssize_t documents_mark

    def __init__(self, str name, str type_name, int kind, int element, bint nullable, int width, bint signed,
                 path: tuple, bint inherited) -> None:
        cdef Buf header
        self.name = name
        self.kind = kind
        self.element = element
        self.nullable = nullable
        self.width = width
        self.signed = signed
        self.tick = 1000 if width == 8 else 1000000
        self.inherited = inherited
        self.documents = []
        self.documents_mark = 0
        # Interned: put_row finds a record's own fields by the identity of its dict's keys.
        if len(path) == 1:
            self.nested, self.key = None, _intern(path[0])
        else:
            self.nested, self.key = _intern(path[0]), _intern(path[1])
        header.p, header.n, header.cap = NULL, 0, 0
        try:
            _string(&header, name)
            _string(&header, type_name)
            self.header = PyBytes_FromStringAndSize(header.p, header.n)
        finally:
            PyMem_Free(header.p)

    def __dealloc__(self) -> None:
        PyMem_Free(self.data.p)
        PyMem_Free(self.nulls.p)
        PyMem_Free(self.offsets.p)
        PyMem_Free(self.values.p)

    cdef int put(self, object value) except -1:
        if self.kind == C_JSON:
            # Encoded at flush, the column's dicts in orjson calls of _DOCUMENTS_PER_CALL: a call
            # per dict costs several times the encoding itself (bench/sink.py).
            if value is None and not self.nullable:
                raise ValueError("missing value, the column is not Nullable")
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"expected a dict, got {type(value).__name__}")
            if self.nullable:
                _byte(&self.nulls, value is None)
            self.documents.append(value)
            return 0
        if self.nullable:
            if value is None:
                _byte(&self.nulls, 1)
                return self._default()
            _byte(&self.nulls, 0)
        elif value is None:
            raise ValueError("missing value, the column is not Nullable")
        return self._value(value)

    cdef int _default(self) except -1:
        """The value that stands in for a NULL."""
        cdef int kind = self.kind
        if kind == C_STRING or kind == C_BYTES:
            return _byte(&self.data, 0)
        if kind == C_FLOAT:
            return _zeros(&self.data, 8)
        if kind == C_BOOL:
            return _zeros(&self.data, 1)
        if kind == C_INT:
            return _zeros(&self.data, 8 if self.signed else self.width)
        if kind == C_DATETIME:
            return _zeros(&self.data, self.width)
        return _put(&self.offsets, &self.items, 8)  # an empty array or map

    cdef int _value(self, object value) except -1:
        cdef int kind = self.kind
        cdef Py_ssize_t size
        cdef int64_t ticks
        cdef uint32_t seconds
        cdef uint8_t flag
        if kind == C_STRING:
            return _string(&self.data, value)
        if kind == C_FLOAT:
            return _float(&self.data, value)
        if kind == C_DATETIME:
            ticks = _epoch_microseconds(value) // self.tick
            if self.width == 8:
                return _put(&self.data, &ticks, 8)
            if ticks < 0 or ticks > 0xFFFFFFFF:
                raise OverflowError(f"{value} is outside DateTime's range (1970-2106)")
            seconds = <uint32_t>ticks
            return _put(&self.data, &seconds, 4)
        if kind == C_INT:
            return _int(&self.data, value, self.width, self.signed)
        if kind == C_BOOL:
            if value is True:
                flag = 1
            elif value is False:
                flag = 0
            else:
                raise TypeError(f"expected bool, got {type(value).__name__}")
            return _put(&self.data, &flag, 1)
        if kind == C_BYTES:
            if not isinstance(value, bytes):
                value = bytes(value)
            return _text(&self.data, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))
        if kind == C_ARRAY:
            return self._array(value)
        return self._map(value)

    cdef int _array(self, object value) except -1:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        cdef int element = self.element
        for x in value:
            if element == C_STRING:
                _string(&self.data, x)
            elif element == C_FLOAT:
                _float(&self.data, x)
            elif element == C_INT:
                _int(&self.data, x, 8, True)
            else:
                raise TypeError(f"arrays of kind {element} are not supported")
        self.items += len(value)
        return _put(&self.offsets, &self.items, 8)

    cdef int _map(self, object value) except -1:
        cdef Py_ssize_t pos = 0
        cdef PyObject* k
        cdef PyObject* v
        if not isinstance(value, dict):
            raise TypeError(f"expected a dict, got {type(value).__name__}")
        while PyDict_Next(value, &pos, &k, &v):
            _string(&self.data, <object>k)
            _float(&self.values, <object>v)
        self.items += len(value)
        return _put(&self.offsets, &self.items, 8)

    cdef void mark(self) noexcept:
        self.data.mark = self.data.n
        self.nulls.mark = self.nulls.n
        self.offsets.mark = self.offsets.n
        self.values.mark = self.values.n
        self.items_mark = self.items
        self.documents_mark = len(self.documents)

    cdef void rollback(self) noexcept:
        self.data.n = self.data.mark
        self.nulls.n = self.nulls.mark
        self.offsets.n = self.offsets.mark
        self.values.n = self.values.mark
        self.items = self.items_mark
        del self.documents[self.documents_mark:]

    cdef int encode_documents(self) except -1:
        """Encode the buffered dicts into :attr:`data` (a JSON column's rows, each a String)."""
        cdef Py_ssize_t start, end, i = 1, n
        cdef const char* text
        cdef Py_ssize_t first
        cdef list documents = self.documents
        self.data.n = 0  # a JSON column's data is its documents' text, rebuilt whole each time
        for first in range(0, len(documents), _DOCUMENTS_PER_CALL):
            part = documents[first : first + _DOCUMENTS_PER_CALL]
            joined = _DUMPS(part, option=_SORT_KEYS)
            text = PyBytes_AS_STRING(joined)
            n = PyBytes_GET_SIZE(joined)
            i = 1
            for value in part:
                start = i
                end = _document_end(text, i, n)
                if value is None:
                    _byte(&self.data, 0)
                else:
                    _text(&self.data, text + start, end - start)
                i = end + 1  # past the ',' (or the final ']')
            if i != n:
                raise ValueError(f"{self.name}: cannot split the JSON array orjson returned")
        return 0

    cdef Py_ssize_t size(self) noexcept:
        return PyBytes_GET_SIZE(self.header) + self.nulls.n + self.offsets.n + self.data.n + self.values.n

    cdef char* copy_into(self, char* out) noexcept:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.header)
        memcpy(out, PyBytes_AS_STRING(self.header), n)
        out += n
        # Nullable: the null map, then the values; arrays and maps: offsets, then elements.
        out = _copy(&self.nulls, out)
        out = _copy(&self.offsets, out)
        out = _copy(&self.data, out)
        return _copy(&self.values, out)

    cdef void clear(self) noexcept:
        _empty(&self.data)
        _empty(&self.nulls)
        _empty(&self.offsets)
        _empty(&self.values)
        self.documents.clear()
        self.documents_mark = 0
        self.items = 0
        self.items_mark = 0


cdef class _Table:
    """One table's columns and row count."""

    cdef readonly str name
    cdef list columns
    cdef readonly Py_ssize_t rows
    cdef Py_ssize_t rows_mark

    def __init__(self, str name, list columns) -> None:
        self.name = name
        self.columns = columns
        self.rows = 0
        self.rows_mark = 0

    cdef int put_row(self, dict fields, dict parent) except -1:
        cdef _Column col
        cdef dict source
        cdef Py_ssize_t i = 0, pos = 0
        cdef PyObject* key
        cdef PyObject* found
        cdef bint walking = True
        try:
            for i in range(len(self.columns)):
                col = <_Column>self.columns[i]
                if col.inherited:
                    value = parent[col.key]
                elif col.nested is None:
                    # A model's dict holds its fields in declaration order, the columns' order (some
                    # fields are not columns): walk it instead of hashing every name. Keys are
                    # matched by identity (field names are interned); the first miss ends the walk.
                    found = NULL
                    if walking:
                        while PyDict_Next(fields, &pos, &key, &found):
                            if key == <PyObject*>col.key:
                                break
                            found = NULL
                        walking = found != NULL
                    value = <object>found if found != NULL else fields[col.key]
                else:
                    nested = fields[col.nested]
                    value = None if nested is None else _fields(nested)[col.key]
                col.put(value)
        except KeyError as exc:
            raise KeyError(f"{self.name}.{(<_Column>self.columns[i]).name}: the record has no {exc}") from None
        except Exception as exc:
            raise ValueError(f"{self.name}.{(<_Column>self.columns[i]).name}: {exc}") from exc
        self.rows += 1
        return 0

    cdef void mark(self) noexcept:
        cdef _Column col
        self.rows_mark = self.rows
        for col in self.columns:
            col.mark()

    cdef void rollback(self) noexcept:
        cdef _Column col
        self.rows = self.rows_mark
        for col in self.columns:
            col.rollback()

    cdef bytes block(self):
        cdef Buf head
        cdef _Column col
        cdef Py_ssize_t size
        cdef char* out
        for col in self.columns:
            if col.kind == C_JSON:
                col.encode_documents()
        head.p, head.n, head.cap = NULL, 0, 0
        try:
            _varint(&head, <uint64_t>len(self.columns))
            _varint(&head, <uint64_t>self.rows)
            size = head.n
            for col in self.columns:
                size += col.size()
            block = PyBytes_FromStringAndSize(NULL, size)
            out = PyBytes_AS_STRING(block)
            memcpy(out, head.p, head.n)
            out += head.n
            for col in self.columns:
                out = col.copy_into(out)
            return block
        finally:
            PyMem_Free(head.p)

    cdef void clear(self) noexcept:
        cdef _Column col
        self.rows = 0
        self.rows_mark = 0
        for col in self.columns:
            col.clear()


cdef class _Root:
    """A stored model: its table and the item tables filled from its list fields."""

    cdef _Table table
    cdef list children  # of (item table, the model's list field)

    def __init__(self, _Table table, list children) -> None:
        self.table = table
        self.children = children


cdef class NativeBlocks:
    """Buffered rows of every table as ClickHouse ``Native`` columns.

    ``tables`` maps each table name to its column specs, in insert order:
    ``(name, native type, kind, element kind, nullable, width in bytes, signed, path, inherited)``
    (see :func:`vigie.sinks.native_blocks.native_blocks`, which derives them from the models);
    ``roots`` maps each stored model to its table and its item tables with the list field
    that holds their models. ``serialization_flags``: each column header ends with a zero
    byte ("no custom serialization"), as the native protocol wants from servers of revision
    54454 on (ClickHouse 21.12+); the ``Native`` format and older servers have no such byte.

    >>> blocks = NativeBlocks({"t": [("n", "UInt16", K_INT, -1, False, 2, False, ("n",), False)]}, {})
    >>> blocks.rows("t"), len(blocks.batch("t"))
    (0, 11)
    """

    cdef dict _tables
    cdef dict _roots

    def __init__(self, dict tables, dict roots, bint serialization_flags=False) -> None:
        cdef _Column col
        self._tables = {
            name: _Table(name, [_Column(*spec) for spec in specs]) for name, specs in tables.items()
        }
        if serialization_flags:
            for table in self._tables.values():
                for col in (<_Table>table).columns:
                    col.header += b"\x00"
        self._roots = {
            model: _Root(self._tables[table], [(self._tables[child], via) for child, via in children])
            for model, (table, children) in roots.items()
        }

    cpdef int write(self, record) except -1:
        """Encode ``record``'s rows (its table's and its items'); return how many rows.

        Raises ``TypeError`` for a model no table stores, ``KeyError`` for a field the record
        lacks and ``ValueError`` for a value that does not fit its column, each naming the table
        and column; what was already encoded stays until :meth:`rollback`.
        """
        cdef _Root root
        cdef _Table table
        cdef dict fields
        cdef Py_ssize_t rows = 1
        found = self._roots.get(type(record))
        if found is None:
            raise TypeError(f"no table stores {type(record).__name__}")
        root = <_Root>found
        fields = _fields(record)
        root.table.put_row(fields, None)
        for table, via in root.children:
            for item in fields[via]:
                table.put_row(_fields(item), fields)
                rows += 1
        return rows

    def write_all(self, records) -> None:
        """:meth:`write` each of ``records``. Raises ``TypeError``: "no table stores X", or
        "cannot store this X: ..." naming the table and column that refused it."""
        for record in records:
            try:
                self.write(record)
            except (KeyError, ValueError) as exc:
                raise TypeError(f"cannot store this {type(record).__name__}: {exc!r}") from exc

    def mark(self) -> None:
        """Remember where every table ends, for :meth:`rollback`."""
        cdef _Table table
        for table in self._tables.values():
            table.mark()

    def rollback(self) -> None:
        """Drop every row written since the last :meth:`mark`."""
        cdef _Table table
        for table in self._tables.values():
            table.rollback()

    def rows(self, str table) -> int:
        """Rows buffered for ``table``."""
        return (<_Table>self._tables[table]).rows

    def batch(self, str table) -> bytes:
        """``table``'s buffered rows as one ``Native`` block (left buffered until :meth:`clear`)."""
        return (<_Table>self._tables[table]).block()

    def clear(self, str table) -> None:
        """Forget ``table``'s buffered rows."""
        (<_Table>self._tables[table]).clear()
