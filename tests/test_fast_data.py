"""The fast data path: the decoded-image cache and device-side (batched) augmentation."""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from conftest import CLASSES, TINY, class_image, write_image

from paddy.data import ImageDataModule, PaddyDoctorSource
from paddy.data import cache as cache_module
from paddy.data import validation as validation_module
from paddy.data.cache import DecodedImageCache, decode_shrunk, default_short_side, shrink
from paddy.data.gpu_augment import BatchAugment, unsupported_steps
from paddy.data.imageio import ImageDecodeError
from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

RGB_TRAIN = {
    "RandomResizedCrop": {"size": [32, 32], "scale": [0.5, 1.0]},
    "HorizontalFlip": {"p": 0.5},
    "VerticalFlip": {"p": 0.5},
    "ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5},
}
EVAL = {"Resize": {"height": 32, "width": 32}}


def photo_root(root: Path, per_class: int = 4, height: int = 96, width: int = 128) -> Path:
    """A paddy layout of landscape photos bigger than the cache size (so the cache shrinks them)."""
    rng = np.random.default_rng(1)
    rows = ["image_id,label,variety,age"]
    for c, label in enumerate(CLASSES):
        for i in range(per_class):
            image = cv2.resize(class_image(c, rng, size=64), (width, height), interpolation=cv2.INTER_LINEAR)
            name = f"{c}{i:04d}.jpg"
            write_image(root / "train_images" / label / name, image)
            rows.append(f"{name},{label},ADT45,45")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root


def datamodule(root: Path, cache_dir: Path, **kwargs) -> ImageDataModule:
    options = {"image_size": 32, "batch_size": 4, "num_workers": 0, "val_fraction": 0.25, "test_fraction": 0.0,
               "transforms": {"train": RGB_TRAIN, "eval": EVAL}, "cache_dir": cache_dir, **kwargs}
    dm = ImageDataModule(PaddyDoctorSource(root=str(root)), **options)
    dm.setup("fit")
    return dm


class DecodeCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        for module in (cache_module, validation_module):
            name = "read_image" if module is cache_module else "check_and_decode"
            original = getattr(module, name)

            def counted(*args, _original=original):
                self.calls += 1
                return _original(*args)

            monkeypatch.setattr(module, name, counted)


# ---------------------------------------------------------------------------------------------- cache


def test_cache_is_filled_by_verification_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = photo_root(tmp_path / "paddy")
    counter = DecodeCounter(monkeypatch)
    first = datamodule(root, tmp_path / "cache", cache="memmap", cache_size=40)
    n = len(first.index)
    assert counter.calls == n  # verification decoded each file once and the cache took its pixels
    assert first.cache is not None and first.cache.complete
    image = first.index.reader(0)
    assert image.dtype == np.uint8 and image.shape == (40, 53, 3)  # 96x128 shrunk to shorter side 40
    # Decoded at half size (48x64 >= 40: data.scaled_decode), then shrunk: close to the full decode.
    np.testing.assert_array_equal(image, decode_shrunk(first.index.files[0], 40))
    original = cv2.cvtColor(cv2.imread(first.index.files[0]), cv2.COLOR_BGR2RGB)
    assert 0 < np.abs(image.astype(np.int16) - shrink(original, 40)).mean() < 6  # hard-edged test shapes; photos: ~1.5

    counter.calls = 0
    second = datamodule(root, tmp_path / "cache", cache="memmap", cache_size=40)
    assert counter.calls == 0  # verification verdicts and pixels both come from the caches
    assert second.cache.directory == first.cache.directory
    np.testing.assert_array_equal(second.index.reader(3), first.index.reader(3))

    # A changed file is another dataset: a new cache, and the superseded one is removed.
    changed = Path(first.index.files[5])
    write_image(changed, np.full((96, 128, 3), 200, np.uint8))
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    third = datamodule(root, tmp_path / "cache", cache="memmap", cache_size=40)
    assert third.cache.directory != first.cache.directory and not first.cache.directory.exists()
    assert int(third.index.reader(5).mean()) in range(195, 206)


