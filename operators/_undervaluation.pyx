# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Hot path of the undervaluation detector (:mod:`undervaluation`): split a declaration into
items, score each item against its reference windows, then learn it.

Must stay equal, bit for bit, to the Python semantics :mod:`undervaluation` documents: every
float comes from the same IEEE operations in the same order (C ``log`` and ``exp`` are the
libm functions ``math.log`` and ``math.exp`` call), numbers are rounded as ``round`` rounds
and written as ``format`` writes them (``_exact.pxi``), and the errors Python would raise
(division by zero, math domain and range errors) are raised.
"""

cimport cython
from libc.math cimport exp, isfinite, log

from vigie.schemas import ImportDeclaration

from ._robust import RankedWindow, add_to_each, first_median_mad
from ._score import build_score, score_id
from .base import Operator, epoch_seconds

include "_exact.pxi"
include "_fields.pxi"

LEVELS = (("CN8", 8), ("CN6", 6), ("CN4", 4), ("chapter", 2))
"""Back-off hierarchy: level name and how many leading digits of the CN code it keeps."""

cdef tuple _LEVEL_NAMES = tuple(level for level, _ in LEVELS)

cdef double _MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@cython.dataclasses.dataclass
cdef class ItemUnitValue:
    """One goods item seen by the undervaluation detector (a C struct: one is built and read per item).

    ``basis`` is ``kg`` or the supplementary unit code the unit value is expressed per.
    """

    cdef public object event_id
    cdef public object mrn
    cdef public object item_number
    cdef public object event_time
    cdef public object office
    cdef public object importer_eori
    cdef public object cn_code
    cdef public object origin_country
    cdef public object basis
    cdef public object quantity
    cdef public object customs_value_eur
    cdef public object duty_rate_pct

    @property
    def unit_value_eur(self) -> float:
        return self.customs_value_eur / self.quantity


cdef dict _names_cache = {}
cdef Py_ssize_t _NAMES_CACHE_SIZE = 1 << 16  # CN codes x quantity bases: bounded by the nomenclature


cpdef tuple window_names(object cn_code, object basis):
    """Names of the windows an item of ``cn_code`` per ``basis`` reads and feeds, in :data:`LEVELS` order.

    >>> window_names("61091000", "kg")
    ('CN8:61091000:kg', 'CN6:610910:kg', 'CN4:6109:kg', 'chapter:61:kg')
    """
    key = (cn_code, basis)
    names = _names_cache.get(key)
    if names is None:
        if len(_names_cache) >= _NAMES_CACHE_SIZE:
            _names_cache.clear()
        names = _names_cache[key] = tuple([f"{level}:{cn_code[:digits]}:{basis}" for level, digits in LEVELS])
    return <tuple> names


cdef double _log(double x) except? -1.0:
    """``math.log(x)``."""
    if not x > 0.0 and x == x:
        raise ValueError("math domain error")
    return log(x)


cdef double _exp(double x) except? -1.0:
    """``math.exp(x)``."""
    cdef double y = exp(x)
    if not isfinite(y) and isfinite(x):
        raise OverflowError("math range error")
    return y


cdef double _divide(double x, double y) except? -1.0:
    """``x / y`` on floats."""
    if y == 0.0:
        raise ZeroDivisionError("float division by zero")
    return x / y


cdef class _Config:
    """The detector's numbers, read once per event (a C struct rather than attribute look-ups per item)."""

    cdef object min_observations  # as given (an int, or a float): it is quoted in the reason
    cdef double at_least
    cdef double min_spread
    cdef double z_half
    cdef double vat_rate
    cdef object name
    cdef bint direct  # build scores without the detector's risk_score (it is Operator's, not overridden)


cdef _Config _config(object detector, bint direct):
    cdef _Config config = _Config.__new__(_Config)
    config.min_observations = detector.min_observations
    config.at_least = config.min_observations
    config.min_spread = detector.min_spread
    config.z_half = detector.z_half
    config.vat_rate = detector.vat_rate
    config.name = detector.name
    config.direct = direct
    return config


