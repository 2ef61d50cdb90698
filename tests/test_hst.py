"""The Cython Half-Space Trees give *exactly* River's scores, and their state round-trips.

Equality is exact (``==`` on doubles, no tolerance): the trees are grown by the same calls
on the same ``random.Random``, the masses are integers, and a score adds up terms
``r_mass * 2 ** depth`` that are exactly representable, in River's order, then divides by
the same exactly-representable maximum. Nothing is reassociated, so the bits agree.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import orjson
import pytest
from river.anomaly import HalfSpaceTrees as RiverHST

from vigie.operators._hst import HalfSpaceTrees

FEATURES = ["value", "mass", "ratio", "route", "hour", "mode"]  # deliberately not sorted
LIMITS = {"mass": (0.0, 10.0), "hour": (0.0, 24.0), "unused": (-1.0, 1.0)}


def _stream(seed: int, n: int, missing: float) -> np.ndarray:
    """Clustered observations with scattered outliers; ``missing`` share of values set to NaN."""
    rng = np.random.default_rng(seed)
    centres = rng.random((4, len(FEATURES)))
    X = centres[rng.integers(0, 4, n)] + rng.normal(0, 0.05, (n, len(FEATURES)))
    outliers = rng.random(n) < 0.03
    X[outliers] = rng.uniform(-0.2, 1.2, (int(outliers.sum()), len(FEATURES)))
    X[:, 1] *= 10.0  # "mass" lives in [0, 10]
    X[:, 4] = np.floor(X[:, 4] * 24.0)  # "hour" in [0, 24), integer-valued: ties with thresholds are rare but cheap
    X[:, 3] = (X[:, 3] > 0.5).astype(float)  # a binary feature
    if missing:
        X[rng.random(X.shape) < missing] = np.nan
    return np.ascontiguousarray(X)


def _as_dict(x: np.ndarray) -> dict[str, float]:
    """River's view of a row: NaN means the feature is absent from the dict."""
    return {name: float(v) for name, v in zip(FEATURES, x, strict=True) if not math.isnan(v)}


CONFIGS = [
    # seed, n_trees, height, window_size, share of missing values
    (0, 10, 8, 250, 0.0),
    (1, 5, 3, 3, 0.0),
    (42, 25, 6, 100, 0.0),
    (7, 10, 10, 500, 0.0),
    (123, 8, 5, 64, 0.04),
]


@pytest.mark.parametrize(("seed", "n_trees", "height", "window_size", "missing"), CONFIGS)
def test_scores_equal_river_on_a_stream(seed: int, n_trees: int, height: int, window_size: int, missing: float) -> None:
    X = _stream(seed, 6000, missing)
    if missing:
        X[0, 2] = np.nan  # a feature absent from the first observation is never split on
    river = RiverHST(n_trees=n_trees, height=height, window_size=window_size, limits=LIMITS, seed=seed)
    ours = HalfSpaceTrees(FEATURES, n_trees=n_trees, height=height, window_size=window_size, limits=LIMITS, seed=seed)
    theirs, mine = [], []
    for x in X:
        d = _as_dict(x)
        theirs.append(river.score_one(d))
        mine.append(ours.score_one(x))
        river.learn_one(d)
        ours.learn_one(x)
    assert mine == theirs  # exact, every one of them
    assert len(set(mine)) > 20, "the stream should exercise many different paths"
    assert ours.counter == river.counter and ours.first_window == river._first_window


@pytest.mark.parametrize(("seed", "height", "window_size"), [(3, 8, 250), (11, 4, 50)])
def test_trees_are_grown_like_rivers(seed: int, height: int, window_size: int) -> None:
    X = _stream(seed, 10, 0.0)
    river = RiverHST(n_trees=4, height=height, window_size=window_size, limits=LIMITS, seed=seed)
    ours = HalfSpaceTrees(FEATURES, n_trees=4, height=height, window_size=window_size, limits=LIMITS, seed=seed)
    river.learn_one(_as_dict(X[0]))
    ours.learn_one(X[0])
    trees = ours.tree_arrays()
    assert trees is not None
    for t, root in enumerate(river.trees):
        frontier = [(0, root)]  # heap index, River node
        while frontier:
            i, node = frontier.pop()
            if node.__class__.__name__ == "HSTBranch":
                assert FEATURES[trees["feature"][t][i]] == node.feature
                assert trees["threshold"][t][i] == node.threshold
                frontier += [(2 * i + 1, node.left), (2 * i + 2, node.right)]
            else:
                assert trees["feature"][t][i] == -1
            assert trees["l_mass"][t][i] == node.l_mass


@pytest.mark.parametrize("height", [3, 8])
def test_batch_methods_equal_one_at_a_time(height: int) -> None:
    X = _stream(5, 5000, 0.02)
    one = HalfSpaceTrees(FEATURES, height=height, window_size=128, limits=LIMITS, seed=5)
    many = HalfSpaceTrees(FEATURES, height=height, window_size=128, limits=LIMITS, seed=5)
    expected = [one.score_learn_one(x) for x in X[:4000]]
    parts = (X[:1], X[1:2500], X[2500:4000])  # the first batch grows the trees
    got = np.concatenate([many.score_learn_many(part) for part in parts])
    assert got.tolist() == expected
    assert many.score_many(X[4000:]).tolist() == [one.score_one(x) for x in X[4000:]]
    one.learn_many(X[4000:])
    for x in X[4000:]:
        many.learn_one(x)
    assert one.to_dict() == many.to_dict()


