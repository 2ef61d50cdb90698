"""Seeded, realistic synthetic customs event stream, with the ground truth kept apart.

>>> from vigie.schemas.generator import GeneratorConfig, generate
>>> event, truth = next(generate(GeneratorConfig(duration_hours=1.0, rate_per_hour=100)))
>>> event.event_type in ("ens", "declaration", "excise", "outcome")
True

Same :class:`GeneratorConfig` => byte-identical output. The world (goods, places, tariffs)
is described in :mod:`.catalogue`, the traders in :mod:`.population`, arrivals, timing,
ordering, taxes and controls in :mod:`.stream`.

Fraud patterns (``GroundTruth.patterns``) and what they do to the events:

``undervaluation``
    Customs value x 0.15-0.5 on one or more items (each item with probability 0.6); the
    invoice amount follows the false value. Details: true and declared values.
``misclassification``
    The true goods (e.g. televisions 8528 72, 14 %) are declared under a lower-duty code
    (monitors 8528 52, 0 %) with the true goods' mass and value. In 40 % of cases the ENS,
    filed from the carrier's data, still shows the true HS6 and description.
``origin_transshipment``
    Chinese goods under trade-defence duty (solar panels, bicycles, steel, aluminium,
    tyres, garlic, ceramics...) declared as originating in MY, VN, TH, KH, ID, LK, TW or IN
    (sometimes with a preference); the ENS is filed from that country but its countries of
    routing start with CN (3 % of clean Far-East ENS from other countries also route via CN).
``splitting``
    One shipment worth 3-8 x 95-148 EUR cut into 3-8 parcels under 150 EUR, each with its
    ENS and declaration, same importer, same goods, same day, arriving within 1.5 h:
    each part escapes the duty on the whole (VAT is still paid). Details: ``shipment_id``.
``vague_description``
    Add-on to 30 % of customs frauds: every ENS item says "PARTS", "GIFTS", "FAK",
    "SAMPLES", "GENERAL CARGO"...; 1.5 % of clean ENS have one such item too.
``cover_load_smuggling``
    A small importer declares furniture or tiles; 0.3-6 million cigarettes are hidden in
    the load. The ENS gross mass includes the cigarettes (about 1.2 kg per 1,000 sticks),
    the declared net mass does not. Revenue: duty 57.6 %, excise, VAT on the cigarettes.
``excise_diversion``
    Goods imported under excise suspension (procedure 0700): the e-AD never gets a report
    of receipt (60 %), is sent for an export that never happens (15 %), or carries less
    than was imported (25 %). Truth on the e-AD (and the export record).
``excise_shortage``
    The report of receipt shows 3-20 % less than the e-AD dispatched. Truth on the receipt.
``excise_physics``
    Released for consumption at import with understated duty: alcohol strength cut,
    spirits filed under the wine category, cigarette sticks understated (mass per stick
    impossible), fuel volume understated (mass / volume far from the density), tobacco
    mass below the declaration's, or duty simply below rate x base. Truth on the
    declaration and the release record.
``behaviour_change``
    A mid-sized, long-standing importer switches at a random time (20-70 % into the
    window) to 1-2 new origins, 3-5 times its usual consignment rate, 1.5-3 times the
    mass, and declared values x 0.3-0.6: every consignment after the switch is flagged.
``new_importer_large_flows``
    EORIs never seen before, appearing within the first 70 % of the window, shipping
    high-value electronics in large lots under procedure 4200 (VAT exemption for an
    onward supply that is never taxed). Clean importers use 4200 too (4 % of them).

Ground truth is attached to every event that carries the fraud: the ENS and declaration
of a customs fraud (same ``revenue_at_risk_eur`` and ``details["consignment_id"]``), the
excise records of an excise fraud. Control outcomes never carry ground truth.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from vigie.schemas.codec import encode_event

from .stream import (
    PATTERN_MIX,
    PATTERNS,
    EventStream,
    GenerationStats,
    GeneratorConfig,
    GroundTruth,
    generate,
    infringement_of,
)

__all__ = [
    "PATTERNS",
    "PATTERN_MIX",
    "EventStream",
    "GenerationStats",
    "GeneratorConfig",
    "GroundTruth",
    "generate",
    "infringement_of",
    "write_stream",
]

_BUFFER = 1 << 20


def write_stream(config: GeneratorConfig, events_path: Path, truth_path: Path) -> GenerationStats:
    """Write events (``encode_event`` JSON, one a line) and ground truth (JSON lines); return stats.

    The truth file holds one :meth:`GroundTruth.to_dict` line per event carrying a fraud,
    in the order of the events. Both files are byte-identical for the same config.
    """
    stream = EventStream(config)
    events_path = Path(events_path)
    truth_path = Path(truth_path)
    with events_path.open("wb", buffering=_BUFFER) as events, truth_path.open("wb", buffering=_BUFFER) as truths:
        for event, truth in stream:
            events.write(encode_event(event))
            events.write(b"\n")
            if truth is not None:
                truths.write(orjson.dumps(truth.to_dict()))
                truths.write(b"\n")
    return stream.stats
