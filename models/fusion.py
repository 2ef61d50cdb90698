"""The online models that fuse detector scores into a probability and a revenue at stake.

A River pipeline in three parts, kept apart on purpose:

* :func:`make_scaler`: ``preprocessing.StandardScaler`` learns the mean and variance of every
  feature from *every* scored subject (no label needed), so that the features keep the
  scale of the whole flow rather than of the few items that were controlled;
* :func:`make_classifier`: ``linear_model.LogisticRegression`` learns only from control
  outcomes (positive or negative), on the scaled features;
* :func:`make_regressor`: ``linear_model.LinearRegression`` learns only from positive
  outcomes that report the EUR recovered: how far (in log10 EUR) the detectors' estimate of
  the revenue at stake is from what controls actually recover.

Both are plain River objects. They pickle, and :func:`dumps_model` / :func:`loads_model`
carry them inside the JSON checkpoint as base64 text (a checkpoint is therefore code to the
unpickler: load only checkpoints this engine wrote).
"""

from __future__ import annotations

import base64
import pickle
from typing import Any

from river import linear_model, optim, preprocessing


def make_scaler() -> preprocessing.StandardScaler:
    """Running mean and variance per feature; ``transform_one`` gives z-scores (0 where the variance is 0)."""
    return preprocessing.StandardScaler()


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
