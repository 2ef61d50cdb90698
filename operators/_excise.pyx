# cython: language_level=3
"""Hot path of the excise detector (:mod:`.excise`): its units, the split of every event into
them, and the work on the units most events give (an ENS's mass, a declaration's mass).

Every ENS and every import declaration goes through :meth:`ExcisePath.process`, most of them
only to be weighed (an ENS's gross mass, a declaration's net mass, whether any of its items
is an excise good), so the split, the units it builds and the mass comparison are in C.
They must stay equal to the Python semantics they replace: the same keys in the same order,
the masses summed item by item in the goods' order as ``sum`` does, the heaviest item the
first of the heaviest as ``max`` gives, the same state written.
"""

from cpython.datetime cimport import_datetime

from .base import epoch_seconds

from vigie.schemas import EntrySummaryDeclaration, ExciseMovement, ImportDeclaration

import_datetime()


include "_fields.pxi"


cdef class EnsMass:
    """An ENS's total gross mass, kept to compare with the declaration that quotes it.

    ``eta``: arrival; the declaration quoting the ENS comes after it, so the key lives on until then.
    """

    cdef readonly str event_id
    cdef readonly str ens_reference
    cdef readonly object event_time
    cdef readonly double gross_kg
    cdef readonly long n_items
    cdef readonly object eta

    def __init__(
        self, str event_id, str ens_reference, event_time: object, double gross_kg, long n_items, eta: object = None
    ) -> None:
        self.event_id = event_id
        self.ens_reference = ens_reference
        self.event_time = event_time
        self.gross_kg = gross_kg
        self.n_items = n_items
        self.eta = eta


cdef class DeclaredMass:
    """An import declaration's net mass, for the ENS it quotes; ``main_cn`` / ``main_origin``: its heaviest item's."""

    cdef readonly str event_id
    cdef readonly str mrn
    cdef readonly str ens_reference
    cdef readonly object event_time
    cdef readonly str office
    cdef readonly str importer_eori
    cdef readonly double net_kg
    cdef readonly long n_items
    cdef readonly str main_cn
    cdef readonly str main_origin

    def __init__(
        self,
        str event_id,
        str mrn,
        str ens_reference,
        event_time: object,
        str office,
        str importer_eori,
        double net_kg,
        long n_items,
        str main_cn,
        str main_origin,
    ) -> None:
        self.event_id = event_id
        self.mrn = mrn
        self.ens_reference = ens_reference
        self.event_time = event_time
        self.office = office
        self.importer_eori = importer_eori
        self.net_kg = net_kg
        self.n_items = n_items
        self.main_cn = main_cn
        self.main_origin = main_origin


cdef class DeclaredExciseItem:
    """One goods item of excise goods on an import declaration."""

    cdef readonly object item_number
    cdef readonly str cn_code
    cdef readonly str origin
    cdef readonly double net_mass_kg
    cdef readonly object supplementary_units
    cdef readonly object supplementary_unit_code
    cdef readonly object excise_eur

    def __init__(
        self,
        item_number: int,
        str cn_code,
        str origin,
        double net_mass_kg,
        supplementary_units: float | None,
        supplementary_unit_code: str | None,
        excise_eur: float | None,
    ) -> None:
        self.item_number = item_number
        self.cn_code = cn_code
        self.origin = origin
        self.net_mass_kg = net_mass_kg
        self.supplementary_units = supplementary_units
        self.supplementary_unit_code = supplementary_unit_code
        self.excise_eur = excise_eur


cdef class DeclaredExcise:
    """The excise goods items of one import declaration."""

    cdef readonly str event_id
    cdef readonly str mrn
    cdef readonly object event_time
    cdef readonly str office
    cdef readonly str importer_eori
    cdef readonly str procedure_code
    cdef readonly tuple items

    def __init__(
        self,
        str event_id,
        str mrn,
        event_time: object,
        str office,
        str importer_eori,
        str procedure_code,
        tuple items,
    ) -> None:
        self.event_id = event_id
        self.mrn = mrn
        self.event_time = event_time
        self.office = office
        self.importer_eori = importer_eori
        self.procedure_code = procedure_code
        self.items = items


cdef class ExciseRecord:
    """One excise record; ``role`` is ``"primary"`` (checked and reconciled) or ``"ledger"``."""

    cdef readonly str role
    cdef readonly object event

    def __init__(self, str role, event: object) -> None:
        self.role = role
        self.event = event

    @property
    def when(self) -> float:
        return epoch_seconds(self.event.event_time)


