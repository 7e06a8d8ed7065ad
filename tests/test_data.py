"""Sources and the data module on every layout, including every bad-input case."""

from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, PER_CLASS, write_image, write_metadata_layout

from paddy.data import (
    DataSourceError,
    DataValidationError,
    FashionMNISTSource,
    ImageDataModule,
    ImageFolderSource,
    MetadataCSVSource,
    PaddyDoctorSource,
    SyntheticSource,
)
from paddy.data import validation as validation_module

EVAL_ONLY = {"train": {"Resize": {"height": 32, "width": 32}}, "eval": {"Resize": {"height": 32, "width": 32}}}


def datamodule(source, root=None, **kwargs) -> ImageDataModule:
    options = dict(batch_size=4, num_workers=0, transforms=EVAL_ONLY, cache_dir=False, image_size=32)
    options.update(kwargs)
    dm = ImageDataModule(source, root=root, **options)
    dm.setup()
    return dm


# --------------------------------------------------------------------------- layouts


def test_paddy_layout(paddy_root: Path):
    dm = datamodule(PaddyDoctorSource, paddy_root, val_fraction=0.25, test_fraction=0.25)
    assert dm.classes == sorted(CLASSES)
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sizes == {"train": 12, "val": 6, "test": 6}
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64


def test_metadata_csv_layout_detects_columns_and_uses_label2id(tmp_path: Path, rng):
    root = write_metadata_layout(tmp_path / "m", rng, columns=("filepath", "class"))
    # label2id in an order other than alphabetical: ids must follow the file, not sorting.
    (root / "label2id.json").write_text(json.dumps({"normal": 0, "blast": 1, "bacterial_leaf_blight": 2}))
    dm = datamodule(MetadataCSVSource, root)
    assert dm.classes == ["normal", "blast", "bacterial_leaf_blight"]
    train = dm.split_indices["train"]
    first = train.items.index(next(i for i in train.items if i.startswith("images/blast/")))
    assert train.labels[first] == 1


def test_metadata_csv_split_column_and_numeric_labels(tmp_path: Path, rng):
    root = write_metadata_layout(tmp_path / "m", rng, with_split=True)
    rows = list(csv.DictReader((root / "metadata.csv").open()))
    for row in rows:
        row["label"] = str(CLASSES.index(row["label"]))  # ids instead of names
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    dm = datamodule(MetadataCSVSource, root)
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 15, "val": 6, "test": 3}


def test_metadata_csv_explicit_columns(tmp_path: Path, rng):
    root = write_metadata_layout(tmp_path / "m", rng, columns=("pic", "kind"))
    with pytest.raises(DataSourceError, match="cannot find the image column"):
        datamodule(MetadataCSVSource, root)
    dm = datamodule(partial(MetadataCSVSource, image_column="pic", label_column="kind"), root)
    assert dm.num_classes == 3


def test_imagefolder_with_split_folders(imagefolder_root: Path):
    dm = datamodule(ImageFolderSource, imagefolder_root)
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 18, "val": 6, "test": 6}
    assert dm.classes == CLASSES


def test_imagefolder_flat_is_split_by_fractions(flat_imagefolder_root: Path):
    dm = datamodule(ImageFolderSource, flat_imagefolder_root, val_fraction=0.25, test_fraction=0.25)
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 12, "val": 6, "test": 6}


def test_imagefolder_without_test_folder_gets_no_test_split(imagefolder_root: Path):
    import shutil

    shutil.rmtree(imagefolder_root / "test")
    dm = datamodule(ImageFolderSource, imagefolder_root)
    assert set(dm.split_indices) == {"train", "val"}
    assert not dm.has_split("test")


def test_fashion_mnist_idx_files(fashion_mnist_root: Path):
    dm = datamodule(FashionMNISTSource, fashion_mnist_root, val_fraction=0.25, test_fraction=0.0)
    assert dm.num_classes == 10
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 90, "val": 30, "test": 30}
    # The official test split is the test set, untouched by the val carve-out.
    assert all(item.startswith("test[") for item in dm.split_indices["test"].items)
    image = dm.split_indices["train"].reader(0)
    assert image.shape == (28, 28, 3) and image.dtype == np.uint8


