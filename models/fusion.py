"""The online models that fuse detector scores into a probability and a revenue at stake.

A River pipeline in three parts, kept apart on purpose:

* :class:`FeatureScaler` (:func:`make_scaler`): the running mean and variance of every
  feature, learned from *every* scored subject (no label needed), so that the features keep
  the scale of the whole flow rather than of the few items that were controlled. It does the
  float operations of River's ``preprocessing.StandardScaler`` in the same order, on arrays in
  a fixed feature order instead of dicts (it runs for every subject), and checkpoints as
  that River object;
* :func:`make_classifier`: ``linear_model.LogisticRegression`` learns only from control
  outcomes (positive or negative), on the scaled features;
* :func:`make_regressor`: ``linear_model.LinearRegression`` learns only from positive
  outcomes that report the EUR recovered: how far (in log10 EUR) the detectors' estimate of
  the revenue at stake is from what controls actually recover.

The two models are plain River objects. They (and the scaler, as its River twin) pickle, and
:func:`dumps_model` / :func:`loads_model` carry them inside the JSON checkpoint as base64 text (a
checkpoint is therefore code to the unpickler: load only checkpoints this engine wrote).
"""

from __future__ import annotations

import base64
import pickle
from array import array
from collections.abc import Sequence
from typing import Any

from river import linear_model, optim, preprocessing


class FeatureScaler:
    """Running mean and variance of each of ``names``, read and fed as float sequences in that order.

    Bit for bit what ``river.preprocessing.StandardScaler`` (River 0.23) gives on dicts with
    these keys: Welford's update with the same float operations in the same order, z-scores
    ``(x - mean) / variance ** 0.5``, 0 where the variance is 0. The standard deviations are
    kept beside the variances (updated by :meth:`learn_one`) so that a transform takes no root.
    The statistics are C arrays (counts ``q``, the others ``d``), so that the learned fusion's
    kernel (:class:`vigie.operators._fusion.FusionKernel`) reads and updates them in place.

    >>> scaler = make_scaler(("a", "b"))
    >>> scaler.learn_one([1.0, 5.0])
    >>> scaler.learn_one([3.0, 5.0])
    >>> scaler.transform_one([4.0, 7.0])  # a: mean 2, variance 1; b: no variance
    [2.0, 0.0]
    """

    __slots__ = ("counts", "means", "names", "stds", "touched", "variances")

    def __init__(self, names: Sequence[str]) -> None:
        self.names: tuple[str, ...] = tuple(names)
        self.counts: array[int] = array("q", [0]) * len(self.names)
        """Values learned per feature (River counts per key; here all are fed together)."""
        self.means: array[float] = array("d", [0.0]) * len(self.names)
        self.variances: array[float] = array("d", [0.0]) * len(self.names)
        """Population variance (divided by the count), as River keeps it."""
        self.stds: array[float] = array("d", [0.0]) * len(self.names)
        """``variance ** 0.5``, the divisor of :meth:`transform_one`."""
        self.touched = False
        """Whether River's scaler would hold the keys yet (its ``transform_one`` adds them at 0, unlearned)."""

    def learn_one(self, x: Sequence[float]) -> None:
        """Update every feature with ``x`` (its first ``len(names)`` values; more are ignored)."""
        counts, means, variances, stds = self.counts, self.means, self.variances, self.stds
        if len(x) < len(means):
            raise ValueError(f"{len(x)} values for {len(means)} features {self.names}")
        for i in range(len(means)):  # in place, by index: the fastest plain-Python form for ~25 features
            xi, old, v = x[i], means[i], variances[i]
            n = counts[i] + 1
            mean = old + (xi - old) / n
            v = v + ((xi - old) * (xi - mean) - v) / n
            counts[i] = n
            means[i] = mean
            variances[i] = v
            stds[i] = v**0.5
        self.touched = True

    def transform_one(self, x: Sequence[float]) -> list[float]:
        """The z-scores of ``x`` (its first ``len(names)`` values), in feature order."""
        self.touched = True
        return [(xi - m) / s if s else 0.0 for xi, m, s in zip(x, self.means, self.stds, strict=False)]

    def to_river(self) -> preprocessing.StandardScaler:
        """The River ``StandardScaler`` that would have learned the same: equal state, the same pickle."""
        scaler = preprocessing.StandardScaler()
        if self.touched:
            for name, n, mean, variance in zip(self.names, self.counts, self.means, self.variances, strict=True):
                if n:  # a Counter holds a key once it was counted
                    scaler.counts[name] = n
                scaler.means[name] = mean
                scaler.vars[name] = variance
        return scaler

    @classmethod
    def from_river(cls, names: Sequence[str], scaler: Any) -> FeatureScaler:
        """The scaler of ``names`` holding what a River ``StandardScaler`` learned (checkpoints store that)."""
        if not isinstance(scaler, preprocessing.StandardScaler) or not scaler.with_std:
            raise ValueError(f"checkpoint scaler is {type(scaler).__name__}, not a River StandardScaler with std")
        own = cls(names)
        unknown = set(scaler.counts) | set(scaler.means) | set(scaler.vars)
        unknown.difference_update(own.names)
        if unknown:
            raise ValueError(f"checkpoint scaler has features {sorted(unknown)} this fusion does not have")
        # .get: a defaultdict read would add keys
        own.counts = array("q", [scaler.counts.get(name, 0) for name in own.names])
        own.means = array("d", [scaler.means.get(name, 0.0) for name in own.names])
        own.variances = array("d", [scaler.vars.get(name, 0.0) for name in own.names])
        own.stds = array("d", [v**0.5 for v in own.variances])
        own.touched = bool(scaler.means or scaler.counts)
        return own


def make_scaler(names: Sequence[str] = ()) -> FeatureScaler:
    """Running mean and variance of the features ``names``; ``transform_one`` gives z-scores (0 without variance)."""
    return FeatureScaler(names)


def make_classifier(
    learning_rate: float = 0.02, l2: float = 1e-4, intercept: float = 0.0, weights: dict[str, float] | None = None
) -> Any:
    """Logistic regression by plain SGD, starting from ``intercept`` and ``weights`` (others start at 0).

    Starting weights let the model begin as a known rule (e.g. weight 1 on the log-odds of a
    label-free prior: the model *is* the prior until outcomes move it).

    >>> model = make_classifier(intercept=-2.0, weights={"prior": 1.0})
    >>> round(model.predict_proba_one({"prior": 2.0, "x": 1.0})[True], 3)
    0.5
    """
    model = linear_model.LogisticRegression(
        optimizer=optim.SGD(learning_rate), l2=l2, intercept_init=intercept, intercept_lr=learning_rate
    )
    for name, value in (weights or {}).items():
        # River has no per-feature initial weight; its weight vector takes item assignment.
        model._weights[name] = value
    return model


def make_regressor(learning_rate: float = 0.05, l2: float = 1e-4, clip_gradient: float = 5.0) -> Any:
    """Linear regression by plain SGD, gradients clipped, starting at 0 everywhere (a correction that starts as none).

    >>> model = make_regressor()
    >>> model.predict_one({"x": 3.0})
    0.0
    """
    return linear_model.LinearRegression(
        optimizer=optim.SGD(learning_rate), l2=l2, intercept_lr=learning_rate, clip_gradient=clip_gradient
    )


def dumps_model(model: Any) -> str:
    """A River object as base64 text of its pickle (for JSON checkpoints)."""
    return base64.b64encode(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def loads_model(text: str) -> Any:
    """The River object :func:`dumps_model` wrote. Unpickling runs code: trusted checkpoints only."""
    return pickle.loads(base64.b64decode(text))
