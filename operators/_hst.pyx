# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Half-Space Trees in C: the same scores as ``river.anomaly.HalfSpaceTrees``, much faster.

River's implementation walks Python node objects through generators; here every tree is a
*complete binary tree stored flat*, in heap order (node ``i`` has children ``2i + 1`` and
``2i + 2``; the root is 0, the ``2 ** height`` leaves are the last nodes). Per tree and
node we keep the split feature (``-1`` for leaves), the split threshold, and the two
masses: ``l_mass`` counts the current window ("latest"), ``r_mass`` the previous,
complete window ("reference") that scores are computed against.

What is reproduced exactly, for the same ``seed`` and inputs (river 0.23.0):

* Construction. The trees are built on the first :meth:`HalfSpaceTrees.learn_one`, over
  the features *present* in that first observation sorted by name, by the same calls on
  a ``random.Random(seed)``, in the same order: at each branch, in pre-order,
  ``rng.choices(features, weights=limit widths)`` then
  ``rng.uniform(lo + 0.15 * (hi - lo), hi - 0.15 * (hi - lo))``; the chosen feature's
  limits are narrowed for the left subtree, then for the right one. The trees are grown
  in Python with that very generator (a one-off cost) and copied into the arrays.
* Learning. Every node on the observation's root-to-leaf path gets ``l_mass += 1``;
  after ``window_size`` observations every node gets ``r_mass = l_mass; l_mass = 0`` and
  the first window is over.
* Scoring. During the first window the score is 0. Afterwards, per tree, walking the path
  from depth 0: ``score += r_mass * 2 ** depth``, stopping after the first node whose
  ``r_mass < 0.1 * window_size``; then ``1 - score / (n_trees * window_size *
  (2 ** (height + 1) - 1))``. High means anomalous. The additions are done in the same
  order, on the same exactly-representable terms, so the doubles are bit-identical.
* Missing features. A feature is *missing* when its value is NaN (River: the key is
  absent from the dict). At a split on a missing feature the walk goes to the child with
  the larger ``l_mass`` (the left one on ties), as River's ``HSTBranch.next`` does.
  Features missing from the first observation are never split on, as in River.

Differences, by design: features are a fixed ordered list of names and an observation is a
``double`` array in that order (use :meth:`HalfSpaceTrees.vector` to turn a dict into
one); a NaN value means "missing" (River would route a NaN present in the dict to the
right child); limits are stored as floats; masses are 32-bit integers, so a window holds
fewer than ``2 ** 31`` observations (snapshots store them in the narrowest exact type).

Layout: each node is one C struct (threshold, both masses, split feature: 24 bytes), so a
step down a tree reads one cache line rather than one per array: with a model per key (the
atypical-flow detector has one per CN chapter), most trees are out of cache when a point comes.

