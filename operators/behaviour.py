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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Self

from vigie.schemas import ImportDeclaration, RiskScore

from .base import Operator, OperatorState, epoch_seconds

SIGNALS: tuple[str, ...] = ("unit_value", "origin", "chapter", "volume")
"""Signals monitored per importer, in the order they are reported."""

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_DAY = 86400.0
_LOG_1_5 = math.log(1.5)
_LOG_5 = math.log(5.0)
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


class PageHinkley:
    """One-sided Page-Hinkley test with plain, JSON-able fields (River 0.23's update rule).

    ``n`` and ``mean``: observations and their cumulative mean; ``cusum``: the faded sum of
    ``x - mean -/+ delta``; ``extreme``: its minimum (increase test) or maximum (decrease
    test); ``onset``: event time (epoch s) of the first observation after the extremum,
    i.e. where a detected change began.

    >>> params = PageHinkleyParams(direction=1, delta=0.1, threshold=1.5, min_instances=5, prior_weight=0.0)
    >>> ph = PageHinkley()
    >>> [ph.update(x, float(t), params) for t, x in enumerate([0, 0, 0, 0, 0, 1, 1, 1])]
    [False, False, False, False, False, False, False, True]
    >>> ph.onset, round(ph.statistic(params), 3)
    (5.0, 1.873)
    """

    __slots__ = ("cusum", "extreme", "mean", "n", "onset")

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.cusum = 0.0
        self.extreme: float | None = None
        self.onset: float | None = None

    def _step(self, x: float, when: float, p: PageHinkleyParams) -> tuple[int, float, float, float, float | None]:
        n = self.n + 1
        previous = p.prior_mean if self.n == 0 else self.mean
        mean = previous + (x - previous) / (n + p.prior_weight)
        dev = x - mean
        cusum = p.alpha * self.cusum + dev - p.direction * p.delta
        extreme, onset = self.extreme, self.onset
        if extreme is None or (cusum < extreme if p.direction > 0 else cusum > extreme):
            extreme, onset = cusum, None  # a change, if any, starts after this observation
        elif onset is None:
            onset = when
        return n, mean, cusum, extreme, onset

    @staticmethod
    def _statistic(n: int, cusum: float, extreme: float, p: PageHinkleyParams) -> float:
        if n < p.min_instances:
            return 0.0
        return (cusum - extreme) if p.direction > 0 else (extreme - cusum)

    def statistic(self, p: PageHinkleyParams) -> float:
        """Current test statistic (>= 0); an alarm is raised when it exceeds the threshold."""
        if self.extreme is None:
            return 0.0
        return self._statistic(self.n, self.cusum, self.extreme, p)

    def peek(self, x: float, when: float, p: PageHinkleyParams) -> tuple[float, float | None]:
        """Statistic and onset the test would have after ``x``, without changing it."""
        n, _, cusum, extreme, onset = self._step(x, when, p)
        return self._statistic(n, cusum, extreme, p), onset

    def update(self, x: float, when: float, p: PageHinkleyParams) -> bool:
        """Add ``x`` observed at ``when``; True when the test crosses its threshold."""
        self.n, self.mean, self.cusum, self.extreme, self.onset = self._step(x, when, p)
        return self.statistic(p) > p.threshold

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def to_list(self) -> list[Any]:
        return [self.n, self.mean, self.cusum, self.extreme, self.onset]

    @classmethod
    def from_list(cls, data: list[Any]) -> PageHinkley:
        ph = cls()
        ph.n, ph.mean, ph.cusum, ph.extreme, ph.onset = data
        return ph


@dataclass(slots=True)
class ItemProfile:
    """One goods item as the behaviour detector sees it (not frozen: frozen dataclasses build slower)."""

    item_number: int
    cn_code: str
    origin: str
    group: str
    """Unit-value reference group: ``"CN4:basis"`` (basis ``kg`` or the supplementary unit)."""
    log_uv: float
    """Natural log of the customs value per unit of the basis."""
    quantity: float
    customs_value_eur: float
    duty_rate_pct: float
    chapter: str = field(init=False)
    """HS chapter: the first two digits of the CN code."""

    def __post_init__(self) -> None:
        self.chapter = self.cn_code[:2]


