"""The statistics behind ``paddy.report``'s repeated-run tables: summaries with confidence intervals and
the tests that say whether two configurations (or two models) really differ. scipy does the maths.

- :func:`summarize`: mean, sample standard deviation and the t-based 95% confidence interval of the mean.
- :func:`paired_test`: two configurations run with the same seeds/folds: the paired differences, their
  95% interval, the paired t-test and the Wilcoxon signed-rank test (exact for small samples).
- :func:`mcnemar`: two single models on the same test images: McNemar's exact test (the binomial test
  on the images that exactly one of the two got right).
- :func:`verdict`: the words for a p-value at a level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    std: float | None  # sample standard deviation (ddof=1); None for one value
    ci_low: float | None  # 95% confidence interval of the mean (Student's t); None for one value
    ci_high: float | None


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("no values to summarize")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, None, None, None)
    std = float(x.std(ddof=1))
    low, high = _t_interval(mean, std, x.size, confidence)
    return Summary(int(x.size), mean, std, low, high)


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    if std == 0.0:
        return mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=std / math.sqrt(n))
    return float(low), float(high)


@dataclass(frozen=True)
class Paired:
    n: int
    mean_diff: float  # mean of a - b
    ci_low: float | None
    ci_high: float | None
    t_p: float | None  # paired t-test, two-sided; None when it is undefined (identical differences)
    wilcoxon_p: float | None  # Wilcoxon signed-rank, two-sided; None when every difference is 0
    wilcoxon_min_p: float  # the smallest two-sided p the exact Wilcoxon test can give with n pairs


def paired_test(a: Sequence[float], b: Sequence[float]) -> Paired:
    """``a[i]`` and ``b[i]`` are the two configurations' results with the same seed/fold."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("a paired test needs two equally long lists of at least 2 values")
    diff = x - y
    summary = summarize(diff)
    t_p = None
    if np.ptp(diff) > 0:  # the t statistic is undefined when every difference is the same
        t_p = float(stats.ttest_rel(x, y).pvalue)
    wilcoxon_p = None
    if np.any(diff != 0):
        wilcoxon_p = float(stats.wilcoxon(x, y, alternative="two-sided").pvalue)
    return Paired(int(diff.size), summary.mean, summary.ci_low, summary.ci_high, t_p, wilcoxon_p,
                  min(1.0, 2.0 / 2 ** int(diff.size)))


@dataclass(frozen=True)
class McNemar:
    n: int  # images both models were asked about
    only_a: int  # images model a got right and b wrong
    only_b: int
    p: float  # exact two-sided p (binomial test on only_a of only_a + only_b at 1/2)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemar:
    """McNemar's exact test on per-image correctness of two models over the same images, in the same order."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("McNemar's test needs the two models' results on the same, non-empty set of images")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return McNemar(int(a.size), only_a, only_b, p)


def verdict(p: float | None, alpha: float = ALPHA) -> str:
    if p is None:
        return "no test possible"
    return f"significant at {alpha:g}" if p < alpha else f"not significant at {alpha:g}"


def macro_f1(labels: Sequence[str], predicted: Sequence[str]) -> float:
    """The unweighted mean of the per-class F1 over the classes among ``labels``."""
    y, p = np.asarray(labels), np.asarray(predicted)
    scores = []
    for cls in sorted(set(y.tolist())):
        tp = np.sum((y == cls) & (p == cls))
        fp = np.sum((y != cls) & (p == cls))
        fn = np.sum((y == cls) & (p != cls))
        scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)) if scores else float("nan")
