"""Confidence intervals and agreement statistics for evaluation metrics.

Every rate Rational reports carries a 95% interval: Wilson score intervals for proportions (well behaved
at k=0 or k=n and for small n, unlike the normal approximation) and percentile bootstrap intervals for
means of bounded scores such as StrongREJECT. Pure Python, so reports can be rebuilt anywhere.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(rate, lo, hi) for k successes out of n; (nan, nan, nan) when n == 0."""
    if n <= 0:
        return (math.nan, math.nan, math.nan)
    if not 0 <= k <= n:
        raise ValueError(f"wilson: need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # Clamp tiny float drift so k=0 gives exactly 0 and k=n exactly 1.
    return (p, max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int) -> dict:
    """A proportion as stored in metrics.json: n, k, rate and its 95% Wilson interval (None when n == 0)."""
    rate, lo, hi = wilson(k, n)
    clean = (lambda x: None if math.isnan(x) else round(x, 6))
    return {"n": n, "k": k, "rate": clean(rate), "lo": clean(lo), "hi": clean(hi)}


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap interval of the mean. NaN values are dropped first."""
    xs = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not xs:
        return (math.nan, math.nan, math.nan)
    mean = sum(xs) / len(xs)
    if len(xs) == 1:
        return (mean, mean, mean)
    rng = random.Random(seed)
    n = len(xs)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(n_boot))
    lo = means[int(math.floor(alpha / 2 * (n_boot - 1)))]
    hi = means[int(math.ceil((1 - alpha / 2) * (n_boot - 1)))]
    return (mean, lo, hi)


def mean_stat(values: Sequence[float], seed: int = 0) -> dict:
    """A mean as stored in metrics.json: n (non-NaN values), mean, bootstrap 95% interval."""
    xs = [v for v in values if v is not None and not math.isnan(v)]
    mean, lo, hi = bootstrap_mean_ci(xs, seed=seed)
    clean = (lambda x: None if math.isnan(x) else round(x, 6))
    return {"n": len(xs), "mean": clean(mean), "lo": clean(lo), "hi": clean(hi)}


def cohen_kappa(pred: Sequence[bool], gold: Sequence[bool]) -> float:
    """Cohen's kappa for two binary raters; nan when agreement by chance is 1 (one label only)."""
    n = len(gold)
    if n == 0 or len(pred) != n:
        return math.nan
    po = sum(p == g for p, g in zip(pred, gold)) / n
    p_yes = (sum(pred) / n) * (sum(gold) / n)
    p_no = (1 - sum(pred) / n) * (1 - sum(gold) / n)
    pe = p_yes + p_no
    return math.nan if pe >= 1 else (po - pe) / (1 - pe)


def binary_agreement(pred: Sequence[bool], gold: Sequence[bool]) -> dict:
    """Accuracy / precision / recall (positive = True) with Wilson intervals, plus Cohen's kappa."""
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum((not p) and g for p, g in zip(pred, gold))
    correct = sum(p == g for p, g in zip(pred, gold))
    kappa = cohen_kappa(pred, gold)
    return {
        "n": len(gold),
        "accuracy": proportion(correct, len(gold)),
        "precision": proportion(tp, tp + fp),
        "recall": proportion(tp, tp + fn),
        "kappa": None if math.isnan(kappa) else round(kappa, 4),
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": len(gold) - tp - fp - fn},
    }


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test for paired binary outcomes: the p-value of b vs c discordant pairs.

    b = pairs where only the first model succeeded, c = only the second. Under the null both are equally likely,
    so min(b, c) is compared with Binomial(b + c, 1/2) (the exact form, right for the small counts we have).
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(a: dict, b: dict) -> dict:
    """Compare two models' binary outcomes on the prompts they share ({id: bool} each): rates, discordant counts
    and the exact McNemar p-value."""
    shared = sorted(set(a) & set(b))
    n = len(shared)
    a_only = sum(a[i] and not b[i] for i in shared)
    b_only = sum(b[i] and not a[i] for i in shared)
    clean = (lambda x: None if x is None else round(x, 6))
    return {"n_pairs": n, "a_rate": clean(sum(a[i] for i in shared) / n if n else None),
            "b_rate": clean(sum(b[i] for i in shared) / n if n else None), "a_only": a_only, "b_only": b_only,
            "p_mcnemar": clean(mcnemar_exact(a_only, b_only)) if n else None}


def kappa(pred: Sequence, gold: Sequence) -> float:
    """Cohen's kappa for two raters over any labels (binary or 3-way); nan when chance agreement is 1."""
    n = len(gold)
    if n == 0 or len(pred) != n:
        return math.nan
    labels = set(pred) | set(gold)
    po = sum(p == g for p, g in zip(pred, gold)) / n
    pe = sum((sum(p == c for p in pred) / n) * (sum(g == c for g in gold) / n) for c in labels)
    return math.nan if pe >= 1 else (po - pe) / (1 - pe)


def kappa_interval(pred: Sequence, gold: Sequence, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of Cohen's kappa (rows resampled with replacement; seeded)."""
    n = len(gold)
    if n < 2:
        return (math.nan, math.nan)
    rng = random.Random(seed)
    values = []
    for _ in range(n_boot):
        idx = [rng.randrange(n) for _ in range(n)]
        k = kappa([pred[i] for i in idx], [gold[i] for i in idx])
        if not math.isnan(k):
            values.append(k)
    if not values:
        return (math.nan, math.nan)
    values.sort()
    return (values[int(0.025 * (len(values) - 1))], values[int(math.ceil(0.975 * (len(values) - 1)))])


def kappa_ci(pred: Sequence, gold: Sequence, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(kappa, lo, hi): Cohen's kappa with its 95% percentile-bootstrap interval."""
    return (kappa(pred, gold), *kappa_interval(pred, gold, n_boot=n_boot, seed=seed))


def agreement(pred: Sequence, gold: Sequence, classes: Sequence | None = None, seed: int = 0) -> dict:
    """Agreement of predicted with gold labels over any classes: n, accuracy (Wilson), Cohen's kappa with its 95%
    bootstrap interval, precision and recall per class, and the confusion matrix {gold: {pred: count}}."""
    classes = list(classes or sorted(set(gold) | set(pred), key=str))
    n = len(gold)
    k = kappa(pred, gold)
    lo, hi = kappa_interval(pred, gold, seed=seed)
    clean = (lambda x: None if math.isnan(x) else round(x, 4))
    per_class = {}
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        per_class[str(c)] = {"precision": proportion(tp, sum(p == c for p in pred)),
                             "recall": proportion(tp, sum(g == c for g in gold))}
    return {"n": n, "accuracy": proportion(sum(p == g for p, g in zip(pred, gold)), n), "kappa": clean(k),
            "kappa_ci": [clean(lo), clean(hi)], "per_class": per_class,
            "confusion": {str(g): {str(p): sum(x == p and y == g for x, y in zip(pred, gold)) for p in classes}
                          for g in classes}}
