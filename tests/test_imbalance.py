"""Class imbalance: images per class of each split in the log and metrics.json, and a class-weighted
loss (``model.class_weights=auto|[w1,...]``)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import TINY

from paddy.config import compose_config
from paddy.errors import SettingError
from paddy.settings import check_settings, class_weights
from paddy.tasks.classification import _soft_target_loss

COUNTS = {"blast": 24, "healthy": 8, "tungro": 4}  # 6:2:1, like leaf-disease sets


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/train/<class>/*.png and <root>/val/<class>/*.png with COUNTS training images per class."""
    root = tmp_path_factory.mktemp("imbalanced")
    rng = np.random.default_rng(0)
    for split, scale in (("train", 1), ("val", 4)):
        for shade, (name, n) in enumerate(COUNTS.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(max(1, n // scale)):
                image = np.full((40, 40, 3), 60 * shade + 40, np.uint8) + rng.integers(0, 30, (40, 40, 3), np.uint8)
                cv2.imwrite(str(folder / f"{i:03d}.png"), image)
    return root


def test_auto_weights_are_inverse_frequency_with_mean_one_over_the_images():
    weights = class_weights("auto", [24, 8, 4])
    assert weights == pytest.approx([36 / 72, 36 / 24, 36 / 12])
    assert sum(w * n for w, n in zip(weights, [24, 8, 4])) / 36 == pytest.approx(1.0)  # n / (k n_c)
    assert class_weights([1, 2.5, 3], [24, 8, 4]) == [1.0, 2.5, 3.0]
    assert class_weights(None, [24, 8, 4]) is None
    with pytest.raises(SettingError, match=r"model.class_weights=\[1, 2\]: expected null, auto, or 3 positive numbers"):
        class_weights([1, 2], [24, 8, 4])
    for bad in ("balanced", [1, 0, 2], [1, True, 2], 3):
        with pytest.raises(SettingError, match="model.class_weights="):
            class_weights(bad)
    with pytest.raises(SettingError, match="model.class_weights='balanced'"):  # before any data is read
        check_settings(compose_config(["model.class_weights=balanced", "data.root=/nowhere"]))


def test_soft_target_loss_with_weights_is_the_weighted_cross_entropy_on_hard_targets():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0, 0, 1])
    weight = torch.tensor([0.5, 1.5, 3.0])
    one_hot = torch.nn.functional.one_hot(labels, 3).float()
    expected = torch.nn.CrossEntropyLoss(weight=weight)(logits, labels)
    assert _soft_target_loss(logits, one_hot, weight) == pytest.approx(float(expected), rel=1e-6)
    assert _soft_target_loss(logits, one_hot, None) == pytest.approx(
        float(torch.nn.CrossEntropyLoss()(logits, labels)), rel=1e-6)


def test_counts_in_metrics_and_an_auto_weighted_loss(imbalanced: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture):
    from paddy.pipeline import train

    caplog.set_level("INFO", logger="paddy.data.datamodule")
    cfg = compose_config([*TINY, "data=imagefolder", f"data.root={imbalanced}", "data.image_size=32",
                          "data.cache=none", "model.class_weights=auto", "trainer.max_epochs=1", "test=false",
                          "logger=none", f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path}"])
    metrics = train(cfg)
    assert metrics["class_counts"]["train"] == COUNTS
    assert metrics["class_counts"]["val"] == {"blast": 6, "healthy": 2, "tungro": 1}
    state = torch.load(metrics["ckpt_path"], map_location="cpu", weights_only=True)["state_dict"]
    assert state["criterion.weight"].tolist() == pytest.approx([36 / 72, 36 / 24, 36 / 12])
    assert "images per class, train: blast 24, healthy 8, tungro 4" in caplog.text
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["class_counts"] == metrics["class_counts"]


def test_balanced_sampler_draws_classes_alike_seeded_by_epoch_and_sharded(imbalanced: Path, tmp_path: Path):
    """data.sampler=balanced: class-balanced draws; the same epoch gives the same draw (resume), and
    2 DDP ranks split one draw between them."""
    from paddy.config import instantiate
    from paddy.data.datamodule import EpochSeededSampler

    cfg = compose_config(["data=imagefolder", f"data.root={imbalanced}", "data.cache=none", "data.sampler=balanced",
                          "data.num_workers=0", f"paths.cache_dir={tmp_path}"])
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup("fit")
    sampler = datamodule.train_dataloader().sampler
    labels = datamodule.split_indices["train"].labels
    assert isinstance(sampler, EpochSeededSampler) and len(sampler) == 36
    drawn = []
    for epoch in range(30):
        sampler.set_epoch(epoch)
        drawn += [labels[i] for _, i in sampler]
    share = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(share, 1 / 3, atol=0.05), share  # the images themselves are 6:2:1
    sampler.set_epoch(7)
    first = list(sampler)
    sampler.set_epoch(3)
    list(sampler)
    sampler.set_epoch(7)
    assert list(sampler) == first  # a resumed epoch 7 draws the same batches
    ranks = [EpochSeededSampler(36, 5, rank, 2, sampler.weights) for rank in (0, 1)]
    whole = EpochSeededSampler(36, 5, 0, 1, sampler.weights)
    for part in (*ranks, whole):
        part.set_epoch(2)
    assert sorted(i for r in ranks for _, i in r) == sorted(i for _, i in whole)
    with pytest.raises(SettingError, match=r"data.sampler='weighted': expected one of shuffle, balanced"):
        check_settings(compose_config(["data.sampler=weighted", "data.root=/nowhere"]))
