"""Suspicious change of an operator's declarative behaviour, and new importers with large flows.

State key: the importer's EORI. Everything the detector knows about an importer lives in
its :class:`BehaviourState`, learned from that importer's own declarations only:

* a **baseline** profile: how often it used each origin and each HS chapter (decayed
  counts), its own reference unit values per (CN4, quantity basis) (the last
  ``uv_window`` log unit values, read as median and MAD), and its declaration rate;
* a **recent window** of its last ``window`` declarations. A declaration joins the
  baseline only when it leaves the window, and not at all if it was part of a detected
  change: the first declarations of a change are not learned as normal before the change
  is confirmed (delayed learning);
* one **Page-Hinkley test** per signal (see :class:`PageHinkley`) over the per-declaration
  stream of:

  ``unit_value``
      mean robust z-score of the items' log unit values against the importer's own
      reference for the item's CN4 (negative: cheaper than usual); tested for decreases.
  ``origin``
      share of the items whose origin is unfamiliar (under ``familiar_share`` of its
      baseline items; never used before in the common case), minus the share expected from
      how often it tried new origins before (Good-Turing: the share of its items whose
      origin it used about once); tested for increases.
  ``chapter``
      same for HS chapters (commodity mix).
  ``volume``
      log of the recent declaration rate (over the last ``volume_span`` declarations) over
      its baseline rate; tested for increases.

When a test crosses its threshold, a **change** is recorded with its onset (event time of
the first declaration after the test statistic's extremum: "since when") and the signals
that changed. While the change lasts, the importer's deviating declarations stay out of
the baseline, so every declaration of the new regime keeps being compared with the old
habits. The change is *cleared* after ``window`` consecutive declarations in line with the
baseline, and *accepted* (the baseline restarts from the new regime) after
``accept_after`` deviating declarations or ``accept_days`` days.

**New importers.** An importer whose first declaration was seen less than
``new_importer_days`` ago is young; a young importer with large flows (a large mean customs
value per declaration since it was first seen, this declaration included) is flagged, more so under
procedure 4200, whose import VAT exemption for an onward supply is the classic
missing-trader route. The detector only knows what it has seen: an importer first seen
within ``novelty_grace_days`` of ``history_start`` (when the detector's history begins,
e.g. the first day replayed) may simply predate that history, so it is not called new.
With ``history_start=None`` (the default) the detector cannot tell a new importer from one
it has not met yet, and the new-importer score is off: a runtime that knows where its
history starts (the first event of a replay, the start of a generated stream) passes it.

Why a re-implementation of Page-Hinkley rather than ``river.drift.PageHinkley``: River's
detector only pickles (its running mean is a ``river.stats.Mean`` and it picks its test
function at construction), while keyed state here must be a JSON-able dict that a Flink or
Faust runtime can checkpoint. :class:`PageHinkley` follows River 0.23's update rule (the
cumulative mean, the forgetting factor ``alpha`` on the cumulative sums, ``delta``, the
threshold, ``min_instances``; the same alarms as River's on the same stream, which a test
checks) with plain float fields, one direction per test, a prior on the mean (see
:class:`PageHinkleyParams`) and the onset time River does not track.

**Score.** For each signal ``k``, ``a_k`` is 1 when a change on ``k`` is active (or this very
declaration makes the test cross its threshold), else half the fraction of the threshold
the test statistic has reached; ``c_k`` in [0, 1] says how strongly this declaration itself
shows the deviation (z of -1 gives 0 and -3 gives 1 for unit values; share of unfamiliar
items for origins and chapters; a rate ratio of 1.5 gives 0 and 5 gives 1 for volume). The
behaviour score is ``1 - prod_k(1 - w_k a_k c_k)``: at least ``w_k c_k`` when a change on
``k`` is confirmed, at most ``w_k / 2`` per signal before confirmation. The weights
(``signal_weights``: unit value 0.7, origin 0.7, chapter 0.6, volume 0.4) keep a change on
one front below a change on several: a new origin alone (a new supplier) or more
declarations alone (a busy season) is weaker evidence than a new origin with lower prices
and more declarations (0.7, vs 0.97 for the three together). The new-importer score is
``youth x largeness x procedure factor`` (see :meth:`OperatorBehaviourDetector.new_importer_score`);
the final score is their noisy-OR. Scores under ``min_score`` (0.05) are not reported:
``score_one`` returns ``None``, the detector having nothing to say about the declaration.

**Bounded memory** per importer: ``window`` recent declarations of at most
``max_items_per_declaration`` items each, ``max_categories`` origins and chapters,
``max_uv_groups`` unit-value references of ``uv_window`` values each (least recently used
evicted), four tests of five numbers each. Baseline counts are halved whenever they sum to
more than ``count_cap``, so old habits fade. A few kB per importer, whatever its history.

**Speed.** What runs for every declaration (its units, features, the score's numbers, the
learning step, and :meth:`~OperatorBehaviourDetector.process` that chains them), the Page-Hinkley
test and the baseline are in C (:mod:`._behaviour`), equal bit for bit to the Python arithmetic.
So is a reported score's main text (``BehaviourCore.reason``); the change's details and the new
importer's sentence are built here, and :meth:`~OperatorBehaviourDetector._reason` is the Python
reference the C text is tested against (``tests/test_detector_hot_paths.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, ClassVar, Self

from vigie.schemas import ImportDeclaration, RiskScore

from ._behaviour import Baseline, BehaviourCore, DeclarationProfile, Features, ItemProfile, PageHinkley
from .base import Operator, OperatorState

__all__ = [
    "SIGNALS",
    "VAT_RATE",
    "Baseline",
    "BehaviourState",
    "DeclarationProfile",
    "Features",
    "ItemProfile",
    "OperatorBehaviourDetector",
    "PageHinkley",
    "PageHinkleyParams",
]

SIGNALS: tuple[str, ...] = ("unit_value", "origin", "chapter", "volume")
"""Signals monitored per importer, in the order they are reported."""

_DAY = 86400.0
VAT_RATE = 0.20
"""Import VAT rate used for the EUR at stake (French standard rate)."""


@dataclass(frozen=True, slots=True)
class PageHinkleyParams:
    """Configuration of one one-sided Page-Hinkley test.

    ``direction`` is +1 to detect increases of the mean, -1 for decreases. ``delta`` is the
    tolerated drift per observation, ``threshold`` the alarm level (lambda) of the
    cumulative deviation, both in the signal's units; ``alpha`` the forgetting factor of
    the cumulative sums; no alarm before ``min_instances`` observations.

    River's running mean starts from the first observation, so a change that begins within
    the first observations is absorbed into the mean and never seen; importers with a short
    history switch early in it. Here the mean starts from ``prior_mean`` worth
    ``prior_weight`` observations (the signal's in-control level: 0 for every signal of this
    detector, since z-scores, excess shares and log rate ratios are all centred on the
    importer's usual level), then follows the data. ``prior_weight=0`` gives River's alarms.
    """

    direction: int
    delta: float
    threshold: float
    min_instances: int = 3
    alpha: float = 1.0 - 1e-4
    prior_mean: float = 0.0
    """In-control level of the signal, held by the mean before any observation."""
    prior_weight: float = 10.0
    """Pseudo-observations of ``prior_mean`` in the running mean; 0 gives River's rule exactly."""


class BehaviourState(OperatorState):
    """Everything known about one importer (see the module docstring for each part).

    ``seen`` / ``value_seen``: declarations and EUR of customs value ever seen;
    ``first_seen`` / ``last_seen``: event times (epoch s) of the first and latest.
    ``window``: recent declarations as dicts (``t`` time, ``v`` value, ``f`` features,
    ``items`` ``[group, log_uv, origin, chapter]``, ``dev`` deviating, ``q`` quarantined).
    ``tests``: Page-Hinkley fields per signal. ``change``: the active change or None
    (``since``, ``detected``, ``signals`` {signal: detection time}, ``quarantined``,
    ``normal_streak``).

    :meth:`to_dict` shares the state's containers (no copy on every checkpoint): serialise
    it, do not modify it.
    """

    __slots__ = ("baseline", "change", "first_seen", "last_seen", "memo", "seen", "tests", "value_seen", "window")

    def __init__(self) -> None:
        self.seen = 0
        self.value_seen = 0.0
        self.first_seen: float | None = None
        self.last_seen = 0.0
        self.baseline = Baseline()
        self.window: list[dict[str, Any]] = []
        # One test per signal (no comprehension: a new importer comes every few declarations).
        self.tests: dict[str, PageHinkley] = dict(
            zip(SIGNALS, (PageHinkley(), PageHinkley(), PageHinkley(), PageHinkley()), strict=True)
        )
        self.change: dict[str, Any] | None = None
        # Features of the unit just scored, reused by learn_one (a cache, not state: never saved).
        self.memo: tuple[str, int, Features] | None = None

    def last_activity(self) -> float | None:
        return self.last_seen

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "value_seen": self.value_seen,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "baseline": self.baseline.to_dict(),
            "window": self.window,
            "tests": {s: t.to_list() for s, t in self.tests.items()},
            "change": self.change,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls()
        state.seen, state.value_seen = data["seen"], data["value_seen"]
        state.first_seen, state.last_seen = data["first_seen"], data["last_seen"]
        state.baseline = Baseline.from_dict(data["baseline"])
        state.window = [_copy_entry(e) for e in data["window"]]
        state.tests = {s: PageHinkley.from_list(t) for s, t in data["tests"].items()}
        change = data["change"]
        state.change = None if change is None else {**change, "signals": dict(change["signals"])}
        return state


def _copy_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "f": dict(entry["f"]), "items": [list(i) for i in entry["items"]]}


