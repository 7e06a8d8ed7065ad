"""Stratified, seeded splits: reproducible, disjoint, proportional."""

import numpy as np
import pytest

from paddy.data.splits import stratified_folds, stratified_split, stratified_subset


def test_split_is_disjoint_complete_and_stratified():
    labels = np.repeat(np.arange(4), [100, 50, 20, 10])
    parts = stratified_split(labels, {"val": 0.1, "test": 0.2}, seed=7)
    joined = np.concatenate(list(parts.values()))
    assert len(joined) == len(labels) and len(np.unique(joined)) == len(labels)
    for c, n in enumerate([100, 50, 20, 10]):
        assert (labels[parts["val"]] == c).sum() == round(0.1 * n)
        assert (labels[parts["test"]] == c).sum() == round(0.2 * n)


def test_same_seed_same_split_other_seed_other_split():
    labels = np.repeat(np.arange(3), 30)
    a = stratified_split(labels, {"val": 0.2}, seed=1)
    b = stratified_split(labels, {"val": 0.2}, seed=1)
    c = stratified_split(labels, {"val": 0.2}, seed=2)
    assert np.array_equal(a["val"], b["val"])
    assert not np.array_equal(a["val"], c["val"])


def test_split_is_fixed_across_machines():
    # PCG64 is platform-independent: this exact split must never change, or old runs' splits move.
    labels = np.repeat(np.arange(2), 10)
    parts = stratified_split(labels, {"val": 0.2}, seed=42)
    assert parts["val"].tolist() == GOLDEN_VAL


def test_tiny_class_keeps_a_training_sample():
    labels = np.array([0] * 20 + [1])
    parts = stratified_split(labels, {"val": 0.5}, seed=0)
    assert 20 in parts["rest"]


def test_subset_keeps_proportions_and_limit():
    labels = np.repeat(np.arange(2), [80, 20])
    keep = stratified_subset(labels, 50, seed=0)
    assert len(keep) == 50
    assert (labels[keep] == 1).sum() == 10


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="sum to < 1"):
        stratified_split(np.zeros(10), {"val": 0.5, "test": 0.5}, seed=0)


GOLDEN_VAL = [5, 6, 14, 18]


def test_folds_are_stratified_balanced_and_seeded():
    labels = np.repeat(np.arange(3), [53, 21, 9])
    fold_of = stratified_folds(labels, 5, seed=3)
    sizes = np.bincount(fold_of, minlength=5)
    assert sizes.sum() == 83 and sizes.max() - sizes.min() <= 1
    for c, n in enumerate([53, 21, 9]):
        per_fold = np.bincount(fold_of[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n
    assert np.array_equal(fold_of, stratified_folds(labels, 5, seed=3))
    assert not np.array_equal(fold_of, stratified_folds(labels, 5, seed=4))
    with pytest.raises(ValueError, match="n_folds >= 2"):
        stratified_folds(labels, 1, seed=0)


def test_kfold_validation_sets_are_disjoint_and_cover_the_pool():
    """data.n_folds=5 data.fold=0..4: the test split is the same in every fold and set aside first;
    the 5 validation sets are disjoint and together are exactly the rest (the pool)."""
    from paddy.config import compose_config, instantiate

    extra = ["data.source.samples_per_class=23"]
    splits = {}
    for fold in range(5):
        cfg = compose_config(["data=synthetic", *extra, "data.n_folds=5", f"data.fold={fold}", "data.num_workers=0"])
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup("fit")
        splits[fold] = {s: set(part.items) for s, part in datamodule.split_indices.items()}
    tests = [splits[f]["test"] for f in range(5)]
    assert all(t == tests[0] for t in tests) and len(tests[0]) > 0
    vals = [splits[f]["val"] for f in range(5)]
    pool = splits[0]["train"] | splits[0]["val"]
    assert set().union(*vals) == pool and sum(len(v) for v in vals) == len(pool)  # disjoint, covering
    assert not pool & tests[0]
    for f in range(5):
        assert splits[f]["train"] == pool - vals[f]
    # val_fraction plays no part with folds
    cfg = compose_config(["data=synthetic", *extra, "data.n_folds=5", "data.val_fraction=0.5"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    assert {s: set(p.items) for s, p in datamodule.split_indices.items()} == splits[0]


def test_fold_settings_are_checked():
    from paddy.config import compose_config
    from paddy.errors import SettingError
    from paddy.settings import check_settings

    with pytest.raises(SettingError, match=r"data.fold=5: expected an integer from 0 to 4 \(data.n_folds=5\)"):
        check_settings(compose_config(["data=synthetic", "data.n_folds=5", "data.fold=5"]))
    with pytest.raises(SettingError, match=r"data.n_folds=1: expected null or an integer >= 2"):
        check_settings(compose_config(["data=synthetic", "data.n_folds=1"]))
    from omegaconf import OmegaConf

    from paddy.config import config_dir

    assert compose_config(["experiment=kfold", "data.root=/x"]).data.n_folds == 5
    kfold = OmegaConf.to_container(OmegaConf.load(config_dir() / "experiment" / "kfold.yaml"))["hydra"]
    assert kfold["sweeper"]["params"]["data.fold"] == "range(0,${data.n_folds})"
    assert kfold["sweep"]["subdir"] == "${data.fold}"
