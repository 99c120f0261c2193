"""Uncertainty of the reproduced numbers: a t interval over seeds, a paired bootstrap over samples.

Two questions a table must answer before its numbers mean anything:

* **How much does a number move with the seed?** :func:`seed_interval`: mean, sample std and the
  Student-t 95% confidence interval of the mean over the seeds (``mean ± t(0.975, n-1) · std / √n``).
* **Is the difference between two trained methods real?** :func:`paired_bootstrap`: both methods were
  evaluated on the same samples (every sentence of the split, ``samples.csv``), so the test set is resampled
  *once* per replicate for both (pairing removes the shared per-sample difficulty): Δ* = metric_a - metric_b
  on the resample, with each method's metric the mean over its seeds. The CI is the percentile interval
  of Δ*; the two-sided p-value tests Δ = 0 by the shift method (Efron & Tibshirani 1993, §16.4; the
  paired bootstrap of Berg-Kirkpatrick et al. 2012): p = (1 + #{|Δ* - Δ| ≥ |Δ|}) / (1 + B). It covers
  the test-set sampling only; the seed spread is in the first interval.
* **How sure is a rate measured on few samples?** :func:`wilson_interval`: the Wilson score interval of a
  binomial proportion (RefAcc of one expression type, :mod:`ris.report.breakdown`).

Metrics are those of ``ris.metrics`` (percentages): ``mIoU`` (mean per-sample IoU), ``oIoU`` (sum of
intersections / sum of unions), ``P@X`` (share of samples with IoU ≥ X), and ``RefAcc`` (share of the
eligible samples whose prediction picks the named object: the ``refers`` column, 1/0, empty when not
eligible), when the samples tables have that column.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE_KEY = ["ref_id", "sent_id"]  # one evaluation sample of samples.csv
SAMPLE_COLUMNS = [*SAMPLE_KEY, "intersection", "union"]  # what the bootstrap needs of samples.csv
REFERS = "refers"  # optional per-sample referring outcome (1, 0, NaN: not eligible), for RefAcc


def read_samples(path: Path, columns: Sequence[str], optional: Sequence[str] = ()) -> pd.DataFrame:
    """``columns`` (required) and ``optional`` columns of a ``samples.csv`` of ``ris evaluate`` (not the RLE masks).

    Raises FileNotFoundError or ValueError naming the file and the missing columns.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no samples.csv (written by `ris evaluate`)")
    df = pd.read_csv(path, usecols=lambda c: c in (*columns, *optional))
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a samples.csv of `ris evaluate` (no column {', '.join(missing)})")
    return df


