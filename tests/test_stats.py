"""Statistics of the tables: t interval over seeds, paired bootstrap over samples (ris/report/stats.py)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ris.report.stats import paired_bootstrap, seed_interval


def samples(iou: np.ndarray, union: float = 1000.0) -> pd.DataFrame:
    """A samples.csv-like table whose per-sample IoU is ``iou`` (union fixed, intersection = IoU x union)."""
    n = len(iou)
    return pd.DataFrame(
        {"ref_id": np.arange(n) // 3, "sent_id": np.arange(n), "intersection": iou * union, "union": union}
    )


def test_seed_interval_is_the_student_t_interval():
    s = seed_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t(0.975, df=2) x std 1 / sqrt(3)
    assert (s.mean, s.std, s.n) == (2.0, 1.0, 3)
    assert s.ci_low == pytest.approx(2 - half) and s.ci_high == pytest.approx(2 + half)
    one = seed_interval([5.0])
    assert one.mean == 5.0 and one.n == 1 and math.isnan(one.std) and math.isnan(one.ci_low)
    with pytest.raises(ValueError, match="finite"):
        seed_interval([1.0, float("nan")])


def test_paired_bootstrap_recovers_a_known_difference():
    """b = a + 5 points on every sample, plus centred noise: Δ = -5 exactly, CI around it, p tiny."""
    rng = np.random.default_rng(1)
    n = 2000
    a = rng.uniform(0.1, 0.8, n)
    noise = rng.normal(0, 0.1, n)
    noise -= noise.mean()
    b = a + 0.05 + noise
    res = paired_bootstrap([samples(a)], [samples(b)], metrics=["mIoU", "oIoU"], resamples=4000, seed=0)
    miou, oiou = res
    assert miou.metric == "mIoU" and miou.samples == n and miou.resamples == 4000
    assert miou.delta == pytest.approx(-5.0, abs=1e-9)
    assert oiou.delta == pytest.approx(-5.0, abs=1e-9)  # equal unions: oIoU = mIoU
    # the CI is the sampling error of a mean difference: 1.96 x sd(diff) / sqrt(n) = 0.44 points either side
    half = 1.96 * 100 * noise.std(ddof=1) / math.sqrt(n)
    assert miou.ci_low == pytest.approx(-5.0 - half, abs=0.05)
    assert miou.ci_high == pytest.approx(-5.0 + half, abs=0.05)
    assert miou.p_value == 1 / 4001  # no resample comes near 0
    # deterministic
    assert paired_bootstrap([samples(a)], [samples(b)], resamples=4000, seed=0)[0] == miou


def test_paired_bootstrap_finds_no_difference_where_there_is_none_and_pairing_matters():
    rng = np.random.default_rng(2)
    n = 500
    a = rng.uniform(0.0, 1.0, n)  # very different samples (easy and hard)...
    b = np.clip(a + rng.normal(0, 0.02, n), 0, 1)  # ...on which both methods score nearly the same
    res = paired_bootstrap([samples(a)], [samples(b)], resamples=2000, seed=0)[0]
    assert res.ci_low < 0 < res.ci_high and res.p_value > 0.05
    # paired: the CI reflects the per-sample differences (sd 2 points), not the spread of IoUs (sd 29)
    assert res.ci_high - res.ci_low < 4 * 1.96 * 2.0 / math.sqrt(n)
    # a difference of 1 point is then clearly detected, though 30x smaller than the IoU spread
    shifted = paired_bootstrap([samples(a)], [samples(np.clip(b + 0.01, 0, 1.01))], resamples=2000, seed=0)[0]
    assert shifted.ci_high < 0 and shifted.p_value < 0.01


def test_paired_bootstrap_averages_seeds_and_checks_pairing():
    rng = np.random.default_rng(3)
    base = rng.uniform(0.2, 0.9, 300)
    a_seeds = [samples(base + d) for d in (0.00, 0.02)]  # mean +1 point
    b_seeds = [samples(base - 0.01), samples(base - 0.01), samples(base - 0.01)]
    res = paired_bootstrap(a_seeds, b_seeds, metrics=["mIoU", "P@0.5"], resamples=500)
    assert res[0].delta == pytest.approx(2.0) and (res[0].seeds_a, res[0].seeds_b) == (2, 3)
    p05 = 100 * (np.mean(base >= 0.5) + np.mean(base + 0.02 >= 0.5)) / 2 - 100 * np.mean(base - 0.01 >= 0.5)
    assert res[1].delta == pytest.approx(p05)
    # rows in another order are the same samples (paired by ref_id, sent_id)
    shuffled = a_seeds[0].sample(frac=1.0, random_state=0)
    assert (
        paired_bootstrap([shuffled], b_seeds[:1], resamples=200)[0]
        == paired_bootstrap(a_seeds[:1], b_seeds[:1], resamples=200)[0]
    )
    with pytest.raises(ValueError, match="same samples"):
        paired_bootstrap([samples(base)], [samples(base[:-1])], resamples=10)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap([samples(base)], [samples(base)], metrics=["F1"], resamples=10)


def test_stats_table_prints_seed_intervals_and_the_paired_bootstrap(tmp_path):
    """The `stats:` table (six N, 3 seeds): CIs in the cells, N=100 vs N=0 under the table and in the CSV."""
    from ris.config import stats_config
    from ris.report.build import PAIRED
    from ris.report.render import write_tables
    from ris.report.spec import stats_spec
    from tests.helpers import repo_config, write_fixture_metrics

    cfg = repo_config(tmp_path / "results")
    # a stats section, table and baselines of the test's own (config.yaml's may change): N = 100 vs N = 0
    runs = [{"method": "coupalign", "backbone": "swin_b", "num_masks": n} for n in (0, 20, 50, 100, 150, 200)]
    table = {"caption": "N.", "datasets": {"refcoco": ["val"]}, "metrics": ["mIoU"], "runs": runs}
    cfg["tables"] = {"mask_number": table}
    cfg["scales"]["demo"]["baselines"] = ["all_foreground", "random_object", "largest_object"]
    cfg["stats"] = {
        "table": "mask_number",
        "seeds": [0, 1, 2],
        "comparisons": [{"a": runs[3], "b": runs[0]}],
        "bootstrap": {"resamples": 1000, "seed": 0},
    }
    spec = stats_spec(cfg)
    assert spec["seeds"] == [0, 1, 2] and spec["comparisons"][0]["a"]["num_masks"] == 100
    spec["metrics"] = ["mIoU", "P@0.5", "P@0.9", "RefAcc"]
    files = write_fixture_metrics(stats_config(cfg), "mask_number")
    rng = np.random.default_rng(4)
    base = rng.uniform(0.2, 0.9, 240)
    for f in files:  # per-sample IoUs: N=100 is 3 points above N=0 on every sample, seeds add noise
        record = pd.read_json(f, typ="series")
        lift = 0.03 if record["num_masks"] == 100 else 0.0
        table = samples(np.clip(base + lift + rng.normal(0, 0.01, base.size), 0, 1))
        table["refers"] = np.where(np.arange(base.size) % 4 == 0, np.nan, 1.0)  # every eligible pick right
        table.to_csv(f.with_name("samples.csv"), index=False)
    df = write_tables(spec, files, tmp_path / "stats")
    paired = df[df["numbers"] == PAIRED].set_index("metric")
    assert list(paired.index) == spec["metrics"] and (paired["versus"] == "coupalign-swin_b-n0").all()
    miou = paired.loc["mIoU"]
    assert miou["value"] == pytest.approx(3.0, abs=0.2) and miou["ci95_low"] > 2 and miou["p_value"] < 0.01
    assert miou["seeds"] == 3 and miou["status"] == "ok"
    assert paired.loc["RefAcc", "value"] == 0.0 and paired.loc["RefAcc", "p_value"] == 1.0
    md = (tmp_path / "stats" / "mask_number.md").read_text()
    assert "[95% confidence interval of the mean, Student t]" in md and " ± " in md and "] |" in md
    line = next(x for x in md.splitlines() if x.startswith("- paired bootstrap: N=100 - N=0"))
    assert "240 samples, seeds 3 vs 3, 1000 resamples (RefCOCO val): mIoU Δ = +3.0" in line and "p < 0.001" in line
    csv = pd.read_csv(tmp_path / "stats" / "mask_number.csv")
    assert (csv["numbers"] == PAIRED).sum() == csv["p_value"].notna().sum() == len(spec["metrics"])
    assert "paired bootstrap: N=100" in (tmp_path / "stats" / "mask_number.tex").read_text()

    # samples.csv written before RefAcc existed: the other metrics are compared, RefAcc says why it is not
    old = files[0].with_name("samples.csv")
    pd.read_csv(old).drop(columns="refers").to_csv(old, index=False)
    df = write_tables(spec, files, tmp_path / "old")
    assert df.loc[(df["numbers"] == PAIRED) & (df["metric"] == "RefAcc"), "status"].item() == "missing"
    assert "; RefAcc Δ - (not in samples.csv)." in (tmp_path / "old" / "mask_number.md").read_text()

    # N=0 not evaluated: the comparison says so instead of failing or printing a number
    kept = [f for f in files if "-n0-" not in str(f)]
    df = write_tables(spec, kept, tmp_path / "partial")
    assert (df.loc[df["numbers"] == PAIRED, "status"] == "missing").all()
    assert "(RefCOCO val): missing (a run is not evaluated)." in (tmp_path / "partial" / "mask_number.md").read_text()


def test_stats_section_is_checked_against_the_tables():
    from ris.config import ConfigError, load_yaml, validate
    from tests.helpers import REPO

    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    cfg = load_yaml(REPO / "config.yaml")
    validate(cfg, schema)
    bad = {**cfg, "stats": {**cfg["stats"], "table": "nosuch"}}
    with pytest.raises(ConfigError, match="field stats.table: 'nosuch' is not a table under tables"):
        validate(bad, schema)
    pair = {**cfg["stats"]["comparisons"][0], "a": {"method": "coupalign", "backbone": "swin_b", "num_masks": 7}}
    bad = {**cfg, "stats": {**cfg["stats"], "comparisons": [pair]}}
    with pytest.raises(ConfigError, match="field stats.comparisons.0.a: .* is not a run of table 'mask_number'"):
        validate(bad, schema)
    bad = {**cfg, "stats": {**cfg["stats"], "seeds": [0]}}  # one seed has no interval
    with pytest.raises(ConfigError, match="stats.seeds"):
        validate(bad, schema)


def test_paired_bootstrap_of_referring_accuracy_skips_ineligible_samples():
    rng = np.random.default_rng(5)
    n = 600
    eligible = np.arange(n) % 3 != 0  # a third of the samples: images with one ref, no outcome
    picks_a = (rng.uniform(size=n) < 0.7).astype(float)
    picks_b = np.where(rng.uniform(size=n) < 0.5, 0.0, picks_a)  # b loses half of a's right picks
    a, b = samples(rng.uniform(0, 1, n)), samples(rng.uniform(0, 1, n))
    a["refers"], b["refers"] = np.where(eligible, picks_a, np.nan), np.where(eligible, picks_b, np.nan)
    res = paired_bootstrap([a], [b], metrics=["RefAcc"], resamples=1000)[0]
    expected = 100 * (picks_a[eligible].mean() - picks_b[eligible].mean())  # ~35 points, on eligible samples only
    assert res.delta == pytest.approx(expected) and res.ci_low < expected < res.ci_high and res.p_value < 0.01
    with pytest.raises(ValueError, match="RefAcc needs the 'refers' column"):
        paired_bootstrap([a.drop(columns="refers")], [b.drop(columns="refers")], metrics=["RefAcc"], resamples=10)
    none = paired_bootstrap([a.assign(refers=np.nan)], [b.assign(refers=np.nan)], metrics=["RefAcc"], resamples=10)
    assert math.isnan(none[0].delta) and math.isnan(none[0].p_value)
