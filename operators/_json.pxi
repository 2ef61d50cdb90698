# orjson's output, written in C for the small JSON values the hot paths keep (an ENS summary
# when an ENS is registered, the detectors' feedback contexts of each subject that awaits its
# outcome). ``orjson.dumps`` starts every call with a 1 KiB buffer, past glibc's per-thread
# cache of small blocks: with the engine's heap large and fragmented, that allocation costs more
# than the rest of the work. ``include "_json.pxi"`` is a textual include (see _exact.pxi).
#
# ``_json_write`` writes exactly orjson's text for what it accepts: ``None``, booleans, ints of
# 64 bits (signed), floats whose ``repr`` is in fixed notation (there, orjson writes the same
# shortest round-trip digits; in exponent notation it spells them otherwise), text without
# characters orjson escapes (``"``, ``\``, control characters) or DEL, lists, tuples and dicts
# with text keys. For anything else it answers False, and the caller leaves the value to orjson:
# the bytes are the same either way.

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport PyObject
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy, memset, strchr, strlen

cdef int _JSON_MAX_DEPTH = 64  # deeper is left to orjson (which refuses 255 levels)

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object number, int* overflow) except? -1
    Py_ssize_t PySequence_Fast_GET_SIZE(object sequence)  # a list or a tuple
    PyObject* PySequence_Fast_GET_ITEM(object sequence, Py_ssize_t i)  # borrowed
    bint PyUnicode_IS_ASCII(object text)
    void* PyUnicode_DATA(object text)
    Py_ssize_t PyUnicode_GET_LENGTH(object text)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    char* PyOS_double_to_string(double value, char format_code, int precision, int flags, int* kind) except NULL
    void PyMem_Free(void* block)
    int Py_DTSF_ADD_DOT_0
    double PyFloat_AS_DOUBLE(object number)


cdef struct JsonBuffer:
    char* data  # ``local`` until it outgrows it, then on the heap
    Py_ssize_t size
    Py_ssize_t capacity
    char local[1024]  # most values fit: no allocation


cdef inline void _json_open(JsonBuffer* out) noexcept:
    out.data = out.local
    out.size = 0
    out.capacity = sizeof(out.local)


cdef inline void _json_close(JsonBuffer* out) noexcept:
    """Free what the buffer allocated (call once, whatever happened)."""
    if out.data != out.local:
        free(out.data)
    out.data = out.local


cdef int _json_grow(JsonBuffer* out, Py_ssize_t wanted) except -1:
    """Make room for ``wanted`` bytes in all."""
    cdef char* grown
    cdef Py_ssize_t capacity = out.capacity
    while capacity < wanted:
        capacity *= 2
    if out.data == out.local:
        grown = <char*> malloc(capacity)
        if grown != NULL:
            memcpy(grown, out.local, out.size)
    else:
        grown = <char*> realloc(out.data, capacity)
    if grown == NULL:
        raise MemoryError()
    out.data = grown
    out.capacity = capacity
    return 0


cdef inline int _json_put(JsonBuffer* out, const char* text, Py_ssize_t n) except -1:
    """Append ``n`` bytes of ``text`` (``NULL``: zeros)."""
    if out.size + n > out.capacity:
        _json_grow(out, out.size + n)
    if text != NULL:
        memcpy(out.data + out.size, text, n)
    else:
        memset(out.data + out.size, 0, n)
    out.size += n
    return 0


cdef int _json_integer(JsonBuffer* out, long long number) except -1:
    """Append ``number`` in decimal, as ``str(number)`` spells it (snprintf costs more than the rest)."""
    cdef char digits[24]
    cdef int i = 24
    cdef unsigned long long magnitude = <unsigned long long> number
    if number < 0:
        magnitude = 0 - magnitude  # two's complement: exact even for the most negative value
    while True:
        i -= 1
        digits[i] = <char> (48 + magnitude % 10)
        magnitude //= 10
        if magnitude == 0:
            break
    if number < 0:
        i -= 1
        digits[i] = b"-"
    return _json_put(out, digits + i, 24 - i)


