"""Atypical flows ("atypie"): goods items that depart from the reference model of a chapter's flows.

Each import-declaration goods item becomes a point in [0, 1]^8 of engineered features (see
:data:`FEATURES`), and Half-Space Trees (:mod:`._hst`, River's algorithm in C with the
very same scores) estimate how sparsely populated the region around it has been in the
chapter's last complete window of items. Lonely points are atypical. The per-item work
(features, the chapter's profile, the score and its reason) runs in C, in :mod:`._atypical`.

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

from collections.abc import Iterable, MutableMapping
from typing import Any, ClassVar, Self

from vigie.schemas import ImportDeclaration, RiskScore

from ._atypical import FEATURES, MODES, ChapterModel, FlowScorer, ItemFlow, item_flows
from ._hst import HalfSpaceTrees
from ._robust import RankedWindow
from .base import Operator, OperatorState

__all__ = ["FEATURES", "MODES", "AtypicalFlowDetector", "AtypicalFlowState", "ItemFlow"]

_DAY_S = 86_400.0


class AtypicalFlowState(ChapterModel, OperatorState):
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

    Memory bound per chapter: the trees (``n_trees * (2 ** (height + 1) - 1) * 24`` bytes,
    61 kB with the defaults), ``max_groups * group_window`` doubles (64 kB), ``max_pairs``
    short keys with a float (about 3 MB in memory and 0.7 MB as JSON at 20,000),
    ``calibration_window`` doubles; 97 chapters at most.

    The fields live in C (:class:`._atypical.ChapterModel`), where the detector's hot path
    reads and updates them; this class adds the snapshot format.
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
        self.groups: dict[str, RankedWindow] = {}  # sorted as fed: each item reads a median
        self.pairs: dict[str, float] = {}
        self.last_sweep = 0.0
        self.seen = 0
        self.mean = [0.0] * len(FEATURES)
        self.spread = [0.0] * len(FEATURES)
        self.mode_share = {}
        self.calibration = RankedWindow(calibration_window)

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
        state.groups = {k: RankedWindow.from_dict(w, state.group_window) for k, w in data["groups"].items()}
        state.pairs = dict(data["pairs"])
        state.last_sweep = data["last_sweep"]
        state.seen = data["seen"]
        state.mean = list(data["mean"])
        state.spread = list(data["spread"])
        state.mode_share = dict(data["mode_share"])
        state.calibration = RankedWindow.from_dict(data["calibration"], data["calibration_window"])
        return state

    def __reduce__(self) -> tuple[Any, ...]:
        # The fields are C fields, not in __dict__: copies and pickles go through the snapshot.
        return self.from_dict, (self.to_dict(),)


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
        # The same configuration in C, for the hot path (it is read once, here: change none of it later).
        self._core = FlowScorer(
            window_size, min_group, min_calibration, self.novelty_horizon_s, min_tail, p_half, standout
        )

    def new_state(self) -> AtypicalFlowState:
        hst = HalfSpaceTrees(
            FEATURES, n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )
        alpha = 2.0 / (self.window_size + 1)  # the weighted profile remembers about a window
        groups, pairs = self.max_groups, self.max_pairs
        return AtypicalFlowState(hst, self.group_window, groups, pairs, self.calibration_window, alpha)

    def units(self, event: Any) -> Iterable[tuple[str, ItemFlow]]:
        if not isinstance(event, ImportDeclaration):
            return ()
        return item_flows(event)

    # The features, the rarity, the reason and the learning are computed in C (FlowScorer): see
    # the class docstring and the module's for what they are.

    def _reference(self, unit: ItemFlow, state: AtypicalFlowState) -> tuple[str, float] | None:
        """The group the value is compared with and its median log10 value per kg."""
        return self._core.reference(unit, state)

    def _features(self, unit: ItemFlow, state: AtypicalFlowState) -> list[float]:
        """The item's point in [0, 1]^8, computed from the state as it was before the item."""
        return self._core.features(unit, state)

    # ------------------------------------------------------------------ operator

    def learn_one(self, unit: ItemFlow, state: AtypicalFlowState) -> None:
        self._core.learn(unit, state)

    def score_one(self, unit: ItemFlow, state: AtypicalFlowState) -> RiskScore:
        return self._core.score(unit, state, self.risk_score)

    def score_learn_one(self, unit: ItemFlow, state: AtypicalFlowState) -> RiskScore:
        """:meth:`score_one` then :meth:`learn_one`, extracting the features and scoring them with the trees once."""
        return self._core.score_learn(unit, state, self.risk_score)

    def process(self, event: Any, store: MutableMapping[str, AtypicalFlowState]) -> list[RiskScore]:
        """:meth:`Operator.process`, with the loop over the items in C (unless a subclass overrides a step)."""
        return self._core.process(self, event, store)