cdef str _primary_key(record: object):
    if record.import_mrn is not None:
        return f"imp:{record.import_mrn}"
    if record.arc is not None:
        return f"arc:{record.arc}"
    return f"op:{record.consignor_excise_number}:{record.product_category}"


def learn_ens(EnsMass unit, state: object) -> None:
    """Keep the ENS's mass in its ``ens:`` state (:meth:`~.excise.ExciseDetector.learn_one`)."""
    cdef double filed = epoch_seconds(unit.event_time)
    state.ens = {"id": unit.event_id, "t": filed, "gross": unit.gross_kg, "n": unit.n_items}
    # An ENS is filed up to weeks before arrival; its declaration comes after: idle from its ETA (the later
    # of the two, compared in epoch seconds, which order instants as the datetimes do).
    state.touch(filed if unit.eta is None else max(filed, <double>epoch_seconds(unit.eta)))


def overdue(dict open_eads, arc: object, double now, double deadline_s) -> tuple | None:
    """``(arc, entry)`` of the open e-AD (not ``arc``) whose deadline ``deadline_s`` after its dispatch
    passed before ``now``, with the most duty at stake (ties: the oldest); None if none
    (:meth:`~.excise.ExciseDetector._overdue`)."""
    cdef double t, duty, best_duty = 0.0, best_t = 0.0
    best_arc = best = None
    for key, entry in open_eads.items():
        if key == arc:
            continue
        t = entry["t"]
        if t + deadline_s >= now:
            continue
        duty = entry["duty"]
        if best is None or duty > best_duty or (duty == best_duty and t < best_t):
            best_arc, best, best_duty, best_t = key, entry, duty, t
    return None if best is None else (best_arc, best)