cdef bint _json_float(JsonBuffer* out, double value) except -1:
    """Append ``repr(value)`` if it is in fixed notation (orjson's text there); False otherwise."""
    cdef char* text = PyOS_double_to_string(value, b"r", 0, Py_DTSF_ADD_DOT_0, NULL)
    cdef bint fixed = strchr(text, b"e") == NULL and strchr(text, b"n") == NULL  # not 1e-05, inf or nan
    try:
        if fixed:
            _json_put(out, text, strlen(text))
    finally:
        PyMem_Free(text)
    return fixed


cdef bint _json_text(JsonBuffer* out, str value) except -1:
    """Append ``value`` quoted if orjson escapes none of its characters; False otherwise."""
    cdef const unsigned char* raw
    cdef Py_ssize_t i, n
    if PyUnicode_IS_ASCII(value):
        raw = <const unsigned char*> PyUnicode_DATA(value)
        n = PyUnicode_GET_LENGTH(value)
    else:
        try:
            raw = <const unsigned char*> PyUnicode_AsUTF8AndSize(value, &n)
        except UnicodeEncodeError:  # lone surrogates: orjson refuses them
            return False
    for i in range(n):
        if raw[i] < 0x20 or raw[i] == 0x7F or raw[i] == 0x22 or raw[i] == 0x5C:
            return False
    _json_put(out, '"', 1)
    _json_put(out, <const char*> raw, n)
    _json_put(out, '"', 1)
    return True


cdef bint _json_write(JsonBuffer* out, object value, int depth) except -1:
    """Append orjson's text for ``value``; False (the buffer then holds a partial value) when it is
    not sure to write what orjson would (see the top of this file)."""
    cdef Py_ssize_t i, n
    cdef int overflow = 0
    cdef long long number
    if depth > _JSON_MAX_DEPTH:
        return False
    if value is None:
        _json_put(out, "null", 4)
    elif value is True:
        _json_put(out, "true", 4)
    elif value is False:
        _json_put(out, "false", 5)
    elif type(value) is int:
        number = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow:
            return False
        _json_integer(out, number)
    elif type(value) is float:
        return _json_float(out, PyFloat_AS_DOUBLE(value))
    elif type(value) is str:
        return _json_text(out, <str> value)
    elif type(value) is list or type(value) is tuple:
        _json_put(out, "[", 1)
        n = PySequence_Fast_GET_SIZE(value)
        for i in range(n):
            if i:
                _json_put(out, ",", 1)
            if not _json_write(out, <object> PySequence_Fast_GET_ITEM(value, i), depth + 1):
                return False
        _json_put(out, "]", 1)
    elif type(value) is dict:
        _json_put(out, "{", 1)
        i = 0
        for key, item in (<dict> value).items():
            if type(key) is not str:
                return False
            if i:
                _json_put(out, ",", 1)
            if not _json_text(out, <str> key):
                return False
            _json_put(out, ":", 1)
            if not _json_write(out, item, depth + 1):
                return False
            i += 1
        _json_put(out, "}", 1)
    else:
        return False
    return True


cdef bytes _json_dumps(object value, Py_ssize_t head):
    """``head`` zero bytes then ``orjson.dumps(value)``, as one new bytes object of that exact size
    (the caller may fill the head in place: no one else holds it yet)."""
    cdef JsonBuffer out
    _json_open(&out)
    try:
        _json_put(&out, NULL, head)
        if _json_write(&out, value, 0):
            return PyBytes_FromStringAndSize(out.data, out.size)
    finally:
        _json_close(&out)
    cdef bytes text = orjson.dumps(value)
    cdef bytes joined = PyBytes_FromStringAndSize(NULL, head + len(text))
    memset(PyBytes_AS_STRING(joined), 0, head)
    memcpy(PyBytes_AS_STRING(joined) + head, PyBytes_AS_STRING(text), len(text))
    return joined


# --- reading --------------------------------------------------------------------------------
# ``_json_loads`` reads back what ``_json_write`` writes (text without escapes, ints of up to 18
# digits, floats, null, booleans, arrays; no whitespace) as ``orjson.loads`` would: the same
# values (floats are read correctly rounded by both). Anything else (an escape, an object,
# whitespace, a malformed document) is left to orjson, which then decides, errors included.