@dataclass(slots=True)
class DeclarationProfile:
    """One import declaration, summarised for its importer's behaviour."""

    event_id: str
    mrn: str
    event_time: datetime
    office: str
    importer_eori: str
    procedure_code: str
    items: tuple[ItemProfile, ...]
    when: float = field(init=False)
    """``event_time`` in epoch seconds."""
    total_value_eur: float = field(init=False)

    def __post_init__(self) -> None:
        self.when = epoch_seconds(self.event_time)
        self.total_value_eur = sum(item.customs_value_eur for item in self.items)


class Baseline:
    """The importer's usual behaviour, learned from declarations that left the recent window.

    ``n``: declarations learned; ``times``: event times (epoch s) of the last
    ``rate_window`` declarations that left the recent window (changed or not), whose rate is
    the baseline rate (recent, so that it follows seasonal drifts and a stream's ramp-up). ``origins`` / ``chapters``:
    decayed item counts per origin / chapter; ``items``: their total. ``uv``: per
    ``"CN4:basis"`` group, a ring of recent log unit values ``[values, next position]``,
    in least-recently-updated-first order.
    """

    __slots__ = ("_novelty", "_references", "chapters", "items", "n", "origins", "times", "uv")

    def __init__(self) -> None:
        self.n = 0
        self.times: list[float] = []
        self.items = 0.0
        self.origins: dict[str, float] = {}
        self.chapters: dict[str, float] = {}
        self.uv: dict[str, list[Any]] = {}
        # Median and MAD per group, derived from ``uv`` (not state: dropped when a group learns).
        self._references: dict[str, tuple[float, float, int]] = {}
        self._novelty: dict[str, float] = {}  # novelty_rate of "origins" / "chapters", derived likewise

    def rate_per_day(self) -> float | None:
        """Declarations per day over the learned period, None if it cannot be told yet."""
        if len(self.times) < 2:
            return None
        span = self.times[-1] - self.times[0]
        if span <= 0:
            return None
        return (len(self.times) - 1) / span * _DAY

    def novelty_rate(self, which: str) -> float:
        """Expected share of items in a category (``which``: "origins" or "chapters") it has (almost) never
        used (Good-Turing).

        The share of baseline items whose category was used about once: an importer that
        keeps trying new origins (many singletons) is not surprising when it tries one more;
        one with a few steady origins is.
        """
        if self.items <= 0:
            return 0.0
        cached = self._novelty.get(which)
        if cached is None:
            counts = self.origins if which == "origins" else self.chapters
            singletons = 0
            for count in counts.values():
                if count < 1.5:
                    singletons += 1
            cached = self._novelty[which] = min(1.0, singletons / self.items)
        return cached

    def share(self, counts: dict[str, float], key: str) -> float:
        return counts.get(key, 0.0) / self.items if self.items > 0 else 0.0

    def reference(self, group: str, min_values: int) -> tuple[float, float, int] | None:
        """Median and MAD of the group's log unit values, and how many, if at least ``min_values``."""
        ring = self.uv.get(group)
        if ring is None or len(ring[0]) < min_values:
            return None
        cached = self._references.get(group)
        if cached is None:
            values = sorted(ring[0])
            median = _median(values)
            mad = _median(sorted(abs(v - median) for v in values))
            cached = self._references[group] = (median, mad, len(values))
        return cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "times": self.times,
            "items": self.items,
            "origins": self.origins,
            "chapters": self.chapters,
            "uv": self.uv,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Baseline:
        base = cls()
        base.n, base.times, base.items = data["n"], list(data["times"]), data["items"]
        base.origins = dict(data["origins"])
        base.chapters = dict(data["chapters"])
        base.uv = {k: [list(v[0]), v[1]] for k, v in data["uv"].items()}
        return base


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])


_SIGNAL_FIELD = {"unit_value": "uv_z", "origin": "origin_excess", "chapter": "chapter_excess",
                 "volume": "volume_log_ratio"}  # fmt: skip


