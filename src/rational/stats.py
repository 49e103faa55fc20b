"""Confidence intervals and agreement statistics for evaluation metrics.

Every rate Rational reports carries a 95% interval: Wilson score intervals for proportions (well behaved
at k=0 or k=n and for small n, unlike the normal approximation) and percentile bootstrap intervals for
means of bounded scores such as StrongREJECT. Pure Python, so reports can be rebuilt anywhere.
"""

from __future__ import annotations

import math
import random
from collections import Counter
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


def cohen_kappa_labels(pred: Sequence, gold: Sequence) -> float:
    """Cohen's kappa for two raters over any labels (bools, class names, ...); nan when chance agreement is 1."""
    n = len(gold)
    if n == 0 or len(pred) != n:
        return math.nan
    po = sum(p == g for p, g in zip(pred, gold)) / n
    pred_counts, gold_counts = Counter(pred), Counter(gold)
    pe = sum(pred_counts[c] * gold_counts[c] for c in pred_counts) / (n * n)
    return math.nan if pe >= 1 else (po - pe) / (1 - pe)


def kappa_ci(pred: Sequence, gold: Sequence, n_boot: int = 2000, seed: int = 0,
             alpha: float = 0.05) -> tuple[float, float, float]:
    """(kappa, lo, hi): Cohen's kappa with a percentile bootstrap interval over items (resampled pairs).

    Resamples where kappa is undefined (one label only) are skipped; (nan, nan, nan) for an empty input.
    """
    kappa = cohen_kappa_labels(pred, gold)
    if math.isnan(kappa):
        return (kappa, math.nan, math.nan)
    rng = random.Random(seed)
    pairs = list(zip(pred, gold))
    draws = []
    for _ in range(n_boot):
        sample = rng.choices(pairs, k=len(pairs))
        k = cohen_kappa_labels([p for p, _ in sample], [g for _, g in sample])
        if not math.isnan(k):
            draws.append(k)
    draws.sort()
    lo = draws[math.floor(alpha / 2 * (len(draws) - 1))]
    hi = draws[math.ceil((1 - alpha / 2) * (len(draws) - 1))]
    return (kappa, lo, hi)