>>> import numpy as np
>>> hst = HalfSpaceTrees(["x"], n_trees=5, height=3, window_size=3, seed=42)
>>> for x in (0.5, 0.45, 0.43):
...     hst.learn_one(np.array([x]))
>>> scores = []
>>> for x in (0.5, 0.45, 0.43, 0.44, 0.445, 0.45, 0.0):
...     hst.learn_one(np.array([x]))
...     scores.append(round(hst.score_one(np.array([x])), 3))
>>> scores  # the values River's docstring prints for the same stream
[0.107, 0.071, 0.107, 0.107, 0.107, 0.071, 0.853]
"""

import base64
import binascii
import math
import random

import numpy as np

from libc.math cimport isnan
from libc.stdint cimport INT32_MAX, int32_t, int64_t
from libc.stdlib cimport free, malloc

PADDING = 0.15
"""Share of a feature's range kept clear of a split at either end (River's constant)."""
cdef double PADDING_C = PADDING

cdef enum:
    BLOCK = 32  # trees walked side by side
    MAX_DEPTHS = 31  # height + 1 at most


cdef struct Node:
    double threshold  # a branch's split: x[feature] < threshold goes left
    int32_t l_mass  # observations of the current window that went through the node
    int32_t r_mass  # the same in the previous, complete window (scores read these)
    int32_t feature  # index of the split feature, -1 for a leaf
    int32_t padding  # the struct takes 24 bytes anyway (double alignment): said explicitly


cdef class HalfSpaceTrees:
    """An ensemble of half-space trees over a fixed, ordered list of features.

    Parameters mirror River's: ``n_trees`` trees of height ``height`` (``2 ** (height + 1)
    - 1`` nodes each), masses counted over windows of ``window_size`` observations,
    ``limits`` mapping a feature name to its ``(low, high)`` range (``(0, 1)`` when not
    given), and ``seed`` for ``random.Random``.

    Memory: ``n_trees * (2 ** (height + 1) - 1) * 24`` bytes (about 123 kB for River's
    defaults of 10 trees of height 8).
    """

    cdef readonly tuple features
    cdef readonly int n_trees
    cdef readonly int height
    cdef readonly int64_t window_size
    cdef readonly object seed
    cdef readonly dict limits
    cdef readonly int64_t counter
    cdef readonly bint first_window
    cdef readonly Py_ssize_t n_nodes
    cdef Py_ssize_t n_features
    cdef object _rng
    cdef Node* _nodes  # n_trees * n_nodes, tree after tree; NULL until the trees are grown
    cdef double _size_limit
    cdef double _max_score
    cdef double _pow2[64]
    cdef object _x_arr
    cdef double* _x

    def __init__(
        self,
        features,
        int n_trees=10,
        int height=8,
        int64_t window_size=250,
        limits=None,
        seed=None,
    ):
        names = tuple(str(name) for name in features)
        if not names:
            raise ValueError("at least one feature is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique: {names}")
        if n_trees < 1 or not 1 <= window_size <= INT32_MAX or not 1 <= height <= 30:
            raise ValueError("need n_trees >= 1, 1 <= window_size < 2 ** 31 and 1 <= height <= 30")
        self.features = names
        self.n_features = len(names)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.limits = {}
        for name, (low, high) in (limits or {}).items():
            self.limits[str(name)] = (float(low), float(high))
        self.counter = 0
        self.first_window = True
        self.n_nodes = (1 << (height + 1)) - 1
        self._size_limit = 0.1 * <double> window_size
        self._max_score = float(n_trees * window_size * (2 ** (height + 1) - 1))
        cdef int d
        for d in range(64):
            self._pow2[d] = float(2 ** d)
        self._rng = random.Random(seed)
        self._x_arr = np.zeros(self.n_features, dtype=np.float64)
        cdef double[::1] scratch = self._x_arr
        self._x = &scratch[0]

    # ------------------------------------------------------------------ construction

    @property
    def built(self) -> bool:
        """Whether the trees exist (they are grown by the first ``learn_one``)."""
        return self._nodes != NULL

    def __dealloc__(self):
        free(self._nodes)

    cdef void _bind(self, feature, threshold, l_mass, r_mass) except *:
        """Copy arrays of ``n_trees * n_nodes`` values each (any shape) into the trees' nodes."""
        cdef Py_ssize_t size = self.n_trees * self.n_nodes, i
        cdef const int32_t[::1] f = np.ascontiguousarray(feature, dtype=np.int32).reshape(size)
        cdef const double[::1] t = np.ascontiguousarray(threshold, dtype=np.float64).reshape(size)
        l64 = np.ascontiguousarray(l_mass, dtype=np.int64).reshape(size)
        r64 = np.ascontiguousarray(r_mass, dtype=np.int64).reshape(size)
        if min(l64.min(), r64.min()) < 0 or max(l64.max(), r64.max()) > INT32_MAX:
            raise ValueError("tree masses must be in [0, 2 ** 31)")
        cdef const int64_t[::1] lm = l64, rm = r64
        if self._nodes == NULL:
            self._nodes = <Node*> malloc(size * sizeof(Node))
            if self._nodes == NULL:
                raise MemoryError()
        for i in range(size):
            self._nodes[i] = Node(t[i], <int32_t> lm[i], <int32_t> rm[i], f[i], 0)
        self._rng = None

    cdef void _build(self, const double[::1] x) except *:
        """Grow the trees over the features present in ``x``, exactly as River does."""
        cdef Py_ssize_t i
        present = sorted([self.features[i] for i in range(self.n_features) if not isnan(x[i])])
        if not present:
            raise ValueError("the first observation learned must have at least one feature that is not NaN")
        index = {name: i for i, name in enumerate(self.features)}
        feature = np.full((self.n_trees, self.n_nodes), -1, dtype=np.int32)
        threshold = np.zeros((self.n_trees, self.n_nodes), dtype=np.float64)
        cdef Py_ssize_t n = len(present)
        columns = np.array([index[name] for name in present], dtype=np.int32)
        bounds = np.array([self.limits.get(name, (0.0, 1.0)) for name in present], dtype=np.float64)
        lo = np.empty(n, dtype=np.float64)
        hi = np.empty(n, dtype=np.float64)
        cum = np.empty(n, dtype=np.float64)
        cdef int32_t[::1] c = columns
        cdef double[::1] l = lo, h = hi, w = cum
        cdef int32_t[:, ::1] f = feature
        cdef double[:, ::1] th = threshold
        rand = self._rng.random
        for t in range(self.n_trees):
            lo[:] = bounds[:, 0]
            hi[:] = bounds[:, 1]
            _grow(self.height, rand, 0, n, &c[0], &l[0], &h[0], &w[0], &f[t, 0], &th[t, 0])
        zeros = np.zeros((self.n_trees, self.n_nodes), dtype=np.int64)
        self._bind(feature, threshold, zeros, zeros.copy())

    # ------------------------------------------------------------------ hot path

    # The trees are walked BLOCK at a time, level by level: each walk is a chain of dependent
    # loads, and independent chains side by side keep the CPU busy while one waits. The masses on
    # the path are recorded, then added up tree by tree, depth by depth, as River adds them.

    cdef void _walk(
        self, Py_ssize_t first, Py_ssize_t count, const double* x, int32_t* r_mass, bint learn
    ) noexcept nogil:
        """Walk ``x``'s path down trees ``first`` to ``first + count - 1`` (``count <= BLOCK``);
        unless NULL, ``r_mass[t * (height + 1) + depth]`` gets the ``r_mass`` of the path's node at
        ``depth`` in the ``t``-th of those trees; with ``learn``, each node on the path counts ``x``."""
        cdef Py_ssize_t cursor[BLOCK]
        cdef Py_ssize_t t, n_nodes = self.n_nodes
        cdef int depth, height = self.height
        cdef Node* trees = &self._nodes[first * n_nodes]
        cdef Node* node
        for t in range(count):
            cursor[t] = 0
        for depth in range(height + 1):
            for t in range(count):
                node = &trees[t * n_nodes + cursor[t]]
                if r_mass != NULL:
                    r_mass[t * (height + 1) + depth] = node.r_mass
                if learn:
                    # The children's l_mass, which a missing feature's step reads, is not counted yet.
                    node.l_mass += 1
                if depth < height:
                    cursor[t] = _child(&trees[t * n_nodes], cursor[t], x)

    cdef double _add_up(self, const int32_t* r_mass, Py_ssize_t count, double score) noexcept nogil:
        """``score`` plus the walked paths' terms ``r_mass * 2 ** depth``, each path up to and including
        its first node with ``r_mass < 0.1 * window_size``."""
        cdef Py_ssize_t t
        cdef int depth, height = self.height
        cdef int32_t mass
        for t in range(count):
            for depth in range(height + 1):
                mass = r_mass[t * (height + 1) + depth]
                score += (<double> mass) * self._pow2[depth]
                if mass < self._size_limit:
                    break
        return score

    cdef double _score_learn(self, const double* x, bint score, bint learn) noexcept nogil:
        """With ``score``, the score of ``x`` (0 during the first window), against the trees as they
        were before ``x``; with ``learn``, count ``x`` (the trees must exist)."""
        cdef int32_t r_mass[BLOCK * MAX_DEPTHS]
        cdef double total = 0.0
        cdef Py_ssize_t first = 0, count
        score = score and not self.first_window
        if not (score or learn):
            return 0.0  # a score in the first window, when the trees may not even exist
        while first < self.n_trees:
            count = min(<Py_ssize_t> BLOCK, self.n_trees - first)
            self._walk(first, count, x, r_mass if score else NULL, learn)
            if score:
                total = self._add_up(r_mass, count, total)
            first += count
        if learn:
            self._count()
        if not score:
            return 0.0
        total /= self._max_score
        return 1.0 - total

    cdef double _score(self, const double* x) noexcept nogil:
        return self._score_learn(x, True, False)

    cdef void _learn(self, const double* x) noexcept nogil:
        self._score_learn(x, False, True)

    cdef void _count(self) noexcept nogil:
        """One more observation in the current window; at its end, it becomes the reference."""
        cdef Py_ssize_t i
        self.counter += 1
        if self.counter == self.window_size:
            for i in range(self.n_trees * self.n_nodes):
                self._nodes[i].r_mass = self._nodes[i].l_mass
                self._nodes[i].l_mass = 0
            self.first_window = False
            self.counter = 0

    cdef void _check(self, Py_ssize_t n) except *:
        if n != self.n_features:
            raise ValueError(f"expected {self.n_features} feature values {self.features}, got {n}")

    def score_one(self, const double[::1] x) -> float:
        """Anomaly score of ``x`` in [0, 1] (high = anomalous; 0 during the first window)."""
        self._check(x.shape[0])
        return self._score(&x[0])

    def learn_one(self, const double[::1] x) -> None:
        """Count ``x`` in the current window (growing the trees on the first call)."""
        self._check(x.shape[0])
        if self._nodes == NULL:
            self._build(x)
        self._learn(&x[0])

    def score_learn_one(self, const double[::1] x) -> float:
        """Score ``x``, then learn it (prequential order); returns the score."""
        self._check(x.shape[0])
        if self._nodes == NULL:
            self._build(x)
        return self._score_learn(&x[0], True, True)

    cdef void _load(self, values) except *:
        """Copy a sequence of floats (list or tuple, in feature order) into the scratch vector."""
        cdef Py_ssize_t i, n = len(values)
        self._check(n)
        for i in range(n):
            self._x[i] = values[i]

    def score_values(self, values) -> float:
        """:meth:`score_one` of a list or tuple of floats in feature order (no array to build).

        >>> a, b = HalfSpaceTrees(["x", "y"], window_size=2, seed=1), HalfSpaceTrees(["x", "y"], window_size=2, seed=1)
        >>> for point in ([0.1, 0.2], [0.3, 0.4], [0.2, 0.2]):
        ...     a.learn_values(point)
        ...     b.learn_one(np.array(point))
        >>> a.score_values([0.9, 0.1]) == b.score_one(np.array([0.9, 0.1])) and a.to_dict() == b.to_dict()
        True
        """
        self._load(values)
        return self._score(self._x)

    def learn_values(self, values) -> None:
        """:meth:`learn_one` of a list or tuple of floats in feature order (no array to build)."""
        self._load(values)
        self._learn_loaded()

    def score_learn_values(self, values) -> float:
        """:meth:`score_learn_one` of a list or tuple of floats in feature order (no array to build)."""
        self._load(values)
        if self._nodes == NULL:
            self._build(self._x_arr)
        return self._score_learn(self._x, True, True)

    cdef void _learn_loaded(self) except *:
        """Learn the point in the scratch vector (:meth:`_load`), growing the trees first if need be."""
        if self._nodes == NULL:
            self._build(self._x_arr)
        self._learn(self._x)

    def score_many(self, const double[:, ::1] X):
        """Scores of the rows of ``X`` against the current state, without learning them."""
        self._check(X.shape[1])
        cdef Py_ssize_t n = X.shape[0], i
        out = np.zeros(n, dtype=np.float64)
        cdef double[::1] o = out
        if n == 0:
            return out
        with nogil:
            for i in range(n):
                o[i] = self._score(&X[i, 0])
        return out

    def learn_many(self, const double[:, ::1] X) -> None:
        """Learn the rows of ``X`` in order."""
        self._check(X.shape[1])
        cdef Py_ssize_t n = X.shape[0], i
        if n == 0:
            return
        if self._nodes == NULL:
            self._build(X[0])
        with nogil:
            for i in range(n):
                self._learn(&X[i, 0])

    def score_learn_many(self, const double[:, ::1] X):
        """For each row in order: score it, then learn it, as a stream would. Returns the scores."""
        self._check(X.shape[1])
        cdef Py_ssize_t n = X.shape[0], i
        out = np.zeros(n, dtype=np.float64)
        cdef double[::1] o = out
        if n == 0:
            return out
        if self._nodes == NULL:
            self._build(X[0])
        with nogil:
            for i in range(n):
                o[i] = self._score_learn(&X[i, 0], True, True)
        return out

    # ------------------------------------------------------------------ helpers

    def vector(self, x) -> np.ndarray:
        """The array form of a ``{feature: value}`` mapping; absent features become NaN."""
        return np.array([float(x[name]) if name in x else math.nan for name in self.features], dtype=np.float64)

    def path(self, const double[::1] x, int tree) -> list:
        """Nodes ``(index, feature name or None, threshold, l_mass, r_mass)`` on ``x``'s path in one tree."""
        self._check(x.shape[0])
        if self._nodes == NULL:
            return []
        if not 0 <= tree < self.n_trees:
            raise IndexError(tree)
        cdef const Node* nodes = &self._nodes[tree * self.n_nodes]
        cdef Py_ssize_t node = 0
        out = []
        for depth in range(self.height + 1):
            f = nodes[node].feature
            out.append((node, self.features[f] if f >= 0 else None, nodes[node].threshold,
                        nodes[node].l_mass, nodes[node].r_mass))
            if depth < self.height:
                node = _child(nodes, node, &x[0])
        return out

    # ------------------------------------------------------------------ state

    def to_dict(self) -> dict:
        """A JSON-able snapshot from which :meth:`from_dict` rebuilds an equal model.

        ``trees`` is ``None`` before the first ``learn_one``; otherwise it holds, per array
        (``feature``: index into ``features``, -1 for leaves; ``threshold``; ``l_mass``;
        ``r_mass``; each ``n_trees x n_nodes`` in heap order), its little-endian bytes in
        base64 and their numpy ``dtype``, the narrowest that holds the values exactly
        (masses never exceed the window, so usually one byte). Formatting thousands of
        floats as JSON text cost ~0.2 ms per snapshot, and the Flink job writes the
        snapshot of a unit's state after every unit. :meth:`tree_arrays` gives the arrays.
        Before the trees exist and without a seed, ``rng_state`` keeps the generator's state
        so the trees grown later are the same.
        """
        data = {
            "features": list(self.features),
            "n_trees": self.n_trees,
            "height": self.height,
            "window_size": self.window_size,
            "limits": {name: [low, high] for name, (low, high) in self.limits.items()},
            "seed": self.seed,
            "counter": self.counter,
            "first_window": bool(self.first_window),
            "trees": None,
            "rng_state": None,
        }
        if self._nodes != NULL:
            arrays = self.tree_arrays()
            data["trees"] = {
                "feature": _pack(arrays["feature"], "<i1" if self.n_features <= 127 else "<i4"),
                "threshold": _pack(arrays["threshold"], "<f8"),
                "l_mass": _pack(arrays["l_mass"], _count_dtype(arrays["l_mass"])),
                "r_mass": _pack(arrays["r_mass"], _count_dtype(arrays["r_mass"])),
            }
        elif self.seed is None:
            version, internal, gauss = self._rng.getstate()
            data["rng_state"] = [version, list(internal), gauss]
        return data

    def tree_arrays(self) -> dict | None:
        """Copies of the trees' arrays (``feature``, ``threshold``, ``l_mass``, ``r_mass``, each
        ``n_trees x n_nodes``, heap order), or ``None`` before the trees exist."""
        if self._nodes == NULL:
            return None
        shape = (self.n_trees, self.n_nodes)
        feature = np.empty(shape, dtype=np.int32)
        threshold = np.empty(shape, dtype=np.float64)
        l_mass = np.empty(shape, dtype=np.int64)
        r_mass = np.empty(shape, dtype=np.int64)
        cdef int32_t[:, ::1] f = feature
        cdef double[:, ::1] t = threshold
        cdef int64_t[:, ::1] lm = l_mass, rm = r_mass
        cdef Py_ssize_t i, j
        cdef const Node* node
        for i in range(self.n_trees):
            for j in range(self.n_nodes):
                node = &self._nodes[i * self.n_nodes + j]
                f[i, j], t[i, j], lm[i, j], rm[i, j] = node.feature, node.threshold, node.l_mass, node.r_mass
        return {"feature": feature, "threshold": threshold, "l_mass": l_mass, "r_mass": r_mass}

    @classmethod
    def from_dict(cls, data: dict) -> HalfSpaceTrees:
        """Rebuild a model saved with :meth:`to_dict`."""
        cdef HalfSpaceTrees hst = cls(
            data["features"], data["n_trees"], data["height"], data["window_size"], data["limits"], data["seed"]
        )
        hst.counter = data["counter"]
        hst.first_window = data["first_window"]
        trees = data["trees"]
        if trees is not None:
            shape = (hst.n_trees, hst.n_nodes)
            arrays = [
                _unpack(trees[key], dtype, shape)
                for key, dtype in (("feature", np.int32), ("threshold", np.float64), ("l_mass", np.int64), ("r_mass", np.int64))
            ]
            if arrays[0].max() >= hst.n_features:
                raise ValueError("a split feature index is out of range")
            hst._bind(arrays[0], arrays[1], arrays[2], arrays[3])
        elif not hst.first_window:
            raise ValueError("a model past its first window must have trees")
        elif data.get("rng_state") is not None:
            version, internal, gauss = data["rng_state"]
            hst._rng.setstate((version, tuple(internal), gauss))
        return hst

    def copy(self) -> HalfSpaceTrees:
        """An independent copy."""
        return HalfSpaceTrees.from_dict(self.to_dict())

    def __reduce__(self):
        return _restore, (self.to_dict(),)

    def __repr__(self) -> str:
        return (
            f"HalfSpaceTrees(features={list(self.features)}, n_trees={self.n_trees}, height={self.height}, "
            f"window_size={self.window_size}, seed={self.seed!r}, counter={self.counter}, "
            f"first_window={bool(self.first_window)})"
        )


