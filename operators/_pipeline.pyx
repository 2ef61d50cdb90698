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


def process(pipeline, event, result_type, list gathered=None):
    """``pipeline.process(event)``, its result a ``result_type(event, scores)`` (see the pipeline).

    ``gathered`` (from :func:`process_all`): what the detectors at the head of the list already
    did with this event, position by position: the scores each returned, or the exception it
    raised (the last entry then); their idle keys were swept there too. The others run here.
    """
    cdef int kind = kind_of(event)
    cdef list scores, detectors
    cdef Py_ssize_t j, ready = 0 if gathered is None else len(gathered)
    pipeline.events_seen += 1
    event_time = event.event_time
    when = epoch_seconds(event_time)
    if when > pipeline._watermark_s:  # as comparing the aware datetimes, faster
        pipeline.watermark = event_time
    ens = pipeline.ens
    if kind == _ENS:
        ens.register(event)
    if pipeline.events_seen % _EVICT_EVERY == 0:
        pipeline._evict(0 if gathered is None else pipeline._ahead)
    pipeline.labels.evict(pipeline._watermark_s)

    scores = []
    result = result_type(event, scores)
    stores = pipeline.stores
    detectors = pipeline.detectors
    if ready:
        for j in range(ready):
            done = gathered[j]
            if type(done) is not list:
                raise done  # where this detector failed in the batch's first pass: the rest never saw the event
            scores.extend(<list> done)
    if kind == _DECLARATION:
        linked = ens.link(event)
        link = pipeline._link
        for j in range(ready, len(detectors)):
            detector = detectors[j]
            scores.extend(detector.process(linked if link[j] else event, stores[detector.name]))
    else:
        for j in range(ready, len(detectors)):
            detector = detectors[j]
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


def process_all(pipeline, events, result_type):
    """``pipeline.process_all(events)``: each event's result, or the exception its ``process`` raised.

    First pass: each of the first ``pipeline._ahead`` detectors (the ones that need nothing from
    the pipeline, ahead of any that do) takes every event of the batch in order, sweeping its
    idle keys where :func:`process` would; an event a detector fails on is not shown to the ones
    after it, as in :func:`process`. Second pass: :func:`process` of each event with what they
    gave. Every detector's state sees its events in the same order either way, so the results
    are the same; a detector's code and state stay in the CPU caches across the batch.
    """
    cdef list batch = list(events)
    cdef list out = []
    cdef list rows, row, detectors = pipeline.detectors
    cdef Py_ssize_t i, j, n = len(batch), ahead = pipeline._ahead
    cdef dict sweeps
    if ahead == 0 or n < 2:
        sweeps = None
    else:
        sweeps = _sweeps(pipeline, batch)
    if sweeps is None:  # nothing to gain, or an event the first pass could not place: one at a time
        for event in batch:
            try:
                out.append(process(pipeline, event, result_type))
            except Exception as exc:
                out.append(exc)
        return out
    rows = [[] for i in range(n)]
    stores = pipeline.stores
    for j in range(ahead):
        detector = detectors[j]
        store = stores[detector.name]
        work = detector.process
        sweep = getattr(detector, "evict_idle", None) if sweeps else None
        for i in range(n):
            if sweep is not None and i in sweeps:
                sweep(store, sweeps[i])
            row = <list> rows[i]
            if len(row) < j or (j and type(row[j - 1]) is not list):
                continue  # an earlier detector failed on this event (and the row ends with its exception)
            try:
                done = work(batch[i], store)
                if type(done) is not list:
                    done = list(done)
            except Exception as exc:
                done = exc
            row.append(done)
    for i in range(n):
        try:
            out.append(process(pipeline, batch[i], result_type, <list> rows[i]))
        except Exception as exc:
            out.append(exc)
    return out


cdef dict _sweeps(pipeline, list batch):
    """Batch position -> the watermark at which :func:`process` sweeps idle keys before that event
    (every ``EVICT_EVERY`` events); None when an event has no readable time (the batch then goes
    one event at a time, so that it fails exactly where :func:`process` fails)."""
    cdef dict sweeps = {}
    cdef Py_ssize_t i
    seen = pipeline.events_seen
    mark_s = pipeline._watermark_s
    mark = pipeline.watermark
    for i in range(len(batch)):
        try:
            event_time = batch[i].event_time
            when = epoch_seconds(event_time)
        except Exception:
            return None
        seen += 1
        if when > mark_s:
            mark_s, mark = when, event_time
        if seen % _EVICT_EVERY == 0:
            sweeps[i] = mark
    return sweeps


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
