# cython: language_level=3
"""The per-event glue of :meth:`vigie.operators.pipeline.ScoringPipeline.process`, compiled, and
its batch form, :func:`process_all` (``ScoringPipeline.process_all``).

Every event goes through this code between the detectors and the fusion: its kind, the
watermark, the ENS registry and the label join's clock, the detectors' calls, the subject the
fusion decides on, and what its control outcome will need. It is the pipeline's Python, line
for line (the same calls on the same objects, in the same order), compiled so that the
interpreter's own work per line goes; the pipeline's methods document each step.
:func:`process_all` reorders the same steps across a batch, detector by detector, where no
step reads what another changed meanwhile (its docstring says where the batch is cut so).
"""

from array import array
from datetime import datetime

from vigie.schemas import ControlOutcome, EntrySummaryDeclaration, ExciseMovement, ImportDeclaration

from ._fusion import Subject
from ._score import epoch_seconds
from .deadlines import wake_up_ms
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


cdef object _LIVE = object()  # process() looks the ENS registry up itself (one event at a time)


def process(pipeline, event, result_type, list gathered=None, arrival=_LIVE):
    """``pipeline.process(event)``, its result a ``result_type(event, scores)`` (see the pipeline).

    With ``gathered`` (from :func:`process_all`), the batch's first pass did this event's
    detector steps: the ENS registry (registered, swept, linked: ``arrival`` is what it held
    for a declaration's ENS then), the idle-key sweeps, and every detector, whose results
    ``gathered`` holds in detector order: the scores each returned, or the exception one raised
    (the last entry then: the detectors after it never saw the event).
    """
    cdef int kind = kind_of(event)
    cdef list scores, detectors
    cdef Py_ssize_t j
    cdef bint batched = gathered is not None
    pipeline.events_seen += 1
    event_time = event.event_time
    when = epoch_seconds(event_time)
    if when > pipeline._watermark_s:  # as comparing the aware datetimes, faster
        pipeline.watermark = event_time
    ens = pipeline.ens
    if not batched:
        if kind == _ENS:
            ens.register(event)
        if pipeline.events_seen % _EVICT_EVERY == 0:
            pipeline._evict()
    pipeline.labels.evict(pipeline._watermark_s)

    scores = []
    result = result_type(event, scores)
    if batched:
        for done in gathered:
            if type(done) is not list:
                raise done  # where a detector (or the ENS registry) failed on it in the batch's first pass
            scores.extend(<list> done)
    else:
        stores = pipeline.stores
        detectors = pipeline.detectors
        if kind == _DECLARATION:
            linked = ens.link(event)
            link = pipeline._link
            for j in range(len(detectors)):
                detector = detectors[j]
                scores.extend(detector.process(linked if link[j] else event, stores[detector.name]))
        else:
            for detector in detectors:
                scores.extend(detector.process(event, stores[detector.name]))
    if kind == _OUTCOME:
        pipeline._learn_outcome(event)
    if not scores:
        return result

    alerting = pipeline.alerting
    if type(alerting) is not LearnedFusion and isinstance(alerting, NoisyOrAlerting):
        if kind == _DECLARATION:
            queue = pipeline._queue(event.customs_office)
            if arrival is _LIVE:
                arrival = ens.lookup(event.ens_reference)
            result.alert = alerting.decide(scores, arrival, queue)
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
    subject = subject_of(pipeline, event, own, kind, arrival)
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

    The batch goes in two passes. The detectors' pass: each detector takes the events one after
    the other, on its own state, sweeping its idle keys where :func:`process` would, and is not
    shown an event an earlier detector failed on; the detectors ahead of any that needs the
    pipeline (``pipeline._ahead``) take the whole batch, the others a segment at a time, the ENS
    registry kept for them as :func:`process` keeps it. The pipeline's pass: :func:`process` of
    each event of the segment with what the detectors gave (fusion, label join, outcomes).

    A segment ends after a controlled outcome when a detector learns from outcomes (what it
    learns depends on the label join, which the pipeline's pass keeps), and before a sweep (the
    sweep prunes the ENS risks the pipeline's pass records). So every detector's state, the
    registry and the fusion see what they see one event at a time, in the same order: the same
    results, and a detector's code and state stay in the CPU caches across its run of events.
    """
    cdef list batch = list(events)
    cdef list out = []
    cdef list rows, detectors = pipeline.detectors
    cdef Py_ssize_t i, n = len(batch), ahead = pipeline._ahead, start, stop
    cdef dict sweeps = _sweeps(pipeline, batch) if n > 1 else None
    if sweeps is None:  # nothing to gain, or an event the first pass could not place: one at a time
        for event in batch:
            try:
                out.append(process(pipeline, event, result_type))
            except Exception as exc:
                out.append(exc)
        return out
    rows = [[] for i in range(n)]
    cdef list arrivals = [_LIVE] * n
    cdef list kinds = [kind_of(event) for event in batch]
    _detectors_pass(pipeline, batch, kinds, rows, None, sweeps, 0, ahead, 0, n)
    cutting = bool(pipeline._feedback)
    start = 0
    while start < n:
        stop = start + 1
        while stop < n and stop not in sweeps and not (cutting and _controlled_outcome(batch[stop - 1], kinds[stop - 1])):
            stop += 1
        links = _registry_pass(pipeline, batch, kinds, rows, arrivals, sweeps, start, stop)
        _detectors_pass(pipeline, batch, kinds, rows, links, sweeps, ahead, len(detectors), start, stop)
        for i in range(start, stop):
            try:
                out.append(process(pipeline, batch[i], result_type, <list> rows[i], arrivals[i]))
            except Exception as exc:
                out.append(exc)
        start = stop
    return out


cdef bint _controlled_outcome(event, int kind):
    return kind == _OUTCOME and bool(event.controlled)


cdef list _registry_pass(pipeline, list batch, list kinds, list rows, list arrivals, dict sweeps,
                         Py_ssize_t start, Py_ssize_t stop):
    """What :func:`process` does to the ENS registry for ``batch[start:stop]``, in order: register an
    ENS, sweep (and prune the fused ENS risks) where due; the linked declarations (None for other
    events) and, in ``arrivals``, what the registry held for each declaration's ENS. A failure is
    the event's (its row then holds only the exception)."""
    cdef Py_ssize_t i
    cdef int kind
    cdef list links = [None] * (stop - start)
    ens = pipeline.ens
    for i in range(start, stop):
        event = batch[i]
        kind = kinds[i]
        try:
            if kind == _ENS:
                ens.register(event)
            if i in sweeps:
                pipeline._evict_registry(sweeps[i])
            if kind == _DECLARATION:
                links[i - start] = ens.link(event)
                arrivals[i] = ens.lookup(event.ens_reference)
        except Exception as exc:
            rows[i] = [exc]
    return links


cdef _detectors_pass(pipeline, list batch, list kinds, list rows, list links, dict sweeps, Py_ssize_t first,
                     Py_ssize_t last, Py_ssize_t start, Py_ssize_t stop):
    """Detectors ``first`` to ``last`` (excluded), one after the other, over ``batch[start:stop]``:
    each event's result appended to its row, an event skipped once its row ends with an exception.
    ``links``: the linked declarations of the segment, for the detectors that want them."""
    cdef Py_ssize_t i, j
    cdef list row, detectors = pipeline.detectors, link = pipeline._link
    stores = pipeline.stores
    for j in range(first, last):
        detector = detectors[j]
        store = stores[detector.name]
        work = detector.process
        sweep = getattr(detector, "evict_idle", None) if sweeps else None
        wants_link = links is not None and link[j]
        for i in range(start, stop):
            if sweep is not None and i in sweeps:
                sweep(store, sweeps[i])
            row = <list> rows[i]
            if row and type(row[len(row) - 1]) is not list:
                continue  # an earlier detector failed on this event
            event = batch[i]
            if wants_link and kinds[i] == _DECLARATION:
                event = links[i - start]
            try:
                done = work(event, store)
                if type(done) is not list:
                    done = list(done)
            except Exception as exc:
                done = exc
            row.append(done)


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


def subject_of(pipeline, event, list scores, int kind, arrival=_LIVE):
    """The :class:`Subject` of ``event``, an ENS, a declaration or an excise record (``kind``);
    ``arrival``: what the ENS registry held for a declaration's ENS, when not to be looked up now."""
    if kind == _ENS:
        return Subject(event.event_id, "ens", event.ens_reference, event.first_office_of_entry, event.event_time,
                       event.consignee.eori, str(event.transport_mode), event.eta)
    if kind == _DECLARATION:
        reference = event.ens_reference
        if arrival is _LIVE:
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


# --- deadline timers (vigie.operators.deadlines), for a batch --------------------------------------

cdef object _NOT_AN_EVENT_MS = -(2**63)


cpdef object event_ms(event):
    """An event's time in epoch milliseconds, as the deadline timers (and Flink's watermarks) count it;
    what is not an event (process_all fails it in its place) counts as the earliest time."""
    when = getattr(event, "event_time", None)
    if isinstance(when, datetime):
        return int(epoch_seconds(when) * 1000)
    return _NOT_AN_EVENT_MS


def plan_deadlines(list batch, list typed, list clock_ms=None):
    """Each event's wake-ups (:meth:`~.deadlines.DeadlineTimers.wake_ups`; None for none) and the time
    it moves the timers to: its :func:`event_ms`, or its entry of ``clock_ms`` when the runtime keeps
    its own clock (then not worked out again). ``typed``: ``(detector name, rule, event types that can
    set a deadline)``; the rule is asked only about events of those types (an e-AD is a few percent of
    the stream)."""
    cdef Py_ssize_t i, n = len(batch)
    cdef bint own_clock = clock_ms is None
    cdef list wakes = [None] * n, times = [None] * n if own_clock else list(clock_ms), found
    for i in range(n):
        event = batch[i]
        found = None
        for name, rule, types in typed:
            if isinstance(event, types):
                for key, at in rule.deadlines_of(event):
                    if found is None:
                        found = []
                    found.append((wake_up_ms(at), name, key))
        wakes[i] = found
        if own_clock:
            times[i] = event_ms(event)
    return wakes, times


def segment_end(list wakes, list times, Py_ssize_t start, first_due, stream, lag_ms):
    """:meth:`~.deadlines.DeadlineTimers.segment_end`: index after the first event from ``start`` after
    which a wake-up may be due (``first_due``: the earliest pending; ``stream``: the stream time), else
    the end."""
    cdef Py_ssize_t i, n = len(times)
    for i in range(start, n):
        found = wakes[i]
        if found is not None:
            for entry in <list> found:
                if entry[0] < first_due:
                    first_due = entry[0]
        if times[i] > stream:
            stream = times[i]
        if stream - lag_ms - 1 >= first_due:
            return i + 1
    return n
