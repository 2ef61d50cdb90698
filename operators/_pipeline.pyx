# cython: language_level=3
"""The per-event glue of :meth:`vigie.operators.pipeline.ScoringPipeline.process`, compiled.

Every event goes through this code between the detectors and the fusion: its kind, the
watermark, the ENS registry and the label join's clock, the detectors' calls, the subject the
fusion decides on, and what its control outcome will need. It is the pipeline's Python, line
for line (the same calls on the same objects, in the same order), compiled so that the
interpreter's own work per line goes; the pipeline's methods document each step.
"""

from array import array

from vigie.schemas import ControlOutcome, EntrySummaryDeclaration, ExciseMovement, ImportDeclaration

from ._fusion import Subject
from ._score import epoch_seconds
from .fusion import LearnedFusion, NoisyOrAlerting

ENS, DECLARATION, EXCISE, OUTCOME, OTHER = range(5)
"""What an event is (its class decides, once: isinstance chains cost on every event)."""

cdef int _ENS = ENS, _DECLARATION = DECLARATION, _EXCISE = EXCISE, _OUTCOME = OUTCOME, _OTHER = OTHER
cdef dict _KINDS = {}  # event class -> its kind, filled as classes are met
EVICT_EVERY = 10_000
"""Events between sweeps of the ENS registry and of idle detector keys."""
cdef int _EVICT_EVERY = EVICT_EVERY
cdef object _NO_FEATURES = array("d")  # never mutated: each remembered subject packs a copy of it


cpdef int kind_of(event) except -1:
    """The kind of ``event`` (``ENS``, ``DECLARATION``, ``EXCISE``, ``OUTCOME`` or ``OTHER``).

    >>> kind_of(object()) == OTHER
    True
    """
    cls = type(event)
    found = _KINDS.get(cls)
    if found is not None:
        return found
    if isinstance(event, EntrySummaryDeclaration):
        kind = _ENS
    elif isinstance(event, ImportDeclaration):
        kind = _DECLARATION
    elif isinstance(event, ExciseMovement):
        kind = _EXCISE
    elif isinstance(event, ControlOutcome):
        kind = _OUTCOME
    else:
        kind = _OTHER
    _KINDS[cls] = kind
    return kind


def process(pipeline, event, result_type):
    """``pipeline.process(event)``, its result a ``result_type(event, scores)`` (see the pipeline)."""
    cdef int kind = kind_of(event)
    cdef list scores
    pipeline.events_seen += 1
    event_time = event.event_time
    when = epoch_seconds(event_time)
    if when > pipeline._watermark_s:  # as comparing the aware datetimes, faster
        pipeline.watermark = event_time
    ens = pipeline.ens
    if kind == _ENS:
        ens.register(event)
    if pipeline.events_seen % _EVICT_EVERY == 0:
        pipeline._evict()
    pipeline.labels.evict(pipeline._watermark_s)

    scores = []
    result = result_type(event, scores)
    stores = pipeline.stores
    if kind == _DECLARATION:
        linked = ens.link(event)
        for detector, wants_link in zip(pipeline.detectors, pipeline._link, strict=True):
            scores.extend(detector.process(linked if wants_link else event, stores[detector.name]))
    else:
        for detector in pipeline.detectors:
            scores.extend(detector.process(event, stores[detector.name]))
    if kind == _OUTCOME:
        pipeline._learn_outcome(event)
    if not scores:
        return result

    alerting = pipeline.alerting
    if type(alerting) is not LearnedFusion and isinstance(alerting, NoisyOrAlerting):
        if kind == _DECLARATION:
            queue = pipeline._queue(event.customs_office)
            result.alert = alerting.decide(scores, ens.lookup(event.ens_reference), queue)
        if kind != _OUTCOME:
            remember(pipeline, event, result, when, None, None, None)
        return result
    own = scores
    event_id = event.event_id
    for score in scores:
        if score.subject_event_id != event_id:  # a later finding about an earlier subject
            own = [s for s in scores if s.subject_event_id == event_id]
            pipeline._decide_later(event_id, scores, result)
            break
    if not own or kind == _OUTCOME or kind == _OTHER:
        return result  # no subject of its own to fuse
    subject = subject_of(pipeline, event, own, kind)
    office = subject.office
    queue = pipeline.queues.get(office)
    if queue is None:
        queue = pipeline._queue(office)
    decision = alerting.decide(own, subject, queue)
    result.alert = decision.alert
    result.fused_risk = decision.probability
    if kind == _ENS:
        pipeline.ens_risk[event.ens_reference] = decision.probability
    remember(pipeline, event, result, when, decision.features, subject, own)
    return result


def subject_of(pipeline, event, list scores, int kind):
    """The :class:`Subject` of ``event``, an ENS, a declaration or an excise record (``kind``)."""
    if kind == _ENS:
        return Subject(event.event_id, "ens", event.ens_reference, event.first_office_of_entry, event.event_time,
                       event.consignee.eori, str(event.transport_mode), event.eta)
    if kind == _DECLARATION:
        reference = event.ens_reference
        arrival = pipeline.ens.lookup(reference)
        ens_risk = pipeline.ens_risk.get(reference) if reference else None
        if arrival is None:
            return Subject(event.event_id, "declaration", event.mrn, event.customs_office, event.event_time,
                           event.importer_eori, str(event.transport_mode_at_border), None, ens_risk)
        return Subject(event.event_id, "declaration", event.mrn, event.customs_office, event.event_time,
                       event.importer_eori, arrival.transport_mode, arrival.eta, ens_risk)
    first = scores[0]
    return Subject(event.event_id, "excise", first.subject_reference, first.office, event.event_time,
                   event.operator_eori)


def remember(pipeline, event, result, when, features, subject, scores):
    """``pipeline._remember(...)``: what the subject's control outcome will need, in the label join."""
    cdef list own
    if isinstance(event, ControlOutcome):
        return
    scores = result.scores if scores is None else scores
    first = scores[0]
    contexts = {}
    for detector, name in pipeline._context_names:
        own = [s for s in scores if s.detector == name]
        if own:
            context = detector.feedback_context(own)
            if context is not None:
                contexts[name] = context
    labels = pipeline.labels
    eta = subject.eta if subject is not None else None
    expires = labels.expiry(when, epoch_seconds(eta) if eta is not None else None)
    alert = result.alert
    selection = alert.selection if alert is not None else ""
    labels.remember(event.event_id, first.subject_type, first.subject_reference, expires,
                    features if features is not None else _NO_FEATURES, contexts, selection)
