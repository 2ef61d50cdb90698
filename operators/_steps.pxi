# The fallback test of the detectors whose ``process`` runs their steps in C (included by
# _undervaluation, _atypical and _behaviour). The including module defines ``_HOOKS`` (the
# names of the steps it runs in C) and ``_detector_class()`` (its detector class, imported late:
# the detector's module imports this one).

cdef dict _plain_classes = {}


cdef bint _plain(type cls) except -1:
    """Whether ``cls`` (a subclass of ``_detector_class()``, or that class) overrides none of the steps
    in ``_HOOKS``; cached per class (a class patched after its first event keeps its first answer)."""
    plain = _plain_classes.get(cls)
    if plain is None:
        below = cls.__mro__[: cls.__mro__.index(_detector_class())]
        plain = _plain_classes[cls] = not any(name in vars(klass) for klass in below for name in _HOOKS)
    return plain