cdef class ExcisePath:
    """The excise detector's split of events into ``(state key, unit)`` pairs, and its work on the
    units that need no Python: see :meth:`process`.

    ``min_cover_mass_kg``: lightest ENS kept (gross kg); a declaration quoting an ENS is weighed
    against it from a fifth of that (net kg). ``cover_slack_kg`` and ``gross_net_ratios``: the mass
    an ENS may carry beyond its declaration's net mass (see :meth:`score_mass`).
    ``products_for_cn`` and ``excise_chapters``: the CN tables of excise goods
    (:func:`~.excise.products_for_cn`); ``state_type``: the state of a new key.
    """

    cdef double min_cover_mass_kg
    cdef double min_declared_kg
    cdef double cover_slack_kg
    cdef tuple chapter_ratios  # (CN prefix, ratio) before the default
    cdef double default_ratio
    cdef object products_for_cn
    cdef frozenset excise_chapters
    cdef object state_type

    def __init__(
        self,
        double min_cover_mass_kg,
        double cover_slack_kg,
        tuple gross_net_ratios,
        products_for_cn: object,
        frozenset excise_chapters,
        state_type: object,
    ) -> None:
        self.min_cover_mass_kg = min_cover_mass_kg
        self.min_declared_kg = min_cover_mass_kg / 5.0
        self.cover_slack_kg = cover_slack_kg
        self.chapter_ratios = gross_net_ratios[:-1]
        self.default_ratio = gross_net_ratios[-1][1]  # prefix ""
        self.products_for_cn = products_for_cn
        self.excise_chapters = excise_chapters
        self.state_type = state_type

    def process(self, detector: object, event: object, store: object) -> list:
        """:meth:`~.excise.ExciseDetector.process`: each unit scored then learned against its key's state,
        ENS masses and declaration masses here, the other units by ``detector.score_learn_one``."""
        cdef list scores = []
        for key, unit in self.units(event):
            state = store.get(key)
            if state is None:
                state = self.state_type()
            if type(unit) is EnsMass:
                learn_ens(unit, state)  # an ENS alone scores nothing
                score = None
            elif type(unit) is DeclaredMass:
                score = self.score_mass(detector, unit, state)
                state.touch(epoch_seconds((<DeclaredMass>unit).event_time))
            else:
                score = detector.score_learn_one(unit, state)
            if score is not None:
                scores.append(score)
            store[key] = state
        return scores

    cpdef object score_mass(self, detector: object, DeclaredMass unit, state: object):
        """The declaration's score against its ENS's gross mass: None when no ENS is kept, when the
        declaration covers only part of it, or when packaging explains the mass; else
        ``detector._report_mass``'s, given the excess kg and the ratio of gross to net mass allowed."""
        cdef double ratio = self.default_ratio, excess
        cdef str prefix
        ens = state.ens
        if ens is None or unit.n_items < ens["n"]:
            return None
        for prefix, chapter_ratio in self.chapter_ratios:
            if unit.main_cn.startswith(prefix):
                ratio = chapter_ratio
                break
        # At most ``ratio`` x net + ``cover_slack_kg``, ``ratio`` by CN chapter.
        excess = <double>ens["gross"] - (unit.net_kg * ratio + self.cover_slack_kg)
        if excess <= 0:
            return None
        return detector._report_mass(unit, state, excess, ratio)

    cpdef list units(self, event: object):
        """The ``(state key, unit)`` pairs of ``event`` (:meth:`~.excise.ExciseDetector.units`)."""
        if isinstance(event, EntrySummaryDeclaration):
            return self._ens(event)
        if isinstance(event, ImportDeclaration):
            return self._declaration(event)
        if isinstance(event, ExciseMovement):
            return [
                (_primary_key(event), ExciseRecord("primary", event)),
                (f"ledger:{event.consignor_excise_number}", ExciseRecord("ledger", event)),
            ]
        return []

    cdef list _ens(self, event: object):
        cdef dict fields = _fields(event)
        goods = fields["goods_items"]
        cdef double gross = 0.0
        cdef EnsMass unit
        for item in goods:
            gross += <double>_fields(item)["gross_mass_kg"]
        if gross < self.min_cover_mass_kg:
            return []
        unit = EnsMass.__new__(EnsMass)
        unit.event_id = fields["event_id"]
        unit.ens_reference = fields["ens_reference"]
        unit.event_time = fields["event_time"]
        unit.gross_kg = gross
        unit.n_items = len(goods)
        unit.eta = fields["eta"]
        return [(f"ens:{unit.ens_reference}", unit)]

    cdef list _declaration(self, event: object):
        cdef dict fields = _fields(event), item_fields
        goods = fields["goods_items"]
        cdef list out = []
        cdef list excise_items = None
        cdef double net = 0.0, mass, heaviest = 0.0
        cdef str cn_code
        cdef DeclaredMass mass_unit
        main = None
        for item in goods:
            item_fields = _fields(item)
            cn_code = item_fields["cn_code"]
            mass = item_fields["net_mass_kg"]
            net += mass
            if main is None or mass > heaviest:
                main, heaviest = item, mass
            if cn_code[:2] in self.excise_chapters and self.products_for_cn(cn_code):  # cheap test first
                if excise_items is None:
                    excise_items = []
                excise_items.append(
                    DeclaredExciseItem(
                        item.item_number,
                        cn_code,
                        item.origin_country,
                        mass,
                        item.supplementary_units,
                        item.supplementary_unit_code,
                        item.excise_eur,
                    )
                )
        if excise_items is not None:
            out.append(
                (
                    f"imp:{event.mrn}",
                    DeclaredExcise(
                        event.event_id,
                        event.mrn,
                        event.event_time,
                        event.customs_office,
                        event.importer_eori,
                        event.procedure_code,
                        tuple(excise_items),
                    ),
                )
            )
        ens_reference = fields["ens_reference"]
        # Only ENS of at least min_cover_mass_kg gross are kept; a cover load weighs at least about a
        # fifth of the gross mass (cover 0.4-1.5 times the hidden goods), so lighter declarations are skipped.
        if ens_reference is not None and net >= self.min_declared_kg:
            mass_unit = DeclaredMass.__new__(DeclaredMass)
            mass_unit.event_id = fields["event_id"]
            mass_unit.mrn = fields["mrn"]
            mass_unit.ens_reference = ens_reference
            mass_unit.event_time = fields["event_time"]
            mass_unit.office = fields["customs_office"]
            mass_unit.importer_eori = fields["importer_eori"]
            mass_unit.net_kg = net
            mass_unit.n_items = len(goods)
            item_fields = _fields(main)
            mass_unit.main_cn = item_fields["cn_code"]
            mass_unit.main_origin = item_fields["origin_country"]
            out.append((f"ens:{ens_reference}", mass_unit))
        return out