cdef object _score(object detector, _Config config, ItemUnitValue unit, list windows):
    """The score of ``unit`` against its CN8, CN6, CN4 and chapter windows (None: never fed)."""
    # (level index, median, MAD, values held), or (-1, nan, nan, values the CN8 window has seen)
    reference = first_median_mad(windows, config.at_least)
    cdef Py_ssize_t level_index = reference[0]
    if level_index < 0:
        have = reference[3]
        reason = (
            f"No reference unit value yet for CN {unit.cn_code} from {unit.origin_country}: "
            f"{have} declaration(s) seen, {config.min_observations} needed at some level of CN8/CN6/CN4/chapter."
        )
        return _risk_score(detector, config, unit, 0.0, 0.0, reason, {"level": None, "observations": float(have)})

    level = _LEVEL_NAMES[level_index]
    cdef double median = reference[1], mad = reference[2]
    cdef double min_spread = config.min_spread, spread = _MAD_TO_SIGMA * mad
    if min_spread > spread:  # max(spread, min_spread)
        spread = min_spread
    cdef double quantity = unit.quantity, value = unit.customs_value_eur
    cdef double declared_uv = _divide(value, quantity)
    cdef double z = _divide(median - _log(declared_uv), spread)
    cdef double z_half = config.z_half
    cdef double score = 1.0 / (1.0 + _exp(-(z - z_half)))
    cdef double reference_uv = _exp(median)
    cdef double shortfall = reference_uv * quantity - value
    if not shortfall > 0.0:  # max(0.0, shortfall)
        shortfall = 0.0
    cdef double duty_rate_pct = unit.duty_rate_pct, vat_rate = config.vat_rate
    cdef double duty = shortfall * duty_rate_pct / 100.0
    cdef double vat = (shortfall + duty) * vat_rate
    cdef double below_pct = 100.0 * (1.0 - _divide(declared_uv, reference_uv))
    per = unit.basis
    size = reference[3]
    # One join per reason: the group and the basis of the reference are written in place.
    if below_pct > 0:
        reason = (
            f"Declared {exact_fixed(declared_uv, 2, True)} EUR/{per} is {exact_fixed(below_pct, 0, False)}% below the "
            f"reference {exact_fixed(reference_uv, 2, True)} EUR/{per} for CN {unit.cn_code} from {unit.origin_country} "
            f"(median of {size} recent declarations at {level} level, {exact_fixed(z, 1, False)} robust SD below); "
            f"value shortfall {exact_fixed(shortfall, 0, True)} EUR, duty {exact_fixed(duty, 0, True)} EUR "
            f"and VAT {exact_fixed(vat, 0, True)} EUR at stake."
        )
    else:
        reason = (
            f"Declared {exact_fixed(declared_uv, 2, True)} EUR/{per} is at or above the reference "
            f"{exact_fixed(reference_uv, 2, True)} EUR/{per} for CN {unit.cn_code} from {unit.origin_country} "
            f"(median of {size} recent declarations at {level} level)."
        )
    fields = {
        "level": level,
        "observations": <double> <Py_ssize_t> size,
        "reference_unit_value_eur": exact_round(reference_uv, 4),
        "declared_unit_value_eur": exact_round(declared_uv, 4),
        "unit": per,
        "below_reference_pct": exact_round(below_pct, 2),
        "robust_z": exact_round(z, 3),
        "value_shortfall_eur": exact_round(shortfall, 2),
        "duty_at_stake_eur": exact_round(duty, 2),
        "vat_at_stake_eur": exact_round(vat, 2),
    }
    return _risk_score(detector, config, unit, score, duty + vat, reason, fields)


cdef object _risk_score(
    object detector, _Config config, ItemUnitValue unit, double score, double at_stake, str reason, dict fields
):
    if config.direct:  # what Operator.risk_score builds, without its keyword call
        name = config.name
        return build_score(
            name, score_id(name, unit.event_id, unit.item_number), unit.event_id, "declaration", unit.mrn,
            unit.item_number, unit.event_time, unit.office, unit.importer_eori, unit.cn_code, unit.origin_country,
            score, exact_round(at_stake, 2), reason, fields,
        )  # fmt: skip
    return detector.risk_score(
        subject_event_id=unit.event_id,
        subject_type="declaration",
        subject_reference=unit.mrn,
        item_number=unit.item_number,
        event_time=unit.event_time,
        office=unit.office,
        operator_eori=unit.importer_eori,
        cn_code=unit.cn_code,
        origin_country=unit.origin_country,
        score=score,
        eur_at_stake=at_stake,
        reason=reason,
        reason_fields=fields,
    )