@lru_cache(maxsize=4096)  # a change's onset and detection times are quoted by every declaration of it
def _fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


class OperatorBehaviourDetector(Operator[DeclarationProfile, BehaviourState]):
    """Scores each import declaration for a change of its importer's behaviour.

    See the module docstring for the signals, the tests and what the score means.
    ``eur_at_stake``: duty and VAT on the value shortfall against the importer's own unit
    value references (items below them, when the unit-value signal contributes), plus the
    import VAT not collected under procedure 4200 when the new-importer score contributes.

    >>> from datetime import UTC, datetime, timedelta
    >>> detector = OperatorBehaviourDetector()
    >>> state = detector.new_state()
    >>> t0 = datetime(2026, 3, 2, tzinfo=UTC)
    >>> def decl(i: int, origin: str, value: float, hours: float) -> DeclarationProfile:
    ...     item = ItemProfile(1, "61091000", origin, "6109:kg", math.log(value / 100.0), 100.0, value, 12.0)
    ...     return DeclarationProfile(f"e{i}", f"M{i}", t0 + timedelta(hours=hours), "FR000690",
    ...                               "FR12345678900010", "4000", (item,))
    >>> for i in range(30):   # a steady importer: Chinese T-shirts at 14 EUR/kg, one declaration every 6 h
    ...     detector.learn_one(decl(i, "CN", 1400.0 * (1.1 if i % 2 else 0.9), 6.0 * i), state)
    >>> scores = []
    >>> for i in range(30, 38):   # then Malaysian origin, 40 % of its usual value, every 1.5 h
    ...     unit = decl(i, "MY", 560.0, 180.0 + 1.5 * (i - 30))
    ...     scores.append(detector.score_one(unit, state))
    ...     detector.learn_one(unit, state)
    >>> scores[-1].score > 0.9, scores[-1].reason_fields["change_since"]
    (True, '2026-03-09 12:00')
    >>> print(scores[-1].reason)  # doctest: +ELLIPSIS
    Importer FR12345678900010: behaviour change since 2026-03-09 12:00 ...: declared unit values 60 % below
    its usual level; 6 of its last 6 declarations from origins never used before (MY). ...
    """

    name: ClassVar[str] = "operator_behaviour"
    state_type: ClassVar[type[OperatorState]] = BehaviourState

    def __init__(
        self,
        window: int = 6,
        min_history: int = 3,
        familiar_share: float = 0.03,
        uv_window: int = 24,
        min_uv_reference: int = 3,
        min_spread: float = 0.15,
        prior_uv_sigma: float = 0.5,
        prior_weight_uv: float = 5.0,
        z_clip: float = 3.0,
        volume_span: int = 6,
        rate_window: int = 20,
        unit_value_test: PageHinkleyParams | None = None,
        origin_test: PageHinkleyParams | None = None,
        chapter_test: PageHinkleyParams | None = None,
        volume_test: PageHinkleyParams | None = None,
        accept_after: int = 50,
        accept_days: float = 30.0,
        new_importer_days: float = 30.0,
        history_start: datetime | None = None,
        novelty_grace_days: float = 7.0,
        large_value_eur: float = 100_000.0,
        largeness_width: float = 0.7,
        non_4200_factor: float = 0.6,
        max_items_per_declaration: int = 20,
        max_categories: int = 32,
        max_uv_groups: int = 16,
        count_cap: float = 2000.0,
        signal_weights: dict[str, float] | None = None,
        min_score: float = 0.05,
        idle_days: float = 365.0,
    ) -> None:
        # An importer silent for a year has no usable baseline left: it starts again as a new one.
        self.idle_retention = timedelta(days=idle_days)
        self.window = window
        self.min_history = min_history
        self.familiar_share = familiar_share
        self.uv_window = uv_window
        self.min_uv_reference = min_uv_reference
        self.min_spread = min_spread
        self.prior_uv_sigma = prior_uv_sigma
        self.prior_weight_uv = prior_weight_uv
        self.z_clip = z_clip
        self.volume_span = volume_span
        self.rate_window = rate_window
        self.tests: dict[str, PageHinkleyParams] = {
            # z-scores: a drop of 1.5 robust SD per declaration alarms after about 4 declarations.
            "unit_value": unit_value_test or PageHinkleyParams(-1, delta=0.5, threshold=4.0),
            # shares in [0, 1]: 3-4 declarations mostly from unfamiliar origins/chapters alarm.
            "origin": origin_test or PageHinkleyParams(1, delta=0.2, threshold=2.0),
            "chapter": chapter_test or PageHinkleyParams(1, delta=0.2, threshold=2.0),
            # log rate ratio over the last `volume_span` declarations (overlapping, hence smooth):
            # a rate x3-4 sustained over about 6 declarations alarms.
            "volume": volume_test or PageHinkleyParams(1, delta=0.5, threshold=4.0),
        }
        self.accept_after = accept_after
        self.accept_days = accept_days
        self.new_importer_days = new_importer_days
        self.history_start = history_start
        self.novelty_grace_days = novelty_grace_days
        self._novelty_from = None if history_start is None else history_start.timestamp() + novelty_grace_days * _DAY
        self.large_value_eur = large_value_eur
        self.largeness_width = largeness_width
        self.non_4200_factor = non_4200_factor
        self.max_items = max_items_per_declaration
        self.max_categories = max_categories
        self.max_uv_groups = max_uv_groups
        self.count_cap = count_cap
        self.signal_weights = signal_weights or {"unit_value": 0.7, "origin": 0.7, "chapter": 0.6, "volume": 0.4}
        self.min_score = min_score
        # The arithmetic run on every declaration, in C (reads the configuration above once).
        self._core = BehaviourCore(self, SIGNALS, VAT_RATE)

    # --- units -----------------------------------------------------------------------------------
    def units(self, event: Any) -> Iterable[tuple[str, DeclarationProfile]]:
        if not isinstance(event, ImportDeclaration):
            return ()
        return ((event.importer_eori, self._core.profile(event)),)

    # --- features --------------------------------------------------------------------------------
    def features(self, unit: DeclarationProfile, state: BehaviourState) -> Features:
        """What ``unit`` shows against the importer's baseline (pure: reads ``state`` only)."""
        return self._core.features(unit, state)

    # --- scoring ---------------------------------------------------------------------------------
    def new_importer_score(self, unit: DeclarationProfile, state: BehaviourState) -> float:
        """``youth x largeness x procedure factor``, in [0, 1].

        ``youth``: 1 for an importer never seen before, falling linearly to 0 at
        ``new_importer_days`` after its first declaration; 0 when it was first seen within
        the grace period after ``history_start`` (and always 0 without ``history_start``). ``largeness``:
        ``sigmoid(ln(value / large_value_eur) / largeness_width)`` of its mean customs value
        per declaration since first seen, this declaration included (0.5 at
        ``large_value_eur``, 0.88 at 4 times it): large consignments, whatever their number.
        Procedure factor: 1 under 4200 (onward-supply VAT exemption), ``non_4200_factor`` otherwise.
        """
        return self._core.new_importer_score(unit, state)

    def score_one(self, unit: DeclarationProfile, state: BehaviourState) -> RiskScore | None:
        feats = self.features(unit, state)
        state.memo = (unit.event_id, state.seen, feats)
        return self._score(unit, state, feats)

    def score_learn_one(self, unit: DeclarationProfile, state: BehaviourState) -> RiskScore | None:
        """:meth:`score_one` then :meth:`learn_one`, computing the declaration's features once."""
        core = self._core
        feats = core.features(unit, state)
        score = self._score(unit, state, feats)
        core.learn(unit, state, feats)
        return score

    def process(self, event: Any, store: MutableMapping[str, BehaviourState]) -> list[RiskScore]:
        """:meth:`Operator.process` for the one unit an import declaration gives, the steps in C
        (``BehaviourCore.process``; a subclass that overrides a step goes through ``Operator.process``)."""
        return self._core.process(self, event, store)

    def _score(self, unit: DeclarationProfile, state: BehaviourState, feats: Features) -> RiskScore | None:
        """The score of ``unit`` given its :meth:`features` (None under ``min_score``)."""
        numbers = self._core.score(unit, state, feats)
        if numbers is None:
            return None
        return self._reason(unit, state, feats, numbers)

    def _reason(
        self, unit: DeclarationProfile, state: BehaviourState, feats: Features, numbers: tuple[Any, ...]
    ) -> RiskScore:
        """The score of ``unit`` given its :meth:`features` and the numbers ``BehaviourCore.score`` gave
        for them (``levels``, ``parts``, ``onsets``, ``behaviour``, ``new``, ``score``): its sentences and fields."""
        levels, parts, onsets, behaviour, new, score = numbers
        change = state.change
        when = unit.when

        confirmed = [s for s in SIGNALS if levels[s] >= 1.0 and parts[s] > 0.0]
        since: float | None = None
        detected: float | None = None
        if confirmed:
            if change is not None:
                since, detected = change["since"], change["detected"]
            if onsets:
                first_onset = min(onsets.values())
                since = first_onset if since is None else min(since, first_onset)
                detected = detected if detected is not None else when
        total = unit.total_value_eur
        at_stake = feats.uv_stake_eur if parts["unit_value"] > 0 else 0.0
        vat_4200 = 0.0
        if unit.procedure_code == "4200" and new >= self.min_score:
            duty = sum(i.customs_value_eur * i.duty_rate_pct / 100.0 for i in unit.items)
            vat_4200 = VAT_RATE * (total + duty)
            at_stake += vat_4200

        sentences: list[str] = []
        fields: dict[str, float | str | None] = {
            "behaviour_score": round(behaviour, 4),
            "new_importer_score": round(new, 4),
            "declarations_seen": float(state.seen),
            "baseline_declarations": float(state.baseline.n),
            "changed_signals": ",".join(confirmed) or None,
            "change_since": _fmt_time(since) if since is not None else None,
            "change_detected": _fmt_time(detected) if detected is not None else None,
        }
        if confirmed:
            assert since is not None and detected is not None
            detail = self._change_details(unit, state, feats, confirmed, since, fields)
            sentences.append(
                f"Importer {unit.importer_eori}: behaviour change since {_fmt_time(since)} "
                f"(detected {_fmt_time(detected)}): {'; '.join(detail or confirmed)}."
            )
        elif behaviour >= self.min_score:
            building = max(SIGNALS, key=lambda s: parts[s])
            pct = 100.0 * 2.0 * levels[building]
            sentences.append(
                f"Importer {unit.importer_eori}: possible behaviour change building up on {building.replace('_', ' ')} "
                f"(Page-Hinkley test at {pct:.0f} % of its alarm threshold; {state.baseline.n} declarations of "
                "history)."
            )
        this = self._this_declaration(unit, feats)
        if this and (confirmed or behaviour >= self.min_score):
            sentences.append(this)
        if new >= self.min_score:
            sentences.append(self._new_importer_sentence(unit, state, vat_4200))
            fields["first_seen"] = _fmt_time(state.first_seen) if state.first_seen is not None else None
            fields["value_seen_eur"] = round(state.value_seen, 2)
        fields["declaration_value_eur"] = round(total, 2)
        fields["eur_at_stake"] = round(at_stake, 2)
        main = max(unit.items, key=lambda i: i.customs_value_eur)
        return self.risk_score(
            subject_event_id=unit.event_id,
            subject_type="declaration",
            subject_reference=unit.mrn,
            item_number=None,
            event_time=unit.event_time,
            office=unit.office,
            operator_eori=unit.importer_eori,
            cn_code=main.cn_code,
            origin_country=main.origin,
            score=min(1.0, max(0.0, score)),
            eur_at_stake=at_stake,
            reason=" ".join(sentences),
            reason_fields=fields,
        )

    def _change_details(
        self,
        unit: DeclarationProfile,
        state: BehaviourState,
        feats: Features,
        confirmed: list[str],
        since: float,
        fields: dict[str, float | str | None],
    ) -> list[str]:
        """Sentences saying by how much each changed signal moved since the onset."""
        base = state.baseline
        recent = state.window[-(self.window - 1) :] if self.window > 1 else []
        entries = [*recent, {"t": unit.when, "f": feats.entry_features()}]
        after = [e for e in entries if e["t"] >= since]
        out: list[str] = []
        if "unit_value" in confirmed:
            ratios = [e["f"]["uv_lr"] for e in after if e["f"]["uv_lr"] is not None]
            if ratios:
                pct = 100.0 * (1.0 - math.exp(sum(ratios) / len(ratios)))
                fields["unit_value_drop_pct"] = round(pct, 1)
                out.append(f"declared unit values {pct:.0f} % below its usual level")
        for signal, key, what in (("origin", "no", "origins"), ("chapter", "nc", "HS chapters")):
            if signal not in confirmed:
                continue
            flagged = [e for e in entries if e["f"][key]]
            codes = list(dict.fromkeys(c for e in flagged for c in e["f"][key]))
            counts = base.origins if signal == "origin" else base.chapters
            never = all(counts.get(c, 0.0) == 0.0 for c in codes)
            fields[f"new_{signal}s"] = ",".join(codes)
            fields[f"new_{signal}_declarations"] = float(len(flagged))
            out.append(
                f"{len(flagged)} of its last {len(entries)} declarations from {what} "
                f"{'never used before' if never else 'new or rare for it'} ({', '.join(codes)})"
            )
        if "volume" in confirmed:
            base_rate = base.rate_per_day()
            # A late declaration (older than the onset) may leave nothing after it: no span to measure.
            span = unit.when - min(e["t"] for e in after) if len(after) >= 2 else 0.0
            if base_rate is not None and span > 0:
                rate = (len(after) - 1) / span * _DAY
                fields["declarations_per_day"] = round(rate, 2)
                fields["baseline_declarations_per_day"] = round(base_rate, 2)
                out.append(f"{rate:.1f} declarations/day vs {base_rate:.1f} usual ({rate / base_rate:.1f}x)")
            else:
                out.append("declaration rate well above its usual rate")
        return out

    @staticmethod
    def _this_declaration(unit: DeclarationProfile, feats: Features) -> str:
        if feats.uv_item is None or feats.uv_z is None or feats.uv_z > -1.0:
            return ""
        _, cn, origin, declared, reference = feats.uv_item
        below = 100.0 * (1.0 - declared / reference)
        text = (
            f"This declaration: CN {cn} from {origin} at {declared:,.2f} EUR/{feats.uv_basis}, "
            f"{below:.0f} % below its usual {reference:,.2f} EUR/{feats.uv_basis}"
        )
        if feats.uv_stake_eur > 0:
            text += f"; duty and VAT on the shortfall {feats.uv_stake_eur:,.0f} EUR"
        return text + "."

    def _new_importer_sentence(self, unit: DeclarationProfile, state: BehaviourState, vat_4200: float) -> str:
        total = unit.total_value_eur
        if state.first_seen is None:
            head = f"Importer {unit.importer_eori} has no history (first declaration seen)"
        else:
            age = (unit.when - state.first_seen) / _DAY
            head = (
                f"Importer {unit.importer_eori} is new (first seen {_fmt_time(state.first_seen)}, {age:.1f} days ago, "
                f"{state.seen} declarations worth {state.value_seen:,.0f} EUR so far)"
            )
        text = f"{head} and declares {total:,.0f} EUR of goods"
        mean = (state.value_seen + total) / (state.seen + 1)
        if mean >= self.large_value_eur:
            text += f" (large flows: {mean:,.0f} EUR per declaration on average, above {self.large_value_eur:,.0f} EUR)"
        if unit.procedure_code == "4200":
            text += (
                f" under procedure 4200 (VAT exemption for an onward supply): {vat_4200:,.0f} EUR of import VAT "
                "not collected"
            )
        return text + "."

    # --- learning --------------------------------------------------------------------------------
    def learn_one(self, unit: DeclarationProfile, state: BehaviourState) -> None:
        memo = state.memo
        if memo is not None and memo[0] == unit.event_id and memo[1] == state.seen:
            feats = memo[2]
        else:
            feats = self.features(unit, state)
        self._core.learn(unit, state, feats)