def test_full_decode_setting_keeps_the_old_pixels_and_its_own_cache(tmp_path: Path):
    root = photo_root(tmp_path / "paddy")
    scaled = datamodule(root, tmp_path / "cache", cache="memmap", cache_size=40)
    full = datamodule(root, tmp_path / "cache", cache="memmap", cache_size=40, scaled_decode=False)
    assert full.cache.directory != scaled.cache.directory  # the setting is part of the key
    original = cv2.cvtColor(cv2.imread(full.index.files[0]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(full.index.reader(0), shrink(original, 40))


def test_plain_loader_decodes_as_big_as_the_transforms_need(tmp_path: Path):
    root = photo_root(tmp_path / "paddy")  # 96x128 photos, 32-px transforms
    plain = datamodule(root, tmp_path / "cache", cache="none")
    assert plain.decode_side == 32 and plain.index.reader(0).shape == (48, 64, 3)  # 1/2: 48 >= 32 > 24
    bigger = datamodule(root, tmp_path / "cache", cache="none",
                        transforms={"train": RGB_TRAIN, "eval": {"SmallestMaxSize": {"max_size": 50}}})
    assert bigger.decode_side == 50 and bigger.index.reader(0).shape == (96, 128, 3)  # 48 < 50: full size
    full = datamodule(root, tmp_path / "cache", cache="none", scaled_decode=False)
    assert full.index.reader(0).shape == (96, 128, 3)
    sample, _ = plain.dataset("train")[0]
    assert tuple(sample.shape) == (3, 32, 32)


def test_plain_loader_decodes_as_big_as_the_extra_inputs_need(tmp_path: Path):
    """A DCT of 64 px (or of the image as decoded) on 32-px transforms: the reader of every split decodes
    big enough for it, as predict does for the same run (paddy.data.transforms.decode_side)."""
    root = photo_root(tmp_path / "paddy")  # 96x128 photos
    dct = datamodule(root, tmp_path / "cache", cache="none")
    dct.request_features(["dct"], {"dct": {"size": 64}})
    assert dct.decode_side == 64 and dct.split_indices["train"].reader(0).shape == (96, 128, 3)  # 48 < 64
    whole = datamodule(root, tmp_path / "cache", cache="none")
    whole.request_features(["dct"], {"dct": {"size": None}})
    assert whole.decode_side is None and whole.split_indices["val"].reader(0).shape == (96, 128, 3)


def test_cache_samples_match_the_files_for_small_images(paddy_root: Path, tmp_path: Path):
    """Images no bigger than the cache size are stored as decoded: training sees the same pixels."""
    cached = datamodule(paddy_root, tmp_path / "c", cache="memmap", cache_size=64)  # the fixture has 40 px
    plain = datamodule(paddy_root, tmp_path / "c", cache="none")
    assert cached.cache is not None and plain.cache is None
    for split in ("train", "val"):
        a, b = cached.dataset(split), plain.dataset(split)
        a.reseed(5)
        b.reseed(5)
        for i in range(len(a)):
            torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)


def test_killed_cache_build_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = photo_root(tmp_path / "paddy")
    files = sorted(str(p) for p in (root / "train_images").rglob("*.jpg"))
    partial = DecodedImageCache(tmp_path / "cache", files, 40)
    partial.fill(list(range(5)))
    partial.finish()  # what survives a kill: the index of what was stored
    resumed = DecodedImageCache(tmp_path / "cache", files, 40)
    assert resumed.missing() == list(range(5, len(files)))
    counter = DecodeCounter(monkeypatch)
    assert resumed.fill() == len(files) - 5 and counter.calls == len(files) - 5
    resumed.finish()
    assert resumed.complete
    np.testing.assert_array_equal(resumed.reader()(2), partial.reader()(2))


def test_cache_skips_unreadable_files_with_skip_policy(tmp_path: Path):
    root = photo_root(tmp_path / "paddy")
    bad = next((root / "train_images" / CLASSES[1]).glob("*.jpg"))
    bad.write_bytes(b"not a jpeg")
    dm = datamodule(root, tmp_path / "cache", cache="memmap", on_bad_image="skip")
    assert dm.cache is not None and len(dm.index) == 3 * 4 - 1
    assert all(dm.index.reader(i).shape[2] == 3 for i in range(len(dm.index)))


def test_cache_options_are_checked(paddy_root: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="data.cache='disk'"):
        datamodule(paddy_root, tmp_path, cache="disk")
    with pytest.raises(ValueError, match="data.gpu_augment='maybe'"):
        datamodule(paddy_root, tmp_path, gpu_augment="maybe")
    with pytest.raises(ValueError, match="Affine"):
        datamodule(paddy_root, tmp_path, gpu_augment=True,
                   transforms={"train": {"Resize": {"height": 32, "width": 32}, "Affine": {"p": 1.0}}})
    assert default_short_side(224) == 256


# ---------------------------------------------------------------------------------------------- augmentation


def generators(seed: int = 0) -> tuple[torch.Generator, random.Random]:
    return torch.Generator().manual_seed(seed), random.Random(seed)


def test_device_resize_and_normalisation_match_the_cpu_path():
    """Resize to the image's own size + Normalize: the same tensor as albumentations'."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    spec = {"Resize": {"height": 32, "width": 32}}
    out = BatchAugment(spec, IMAGENET_MEAN, IMAGENET_STD)(torch.from_numpy(images), torch.tensor([[32, 32]] * 3),
                                                          *generators())
    cpu = build_transform(spec)
    expected = torch.stack([cpu(image=im)["image"] for im in images])
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_device_resize_of_padded_batches_uses_each_images_own_area():
    small = np.full((20, 30, 3), 90, np.uint8)
    big = np.full((40, 40, 3), 10, np.uint8)
    batch = torch.zeros((2, 40, 40, 3), dtype=torch.uint8)
    batch[0, :20, :30] = torch.from_numpy(small)
    batch[1] = torch.from_numpy(big)
    out = BatchAugment({"Resize": {"height": 16, "width": 16}}, (0, 0, 0), (1, 1, 1))(
        batch, torch.tensor([[20, 30], [40, 40]]), *generators())
    torch.testing.assert_close(out[0] * 255, torch.full((3, 16, 16), 90.0), atol=1e-3, rtol=0)  # no padding leaks in
    torch.testing.assert_close(out[1] * 255, torch.full((3, 16, 16), 10.0), atol=1e-3, rtol=0)


def test_random_resized_crop_draws_like_albumentations():
    """Crop area fraction and aspect ratio statistics match albumentations' RandomResizedCrop."""
    from paddy.data.gpu_augment import _random_resized_boxes

    scale, ratio = (0.25, 1.0), (0.75, 4 / 3)
    sizes = torch.tensor([[120.0, 160.0]]).repeat(4000, 1)
    boxes = _random_resized_boxes(sizes, scale, ratio, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    ours = (w * h / (120 * 160)).numpy()

    crop = A.RandomResizedCrop(size=(8, 8), scale=scale, ratio=ratio)
    crop.set_random_seed(0)
    image = np.zeros((120, 160, 3), np.uint8)
    theirs = []
    for _ in range(4000):
        params = crop.get_params_dependent_on_data({"shape": image.shape}, {"image": image})
        x1, y1, x2, y2 = params["crop_coords"]
        theirs.append((x2 - x1) * (y2 - y1) / (120 * 160))
    theirs = np.array(theirs)
    assert abs(ours.mean() - theirs.mean()) < 0.02
    assert abs(np.percentile(ours, 10) - np.percentile(theirs, 10)) < 0.03
    assert abs(np.percentile(ours, 90) - np.percentile(theirs, 90)) < 0.03
    aspect = (w / h).numpy()
    assert aspect.min() >= 0.74 and aspect.max() <= 1.35


def test_flips_and_colour_jitter():
    image = np.zeros((1, 8, 8, 3), np.uint8)
    image[0, :, :4, 0] = 255  # red left half
    batch = torch.from_numpy(image).repeat(2000, 1, 1, 1)
    sizes = torch.tensor([[8, 8]]).repeat(2000, 1)
    flip = BatchAugment({"Resize": {"height": 8, "width": 8}, "HorizontalFlip": {"p": 0.5}}, (0, 0, 0), (1, 1, 1))
    out = flip(batch, sizes, *generators())
    flipped = out[:, 0, 0, 7] > 0.5
    assert 0.45 < flipped.float().mean() < 0.55
    assert torch.equal(out[flipped, 0, :, 4:] > 0.5, torch.ones_like(out[flipped, 0, :, 4:], dtype=torch.bool))

    # A third of a turn of hue maps red to green; brightness factors stay in their range.
    hue = BatchAugment({"Resize": {"height": 8, "width": 8}, "ColorJitter": {"brightness": 0, "contrast": 0,
                        "saturation": 0, "hue": [1 / 3, 1 / 3], "p": 1.0}}, (0, 0, 0), (1, 1, 1))
    green = hue(batch[:2], sizes[:2], *generators())
    torch.testing.assert_close(green[:, 1, :, :4], torch.ones(2, 8, 4), atol=1e-3, rtol=0)
    torch.testing.assert_close(green[:, 0, :, :4], torch.zeros(2, 8, 4), atol=1e-3, rtol=0)
    gray = torch.full((500, 8, 8, 3), 100, dtype=torch.uint8)
    bright = BatchAugment({"Resize": {"height": 8, "width": 8}, "ColorJitter": {"brightness": 0.2, "contrast": 0,
                           "saturation": 0, "hue": 0, "p": 1.0}}, (0, 0, 0), (1, 1, 1))
    values = bright(gray, sizes[:500], *generators())[:, 0, 0, 0] * 255
    assert values.min() >= 80 - 1e-3 and values.max() <= 120 + 1e-3 and values.std() > 5


def test_unsupported_transforms_are_named():
    assert unsupported_steps(RGB_TRAIN) == []
    assert unsupported_steps({"Resize": {"height": 8, "width": 8}, "Affine": {}, "HorizontalFlip": None}) == ["Affine"]
    assert unsupported_steps({"HorizontalFlip": {}})  # nothing gives the training size


def test_gpu_augment_datamodule_batches_have_the_cpu_paths_shape_and_statistics(paddy_root: Path, tmp_path: Path):
    device_dm = datamodule(paddy_root, tmp_path, gpu_augment=True)
    cpu_dm = datamodule(paddy_root, tmp_path, gpu_augment=False)
    assert device_dm.uses_gpu_augment("cpu") and not cpu_dm.uses_gpu_augment("cpu")
    raw_batch = next(iter(device_dm.train_dataloader()))
    images, labels = device_dm.on_after_batch_transfer(raw_batch, 0)
    cpu_images, cpu_labels = next(iter(cpu_dm.train_dataloader()))
    assert images.shape == cpu_images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert torch.equal(labels, cpu_labels)  # the same seeded order
    assert abs(float(images.mean()) - float(cpu_images.mean())) < 0.5
    # Validation batches are untouched by the hook.
    val = next(iter(device_dm.val_dataloader()))
    assert device_dm.on_after_batch_transfer(val, 0) is val


def test_train_with_cache_and_device_augmentation(paddy_root: Path, tmp_path: Path):
    from test_train import run_cli

    run = tmp_path / "run"
    result = run_cli(*TINY, "data=paddy", f"data.root={paddy_root}", "data.cache=memmap", "data.gpu_augment=true",
                     f"paths.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", f"hydra.run.dir={run}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "decoded-image cache: stored" in output and "gpu_augment" in output
    assert (run / "metrics.json").is_file()


def test_two_processes_fill_one_cache_once(tmp_path: Path):
    """DDP ranks or parallel sweep trials on a cold cache: one fills it, the other waits and reads it."""
    import json
    import subprocess
    import sys

    root = photo_root(tmp_path / "paddy", per_class=6)
    script = (
        "import sys; from paddy.data import ImageDataModule, PaddyDoctorSource\n"
        "dm = ImageDataModule(PaddyDoctorSource(root=sys.argv[1]), image_size=32, num_workers=0, cache='memmap',\n"
        "                     cache_size=40, cache_dir=sys.argv[2])\n"
        "dm.setup('fit'); print(dm.cache.directory)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(root), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    directory = Path(outputs[0][0].strip())
    assert outputs[1][0].strip() == str(directory)
    meta = json.loads((directory / "meta.json").read_text())
    shapes = np.load(directory / "index.npz")["shapes"]
    assert meta["stored"] == len(shapes) == 18
    # Every image stored once: the pixel file holds exactly the images' bytes.
    assert (directory / "pixels.u8").stat().st_size == int((shapes[:, 0] * shapes[:, 1] * 3).sum())


# ---------------------------------------------------------------------------------------------- cache checksums


def filled_cache(root: Path, cache_dir: Path) -> tuple[DecodedImageCache, list[np.ndarray], bytes]:
    """A complete cache of ``root``'s photos: the cache, its images as read back clean, and pixels.u8's bytes."""
    files = sorted(str(p) for p in (root / "train_images").rglob("*.jpg"))
    cache = DecodedImageCache(cache_dir, files, 40)
    cache.fill()
    cache.finish()
    reader = cache.reader()
    return cache, [reader(i) for i in range(len(files))], (cache.directory / "pixels.u8").read_bytes()


def corrupt(pixels: Path, how: str) -> None:
    """XOR 20% of the file's bytes (a fixed choice, never with 0), or zero it all; the size stays."""
    data = np.fromfile(pixels, dtype=np.uint8)
    if how == "zeroed":
        data[:] = 0
    else:
        rng = np.random.default_rng(0)
        where = rng.choice(data.size, data.size // 5, replace=False)
        data[where] ^= rng.integers(1, 256, where.size, dtype=np.uint8)
    data.tofile(pixels)


def checksum_messages(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "did not match its checksum" in r.getMessage()]


@pytest.fixture
def fresh_mismatch_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process has warned about no mismatch yet (the warning is once per process)."""
    monkeypatch.setattr(cache_module, "_mismatches", {"pid": 0, "count": 0})


@pytest.mark.parametrize("how", ["xor", "zeroed"])
def test_corrupted_cache_is_detected_and_repaired(how: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                  fresh_mismatch_count: None):
    cache, clean, clean_bytes = filled_cache(photo_root(tmp_path / "paddy"), tmp_path / "cache")
    pixels = cache.directory / "pixels.u8"
    corrupt(pixels, how)
    assert pixels.read_bytes() != clean_bytes

    caplog.set_level(logging.DEBUG, logger=cache_module.__name__)
    reader = DecodedImageCache(tmp_path / "cache", cache.files, 40).reader()
    for i, expected in enumerate(clean):
        assert np.array_equal(reader(i), expected), i
    warnings = [r for r in checksum_messages(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "repaired the cache entry" in warnings[0].getMessage()
    assert len(checksum_messages(caplog)) == len(clean)  # the others at debug level
    assert pixels.read_bytes() == clean_bytes  # repaired in place, bit for bit

    caplog.clear()
    again = DecodedImageCache(tmp_path / "cache", cache.files, 40).reader()
    assert all(np.array_equal(again(i), expected) for i, expected in enumerate(clean))
    assert checksum_messages(caplog) == []


def test_read_only_corrupted_cache_still_reads_the_right_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture,
                                                               fresh_mismatch_count: None):
    cache, clean, _ = filled_cache(photo_root(tmp_path / "paddy", per_class=2), tmp_path / "cache")
    pixels = cache.directory / "pixels.u8"
    corrupt(pixels, "xor")
    damaged = pixels.read_bytes()

    def refuse(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "pwrite", refuse)  # a read-only cache (chmod does not stop root)
    caplog.set_level(logging.WARNING, logger=cache_module.__name__)
    reader = cache.reader()
    for _ in range(2):  # an entry that could not be repaired is decoded again on every read
        assert all(np.array_equal(reader(i), expected) for i, expected in enumerate(clean))
    assert len(checksum_messages(caplog)) == 1 and "could not write it back" in caplog.text
    assert pixels.read_bytes() == damaged


def test_corrupted_entry_of_a_vanished_file_is_an_error(tmp_path: Path, fresh_mismatch_count: None):
    """No file to repair from: stop with the reason rather than train on damaged pixels."""
    cache, _, _ = filled_cache(photo_root(tmp_path / "paddy", per_class=1), tmp_path / "cache")
    corrupt(cache.directory / "pixels.u8", "zeroed")
    Path(cache.files[0]).unlink()
    with pytest.raises(ImageDecodeError, match="did not match its checksum .* cannot be decoded"):
        cache.reader()(0)

def test_loader_workers_check_the_cache_again(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Slots the parent verified are checked again in a (forked or unpickled) loader worker."""
    cache, clean, _ = filled_cache(photo_root(tmp_path / "paddy", per_class=2), tmp_path / "cache")
    reader = cache.reader()
    assert all(np.array_equal(reader(i), expected) for i, expected in enumerate(clean))  # all verified here
    corrupt(cache.directory / "pixels.u8", "zeroed")
    unpickled = pickle.loads(pickle.dumps(reader))
    assert np.array_equal(unpickled(0), clean[0])

    class Images(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(clean)

        def __getitem__(self, i: int) -> np.ndarray:
            return reader(i)

    loader = torch.utils.data.DataLoader(Images(), batch_size=None, num_workers=1)
    assert all(np.array_equal(image.numpy(), expected) for image, expected in zip(loader, clean, strict=True))


def test_damaged_or_old_index_is_no_cache(tmp_path: Path):
    cache, clean, _ = filled_cache(photo_root(tmp_path / "paddy", per_class=2), tmp_path / "cache")
    index = cache.directory / "index.npz"
    index.write_bytes(index.read_bytes()[:100])  # a zip cut short: zipfile.BadZipFile
    assert DecodedImageCache(tmp_path / "cache", cache.files, 40).missing() == list(range(len(clean)))
    np.savez(index, offsets=cache.offsets, shapes=cache.shapes)  # no checksums
    rebuilt = DecodedImageCache(tmp_path / "cache", cache.files, 40)
    assert rebuilt.missing() == list(range(len(clean)))
    rebuilt.fill()
    rebuilt.finish()
    assert all(np.array_equal(rebuilt.reader()(i), expected) for i, expected in enumerate(clean))


def test_training_on_a_corrupted_cache_matches_the_clean_run(paddy_root: Path, tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture,
                                                             fresh_mismatch_count: None):
    from paddy.config import compose_config
    from paddy.pipeline import train

    def fit(name: str) -> dict:
        train(compose_config([*TINY, "data=paddy", f"data.root={paddy_root}", "data.cache=memmap",
                              "data.val_fraction=0.25", "data.test_fraction=0", "logger=none",
                              f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path / name}"]))
        return json.loads((tmp_path / name / "history.json").read_text())

    clean = fit("clean")
    (pixels,) = (tmp_path / "cache" / "images").glob("*/pixels.u8")
    corrupt(pixels, "xor")
    caplog.set_level(logging.WARNING, logger=cache_module.__name__)
    repaired = fit("corrupted")
    for key in ("train_loss", "valid_loss"):
        assert len(repaired[key]) == 2 and np.allclose(repaired[key], clean[key], rtol=0, atol=1e-6), key
    assert "repaired the cache entry" in caplog.text
