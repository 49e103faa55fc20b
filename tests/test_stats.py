import math

import pytest

from rational.stats import binary_agreement, bootstrap_mean_ci, cohen_kappa, mean_stat, proportion, wilson


def test_wilson_known_values():
    rate, lo, hi = wilson(5, 10)
    assert rate == 0.5 and lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    rate, lo, hi = wilson(0, 10)
    assert (rate, lo) == (0.0, 0.0) and hi == pytest.approx(0.2775, abs=1e-4)
    rate, lo, hi = wilson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    assert wilson(81, 263)[1:] == pytest.approx((0.2553, 0.3662), abs=1e-4)  # Wikipedia's worked example range


def test_wilson_edge_cases():
    assert all(math.isnan(x) for x in wilson(0, 0))
    with pytest.raises(ValueError):
        wilson(11, 10)
    assert proportion(0, 0) == {"n": 0, "k": 0, "rate": None, "lo": None, "hi": None}


def test_bootstrap_mean_ci_is_deterministic_and_brackets_the_mean():
    vals = [0.0, 0.25, 0.5, 1.0, 0.75, 0.0, 0.125]
    mean, lo, hi = bootstrap_mean_ci(vals, seed=0)
    assert mean == pytest.approx(sum(vals) / len(vals))
    assert lo < mean < hi and 0.0 <= lo and hi <= 1.0
    assert bootstrap_mean_ci(vals, seed=0) == (mean, lo, hi)
    assert bootstrap_mean_ci([0.3]) == (0.3, 0.3, 0.3)
    stat = mean_stat([0.5, math.nan, 0.5])  # NaN (unparsed judge output) is dropped, not counted as 0
    assert stat["n"] == 2 and stat["mean"] == 0.5


def test_cohen_kappa_and_agreement():
    assert cohen_kappa([True, True, False, False], [True, False, False, False]) == pytest.approx(0.5)
    assert cohen_kappa([True, False], [True, False]) == 1.0
    assert math.isnan(cohen_kappa([True, True], [True, True]))  # chance agreement 1: undefined
    a = binary_agreement([True, True, False, False], [True, False, True, False])
    assert a["accuracy"]["k"] == 2 and a["precision"]["rate"] == 0.5 and a["recall"]["rate"] == 0.5
    assert a["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1} and a["kappa"] == 0.0


def test_mcnemar_exact_known_values():
    from rational.stats import mcnemar_exact, paired_comparison

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0
    a = {"x": True, "y": True, "z": False, "only-a": True}
    b = {"x": False, "y": True, "z": True, "only-b": False}
    c = paired_comparison(a, b)
    assert c["n_pairs"] == 3 and c["a_only"] == 1 and c["b_only"] == 1 and c["p_mcnemar"] == 1.0


def test_kappa_three_way_and_interval():
    from rational.stats import agreement, kappa

    gold = ["c", "c", "r", "r", "p", "p"]
    pred = ["c", "c", "r", "p", "p", "r"]
    # po = 4/6; marginals: gold c,r,p = 2,2,2; pred c,r,p = 2,2,2 -> pe = 3 * (1/3 * 1/3) = 1/3
    assert kappa(pred, gold) == pytest.approx((4 / 6 - 1 / 3) / (1 - 1 / 3))
    a = agreement(pred, gold, ["c", "r", "p"])
    assert a["confusion"]["r"] == {"c": 0, "r": 1, "p": 1}
    lo, hi = a["kappa_ci"]
    assert lo <= a["kappa"] <= hi and -1 <= lo and hi <= 1
