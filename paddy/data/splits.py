"""Stratified, seeded splits and subsets.

The same labels and seed give the same split on every run and machine: indices are drawn per class
with NumPy's PCG64 generator, which is platform-independent, and sources index their samples in a
sorted order that does not depend on file-system listing or CSV row order.
"""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split positions ``0..len(labels)-1`` into named parts holding ``fractions`` of each class.

    The remainder goes to the part named ``"rest"``. Every class keeps at least one sample in
    ``rest`` (when it has any), so a tiny class is never moved out of the training set entirely.
    """
    total = sum(fractions.values())
    if any(f < 0 for f in fractions.values()) or total >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum to < 1, got {fractions}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*fractions, "rest"]}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            count = min(count, max(len(members) - start - 1, 0))
            parts[name].append(members[start:start + count])
            start += count
        parts["rest"].append(members[start:])
    return {name: np.sort(np.concatenate(chunks)) if chunks else np.empty(0, dtype=np.int64)
            for name, chunks in parts.items()}


def stratified_subset(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Positions of at most ``limit`` samples, keeping the class proportions (sorted)."""
    if limit >= len(labels):
        return np.arange(len(labels))
    if limit <= 0:
        raise ValueError(f"a sample limit must be positive, got {limit}")
    parts = stratified_split(labels, {"keep": limit / len(labels)}, seed)
    keep = parts["keep"]
    if len(keep) > limit:  # rounding per class can overshoot by a few
        keep = np.sort(np.random.default_rng(seed).choice(keep, limit, replace=False))
    return keep


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """The fold (``0..n_folds-1``) of each position: every class is shuffled with ``seed`` and dealt
    round-robin, starting where the previous class stopped, so each fold holds ``1/n_folds`` of every
    class (within one image) and the folds' sizes differ by at most one."""
    if n_folds < 2:
        raise ValueError(f"k-fold cross-validation needs n_folds >= 2, got {n_folds}")
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        fold_of[members] = (dealt + np.arange(len(members))) % n_folds
        dealt += len(members)
    return fold_of