cdef inline Py_ssize_t _child(const Node* tree, Py_ssize_t node, const double* x) noexcept nogil:
    """The child of branch ``node`` (index within ``tree``) that ``x`` goes down to."""
    cdef double value = x[tree[node].feature]
    cdef Py_ssize_t left = 2 * node + 1
    if isnan(value):
        # Missing feature: follow the child that has seen more of the current window.
        if tree[left].l_mass < tree[left + 1].l_mass:
            return left + 1
        return left
    return left + (not value < tree[node].threshold)  # left when value < threshold; no branch to mispredict


_PACKED_DTYPES = frozenset({"<i1", "<i4", "<i8", "<u1", "<u2", "<u4", "<f8"})


def _count_dtype(counts) -> str:
    """The narrowest little-endian dtype holding every value of ``counts`` exactly."""
    if counts.size == 0 or int(counts.min()) < 0:
        return "<i8"
    top = int(counts.max())
    for dtype, limit in (("<u1", 1 << 8), ("<u2", 1 << 16), ("<u4", 1 << 32)):
        if top < limit:
            return dtype
    return "<i8"


def _pack(array, str dtype) -> dict:
    """``array`` as ``{"dtype": ..., "data": base64 of its bytes in that dtype}``."""
    return {"dtype": dtype, "data": base64.b64encode(array.astype(dtype, copy=False).tobytes()).decode("ascii")}