def test_fashion_mnist_missing_says_how_to_fetch(tmp_path: Path):
    with pytest.raises(DataSourceError, match="make data"):
        FashionMNISTSource(tmp_path).load()


def test_fashion_mnist_truncated_idx(fashion_mnist_root: Path):
    import gzip

    path = fashion_mnist_root / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(DataSourceError, match="truncated or corrupt"):
        FashionMNISTSource(fashion_mnist_root).load()


def test_synthetic_source_is_deterministic():
    a, b = SyntheticSource(num_classes=3, samples_per_class=4, seed=1).load(), SyntheticSource(
        num_classes=3, samples_per_class=4, seed=1).load()
    assert np.array_equal(a.reader.images, b.reader.images)
    assert len(a) == 12 and a.classes == ["class_0", "class_1", "class_2"]


def test_split_is_reproducible_and_disjoint(paddy_root: Path):
    a = datamodule(PaddyDoctorSource, paddy_root, val_fraction=0.25, test_fraction=0.25)
    b = datamodule(PaddyDoctorSource, paddy_root, val_fraction=0.25, test_fraction=0.25)
    for split in ("train", "val", "test"):
        assert a.split_indices[split].items == b.split_indices[split].items
    seen = [set(a.split_indices[s].items) for s in ("train", "val", "test")]
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_limits_cap_each_split(paddy_root: Path):
    dm = datamodule(PaddyDoctorSource, paddy_root, val_fraction=0.25, test_fraction=0.25,
                    train_limit=6, valid_limit=3, test_limit=3)
    assert {k: len(v) for k, v in dm.split_indices.items()} == {"train": 6, "val": 3, "test": 3}
    assert len(set(dm.split_indices["train"].labels.tolist())) == 3


# --------------------------------------------------------------------------- bad input


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_missing_file_is_named(paddy_root: Path):
    (paddy_root / "train_images" / "blast" / "100103.jpg").unlink()
    with pytest.raises(DataValidationError) as err:
        datamodule(PaddyDoctorSource, paddy_root)
    text = str(err.value)
    assert "1 problem" in text and "missing file" in text and "train_images/blast/100103.jpg" in text


def test_truncated_and_garbage_images_are_counted_and_named(paddy_root: Path):
    corrupt(paddy_root / "train_images" / "normal" / "100200.jpg")
    (paddy_root / "train_images" / "normal" / "100201.jpg").write_text("garbage")
    with pytest.raises(DataValidationError) as err:
        datamodule(PaddyDoctorSource, paddy_root)
    text = str(err.value)
    assert "2 problems" in text and "2 unreadable or corrupt images" in text
    assert "100200.jpg: truncated JPEG" in text and "100201.jpg" in text
    assert "data.on_bad_image=skip" in text


def test_skip_drops_bad_images_with_a_warning(paddy_root: Path, caplog):
    corrupt(paddy_root / "train_images" / "normal" / "100200.jpg")
    (paddy_root / "train_images" / "blast" / "100101.jpg").unlink()
    with caplog.at_level(logging.WARNING):
        dm = datamodule(PaddyDoctorSource, paddy_root, on_bad_image="skip")
    total = sum(len(v) for v in dm.split_indices.values())
    assert total == len(CLASSES) * PER_CLASS - 2
    assert "100200.jpg" in caplog.text and "100101.jpg" in caplog.text and "Skipping" in caplog.text
    assert all("100200.jpg" not in item for v in dm.split_indices.values() for item in v.items)


