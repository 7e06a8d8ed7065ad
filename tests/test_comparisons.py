"""Repeated runs and k-fold in ``paddy.report``: the statistics (paddy.stats, against values worked out
by hand), the grouping of run folders by configuration, and a real 3-fold CLI run whose report writes
the out-of-fold predictions."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from conftest import TINY, run_module
from test_report import make_run

from paddy import stats
from paddy.report import main as report_main

# ----------------------------------------------------------------------------------------- statistics


def test_summary_is_mean_sample_std_and_t_interval():
    s = stats.summarize([0.80, 0.82, 0.84])
    assert s.n == 3 and s.mean == pytest.approx(0.82) and s.std == pytest.approx(0.02)
    half = 4.302652729749464 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert (s.ci_low, s.ci_high) == (pytest.approx(0.82 - half), pytest.approx(0.82 + half))
    single = stats.summarize([0.9])
    assert single.std is None and single.ci_low is None


def test_paired_tests_match_hand_computed_values():
    a, b = [0.81, 0.83, 0.86, 0.84, 0.85], [0.80, 0.80, 0.82, 0.83, 0.81]
    diff = [x - y for x, y in zip(a, b)]
    mean = sum(diff) / 5
    sd = math.sqrt(sum((d - mean) ** 2 for d in diff) / 4)
    t = mean / (sd / math.sqrt(5))
    result = stats.paired_test(a, b)
    assert result.n == 5 and result.mean_diff == pytest.approx(0.026)
    # Student's t with 4 degrees of freedom has a closed-form CDF: F(t) = 1/2 + 3/8 x (1 - t^2 / (12 (1 + t^2/4))),
    # x = t / sqrt(1 + t^2/4)
    x = t / math.sqrt(1 + t * t / 4)
    two_sided = 2 * (1 - (0.5 + 3 / 8 * x * (1 - t * t / (12 * (1 + t * t / 4)))))
    assert t == pytest.approx(3.8335, abs=1e-4) and result.t_p == pytest.approx(two_sided, rel=1e-9)
    # exact Wilcoxon, 5 pairs all positive: the smallest possible two-sided p, 2 / 2**5
    assert result.wilcoxon_p == pytest.approx(0.0625) and result.wilcoxon_min_p == pytest.approx(0.0625)
    assert stats.verdict(result.t_p) == "significant at 0.05"
    assert stats.verdict(result.wilcoxon_p) == "not significant at 0.05"


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images():
    # 1 image right only by a, 9 only by b, 20 by both: p = 2 * (C(10,0) + C(10,1)) / 2**10
    a = [True] * 20 + [True] + [False] * 9
    b = [True] * 20 + [False] + [True] * 9
    result = stats.mcnemar(a, b)
    assert (result.n, result.only_a, result.only_b) == (30, 1, 9)
    assert result.p == pytest.approx(22 / 1024)
    assert stats.mcnemar([True, False], [True, False]).p == 1.0


def test_macro_f1():
    labels = ["a", "a", "b", "b"]
    assert stats.macro_f1(labels, labels) == 1.0
    # class a: tp 1 fp 0 fn 1 -> 2/3; class b: tp 2 fp 1 fn 0 -> 4/5
    assert stats.macro_f1(labels, ["a", "b", "b", "b"]) == pytest.approx((2 / 3 + 4 / 5) / 2)


# ------------------------------------------------------------------------------------ report of runs


def seed_sweep(root: Path, values: dict[str, list[float]]) -> Path:
    """A multirun folder of ``attention=<name> seed=<i>`` jobs, as Hydra lays one out."""
    sweep = root / "multirun" / "seeds"
    job = 0
    for attention, accs in values.items():
        for seed, acc in enumerate(accs, 1):
            run = make_run(sweep / str(job), attention=attention, acc=acc,
                           overrides=[f"attention={attention}", f"seed={seed}"])
            config = (run / ".hydra" / "config.yaml").read_text().replace("seed: 42", f"seed: {seed}")
            (run / ".hydra" / "config.yaml").write_text(config)
            job += 1
    return sweep


def test_two_configurations_over_seeds_get_paired_tests_in_words(tmp_path: Path):
    ca, none = [0.86, 0.88, 0.87], [0.84, 0.85, 0.86]
    sweep = seed_sweep(tmp_path, {"ca": ca, "none": none})
    assert report_main([str(sweep)]) == 0
    rows = {r["configuration"]: r for r in csv.DictReader((sweep / "statistics.csv").open())}
    assert set(rows) == {"attention=ca", "attention=none"}
    assert int(rows["attention=ca"]["n"]) == 3
    assert float(rows["attention=ca"]["mean"]) == pytest.approx(0.87)
    assert float(rows["attention=ca"]["std"]) == pytest.approx(0.01)
    text = (sweep / "statistics.md").read_text()
    expected = stats.paired_test(ca, none)
    assert 0.05 < expected.t_p < 0.1  # 2 points over 3 seeds with these spreads: not enough
    assert f"paired t-test p = {expected.t_p:.4g}, not significant at 0.05" in text
    assert f"Wilcoxon signed-rank p = {expected.wilcoxon_p:.4g}, not significant at 0.05" in text
    assert "**attention=ca** vs **attention=none**: val_acc_best differs by +0.0200" in text
    assert "cannot go below p = 0.25" in text
    assert (sweep / "repeated_runs.png").stat().st_size > 0


def write_test_predictions(run: Path, correct: list[bool]) -> None:
    path = run / "eval_test" / "predictions_test.csv"
    path.parent.mkdir(parents=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "label", "predicted", "confidence", "correct"])
        for i, ok in enumerate(correct):
            writer.writerow([f"img_{i}.jpg", "a", "a" if ok else "b", "0.9", int(ok)])


def test_two_single_models_on_the_same_test_set_get_mcnemar(tmp_path: Path):
    first = make_run(tmp_path / "runs" / "r1", attention="none", overrides=["attention=none"])
    second = make_run(tmp_path / "runs" / "r2", attention="ca", overrides=["attention=ca"])
    write_test_predictions(first, [True] * 20 + [True] + [False] * 9)
    write_test_predictions(second, [True] * 20 + [False] + [True] * 9)
    assert report_main([str(tmp_path / "runs")]) == 0
    text = (tmp_path / "runs" / "statistics.md").read_text()
    assert ("**attention=none** vs **attention=ca** on the same 30 test images: 1 right only by the first, "
            f"9 only by the second; McNemar's exact test p = {22 / 1024:.4g}, significant at 0.05.") in text


def test_single_runs_without_repeats_write_no_statistics(tmp_path: Path):
    make_run(tmp_path / "runs" / "r1", attention="none", overrides=["attention=none"])
    make_run(tmp_path / "runs" / "r2", attention="ca", overrides=["attention=ca"])
    assert report_main([str(tmp_path / "runs")]) == 0
    assert not (tmp_path / "runs" / "statistics.md").exists()


# --------------------------------------------------------------------------------------- k-fold, real

KFOLD_DATA = ["data=synthetic", "data.source.samples_per_class=12", "data.source.image_size=32",
              "data.test_fraction=0.25", "trainer.max_epochs=1"]


def test_kfold_report_writes_out_of_fold_predictions_covering_the_pool(tmp_path: Path):
    sweep = tmp_path / "kfold"
    result = run_module("paddy.train", "-m", *TINY, *KFOLD_DATA, "experiment=kfold", "data.n_folds=3",
                        f"hydra.sweep.dir={sweep}", "logger=none",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = run_module("paddy.report", str(sweep), cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    rows = list(csv.DictReader((sweep / "oof_predictions.csv").open()))
    items = [r["item"] for r in rows]
    pool = 4 * 12 - 4 * 3  # 12 images per class, a quarter of each set aside for the test split
    assert len(items) == len(set(items)) == pool  # disjoint validation sets that cover the pool
    assert sorted({r["fold"] for r in rows}) == ["0", "1", "2"]
    assert all(sum(r["fold"] == f for r in rows) == 12 for f in "012")
    tests = {tuple(r["item"] for r in csv.DictReader((sweep / f / "eval_test" / "predictions_test.csv").open()))
             for f in "012"}
    assert len(tests) == 1 and not set(next(iter(tests))) & set(items)  # one test split, outside the pool
    folds = (sweep / "folds.md").read_text()
    accuracy = sum(r["correct"] == "1" for r in rows) / pool
    assert "3 of 3 folds finished (missing: none)" in folds and "mean ± std" in folds
    assert f"accuracy {accuracy:.4f}, macro F1 " in folds


def test_more_folds_than_the_smallest_class_is_refused_in_one_line(tmp_path: Path):
    result = run_module("paddy.train", *TINY, *KFOLD_DATA, "data.n_folds=10", f"hydra.run.dir={tmp_path / 'run'}",
                        "logger=none", cwd=tmp_path)
    assert result.returncode != 0
    assert ("data.n_folds=10 is more than the 9 training-pool images of class 'class_0' in data=synthetic: every "
            "fold must validate every class; use data.n_folds<=9") in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_configs_that_differ_outside_the_overrides_are_not_pooled(tmp_path: Path):
    """Same overrides, but one run's config has another value (say, an older paddy): two configurations,
    labelled by that value, never one group that mixes them."""
    sweep = seed_sweep(tmp_path, {"ca": [0.86, 0.88, 0.87]})
    config = sweep / "2" / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("image_size: 32", "image_size: 48"))
    assert report_main([str(sweep)]) == 0
    rows = {r["configuration"]: int(r["n"]) for r in csv.DictReader((sweep / "statistics.csv").open())}
    assert rows == {"data.image_size=32": 2, "data.image_size=48": 1}