@dataclass(frozen=True)
class SeedInterval:
    """Mean, sample std and confidence interval of one number over ``n`` seeds (std/CI NaN when n = 1)."""

    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high), as fractions in [0, 1], of ``successes`` out of ``n`` trials.

    Unlike the normal approximation p ± z·√(p(1-p)/n) it stays inside [0, 1] and keeps its coverage for
    small ``n`` and rates near 0 or 1 (Wilson 1927; Brown, Cai & DasGupta 2001).
    """
    from scipy.stats import norm

    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n > 0, got {successes} of {n}")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (no rounding past p)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> SeedInterval:
    """Student-t confidence interval of the mean of ``values`` (one per seed)."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"seed_interval needs finite values, got {list(values)!r}")
    mean = float(x.mean())
    if x.size == 1:
        return SeedInterval(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return SeedInterval(mean, std, int(x.size), mean - half, mean + half)


@dataclass(frozen=True)
class BootstrapResult:
    """Δ = metric(a) - metric(b) (percentage points) with its bootstrap CI and two-sided p-value."""

    metric: str
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    samples: int
    seeds_a: int
    seeds_b: int
    resamples: int

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _metric(metric: str, cols: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    """``metric`` (percent) of each resample; ``weights[r, i]``: how often sample i is drawn in resample r.

    ``cols``: per-sample columns, each (seeds, samples). Returns (resamples,) averaged over the seeds.
    """
    inter, union = cols["intersection"], cols["union"]
    iou = np.divide(inter, union, out=np.zeros_like(inter, dtype=float), where=union > 0)
    n = weights.sum(axis=1, keepdims=True)  # (R, 1): samples per resample
    if metric == "oIoU":
        out = (weights @ inter.T) / np.maximum(weights @ union.T, 1e-12)  # (R, seeds)
    elif metric == "mIoU":
        out = (weights @ iou.T) / n
    elif metric.startswith("P@"):
        out = (weights @ (iou >= float(metric[2:])).astype(float).T) / n
    elif metric == "RefAcc":
        if REFERS not in cols:
            raise ValueError(f"RefAcc needs the {REFERS!r} column in every samples table")
        eligible = ~np.isnan(cols[REFERS])
        with np.errstate(invalid="ignore", divide="ignore"):  # no eligible sample drawn: NaN
            out = (weights @ np.nan_to_num(cols[REFERS]).T) / (weights @ eligible.T)
    else:
        raise ValueError(f"unknown metric {metric!r} for the bootstrap; expected oIoU, mIoU, P@X or RefAcc")
    return 100.0 * out.mean(axis=1)


def paired_bootstrap(
    a: Sequence[pd.DataFrame],
    b: Sequence[pd.DataFrame],
    metrics: Sequence[str] = ("mIoU",),
    resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    chunk: int = 500,
) -> list[BootstrapResult]:
    """Paired bootstrap of metric(a) - metric(b) over samples, one result per metric.

    ``a``, ``b``: per-seed ``samples.csv`` tables of the two methods (columns ``ref_id``, ``sent_id``,
    ``intersection``, ``union``; ``refers`` for RefAcc) on the same split. Every table must hold the same
    samples (else the comparison is not paired and a ``ValueError`` says which differ). Deterministic for a
    given ``seed``.
    """
    if not a or not b:
        raise ValueError("paired_bootstrap needs at least one samples table per method")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    tables = [*a, *b]
    for i, df in enumerate(tables):
        missing = [c for c in SAMPLE_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"samples table {i}: missing column(s) {', '.join(missing)}")
        if df.duplicated(SAMPLE_KEY).any():
            raise ValueError(f"samples table {i}: a (ref_id, sent_id) appears twice")
    order = tables[0].set_index(SAMPLE_KEY).sort_index().index
    counts = []
    for i, df in enumerate(tables):
        d = df.set_index(SAMPLE_KEY).sort_index()
        if not d.index.equals(order):
            raise ValueError(
                f"samples table {i} does not hold the same samples as table 0 ({len(d)} vs {len(order)}): "
                "a paired comparison needs both methods evaluated on the same split"
            )
        counts.append(d)
    n = len(order)
    names = ["intersection", "union"] + ([REFERS] if all(REFERS in d.columns for d in counts) else [])
    col_a = {c: np.stack([d[c].to_numpy(float) for d in counts[: len(a)]]) for c in names}
    col_b = {c: np.stack([d[c].to_numpy(float) for d in counts[len(a) :]]) for c in names}
    full = np.ones((1, n))
    observed = {m: float(_metric(m, col_a, full)[0] - _metric(m, col_b, full)[0]) for m in metrics}
    rng = np.random.default_rng(seed)
    deltas: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        idx = rng.integers(0, n, size=(r, n))
        weights = np.bincount((idx + n * np.arange(r)[:, None]).ravel(), minlength=r * n).reshape(r, n).astype(float)
        for m in metrics:
            deltas[m].append(_metric(m, col_a, weights) - _metric(m, col_b, weights))
    alpha = 1 - confidence
    results = []
    for m in metrics:
        d = np.concatenate(deltas[m])
        d = d[np.isfinite(d)]  # RefAcc: a resample may draw no eligible sample
        if math.isfinite(observed[m]) and d.size:
            extreme = int(np.sum(np.abs(d - observed[m]) >= abs(observed[m]) - 1e-12))
            low, high = np.quantile(d, [alpha / 2, 1 - alpha / 2])
            p_value = (1 + extreme) / (1 + d.size)
        else:  # the metric is undefined on these samples (RefAcc with no eligible sample)
            low = high = p_value = math.nan
        results.append(
            BootstrapResult(
                metric=m,
                delta=observed[m],
                ci_low=float(low),
                ci_high=float(high),
                p_value=p_value,
                samples=n,
                seeds_a=len(a),
                seeds_b=len(b),
                resamples=resamples,
            )
        )
    return results
