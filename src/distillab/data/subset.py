"""`data.train_subset`: a class-stratified part of the training split, the same for every run with the same
`data.split_seed` (the low-data regime, where distillation matters most)."""

from __future__ import annotations

import logging

import numpy as np

from distillab.errors import InvalidArgument

Subset = int | float | None


def check_subset(subset: Subset) -> None:
    """A count >= 1, a fraction in (0, 1], or null (the whole split)."""
    ok = subset is None or (
        not isinstance(subset, bool)
        and ((isinstance(subset, int) and subset >= 1) or (isinstance(subset, float) and 0.0 < subset <= 1.0))
    )
    if not ok:
        raise InvalidArgument(
            "train_subset",
            subset,
            "a number of training samples (an integer >= 1), a fraction in (0, 1], or null for the whole training "
            "split",
        )


def stratified_indices(targets: np.ndarray, subset: Subset, seed: int) -> np.ndarray | None:
    """Sorted indices of `subset` training samples (a count, or a fraction of them) drawn per class in
    proportion (scikit-learn's stratified split, `random_state=seed`); None when it is the whole split."""
    check_subset(subset)
    n = len(targets)
    if isinstance(subset, int) and subset > n:
        logging.getLogger("distillab").warning(
            "data.train_subset=%d is more than the %d training samples: all of them are used", subset, n
        )
    if subset is None or subset == 1.0 or (isinstance(subset, int) and subset >= n):
        return None
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(targets))
    size = subset if isinstance(subset, int) else max(1, round(subset * n))
    if size < classes:
        raise InvalidArgument(
            "train_subset",
            subset,
            f"at least {classes} samples, or {classes / n:.3g} of the split",
            why=f"it keeps {size} of {n} training samples, fewer than their {classes} classes, and a stratified subset "
            "needs at least one sample per class",
        )
    chosen, _ = train_test_split(np.arange(n), train_size=size, stratify=targets, random_state=seed)
    return np.sort(chosen)