def _unpack(value, dtype, shape):
    """An array of :func:`_pack` (or, as snapshots before 2026-11-22 wrote it, nested lists)
    as ``dtype`` with ``shape``; ``ValueError`` when it does not fit."""
    if isinstance(value, dict):
        stored = value.get("dtype")
        if stored not in _PACKED_DTYPES:
            raise ValueError(f"unsupported tree array dtype {stored!r}")
        try:
            raw = base64.b64decode(value["data"], validate=True)
        except (KeyError, TypeError, binascii.Error) as exc:
            raise ValueError(f"tree array data is not base64: {exc}") from exc
        if len(raw) % np.dtype(stored).itemsize:
            raise ValueError(f"tree arrays must have shape {shape}")
        array = np.frombuffer(raw, dtype=stored).astype(dtype)
    else:
        try:
            array = np.array(value, dtype=dtype)
        except (TypeError, ValueError) as exc:  # ragged lists
            raise ValueError(f"tree arrays must have shape {shape}") from exc
    if array.size != shape[0] * shape[1] or (array.ndim != 1 and array.shape != shape):
        raise ValueError(f"tree arrays must have shape {shape}")
    return array.reshape(shape)


def _restore(data: dict) -> HalfSpaceTrees:
    """Unpickling hook."""
    return HalfSpaceTrees.from_dict(data)


