"""Fixtures: tiny datasets written in the exact on-disk layouts users have, and tiny configs.

Every layout gets 3 classes of small, learnable images (a class-specific colour pattern), written
as real JPEG/PNG files with OpenCV.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# Verification verdicts and decoded-image caches of the tests' datasets stay out of the user's ~/.cache.
os.environ.setdefault("PADDY_CACHE_DIR", tempfile.mkdtemp(prefix="paddy-test-cache-"))
REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(2)

CLASSES = ["bacterial_leaf_blight", "blast", "normal"]
PER_CLASS = 8
SIZE = 40

# Overrides that make any training config run in seconds on a CPU.
TINY = [
    "backbone.name=test_resnet",
    "data.image_size=32",
    "data.batch_size=8",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "++callbacks.rich_progress_bar=null",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers the tests start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_module(module: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd`` as a user runs it (the checkout importable, caches under ``cwd``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PADDY_CACHE_DIR": str(cwd / "cache"),
           "PYTHONWARNINGS": "ignore::DeprecationWarning"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def class_image(class_id: int, rng: np.random.Generator, size: int = SIZE, channels: int = 3) -> np.ndarray:
    """An image whose class is visible: stripes of a class-specific orientation and colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx if class_id % 2 == 0 else yy) // (3 + class_id)) % 2
    colour = np.array([60 + 80 * class_id, 200 - 60 * class_id, 40 + 50 * class_id], dtype=np.float32)
    image = stripes[..., None] * colour + rng.normal(0, 10, (size, size, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    return image if channels == 3 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def paddy_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    """Kaggle Paddy Doctor: train.csv (image_id,label,variety,age) + train_images/<label>/<image_id>."""
    root = tmp_path / "paddy-disease-classification"
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(PER_CLASS):
            image_id = f"{100000 + c * 100 + i}.jpg"
            write_image(root / "train_images" / label / image_id, class_image(c, rng))
            rows.append({"image_id": image_id, "label": label, "variety": "ADT45", "age": 45 + i})
    write_image(root / "test_images" / "200001.jpg", class_image(0, rng))
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image_id", "label", "variety", "age"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def write_metadata_layout(root: Path, rng: np.random.Generator, with_split: bool = False,
                          columns: tuple[str, str] = ("image_path", "label")) -> Path:
    """metadata.csv + label2id.json + images/ (the old per-model scripts' layout)."""
    rows = []
    for c, label in enumerate(CLASSES):
        for i in range(PER_CLASS):
            rel = f"{label}/{label}_{i:03d}.png"
            write_image(root / "images" / rel, class_image(c, rng))
            row = {columns[0]: rel, columns[1]: label}
            if with_split:
                row["split"] = "train" if i < 5 else ("val" if i < 7 else "test")
            rows.append(row)
    (root / "label2id.json").write_text(json.dumps({label: i for i, label in enumerate(CLASSES)}))
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture
def metadata_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    return write_metadata_layout(tmp_path / "metadata", rng)


@pytest.fixture
def imagefolder_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    """train/ val/ test/ with one sub-folder per class."""
    root = tmp_path / "imagefolder"
    counts = {"train": 6, "val": 2, "test": 2}
    for split, n in counts.items():
        for c, label in enumerate(CLASSES):
            for i in range(n):
                write_image(root / split / label / f"{i}.jpg", class_image(c, rng))
    return root


@pytest.fixture
def flat_imagefolder_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    """One folder of class sub-folders (split by fractions)."""
    root = tmp_path / "flat"
    for c, label in enumerate(CLASSES):
        for i in range(PER_CLASS):
            write_image(root / label / f"{i}.png", class_image(c, rng))
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_mnist_root(tmp_path: Path, rng: np.random.Generator) -> Path:
    """The four Fashion-MNIST IDX .gz files, with 10 classes x (12 train + 3 test) 28x28 images."""
    root = tmp_path / "fashion-mnist"
    root.mkdir()
    for split, per_class in (("train", 12), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per_class)
        images = np.stack([class_image(label % 3, rng, size=28, channels=1) for label in labels])
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One short trained run (synthetic data, tiny ResNet, 32 px) shared by the tests of the commands
    that read run directories (evaluate, predict, export)."""
    from paddy.config import compose_config
    from paddy.pipeline import train

    out = tmp_path_factory.mktemp("run")
    overrides = ["data=synthetic", "backbone.name=test_resnet", "data.image_size=32", "trainer=debug",
                 "data.num_workers=0", "trainer.limit_test_batches=1.0", "logger=csv",
                 "++callbacks.rich_progress_bar=null", f"paths.output_dir={out}"]
    train(compose_config(overrides))
    return out
