"""The pipeline glue's C hot paths give exactly what the Python they replace gives.

Label join (expiry heap, packed blobs), ENS registry (summary JSON written and read back),
fusion (subjects, per-item stakes), alert ids: each is compared with its Python reference on
ordinary and on awkward inputs (the cases where the C code hands over to Python).
"""

from __future__ import annotations

import heapq
import math
import pickle
import random
import uuid
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.factories import T0
from vigie.models.feedback import LabelJoin, PendingSubject
from vigie.operators._ens_link import summary_from_json, summary_json
from vigie.operators._labels import ExpiryHeap, context_json, pack_pending
from vigie.operators._score import uuid5_text
from vigie.operators.ens_link import EnsItemSummary, EnsSummary, vague_description
from vigie.operators.fusion import _ALERT_NAMESPACE, LearnedFusion, Subject, detectors_stake
from vigie.schemas import EntrySummaryDeclaration, RiskScore
from vigie.schemas.generator import GeneratorConfig, generate

ODD_TEXTS = ["", "plain", 'say "hi"', "back\\slash", "tab\there", "line\nbreak", "Müller", "\x7f", "東京", "\u2028"]
ODD_NUMBERS: list[Any] = [0, -1, 7, 2**63 - 1, -(2**63), 2**63 + 5, 0.0, -0.0, 1.5, 1e16, 1e-5, 1e-4, 123456.789, 1e300]


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON-able value of the kinds detectors remember, awkward ones included."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([*ODD_TEXTS, "22", "220421", "AU"])
    if kind == 1:
        return rng.choice([*ODD_NUMBERS, rng.randint(-(10**6), 10**6)])
    if kind == 2:
        return rng.choice([None, True, False])
    if kind == 3:
        return rng.uniform(-1e6, 1e6) * 10.0 ** rng.randint(-8, 8)
    if kind == 4:
        return rng.randint(0, 999)
    if kind == 5:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(6))]
    if kind == 6:
        return tuple(_random_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    return {rng.choice([*ODD_TEXTS, "ens_pre_arrival", "k"]): _random_value(rng, depth + 1) for _ in range(3)}


def test_context_json_is_orjson_byte_for_byte() -> None:
    rng = random.Random(3)
    values = [{"ens_pre_arrival": [[i, "22", "220421", "AU", i % 3]]} for i in range(50)]
    values += [{"d": _random_value(rng)} for _ in range(3_000)]
    values += [{"d": x} for x in ODD_TEXTS + ODD_NUMBERS] + [{"d": [[[[1]]]]}, {}]
    for value in values:
        try:
            expected = orjson.dumps(value)
        except orjson.JSONEncodeError:
            with pytest.raises(orjson.JSONEncodeError):
                context_json(value)
            continue
        assert context_json(value) == expected, value


def test_deep_contexts_are_left_to_orjson() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(deep)
    with pytest.raises(orjson.JSONEncodeError):
        context_json(deep)
    shallow: Any = 1
    for _ in range(100):  # deeper than the C writer goes, within orjson's limit
        shallow = [shallow]
    assert context_json(shallow) == orjson.dumps(shallow)


def test_pack_pending_is_pending_subject_pack() -> None:
    rng = random.Random(4)
    for n in (0, 1, 26, 300):
        features = array("d", [rng.uniform(-7, 7) for _ in range(n)])
        for contexts in ({}, {"ens_pre_arrival": [[1, "22", "220421", "AU", 0]]}, {"x": _random_value(rng)}):
            assert pack_pending(features, contexts) == PendingSubject.pack(features, contexts)
    with pytest.raises(TypeError):
        pack_pending(array("f", [1.0]), {})


def test_expiry_heap_pops_in_tuple_order() -> None:
    rng = random.Random(5)
    heap, reference = ExpiryHeap(), []
    seq = 0
    for _ in range(200):
        for _ in range(rng.randrange(60)):
            seq += 1
            entry = (float(rng.randrange(50)), seq, f"e{seq}")  # many equal expiries: the sequence decides
            heap.push(*entry)
            heapq.heappush(reference, entry)
        if rng.random() < 0.5 and reference:
            assert heap.pop() == heapq.heappop(reference)
        else:
            now = float(rng.randrange(60))
            expected = []
            while reference and reference[0][0] < now:
                _, s, name = heapq.heappop(reference)
                expected.append((s, name))
            assert heap.pop_before(now) == expected
        assert len(heap) == len(reference)
        assert heap.earliest() == (reference[0][0] if reference else math.inf)
    copied = pickle.loads(pickle.dumps(heap))  # a pipeline, label join included, still pickles
    assert sorted(copied.entries()) == sorted(reference)
    assert [copied.pop() for _ in range(len(copied))] == [heapq.heappop(reference) for _ in range(len(reference))]
    with pytest.raises(IndexError):
        ExpiryHeap().pop()


def test_label_join_round_trip_keeps_the_expiry_order() -> None:
    join = LabelJoin(max_pending=50)
    rng = random.Random(6)
    for i in range(120):
        features = array("d", [float(i), 1.0])
        join.remember(f"e{i}", "declaration", f"R{i % 40}", 1000.0 + rng.randrange(30), features, {"d": [i]})
    assert len(join) == 50
    restored = LabelJoin.from_dict(orjson.loads(orjson.dumps(join.to_dict())))
    assert restored.to_dict() == join.to_dict()
    for now in (1005.0, 1015.0, 1031.0):
        assert restored.evict(now) == join.evict(now)
        assert restored.to_dict() == join.to_dict()
    assert len(join) == 0


def test_uuid5_text_is_uuid5() -> None:
    rng = random.Random(7)
    names = ["", "e1", "événement", "x" * 500] + [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(200)]
    for namespace in (_ALERT_NAMESPACE, uuid.NAMESPACE_DNS):
        for name in names:
            assert uuid5_text(namespace.bytes, name) == str(uuid.uuid5(namespace, name))
    with pytest.raises(ValueError):
        uuid5_text(b"short", "e1")


def test_subject_behaves_like_the_frozen_record_it_was() -> None:
    subject = Subject("e1", "declaration", "MRN1", "FR002300", T0, "FR1", eta=T0 + timedelta(hours=5), ens_risk=0.25)
    assert (subject.reference, subject.ens_risk, subject.declared_eur, subject.regime) == ("MRN1", 0.25, None, None)
    twin = Subject(*subject.astuple())
    assert twin == subject and hash(twin) == hash(subject) and twin is not subject
    assert subject != Subject("e2", *subject.astuple()[1:])
    assert pickle.loads(pickle.dumps(subject)) == subject
    assert repr(subject).startswith("Subject(event_id='e1', subject_type='declaration', reference='MRN1'")
    with pytest.raises(AttributeError):
        subject.office = "FR1"  # type: ignore[misc]


def _score(item: Any, stake: Any, detector: str = "undervaluation", score: float = 0.7) -> RiskScore:
    return RiskScore.model_construct(
        event_type="risk_score", score_id="s", detector=detector, subject_event_id="d1", subject_type="declaration",
        subject_reference="MRN1", item_number=item, event_time=T0, office="FR002300", operator_eori=None, cn_code=None,
        origin_country=None, score=score, eur_at_stake=stake, reason="r", reason_fields={},
    )  # fmt: skip


@pytest.mark.parametrize(
    "items",
    [
        [(1, 10.0), (2, 0.0), (1, 30.5), (3, 7.25)],
        [(2, 0.0), (1, 5.0), (2, 3.0), (1, 0.1)],  # item 2 enters the stake sum after item 1
        [(None, 4.0), (0, 6.0), (5, -1.0), (5, float("nan"))],
        [(i % 80, 0.1 * i) for i in range(200)],  # more items than the C arrays hold
        [(1, 10), (2, 3.5), (1, 2.0)],  # an int stake: Python's sum decides
        [(2**70, 1.0), (1, 2.0)],  # an item number beyond 64 bits
        # item 3 shows first but enters the dict last, once its stake is above 0: the order shows in the sum
        [(3, 0.0), (1, 5.649407226767994), (2, 0.008480262463668842), (3, 5.905839712874153)],
    ],
)
def test_features_sum_each_items_largest_stake_in_dict_order(items: list[tuple[Any, Any]]) -> None:
    fusion = LearnedFusion()
    fusion.bind(["undervaluation"])
    scores = [_score(item, stake) for item, stake in items]
    features = fusion._features(scores, Subject("d1", "declaration", "MRN1", "FR002300", T0), {}, {})
    index = fusion.feature_names.index
    assert features[index("log_stake")] == math.log10(1.0 + detectors_stake(scores))
    assert features[index("items_log")] == math.log1p(len({s.item_number or 0 for s in scores}))


def _ens_events() -> list[EntrySummaryDeclaration]:
    return [e for e, _ in generate(GeneratorConfig(duration_hours=1)) if isinstance(e, EntrySummaryDeclaration)]


def test_summary_json_is_orjson_of_the_summary_and_reads_back() -> None:
    events = _ens_events()
    rng = random.Random(8)
    odd = []
    for event in events[:60]:  # texts orjson escapes, non-ASCII text, masses in exponent notation
        consignor = event.consignor.model_copy(update={"name": rng.choice(ODD_TEXTS[1:])})
        items = [
            item.model_copy(update={"gross_mass_kg": rng.choice([1e-5, 1e-4, 0.1, 123456.789, 1e9, 5e-7])})
            for item in event.goods_items
        ]
        odd.append(event.model_copy(update={"consignor": consignor, "goods_items": items}))
    for event in events + odd:
        expected = orjson.dumps(EnsSummary.of(event).to_list())
        blob = summary_json(event, vague_description)
        assert blob == expected
        assert summary_from_json(blob, EnsSummary, EnsItemSummary) == EnsSummary.from_list(orjson.loads(blob))


def test_summary_reader_leaves_what_it_is_unsure_of_to_orjson() -> None:
    row = ["R", "e", datetime(2026, 3, 2, tzinfo=UTC).isoformat(), "FR", "N", None, ["FR"], [[1, "x", 2.5, 3, True]]]
    plain = orjson.dumps(row)
    spaced = orjson.dumps(row, option=orjson.OPT_INDENT_2)  # whitespace: orjson reads it
    escaped = plain.replace(b'"N"', b'"\\u00e9"')
    exponent, huge = plain.replace(b"2.5", b"2.5e0"), plain.replace(b"[[1,", b"[[12345678901234567890,")
    for blob in (plain, spaced, escaped, exponent, huge):
        assert summary_from_json(blob, EnsSummary, EnsItemSummary) == EnsSummary.from_list(orjson.loads(blob))
    for broken in (plain[:-1], plain + b"x", plain.replace(b"[[1,", b"[[01,"), plain.replace(b"2.5", b"1e400")):
        with pytest.raises(orjson.JSONDecodeError):
            summary_from_json(broken, EnsSummary, EnsItemSummary)


def test_model_input_in_c_is_the_scalers_z_scores() -> None:
    fusion = LearnedFusion()
    fusion.bind(["undervaluation", "ens_pre_arrival"])
    rng = random.Random(9)
    subject = Subject("d1", "declaration", "MRN1", "FR002300", T0)
    for i in range(300):
        scores = [_score(rng.randint(1, 4), rng.uniform(0, 5e4), score=rng.random()) for _ in range(rng.randint(1, 5))]
        features = fusion._features(scores, subject, {}, {})
        assert fusion._model_input(features) == fusion._model_input(list(features))  # C, then the scaler's Python
        fusion._kernel.learn(features, fusion.scaler)
        if i % 50 == 0:
            fusion.learn(features, i % 100 == 0, "exploitation")