@dataclass(slots=True)
class Features:
    """What one declaration shows against its importer's baseline (None: cannot be told).

    ``uv_z``: mean robust z of the items' log unit values (clipped to +-``z_clip``);
    ``uv_log_ratio``: mean log(declared / reference unit value); ``uv_stake_eur``: duty and
    VAT on the value shortfall of items below their reference; ``origin_share`` /
    ``chapter_share``: share of items with an unfamiliar origin / chapter, ``new_origins`` /
    ``new_chapters`` the codes; ``origin_excess`` / ``chapter_excess``: that share minus the
    share this importer is expected to show anyway (see :meth:`Baseline.novelty_rate`);
    ``volume_log_ratio``: log(recent rate / baseline rate).
    """

    uv_z: float | None = None
    uv_log_ratio: float | None = None
    uv_stake_eur: float = 0.0
    uv_item: tuple[int, str, str, float, float] | None = None
    """Most deviating item: (item number, CN, origin, declared EUR/unit, reference EUR/unit)."""
    uv_basis: str = "kg"
    origin_share: float | None = None
    origin_excess: float | None = None
    new_origins: tuple[str, ...] = ()
    chapter_share: float | None = None
    chapter_excess: float | None = None
    new_chapters: tuple[str, ...] = ()
    volume_log_ratio: float | None = None

    def value(self, signal: str) -> float | None:
        return getattr(self, _SIGNAL_FIELD[signal])  # type: ignore[no-any-return]


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

    def __init__(self) -> None:
        self.seen = 0
        self.value_seen = 0.0
        self.first_seen: float | None = None
        self.last_seen = 0.0
        self.baseline = Baseline()
        self.window: list[dict[str, Any]] = []
        self.tests: dict[str, PageHinkley] = {s: PageHinkley() for s in SIGNALS}
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


def _fmt_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M")


