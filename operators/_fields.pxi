# A pydantic model's field values in C, shared by the hot paths that read events and the sinks'
# encoder (``include "_fields.pxi"``, a textual include; see _exact.pxi).

from cpython.object cimport PyObject_GenericGetDict


cdef inline dict _fields(model: object):
    """The field values of a pydantic model by name: its ``__dict__``, read without the detour of one
    attribute look-up (through the model's ``__getattr__`` hook) per field."""
    return PyObject_GenericGetDict(model, NULL)
