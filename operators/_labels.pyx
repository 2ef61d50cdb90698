# cython: language_level=3, boundscheck=False, wraparound=False
"""Hot path of the label join (:class:`vigie.models.feedback.LabelJoin`), in C.

Every subject the engine decides on waits for its control outcome, and about as many stop
waiting as start: so for every event, one subject is remembered and one expires.

* :class:`ExpiryHeap` orders the waiting subjects by ``(expiry, sequence number)``, as the
  ``heapq`` of tuples it replaces did, on a C array (a tuple heap of hundreds of thousands of
  entries chases pointers on every comparison);
* :func:`pack_pending` builds the bytes a waiting subject keeps, exactly
  ``PendingSubject.pack`` (the feature count, the doubles, then ``orjson.dumps(contexts)``),
  writing the JSON itself (``_json.pxi``: the same bytes, without orjson's allocation).
"""

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF, Py_XDECREF, PyObject
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import orjson

include "_json.pxi"

cdef struct Entry:
    double expires
    long long seq
    PyObject* event_id  # a reference the heap owns


cdef inline bint _before(Entry* a, Entry* b) noexcept:
    """``(a.expires, a.seq) < (b.expires, b.seq)``: tuple order (sequence numbers are unique)."""
    return a.expires < b.expires or (a.expires == b.expires and a.seq < b.seq)


cdef class ExpiryHeap:
    """Waiting subjects as ``(expires, seq, event_id)``, the earliest ``(expires, seq)`` first.

    >>> heap = ExpiryHeap()
    >>> for expires, seq, name in [(30.0, 1, "c"), (10.0, 2, "a"), (10.0, 3, "b"), (20.0, 4, "d")]:
    ...     heap.push(expires, seq, name)
    >>> heap.pop()
    (10.0, 2, 'a')
    >>> heap.pop_before(25.0), len(heap), heap.earliest()
    ([(3, 'b'), (4, 'd')], 1, 30.0)
    >>> heap
    ExpiryHeap(waiting=1, earliest=30.0)
    """

    cdef Entry* _entries
    cdef Py_ssize_t _count
    cdef Py_ssize_t _capacity

    def __cinit__(self):
        self._entries = NULL
        self._count = 0
        self._capacity = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._count):
            Py_XDECREF(self._entries[i].event_id)
        free(self._entries)

    def __repr__(self) -> str:
        return f"ExpiryHeap(waiting={self._count}, earliest={self.earliest()!r})"

    def __len__(self) -> int:
        return self._count

    def __reduce__(self):
        return _heap_of, (self.entries(),)

    def entries(self) -> list:
        """Every ``(expires, seq, event_id)`` held, in no particular order."""
        cdef Py_ssize_t i
        return [(self._entries[i].expires, self._entries[i].seq, <object> self._entries[i].event_id)
                for i in range(self._count)]

    cpdef double earliest(self):
        """The earliest expiry held (infinity when empty)."""
        return self._entries[0].expires if self._count else float("inf")

    cpdef void push(self, double expires, long long seq, object event_id) except *:
        """Add a subject expiring at ``expires`` (epoch seconds), remembered with sequence number ``seq``."""
        cdef Py_ssize_t i, parent
        cdef Entry item
        cdef Entry* grown
        if self._count == self._capacity:
            self._capacity = self._capacity * 2 if self._capacity else 1024
            grown = <Entry*> realloc(self._entries, self._capacity * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self._entries = grown
        Py_INCREF(event_id)
        item.expires = expires
        item.seq = seq
        item.event_id = <PyObject*> event_id
        i = self._count
        self._count += 1
        while i > 0:  # sift up
            parent = (i - 1) >> 1
            if not _before(&item, &self._entries[parent]):
                break
            self._entries[i] = self._entries[parent]
            i = parent
        self._entries[i] = item

    cdef Entry _take(self):
        """Remove the earliest entry (the heap is not empty); the caller owns its reference."""
        cdef Entry top = self._entries[0]
        cdef Entry last
        cdef Py_ssize_t i = 0, child, n
        self._count -= 1
        n = self._count
        if n:
            last = self._entries[n]
            while True:  # sift down
                child = 2 * i + 1
                if child >= n:
                    break
                if child + 1 < n and _before(&self._entries[child + 1], &self._entries[child]):
                    child += 1
                if not _before(&self._entries[child], &last):
                    break
                self._entries[i] = self._entries[child]
                i = child
            self._entries[i] = last
        return top

    def pop(self) -> tuple:
        """Remove and return the earliest ``(expires, seq, event_id)``."""
        if not self._count:
            raise IndexError("pop from an empty heap")
        cdef Entry top = self._take()
        event_id = <object> top.event_id
        Py_XDECREF(top.event_id)  # ``event_id`` holds its own reference now
        return top.expires, top.seq, event_id

    def pop_before(self, double now) -> list:
        """Remove every entry expiring before ``now``; their ``(seq, event_id)``, earliest first."""
        cdef list out = []
        cdef Entry top
        while self._count and self._entries[0].expires < now:
            top = self._take()
            event_id = <object> top.event_id
            Py_XDECREF(top.event_id)
            out.append((top.seq, event_id))
        return out


def _heap_of(entries) -> ExpiryHeap:
    """Unpickle an :class:`ExpiryHeap` saved as its entries."""
    heap = ExpiryHeap()
    for expires, seq, event_id in entries:
        heap.push(expires, seq, event_id)
    return heap


def context_json(contexts) -> bytes:
    """``orjson.dumps(contexts)``: the same bytes.

    >>> import orjson
    >>> samples = [{"d": [[1, "22", "220421", "AU", 0]]}, {"d": [[None, "x y", True, False, -7]], "e": []},
    ...            {"d": [1.5]}, {"d": "é"}, {"d": 'quo"te'}, {"d": 2**63 + 5}, {"d": [-2**63, 2**63 - 1, 0, -1]},
    ...            {"d": ("t", 1)}, {}, {"d": [1e16, 0.1]}]
    >>> all(context_json(c) == orjson.dumps(c) for c in samples)
    True
    """
    return _json_dumps(contexts, 0)


def pack_pending(array.array features, dict contexts) -> bytes:
    """``PendingSubject.pack(features, contexts)``: the number of features (2 bytes, little-endian),
    the features' doubles as ``features.tobytes()`` gives them, then ``orjson.dumps(contexts)`` if
    there are contexts.

    >>> import array, orjson
    >>> features = array.array("d", [0.5, -6.9, 3.0])
    >>> context = {"ens_pre_arrival": [[1, "22", "220421", "AU", 0]]}
    >>> pack_pending(features, context) == (3).to_bytes(2, "little") + features.tobytes() + orjson.dumps(context)
    True
    >>> pack_pending(array.array("d"), {}) == b"\\x00\\x00"
    True
    """
    cdef Py_ssize_t n = len(features)
    cdef bytes blob
    cdef char* data
    if features.ob_descr.typecode != c"d":
        raise TypeError(f"features are array({features.typecode!r}), not array('d')")
    if n > 0xFFFF:
        raise OverflowError(f"{n} features do not fit the 2-byte count")
    if contexts:  # the JSON written after room for the count and the doubles
        blob = _json_dumps(contexts, 2 + 8 * n)
    else:
        blob = PyBytes_FromStringAndSize(NULL, 2 + 8 * n)
    data = PyBytes_AS_STRING(blob)  # a new object no one else holds yet: filled in place
    data[0] = <char> (n & 0xFF)
    data[1] = <char> (n >> 8)
    memcpy(data + 2, features.data.as_chars, 8 * n)
    return blob