cdef list _units(object event):
    """See :func:`units`."""
    if not isinstance(event, ImportDeclaration):
        return []
    cdef list pairs = []
    cdef ItemUnitValue unit
    cdef dict fields
    # Pydantic keeps a model's field values in its __dict__: reading them there skips the
    # BaseModel.__getattr__ hook that every attribute look-up on a model goes through.
    cdef dict declaration = _fields(event)
    event_id, mrn, when, office, importer = (
        declaration["event_id"], declaration["mrn"], declaration["event_time"], declaration["customs_office"],
        declaration["importer_eori"],
    )
    for item in declaration["goods_items"]:
        fields = _fields(item)
        quantity, basis = fields["supplementary_units"], fields["supplementary_unit_code"]
        if not (quantity and basis):
            quantity, basis = fields["net_mass_kg"], "kg"
        unit = ItemUnitValue.__new__(ItemUnitValue)  # the fields are all set below: no __init__ call
        unit.event_id = event_id
        unit.mrn = mrn
        unit.item_number = fields["item_number"]
        unit.event_time = when
        unit.office = office
        unit.importer_eori = importer
        unit.cn_code = cn_code = fields["cn_code"]
        unit.origin_country = origin = fields["origin_country"]
        unit.basis = basis
        unit.quantity = quantity
        unit.customs_value_eur = fields["customs_value_eur"]
        unit.duty_rate_pct = fields["duty_rate_pct"]
        pairs.append((f"{origin}:{cn_code[:2]}", unit))
    return pairs


def units(detector, event):
    """The ``(state key, item)`` pairs of ``event``: one per goods item of an import declaration,
    keyed by origin and CN chapter (``"CN:61"``); none for any other event."""
    return _units(event)


def score_one(detector, ItemUnitValue unit not None, state):
    """The score of ``unit`` against ``state`` (a ``UnitValueState``), which is left as it was."""
    windows = state.windows
    return _score(
        detector, _config(detector, False), unit, [windows.get(name) for name in window_names(unit.cn_code, unit.basis)]
    )


cdef object _score_learn(object detector, _Config config, ItemUnitValue unit, object state, object when):
    """:func:`score_one` then learn ``unit`` (event time ``when``, epoch s), looking each window up once."""
    cdef dict windows = state.windows
    cdef list found = []
    capacity = state.capacity
    for name in window_names(unit.cn_code, unit.basis):
        window = windows.get(name)
        if window is None:
            window = windows[name] = RankedWindow(capacity)  # empty: scores as if absent
        found.append(window)
    score = _score(detector, config, unit, found)
    cdef double value = _log(_divide(unit.customs_value_eur, unit.quantity))
    add_to_each(found, value, when)
    return score


def score_learn_one(detector, ItemUnitValue unit not None, state):
    """:func:`score_one` then learn ``unit``, looking each window up once."""
    return _score_learn(detector, _config(detector, False), unit, state, epoch_seconds(unit.event_time))


cdef tuple _HOOKS = ("units", "new_state", "score_one", "learn_one", "score_learn_one", "risk_score")
cdef object _detector_class():
    from .undervaluation import UndervaluationDetector

    return UndervaluationDetector


include "_steps.pxi"


def process(detector, event, store):
    """``Operator.process(detector, event, store)`` for an ``UndervaluationDetector``: the same scores and
    states, with the per-item steps in C (the configuration and the event time read once per event).
    A subclass that overrides a step goes through ``Operator.process``."""
    if not _plain(type(detector)):
        return Operator.process(detector, event, store)
    cdef list pairs = _units(event)
    cdef list scores = []
    if not pairs:
        return scores
    cdef _Config config = _config(detector, True)
    cdef ItemUnitValue unit = pairs[0][1]
    when = epoch_seconds(unit.event_time)  # one event: one time
    for key, unit in pairs:
        state = store.get(key)
        if state is None:
            state = detector.new_state()
        scores.append(_score_learn(detector, config, unit, state, when))
        store[key] = state
    return scores