def _sigmoid(x: float) -> float:
    if x < -60:
        return 0.0
    return 1.0 / (1.0 + math.exp(-x))


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

    # --- units -----------------------------------------------------------------------------------
    def units(self, event: Any) -> Iterable[tuple[str, DeclarationProfile]]:
        if not isinstance(event, ImportDeclaration):
            return
        items = []
        for item in event.goods_items:
            if item.supplementary_units and item.supplementary_unit_code:
                basis, quantity = item.supplementary_unit_code, item.supplementary_units
            else:
                basis, quantity = "kg", item.net_mass_kg
            cn_code, value = item.cn_code, item.customs_value_eur
            profile = ItemProfile(
                item.item_number, cn_code, item.origin_country, f"{cn_code[:4]}:{basis}",
                math.log(value / quantity), quantity, value, item.duty_rate_pct,
            )  # fmt: skip
            items.append(profile)
        yield (
            event.importer_eori,
            DeclarationProfile(
                event_id=event.event_id,
                mrn=event.mrn,
                event_time=event.event_time,
                office=event.customs_office,
                importer_eori=event.importer_eori,
                procedure_code=event.procedure_code,
                items=tuple(items),
            ),
        )

    # --- features --------------------------------------------------------------------------------
    def features(self, unit: DeclarationProfile, state: BehaviourState) -> Features:
        """What ``unit`` shows against the importer's baseline (pure: reads ``state`` only)."""
        base = state.baseline
        feats = Features()
        if base.n < self.min_history:
            return feats
        items = unit.items[: self.max_items]
        # Unit values against the importer's own references.
        zs: list[float] = []
        ratios: list[float] = []
        worst: tuple[float, ItemProfile, float] | None = None
        for item in items:
            ref = base.reference(item.group, self.min_uv_reference)
            if ref is None:
                continue
            median, mad, count = ref
            # A few own values give an unstable MAD: shrink it toward a typical within-importer spread.
            sigma2 = (count * (_MAD_TO_SIGMA * mad) ** 2 + self.prior_weight_uv * self.prior_uv_sigma**2) / (
                count + self.prior_weight_uv
            )
            spread = max(math.sqrt(sigma2), self.min_spread)
            z = max(-self.z_clip, min(self.z_clip, (item.log_uv - median) / spread))
            zs.append(z)
            ratios.append(item.log_uv - median)
            reference_value = math.exp(median) * item.quantity
            if reference_value > item.customs_value_eur:
                shortfall = reference_value - item.customs_value_eur
                duty = shortfall * item.duty_rate_pct / 100.0
                feats.uv_stake_eur += duty + VAT_RATE * (shortfall + duty)
            if worst is None or z < worst[0]:
                worst = (z, item, median)
        if zs:
            feats.uv_z = sum(zs) / len(zs)
            feats.uv_log_ratio = sum(ratios) / len(ratios)
            assert worst is not None
            _, item, median = worst
            feats.uv_item = (item.item_number, item.cn_code, item.origin, math.exp(item.log_uv), math.exp(median))
            feats.uv_basis = item.group.split(":", 1)[1]
        # Origin and commodity-chapter mix.
        if base.items > 0 and items:
            new_o = [i.origin for i in items if base.share(base.origins, i.origin) < self.familiar_share]
            new_c = [i.chapter for i in items if base.share(base.chapters, i.chapter) < self.familiar_share]
            feats.origin_share = len(new_o) / len(items)
            feats.chapter_share = len(new_c) / len(items)
            feats.origin_excess = feats.origin_share - base.novelty_rate("origins")
            feats.chapter_excess = feats.chapter_share - base.novelty_rate("chapters")
            feats.new_origins = tuple(dict.fromkeys(new_o))
            feats.new_chapters = tuple(dict.fromkeys(new_c))
        # Volume: recent declaration rate against the baseline rate.
        base_rate = base.rate_per_day()
        k = min(self.volume_span, len(state.window))
        if base_rate is not None and k >= 1:
            span = max(unit.when - state.window[-k]["t"], 60.0 * k)  # a burst of same-minute filings is one
            recent_rate = k / span * _DAY
            feats.volume_log_ratio = max(-3.0, min(3.0, math.log(recent_rate / base_rate)))
        return feats

    @staticmethod
    def _deviation(signal: str, feats: Features) -> float:
        """``c_k``: how strongly this declaration itself shows a deviation on ``signal``, in [0, 1]."""
        if signal == "unit_value":
            return 0.0 if feats.uv_z is None else max(0.0, min(1.0, (-feats.uv_z - 1.0) / 2.0))
        if signal == "origin":
            return feats.origin_share or 0.0
        if signal == "chapter":
            return feats.chapter_share or 0.0
        x = feats.volume_log_ratio
        # Rates fluctuate: 1.5 times the usual rate counts for nothing, 5 times for full.
        return 0.0 if x is None else max(0.0, min(1.0, (x - _LOG_1_5) / (_LOG_5 - _LOG_1_5)))

    def _deviates(self, feats: Features) -> bool:
        """Whether a declaration departs from the baseline on its own (it then stays out of it during a change)."""
        return any(self._deviation(s, feats) >= 0.5 for s in SIGNALS)

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
        first = unit.when if state.first_seen is None else state.first_seen
        if self._novelty_from is None or first < self._novelty_from:
            return 0.0
        youth = max(0.0, 1.0 - (unit.when - first) / (self.new_importer_days * _DAY))
        if youth <= 0.0:
            return 0.0
        value = max((state.value_seen + unit.total_value_eur) / (state.seen + 1), 1e-9)
        largeness = _sigmoid(math.log(value / self.large_value_eur) / self.largeness_width)
        factor = 1.0 if unit.procedure_code == "4200" else self.non_4200_factor
        return youth * largeness * factor

    def score_one(self, unit: DeclarationProfile, state: BehaviourState) -> RiskScore | None:
        feats = self.features(unit, state)
        state.memo = (unit.event_id, state.seen, feats)
        return self._score(unit, state, feats)

    def score_learn_one(self, unit: DeclarationProfile, state: BehaviourState) -> RiskScore | None:
        """:meth:`score_one` then :meth:`learn_one`, computing the declaration's features once."""
        feats = self.features(unit, state)
        score = self._score(unit, state, feats)
        self._learn(unit, state, feats)
        return score

    def _score(self, unit: DeclarationProfile, state: BehaviourState, feats: Features) -> RiskScore | None:
        """The score of ``unit`` given its :meth:`features` (None under ``min_score``)."""
        change = state.change
        when = unit.when
        levels: dict[str, float] = {}
        parts: dict[str, float] = {}
        onsets: dict[str, float] = {}
        for signal in SIGNALS:
            params = self.tests[signal]
            x = feats.value(signal)
            test = state.tests[signal]
            stat, onset = (test.statistic(params), None) if x is None else test.peek(x, when, params)
            if change is not None and signal in change["signals"]:
                level = 1.0
            elif stat > params.threshold:
                level = 1.0
                onsets[signal] = onset if onset is not None else when
            else:
                level = 0.5 * min(1.0, stat / params.threshold)
            levels[signal] = level
            parts[signal] = self.signal_weights[signal] * level * self._deviation(signal, feats)
        clean = 1.0
        for part in parts.values():
            clean *= 1.0 - part
        behaviour = 1.0 - clean
        new = self.new_importer_score(unit, state)
        score = 1.0 - (1.0 - behaviour) * (1.0 - new)
        if score < self.min_score:
            return None

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
        entries = [*recent, {"t": unit.when, "f": self._entry_features(feats)}]
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
    @staticmethod
    def _entry_features(feats: Features) -> dict[str, Any]:
        return {"uv_lr": feats.uv_log_ratio, "no": list(feats.new_origins), "nc": list(feats.new_chapters)}

    def learn_one(self, unit: DeclarationProfile, state: BehaviourState) -> None:
        memo = state.memo
        if memo is not None and memo[0] == unit.event_id and memo[1] == state.seen:
            feats = memo[2]
        else:
            feats = self.features(unit, state)
        self._learn(unit, state, feats)

    def _learn(self, unit: DeclarationProfile, state: BehaviourState, feats: Features) -> None:
        """Learn ``unit`` given its :meth:`features`."""
        when = unit.when
        state.memo = None
        deviates = self._deviates(feats)
        detected: dict[str, float] = {}
        for signal in SIGNALS:
            x = feats.value(signal)
            if x is None:
                continue
            test = state.tests[signal]
            if test.update(x, when, self.tests[signal]):
                detected[signal] = test.onset if test.onset is not None else when
                test.reset()
        if detected:
            self._register_change(state, detected, when)
        change = state.change
        if change is not None:
            change["normal_streak"] = 0 if deviates else change["normal_streak"] + 1
        entry = {
            "t": when,
            "v": unit.total_value_eur,
            "f": self._entry_features(feats),
            "items": [[i.group, i.log_uv, i.origin, i.chapter] for i in unit.items[: self.max_items]],
            "dev": deviates,
            "q": change is not None and deviates,
        }
        state.window.append(entry)
        while len(state.window) > self.window:
            old = state.window.pop(0)
            # The rate always learns: freezing it during a volume change would keep the change alive forever.
            base = state.baseline
            base.times.append(old["t"])
            if len(base.times) > self.rate_window:
                del base.times[0]
            if old["q"]:
                if state.change is not None:
                    state.change["quarantined"] += 1
            else:
                self._learn_baseline(state.baseline, old)
        if change is not None:
            if change["normal_streak"] >= self.window:
                self._end_change(state)  # back to its usual behaviour (or a false alarm)
            elif change["quarantined"] >= self.accept_after or when - change["since"] >= self.accept_days * _DAY:
                # The new behaviour has lasted: it becomes the norm, learned afresh.
                self._end_change(state)
                state.baseline = Baseline()
        state.seen += 1
        state.value_seen += unit.total_value_eur
        if state.first_seen is None:
            state.first_seen = when
        state.last_seen = max(state.last_seen, when)

    def _register_change(self, state: BehaviourState, detected: dict[str, float], when: float) -> None:
        since = min(detected.values())
        if state.change is None:
            state.change = {"since": since, "detected": when, "signals": {}, "quarantined": 0, "normal_streak": 0}
        change = state.change
        change["since"] = min(change["since"], since)
        for signal in detected:
            change["signals"].setdefault(signal, when)
        # The declarations since the onset that already deviated are part of the change.
        for entry in state.window:
            if entry["t"] >= change["since"] and entry["dev"]:
                entry["q"] = True

    @staticmethod
    def _end_change(state: BehaviourState) -> None:
        state.change = None
        for test in state.tests.values():
            test.reset()
        for entry in state.window:
            entry["q"] = False

    def _learn_baseline(self, base: Baseline, entry: dict[str, Any]) -> None:
        base.n += 1
        base._novelty.clear()
        for group, log_uv, origin, chapter in entry["items"]:
            self._count(base.origins, origin)
            self._count(base.chapters, chapter)
            base.items += 1.0
            ring = base.uv.pop(group, None)  # re-inserted last: the dict stays in LRU order
            base._references.pop(group, None)
            if ring is None:
                ring = [[], 0]
                while len(base.uv) >= self.max_uv_groups:
                    base._references.pop(next(iter(base.uv)), None)
                    del base.uv[next(iter(base.uv))]
            values, pos = ring
            if len(values) < self.uv_window:
                values.append(log_uv)
            else:
                values[pos] = log_uv
            ring[1] = (pos + 1) % self.uv_window
            base.uv[group] = ring
        if base.items > self.count_cap:
            base.items *= 0.5
            for counts in (base.origins, base.chapters):
                for key in counts:
                    counts[key] *= 0.5

    def _count(self, counts: dict[str, float], key: str) -> None:
        if key not in counts and len(counts) >= self.max_categories:
            # Forget the least used category (ties: the first in insertion order) to stay bounded.
            weakest = min(counts, key=counts.__getitem__)
            del counts[weakest]
        counts[key] = counts.get(key, 0.0) + 1.0