@pytest.mark.parametrize("cut", [0, 1, 77, 250, 2501])
def test_state_round_trip_mid_stream_gives_identical_scores(cut: int) -> None:
    X = _stream(9, 5000, 0.02)
    river = RiverHST(n_trees=10, height=6, window_size=250, limits=LIMITS, seed=9)
    ours = HalfSpaceTrees(FEATURES, n_trees=10, height=6, window_size=250, limits=LIMITS, seed=9)
    for x in X[:cut]:
        river.learn_one(_as_dict(x))
    ours.learn_many(X[:cut])
    restored = HalfSpaceTrees.from_dict(orjson.loads(orjson.dumps(ours.to_dict())))
    pickled = pickle.loads(pickle.dumps(ours))
    deep = copy.deepcopy(ours)
    assert restored.to_dict() == ours.to_dict()
    expected = []
    for x in X[cut:]:
        d = _as_dict(x)
        expected.append(river.score_one(d))
        river.learn_one(d)
    for model in (restored, pickled, deep, ours):
        assert model.score_learn_many(X[cut:]).tolist() == expected


def test_unseeded_model_restored_before_its_trees_exist_grows_the_same_trees() -> None:
    X = _stream(2, 600, 0.0)
    model = HalfSpaceTrees(FEATURES, seed=None, window_size=100)
    twin = HalfSpaceTrees.from_dict(orjson.loads(orjson.dumps(model.to_dict())))
    assert model.score_learn_many(X).tolist() == twin.score_learn_many(X).tolist()
    assert model.to_dict()["rng_state"] is None  # not needed once the trees are grown


def test_scores_are_anomaly_scores() -> None:
    X = _stream(4, 3000, 0.0)
    model = HalfSpaceTrees(FEATURES, window_size=250, limits=LIMITS, seed=4)
    assert model.score_one(X[0]) == 0.0  # first window: River answers 0
    model.learn_many(X)
    typical = model.score_many(X[-500:])
    far = model.score_many(np.array([[1.15, -1.0, 1.15, 1.0, 23.0, -0.1], [0.5, 9.0, 0.0, 1.0, 0.0, 1.1]]))
    assert typical.min() >= 0.0 and far.max() <= 1.0
    assert far.min() > np.quantile(typical, 0.9)  # the stream itself has 3 % outliers


def test_vector_and_validation() -> None:
    model = HalfSpaceTrees(["b", "a"], seed=0)
    assert model.vector({"a": 2.0, "zzz": 1.0})[0] != model.vector({"a": 2.0})[0]  # NaN != NaN
    assert model.vector({"a": 2.0, "b": 1.0}).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="expected 2"):
        model.score_one(np.zeros(3))
    with pytest.raises(ValueError, match="at least one feature"):
        model.learn_one(np.array([np.nan, np.nan]))
    with pytest.raises(ValueError, match="unique"):
        HalfSpaceTrees(["a", "a"])
    data = HalfSpaceTrees(["a"], height=2, seed=0)
    data.learn_one(np.zeros(1))
    with pytest.raises(ValueError, match="shape"):
        state = data.to_dict()
        state["trees"]["l_mass"]["data"] = state["trees"]["l_mass"]["data"][:-4]  # a tree's last masses cut off
        HalfSpaceTrees.from_dict(state)
    with pytest.raises(ValueError, match="dtype"):
        state = data.to_dict()
        state["trees"]["r_mass"]["dtype"] = "object"
        HalfSpaceTrees.from_dict(state)
    with pytest.raises(ValueError, match="shape"):  # the nested lists snapshots held before, ragged
        state = data.to_dict()
        state["trees"]["l_mass"] = [[0] * data.n_nodes, [0] * data.n_nodes, [0]]
        HalfSpaceTrees.from_dict(state)


def test_snapshots_of_the_list_format_still_load() -> None:
    """Snapshots written before the trees were packed (nested lists) restore the same model."""
    X = _stream(6, 700, 0.02)
    model = HalfSpaceTrees(FEATURES, n_trees=5, height=5, window_size=100, limits=LIMITS, seed=6)
    model.learn_many(X[:300])
    arrays = model.tree_arrays()
    assert arrays is not None
    legacy = model.to_dict()
    legacy["trees"] = {name: array.tolist() for name, array in arrays.items()}
    restored = HalfSpaceTrees.from_dict(orjson.loads(orjson.dumps(legacy)))
    assert restored.to_dict() == model.to_dict()
    assert restored.score_learn_many(X[300:]).tolist() == model.score_learn_many(X[300:]).tolist()


def test_packed_trees_use_the_narrowest_exact_types() -> None:
    model = HalfSpaceTrees(FEATURES, n_trees=3, height=4, window_size=300, limits=LIMITS, seed=1)
    model.learn_many(_stream(1, 650, 0.0))
    trees = model.to_dict()["trees"]
    assert trees["feature"]["dtype"] == "<i1" and trees["threshold"]["dtype"] == "<f8"
    assert trees["r_mass"]["dtype"] == "<u2"  # the root saw all 300 points of the reference window
    assert trees["l_mass"]["dtype"] == "<u1"  # 50 points into the current window
    arrays = model.tree_arrays()
    assert arrays is not None and int(arrays["r_mass"].max()) == 300 and int(arrays["l_mass"].max()) == 50