cdef void _grow(
    int height, object rand, Py_ssize_t node, Py_ssize_t n, const int32_t* columns, double* lo, double* hi,
    double* cum, int32_t* feature, double* threshold,
) except *:
    """Grow the subtree rooted at heap index ``node`` with River's ``make_padded_tree`` RNG calls.

    ``lo`` / ``hi``: the current box side of each usable feature (``columns[i]`` is its index
    in the observation), narrowed on the way down and restored on the way up. Each branch
    draws exactly as River's ``rng.choices(features, weights=widths)`` then
    ``rng.uniform(a + 0.15 (b - a), b - 0.15 (b - a))`` do (CPython 3.11's code: cumulative
    widths, ``bisect_right(cum, random() * total, 0, n - 1)``, ``a + (b - a) * random()``),
    with the same double operations in the same order, so the trees are bit-identical.
    """
    if height == 0:
        return
    cdef Py_ssize_t i, lo_i, hi_i, mid
    cdef double total, pick, a, b, low, high, at
    cum[0] = hi[0] - lo[0]
    for i in range(1, n):
        cum[i] = cum[i - 1] + (hi[i] - lo[i])
    total = cum[n - 1] + 0.0
    pick = <double> rand() * total
    lo_i, hi_i = 0, n - 1
    while lo_i < hi_i:
        mid = (lo_i + hi_i) >> 1
        if pick < cum[mid]:
            hi_i = mid
        else:
            lo_i = mid + 1
    a, b = lo[lo_i], hi[lo_i]
    low = a + PADDING_C * (b - a)
    high = b - PADDING_C * (b - a)
    at = low + (high - low) * <double> rand()
    feature[node] = columns[lo_i]
    threshold[node] = at
    hi[lo_i] = at
    _grow(height - 1, rand, 2 * node + 1, n, columns, lo, hi, cum, feature, threshold)
    hi[lo_i] = b
    lo[lo_i] = at
    _grow(height - 1, rand, 2 * node + 2, n, columns, lo, hi, cum, feature, threshold)
    lo[lo_i] = a