cdef extern from "Python.h":
    double PyOS_string_to_double(const char* text, char** end, PyObject* overflow) except? -1.0
    object PyUnicode_DecodeUTF8(const char* text, Py_ssize_t size, const char* errors)


class _JsonUnsure(Exception):
    """Raised inside the reader when orjson must decide."""


cdef object _json_read(const char* text, Py_ssize_t size, Py_ssize_t* at, int depth):
    """The value at ``text[at]``, ``at`` moved past it; raises :class:`_JsonUnsure` when unsure."""
    cdef Py_ssize_t i = at[0], start, digits
    cdef bint fraction
    cdef long long number
    cdef double value
    cdef char c
    cdef char token[64]
    cdef list items
    if i >= size or depth > _JSON_MAX_DEPTH:
        raise _JsonUnsure()
    c = text[i]
    if c == b'"':
        start = i + 1
        i = start
        while i < size and text[i] != b'"':
            if text[i] == b"\\" or <unsigned char> text[i] < 0x20:
                raise _JsonUnsure()
            i += 1
        if i >= size:
            raise _JsonUnsure()
        at[0] = i + 1
        try:
            return PyUnicode_DecodeUTF8(text + start, i - start, "strict")
        except UnicodeDecodeError:
            raise _JsonUnsure()
    if c == b"[":
        items = []
        i += 1
        if i < size and text[i] == b"]":
            at[0] = i + 1
            return items
        while True:
            at[0] = i
            items.append(_json_read(text, size, at, depth + 1))
            i = at[0]
            if i >= size:
                raise _JsonUnsure()
            if text[i] == b"]":
                at[0] = i + 1
                return items
            if text[i] != b",":
                raise _JsonUnsure()
            i += 1
    if c == b"n" and i + 4 <= size and memcmp(text + i, "null", 4) == 0:
        at[0] = i + 4
        return None
    if c == b"t" and i + 4 <= size and memcmp(text + i, "true", 4) == 0:
        at[0] = i + 4
        return True
    if c == b"f" and i + 5 <= size and memcmp(text + i, "false", 5) == 0:
        at[0] = i + 5
        return False
    # a number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
    start = i
    fraction = False
    if i < size and text[i] == b"-":
        i += 1
    digits = 0
    while i < size and b"0" <= text[i] <= b"9":
        i += 1
        digits += 1
    if digits == 0 or (digits > 1 and text[i - digits] == b"0"):
        raise _JsonUnsure()
    if i < size and text[i] == b".":
        fraction = True
        i += 1
        digits = 0
        while i < size and b"0" <= text[i] <= b"9":
            i += 1
            digits += 1
        if digits == 0:
            raise _JsonUnsure()
    if i < size and (text[i] == b"e" or text[i] == b"E"):
        fraction = True
        i += 1
        if i < size and (text[i] == b"+" or text[i] == b"-"):
            i += 1
        digits = 0
        while i < size and b"0" <= text[i] <= b"9":
            i += 1
            digits += 1
        if digits == 0:
            raise _JsonUnsure()
    if i - start >= <Py_ssize_t> sizeof(token):
        raise _JsonUnsure()
    memcpy(token, text + start, i - start)
    token[i - start] = 0
    at[0] = i
    if fraction:
        value = PyOS_string_to_double(token, NULL, NULL)  # correctly rounded, as float(token); overflow: inf
        if value - value != 0.0:  # beyond the doubles: orjson's business
            raise _JsonUnsure()
        return value
    if i - start > 18:  # beyond what a long long surely holds: orjson's business
        raise _JsonUnsure()
    number = 0
    for digits in range(1 if token[0] == b"-" else 0, i - start):
        number = number * 10 + (token[digits] - 48)
    return -number if token[0] == b"-" else number


cdef object _json_loads(bytes data):
    """``orjson.loads(data)``, read in C when the document is one ``_json_read`` is sure of."""
    cdef Py_ssize_t at = 0
    cdef const char* text = PyBytes_AS_STRING(data)
    cdef Py_ssize_t size = len(data)
    try:
        value = _json_read(text, size, &at, 0)
        if at == size:
            return value
    except _JsonUnsure:
        pass
    return orjson.loads(data)