def test_unknown_label_in_metadata_csv(metadata_root: Path):
    with (metadata_root / "metadata.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["blast/blast_000.png", "brown_spot"])
    with pytest.raises(DataValidationError) as err:
        datamodule(MetadataCSVSource, metadata_root)
    assert "unknown label" in str(err.value) and "'brown_spot'" in str(err.value)
    assert "metadata.csv line 26" in str(err.value)


def test_empty_class_from_label2id(metadata_root: Path):
    mapping = {label: i for i, label in enumerate([*CLASSES, "tungro"])}
    (metadata_root / "label2id.json").write_text(json.dumps(mapping))
    with pytest.raises(DataValidationError, match="empty class.*tungro"):
        datamodule(MetadataCSVSource, metadata_root)


def test_empty_class_folder(flat_imagefolder_root: Path):
    (flat_imagefolder_root / "hispa").mkdir()
    with pytest.raises(DataValidationError, match="empty class: hispa"):
        datamodule(ImageFolderSource, flat_imagefolder_root)


def test_unknown_class_folder_in_val(imagefolder_root: Path, rng):
    from conftest import class_image

    write_image(imagefolder_root / "val" / "tungro" / "0.jpg", class_image(0, rng))
    with pytest.raises(DataValidationError, match="unknown label: val/tungro"):
        datamodule(ImageFolderSource, imagefolder_root)


@pytest.mark.parametrize("header", [["image_id", "disease"], ["img", "label"]])
def test_paddy_csv_without_expected_columns(paddy_root: Path, header):
    (paddy_root / "train.csv").write_text(",".join(header) + "\n100000.jpg,blast\n")
    with pytest.raises(DataSourceError, match="missing column"):
        datamodule(PaddyDoctorSource, paddy_root)


def test_metadata_csv_missing_label_map(metadata_root: Path):
    (metadata_root / "label2id.json").unlink()
    with pytest.raises(DataSourceError, match="label map not found.*label2id.json"):
        datamodule(MetadataCSVSource, metadata_root)


def test_missing_root_and_bad_options(tmp_path: Path):
    with pytest.raises(DataSourceError, match="is not a folder"):
        datamodule(PaddyDoctorSource, tmp_path / "nope")
    with pytest.raises(DataSourceError, match="needs data.root"):
        datamodule(PaddyDoctorSource, None)
    with pytest.raises(ValueError, match="on_bad_image"):
        ImageDataModule(SyntheticSource, on_bad_image="ignore")
    with pytest.raises(ValueError, match="leaves no training data"):
        ImageDataModule(SyntheticSource, val_fraction=0.5, test_fraction=0.5)


def test_validation_is_cached(paddy_root: Path, tmp_path: Path, monkeypatch):
    calls = []
    real = validation_module.check_and_decode
    monkeypatch.setattr(validation_module, "check_and_decode", lambda p, *size: calls.append(p) or real(p, *size))
    cache = tmp_path / "cache"
    datamodule(PaddyDoctorSource, paddy_root, cache_dir=cache)
    assert len(calls) == len(CLASSES) * PER_CLASS
    calls.clear()
    datamodule(PaddyDoctorSource, paddy_root, cache_dir=cache)
    assert calls == []
    # A changed file is verified again, and a newly broken one is caught.
    corrupt(paddy_root / "train_images" / "blast" / "100102.jpg")
    with pytest.raises(DataValidationError, match="100102.jpg"):
        datamodule(PaddyDoctorSource, paddy_root, cache_dir=cache)
    assert len(calls) == 1


@pytest.mark.parametrize("workers", [0, 2])
def test_augmentation_is_seeded(paddy_root: Path, workers: int):
    """The same seed gives the same augmented batches; another seed gives others."""
    rgb = {"train": {"RandomResizedCrop": {"size": [32, 32], "scale": [0.3, 1.0]}, "HorizontalFlip": {"p": 0.5},
                     "ColorJitter": {"brightness": 0.4, "p": 1.0}}, "eval": EVAL_ONLY["eval"]}

    def first_batch(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        dm = datamodule(PaddyDoctorSource, paddy_root, transforms=rgb, num_workers=workers)
        dm.shuffle_seed = seed
        return next(iter(dm.train_dataloader()))[0]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))
