"""Atypical flows ("atypie"): goods items that depart from the reference model of a chapter's flows.

Each import-declaration goods item becomes a point in [0, 1]^8 of engineered features (see
:data:`FEATURES`), and Half-Space Trees (:mod:`._hst`, River's algorithm in C with the
very same scores) estimate how sparsely populated the region around it has been in the
chapter's last complete window of items. Lonely points are atypical.

State key: the CN chapter (2 digits). Everything a unit needs is local to it: the trees,
the (CN4, origin) value references, the (importer, CN4) pairs already seen (CN4 lies inside
the chapter) and the chapter's running feature statistics. About 97 chapters exist, so
the number of keys is bounded; each key's state is bounded too (see
:class:`AtypicalFlowState`). The price is skew: the busiest chapters (85, 61, 94...) carry
most of the traffic, on one partition each.

Features, each mapped to [0, 1] (values beyond the range are clipped):

``value_per_kg``
    log10 of customs value per kg of net mass, from 0.01 EUR/kg (0) to 100,000 EUR/kg (1).
``net_mass``
    log10 of the net mass, from 10 g (0) to 100,000 t (1).
``value_vs_group``
    log10 of value per kg minus the median of the last ``group_window`` items of the same
    (CN4, origin), or of the CN4 from any origin when the pair has fewer than
    ``min_group`` items; from a tenth of that median (0) through the median (0.5) to ten
    times it (1): narrower than the two features above, so that the trees' splits can tell
    a value halved from a normal one. 0.5 when neither reference exists yet.
``route``
    1 when the country of dispatch differs from the country of origin.
``new_declarant``
    1 when the importer has not declared this CN4 in this chapter's memory (the pair is
    forgotten after ``novelty_horizon_days`` without a declaration).
``hour``
    Time of day of ``event_time`` in UTC, 00:00 (0) to 24:00 (1). Not circular: 23:59 and
    00:01 sit at opposite ends.
``procedure``
    1 when the procedure code is not 4000 (release for free circulation).
``transport_mode``
    Mode at the border: sea 0, air 0.25, road 0.5, rail 0.75, postal 1.

Not modelled: mass per package (packages are on the ENS, not on the declaration; a join
with the ENS would bring it), and the declarant (as opposed to the importer) in the
novelty feature.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from vigie.schemas import ImportDeclaration, RiskScore

from ._hst import HalfSpaceTrees
from ._robust import RankedWindow
from .base import Operator, OperatorState, epoch_seconds
from .undervaluation import UnitValueWindow

FEATURES: tuple[str, ...] = (
    "value_per_kg",
    "net_mass",
    "value_vs_group",
    "route",
    "new_declarant",
    "hour",
    "procedure",
    "transport_mode",
)
"""The HST input, in this order."""
_STANDOUT_FIELDS = tuple(f"{name}_standout" for name in FEATURES)
assert FEATURES[-1] == "transport_mode"  # the one categorical feature: its standout is computed apart

MODES: dict[str, float] = {"sea": 0.0, "air": 0.25, "road": 0.5, "rail": 0.75, "postal": 1.0}
"""Transport mode encoding: HST splits isolate categories as well as they isolate ranges."""

_TAIL = 0.1  # share of the calibration window the rarity's exponential tail is fitted to
_DAY_S = 86_400.0
_STANDOUT_FLOOR = 0.02  # smallest spread a feature's standout is measured against
_GROUP_DECADES = 1.0  # value_vs_group saturates at this many powers of ten from the group median


def _scale(value: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (value - low) / (high - low)))


def _rarity_text(share: float, window: int) -> str:
    """A rarity as officers say it, e.g. ``"as isolated as about 1 in 81 recent items"``."""
    if share >= 0.5:
        return "as isolated as half of the recent items or more"
    if share * window < 1.0:
        return f"more isolated than all of the last {window} items (tail estimate: 1 in {1.0 / share:,.0f})"
    return f"as isolated as about 1 in {1.0 / share:,.0f} recent items"


class AtypicalFlowState(OperatorState):
    """What one CN chapter has learned.

    * ``hst``: the Half-Space Trees over :data:`FEATURES`;
    * ``groups``: log10 value-per-kg windows named ``"8517:CN"`` ((CN4, origin)) and
      ``"8517"`` (CN4, any origin), at most ``max_groups`` of them: beyond, the least
      recently fed tenth is dropped;
    * ``pairs``: ``"importer EORI|CN4"`` -> event time (epoch s) of the pair's latest
      declaration; at most ``max_pairs`` (the oldest tenth goes beyond), and pairs idle for
      longer than the detector's novelty horizon are swept once a day of event time;
    * ``mean`` / ``spread``: exponentially weighted mean and mean absolute deviation of each
      feature, and ``mode_share`` the weighted share of each transport mode: the chapter's
      typical item, which the reason compares the scored item to;
    * ``calibration``: the raw HST scores of the chapter's last items, from which a raw
      score's rarity, hence the detector's score, is read.

    Memory bound per chapter: the trees (``n_trees * (2 ** (height + 1) - 1) * 28`` bytes,
    71 kB with the defaults), ``max_groups * group_window`` doubles (64 kB), ``max_pairs``
    short keys with a float (about 3 MB in memory and 0.7 MB as JSON at 20,000),
    ``calibration_window`` doubles; 97 chapters at most.
    """

    def __init__(
        self,
        hst: HalfSpaceTrees | None = None,
        group_window: int = 32,
        max_groups: int = 256,
        max_pairs: int = 20_000,
        calibration_window: int = 256,
        alpha: float = 2.0 / 129.0,
    ) -> None:
        self.hst = hst if hst is not None else HalfSpaceTrees(FEATURES, n_trees=20, height=6, window_size=128, seed=0)
        self.group_window = group_window
        self.max_groups = max_groups
        self.max_pairs = max_pairs
        self.alpha = alpha
        self.groups: dict[str, UnitValueWindow] = {}
        self.pairs: dict[str, float] = {}
        self.last_sweep = 0.0
        self.seen = 0
        self.mean = [0.0] * len(FEATURES)
        self.spread = [0.0] * len(FEATURES)
        self.mode_share: dict[str, float] = {}
        self.calibration = RankedWindow(calibration_window)

    def group_median(self, name: str, min_size: int) -> float | None:
        """Median log10 value per kg of group ``name``, if it holds at least ``min_size`` values."""
        window = self.groups.get(name)
        if window is None or window.size < min_size:
            return None
        return window.median()

    def add_to_group(self, name: str, value: float, when: float) -> None:
        window = self.groups.get(name)
        if window is None:
            if len(self.groups) >= self.max_groups:
                idle = sorted(self.groups, key=lambda k: (self.groups[k].last_seen, k))
                for k in idle[: max(1, len(idle) // 10)]:
                    del self.groups[k]
            window = self.groups[name] = UnitValueWindow(self.group_window)
        window.add(value, when)

    def see_pair(self, pair: str, when: float, horizon_s: float) -> None:
        """Record that ``pair`` (importer|CN4) was declared at ``when``; forget idle pairs."""
        if when - self.last_sweep >= _DAY_S:
            self.pairs = {k: t for k, t in self.pairs.items() if when - t <= horizon_s}
            self.last_sweep = when
        if pair not in self.pairs and len(self.pairs) >= self.max_pairs:
            oldest = sorted(self.pairs, key=lambda k: (self.pairs[k], k))
            for k in oldest[: max(1, len(oldest) // 10)]:
                del self.pairs[k]
        self.pairs[pair] = max(self.pairs.get(pair, when), when)

    def update_stats(self, x: list[float], mode: str) -> None:
        """Fold one item's features into the chapter's exponentially weighted profile."""
        a = self.alpha if self.seen else 1.0  # the first item sets the mean; the spread starts at 0
        mean, spread = self.mean, self.spread
        for i, value in enumerate(x):
            m = mean[i]
            mean[i] = m + a * (value - m)
            if self.seen:
                spread[i] += a * (abs(value - m) - spread[i])
        shares = self.mode_share
        for name in MODES:
            share = shares.get(name, 0.0)
            shares[name] = share + a * ((1.0 if name == mode else 0.0) - share)
        self.seen += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "hst": self.hst.to_dict(),
            "group_window": self.group_window,
            "max_groups": self.max_groups,
            "max_pairs": self.max_pairs,
            "alpha": self.alpha,
            "groups": {k: w.to_dict() for k, w in self.groups.items()},
            "pairs": self.pairs,
            "last_sweep": self.last_sweep,
            "seen": self.seen,
            "mean": self.mean,
            "spread": self.spread,
            "mode_share": self.mode_share,
            "calibration_window": self.calibration.capacity,
            "calibration": self.calibration.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        state = cls(
            HalfSpaceTrees.from_dict(data["hst"]),
            data["group_window"],
            data["max_groups"],
            data["max_pairs"],
            data["calibration_window"],
            data["alpha"],
        )
        state.groups = {k: UnitValueWindow.from_dict(w, state.group_window) for k, w in data["groups"].items()}
        state.pairs = dict(data["pairs"])
        state.last_sweep = data["last_sweep"]
        state.seen = data["seen"]
        state.mean = list(data["mean"])
        state.spread = list(data["spread"])
        state.mode_share = dict(data["mode_share"])
        state.calibration = RankedWindow.from_dict(data["calibration"], data["calibration_window"])
        return state


@dataclass(slots=True)
class ItemFlow:
    """One goods item seen by the atypical-flow detector (not frozen: frozen dataclasses build slower)."""

    event_id: str
    mrn: str
    item_number: int
    event_time: datetime
    office: str
    importer_eori: str
    cn_code: str
    origin_country: str
    dispatch_country: str
    procedure_code: str
    transport_mode: str
    net_mass_kg: float
    customs_value_eur: float

    @property
    def cn4(self) -> str:
        return self.cn_code[:4]

    @property
    def log_value_per_kg(self) -> float:
        return math.log10(self.customs_value_eur / self.net_mass_kg)


class AtypicalFlowDetector(Operator[ItemFlow, AtypicalFlowState]):
    """Scores how atypical each goods item is among its CN chapter's recent flows.

    The trees give a raw *isolation* ``s`` in [0, 1) (River's ``score_one``: 1 minus the
    item's region's masses in the last window, weighted by depth and normalised; high =
    few recent items look like it). Raw isolation is not comparable across chapters (a
    chapter of diverse goods isolates everything a bit), so it is turned into a *rarity*
    ``p``: the estimated share of the chapter's recent items at least as isolated, read
    off the raw scores of its last ``calibration_window`` items (the empirical share up to
    their 90th percentile; beyond it, an exponential tail fitted to the top tenth, so
    rarities finer than the window can resolve are still ordered). Then

    ``score = 1 / (1 + p / p_half)``, i.e. odds ``score / (1 - score) = p_half / p``:

    0.5 when about one recent item in 100 (``p_half``) is as isolated, 0.91 at one in
    1,000, 0.09 at one in 10, 0.02 for a median item. The score is 0 while the chapter
    warms up: during the trees' first window and until ``min_calibration`` raw scores are
    known.

    ``reason`` names the features that stand out most: a feature's *standout* is its
    distance to the chapter's weighted mean in units of the chapter's weighted mean
    absolute deviation (for the transport mode: the same on the indicator "this mode").
    ``eur_at_stake`` is 0: an atypical flow does not say how much revenue is missing.

    >>> from datetime import UTC, datetime, timedelta
    >>> detector = AtypicalFlowDetector(window_size=64, min_calibration=16)
    >>> state = detector.new_state()
    >>> def item(i: int, importer: str = "FR00000000000001", mass: float = 100.0, value: float = 900.0,
    ...          procedure: str = "4000", mode: str = "sea") -> ItemFlow:
    ...     when = datetime(2026, 3, 2, tzinfo=UTC) + timedelta(minutes=7 * i)
    ...     return ItemFlow(f"e{i}", "26FR000000000000A1", 1, when, "FR000690", importer, "61091000", "CN", "CN",
    ...                     procedure, mode, mass * (1 + i % 5 / 10), value * (1 + i % 7 / 10))
    >>> for i in range(400):
    ...     detector.learn_one(item(i), state)
    >>> detector.score_one(item(400), state).score < 0.1
    True
    >>> odd = detector.score_one(item(401, "FR99999999999999", 40_000.0, 900_000.0, "4200", "air"), state)
    >>> odd.score > 0.9, odd.reason_fields["top_features"]
    (True, 'procedure,transport_mode,new_declarant')
    """

    name: ClassVar[str] = "atypical_flow"
    state_type: ClassVar[type[OperatorState]] = AtypicalFlowState

    def __init__(
        self,
        n_trees: int = 20,
        height: int = 6,
        window_size: int = 128,
        seed: int = 0,
        group_window: int = 32,
        min_group: int = 5,
        max_groups: int = 256,
        max_pairs: int = 20_000,
        novelty_horizon_days: float = 365.0,
        calibration_window: int = 256,
        min_calibration: int = 64,
        min_tail: float = 0.02,
        p_half: float = 0.01,
        standout: float = 2.0,
    ) -> None:
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.group_window = group_window
        self.min_group = min_group
        self.max_groups = max_groups
        self.max_pairs = max_pairs
        self.novelty_horizon_s = novelty_horizon_days * _DAY_S
        self.calibration_window = calibration_window
        self.min_calibration = min_calibration
        self.min_tail = min_tail
        self.p_half = p_half
        self.standout = standout

    def new_state(self) -> AtypicalFlowState:
        hst = HalfSpaceTrees(
            FEATURES, n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )
        alpha = 2.0 / (self.window_size + 1)  # the weighted profile remembers about a window
        groups, pairs = self.max_groups, self.max_pairs
        return AtypicalFlowState(hst, self.group_window, groups, pairs, self.calibration_window, alpha)

    def units(self, event: Any) -> Iterable[tuple[str, ItemFlow]]:
        if not isinstance(event, ImportDeclaration):
            return
        event_id, mrn, when, office, importer = (
            event.event_id, event.mrn, event.event_time, event.customs_office, event.importer_eori
        )  # fmt: skip
        procedure, mode = event.procedure_code, str(event.transport_mode_at_border)
        for item in event.goods_items:
            unit = ItemFlow(
                event_id, mrn, item.item_number, when, office, importer, item.cn_code, item.origin_country,
                item.dispatch_country, procedure, mode, item.net_mass_kg, item.customs_value_eur,
            )  # fmt: skip
            yield item.cn_code[:2], unit

    # ------------------------------------------------------------------ features

    def _reference(self, unit: ItemFlow, state: AtypicalFlowState) -> tuple[str, float] | None:
        """The group the value is compared with and its median log10 value per kg."""
        cn4 = unit.cn_code[:4]
        for name in (f"{cn4}:{unit.origin_country}", cn4):
            median = state.group_median(name, self.min_group)
            if median is not None:
                return name, median
        return None

    def _features(self, unit: ItemFlow, state: AtypicalFlowState) -> list[float]:
        """The item's point in [0, 1]^8, computed from the state as it was before the item."""
        return self._point(unit, state, self._reference(unit, state))

    @staticmethod
    def _point(unit: ItemFlow, state: AtypicalFlowState, reference: tuple[str, float] | None) -> list[float]:
        """:meth:`_features` given the unit's value ``reference`` (:meth:`_reference`)."""
        log_vpk = math.log10(unit.customs_value_eur / unit.net_mass_kg)
        utc = epoch_seconds(unit.event_time) % _DAY_S
        return [
            _scale(log_vpk, -2.0, 5.0),
            _scale(math.log10(unit.net_mass_kg), -2.0, 8.0),
            0.5 if reference is None else _scale(log_vpk - reference[1], -_GROUP_DECADES, _GROUP_DECADES),
            1.0 if unit.dispatch_country != unit.origin_country else 0.0,
            0.0 if f"{unit.importer_eori}|{unit.cn_code[:4]}" in state.pairs else 1.0,
            utc / _DAY_S,
            0.0 if unit.procedure_code == "4000" else 1.0,
            MODES.get(unit.transport_mode, 0.0),
        ]

    def _rarity(self, raw: float, state: AtypicalFlowState) -> tuple[float, float]:
        """Estimated share of the chapter's recent items at least as isolated as ``raw``, and their median.

        Up to the 90th percentile of the recent raw scores, the empirical share; beyond it,
        a peaks-over-threshold tail ``0.1 * exp(-(raw - q90) / beta)`` with ``beta`` the mean
        excess of the top tenth over ``q90`` (at least ``min_tail``). Raw scores are bounded
        above, so an exponential tail overstates far rarities: it errs on the quiet side.
        """
        calibration = state.calibration
        median, q90 = calibration.quantile(0.5), calibration.quantile(0.9)
        if raw <= q90:
            return calibration.count_at_least(raw) / calibration.size, median
        count, total = calibration.sum_above(q90)  # the top tenth, summed smallest first
        beta = max(total / count - q90, self.min_tail) if count else self.min_tail
        return _TAIL * math.exp(-(raw - q90) / beta), median

    @staticmethod
    def _raw(x: list[float], state: AtypicalFlowState) -> float:
        """The trees' score of the point ``x`` (1 = as isolated as can be)."""
        return state.hst.score_values(x)

    # ------------------------------------------------------------------ operator

    def learn_one(self, unit: ItemFlow, state: AtypicalFlowState) -> None:
        x = self._features(unit, state)
        self._learn(unit, state, x, None if state.hst.first_window else state.hst.score_values(x))

    def _learn(self, unit: ItemFlow, state: AtypicalFlowState, x: list[float], raw: float | None) -> None:
        """Learn the unit whose features are ``x`` and raw trees' score ``raw`` (None in the first window)."""
        if raw is not None:
            state.calibration.add(raw, 0.0)
        state.hst.learn_values(x)
        when = epoch_seconds(unit.event_time)
        log_vpk = math.log10(unit.customs_value_eur / unit.net_mass_kg)
        cn4 = unit.cn_code[:4]
        state.add_to_group(f"{cn4}:{unit.origin_country}", log_vpk, when)
        state.add_to_group(cn4, log_vpk, when)
        state.see_pair(f"{unit.importer_eori}|{cn4}", when, self.novelty_horizon_s)
        state.update_stats(x, unit.transport_mode)

    def _warming_up(self, state: AtypicalFlowState) -> bool:
        return state.hst.first_window or state.calibration.size < self.min_calibration

    def score_one(self, unit: ItemFlow, state: AtypicalFlowState) -> RiskScore:
        if self._warming_up(state):
            return self._warm_up_score(unit, state)
        reference = self._reference(unit, state)
        x = self._point(unit, state, reference)
        return self._score_point(unit, state, x, self._raw(x, state), reference)

    def score_learn_one(self, unit: ItemFlow, state: AtypicalFlowState) -> RiskScore:
        """:meth:`score_one` then :meth:`learn_one`, extracting the features and scoring them with the trees once."""
        reference = self._reference(unit, state)
        x = self._point(unit, state, reference)
        raw = None if state.hst.first_window else state.hst.score_values(x)
        if raw is None or state.calibration.size < self.min_calibration:
            score = self._warm_up_score(unit, state)
        else:
            score = self._score_point(unit, state, x, raw, reference)
        self._learn(unit, state, x, raw)
        return score

    def _warm_up_score(self, unit: ItemFlow, state: AtypicalFlowState) -> RiskScore:
        needed = self.window_size + self.min_calibration
        reason = (
            f"No reference model yet for chapter {unit.cn_code[:2]}: {state.seen} item(s) learned, "
            f"{needed} needed (one window of {self.window_size} for the trees, then {self.min_calibration} "
            "to calibrate their scores)."
        )
        return self._score(unit, 0.0, reason, {"observations": float(state.seen), "hst_score": None})

    def _score_point(
        self, unit: ItemFlow, state: AtypicalFlowState, x: list[float], raw: float, reference: tuple[str, float] | None
    ) -> RiskScore:
        """The score of a unit whose features are ``x``, raw trees' score ``raw`` and value ``reference``."""
        chapter = unit.cn_code[:2]
        rarity, median = self._rarity(raw, state)
        score = 1.0 / (1.0 + rarity / self.p_half)

        standouts = self._standouts(x, unit, state)
        threshold = self.standout
        top = sorted(
            [(name, s) for name, s in zip(FEATURES, standouts, strict=True) if s >= threshold],
            key=lambda kv: (-kv[1], kv[0]),
        )[:3]
        details = [self._describe(name, x, unit, state, reference) for name, _ in top]
        if score >= 0.5:
            verdict = "atypical among"
        elif raw <= median:
            verdict = "typical of"
        else:
            verdict = "within the usual range of"
        head = (
            f"Item {unit.item_number} (CN {unit.cn_code} from {unit.origin_country}) is {verdict} chapter {chapter}'s "
            f"recent flows: isolation {raw:.3f} vs {median:.3f} typical, {_rarity_text(rarity, state.calibration.size)}"
        )
        if details:
            reason = f"{head}; stands out: " + "; ".join(details) + "."
        elif score >= 0.5:
            reason = f"{head}; no single feature stands out: it is the combination that is rare."
        else:
            reason = f"{head}."

        fields: dict[str, float | str | None] = {
            "hst_score": round(raw, 6),
            "typical_hst_score": round(median, 6),
            "rarity": float(f"{rarity:.4g}"),
            "top_features": ",".join(name for name, _ in top),
            "observations": float(state.seen),
        }
        for name, standout_name, value, standout in zip(FEATURES, _STANDOUT_FIELDS, x, standouts, strict=True):
            fields[name] = round(value, 4)
            fields[standout_name] = round(standout, 2)
        fields["value_per_kg_eur"] = round(unit.customs_value_eur / unit.net_mass_kg, 4)
        fields["group_value_per_kg_eur"] = None if reference is None else round(10 ** reference[1], 4)
        return self._score(unit, score, reason, fields)

    # ------------------------------------------------------------------ reasons

    @staticmethod
    def _standouts(x: list[float], unit: ItemFlow, state: AtypicalFlowState) -> list[float]:
        """Each feature's standout (see the class docstring), in :data:`FEATURES` order."""
        out = [
            abs(value - mean) / (_STANDOUT_FLOOR if spread < _STANDOUT_FLOOR else spread)  # max(spread, floor)
            for value, mean, spread in zip(x[:-1], state.mean, state.spread, strict=False)
        ]
        share = state.mode_share.get(unit.transport_mode, 0.0)  # transport_mode, the last feature
        out.append((1.0 - share) / max(2.0 * share * (1.0 - share), _STANDOUT_FLOOR))
        return out

    def _describe(
        self, name: str, x: list[float], unit: ItemFlow, state: AtypicalFlowState, reference: tuple[str, float] | None
    ) -> str:
        """One feature of the item against the chapter's typical item, in an officer's words."""
        mean = state.mean[FEATURES.index(name)]
        share = f"{100.0 * mean:.0f}% of the chapter's recent items"
        if name == "value_per_kg":
            typical = 10 ** (mean * 7.0 - 2.0)
            return f"value {unit.customs_value_eur / unit.net_mass_kg:,.2f} EUR/kg vs about {typical:,.2f} typical"
        if name == "net_mass":
            typical = 10 ** (mean * 10.0 - 2.0)
            return f"net mass {unit.net_mass_kg:,.0f} kg vs about {typical:,.0f} kg typical"
        if name == "value_vs_group":
            if reference is None:
                return "no value reference for its CN4 yet"
            group, median = reference
            ratio = 10 ** (unit.log_value_per_kg - median)
            where = f"CN4 {unit.cn4} from {unit.origin_country}" if ":" in group else f"CN4 {unit.cn4}"
            return f"value per kg {ratio:.2g} times the median of {where} ({10**median:,.2f} EUR/kg)"
        if name == "route":
            if x[FEATURES.index(name)]:
                return f"dispatched from {unit.dispatch_country}, origin {unit.origin_country} (so are {share})"
            return f"dispatched from its origin {unit.origin_country}, unlike {100.0 * mean:.0f}% of recent items"
        if name == "new_declarant":
            if x[FEATURES.index(name)]:
                return f"importer {unit.importer_eori} never declared CN4 {unit.cn4} before (new pairs: {share})"
            return f"importer {unit.importer_eori} has declared CN4 {unit.cn4} before, unlike most recent items"
        if name == "hour":
            return f"declared at {unit.event_time.astimezone(UTC):%H:%M} UTC, an unusual hour for this chapter"
        if name == "procedure":
            return f"procedure {unit.procedure_code} (not 4000 for {share})"
        mode_share = state.mode_share.get(unit.transport_mode, 0.0)
        mode = {"postal": "post"}.get(unit.transport_mode, unit.transport_mode)
        return f"transport by {mode} ({100.0 * mode_share:.0f}% of the chapter's recent items)"

    def _score(self, unit: ItemFlow, score: float, reason: str, fields: dict[str, float | str | None]) -> RiskScore:
        return self.risk_score(
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
            eur_at_stake=0.0,
            reason=reason,
            reason_fields=fields,
        )
