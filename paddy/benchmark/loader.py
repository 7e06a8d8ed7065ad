"""``python -m paddy.benchmark mode=loader``: how many images per second each data loader delivers, nothing else.

    python -m paddy.benchmark mode=loader photo_size=640x480 n_images=512
    python -m paddy.benchmark mode=loader photo_size=4000x3000 n_images=64 workers=0,2
    python -m paddy.benchmark mode=loader root=/data/paddy-disease-classification

One process, side by side, for each ``workers=`` value (0: the loop's own process pinned to one core,
i.e. per core; N: N loader processes on all usable cores), one pass over the images with batch
``batch_size`` each (no model):

- ``timm``: what a timm training script reads: PIL decode + ``timm.data.create_transform(image_size,
  is_training=True)`` (RandomResizedCrop, flip, colour jitter, normalise);
- ``paddy plain``: the decode (OpenCV / strict libjpeg-turbo) + paddy's albumentations training
  preset (``conf/data/transforms/rgb.yaml``) every epoch, scaled JPEG decoding on, and off (``full
  decode``, as before it existed);
- ``paddy cache cold``: a fresh decoded-image cache: ``ImageDataModule.setup()`` (verification, which
  fills the cache, in threads) and the first pass, with scaled decoding and with the full decode (in
  the order scaled, full, full, scaled; the best of two each);
- ``paddy cache warm``: a later epoch: pixels from the memory-mapped cache + the same augmentation;
- ``raw uint8``: a later epoch of the device-augmentation path: cached pixels, no CPU augmentation.

The images are ``root=`` (any layout paddy reads, ``data=``) or ``n_images`` generated photo-like JPEGs of
``photo_size`` (smooth gradients, texture, sharp-edged shapes, noise; quality 90; made once under the
cache folder): no real photos are needed. The pixel difference of scaled decoding (mean absolute
difference on the 0-255 scale between scaled decode + shrink and full decode + shrink, at the cache's
size and at the plain loader's size) is measured on the same images. Writes ``<out>.md/.csv/.json``
(``out`` default: ``benchmarks/results/loader_<photo_size>``) with the machine and versions.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from paddy.benchmark.common import BenchmarkError, environment, int_list_option, int_option, result_stem, write_results
from paddy.data.validation import default_cache_dir

CLASSES = 4
RGB_PRESET = Path(__file__).resolve().parents[2] / "conf" / "data" / "transforms" / "rgb.yaml"
COLUMNS = {"loader": "loader", "workers": "workers", "img_s": "img/s", "x_timm": "x timm", "seconds": "s"}


def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like BGR image of one scene in relative coordinates (the same picture at any size, as a
    camera would take it): smooth colour gradients, cloudy texture at 1/160 of the width, sharp-edged
    anti-aliased shapes with veins, sensor-like noise. Quality-90 JPEGs of it weigh about 0.3 bytes per
    pixel at 640x480 and 0.17 at 4000x3000, as phone photos do."""
    import cv2

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    x, y = x / width, y / height
    image = np.stack([120 + 70 * np.sin(x * 3.1 + c) * np.cos(y * 2.3 - c) for c in (0.0, 1.3, 2.6)], -1)
    image += 30 * cv2.resize(rng.normal(0, 1, (12, 16, 3)).astype(np.float32), (width, height),
                             interpolation=cv2.INTER_CUBIC)
    image += 25 * cv2.resize(rng.normal(0, 1, (120, 160)).astype(np.float32), (width, height),
                             interpolation=cv2.INTER_CUBIC)[..., None]
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(14):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        axes = (int(rng.integers(width // 30, width // 6)), int(rng.integers(height // 30, height // 6)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.ellipse(image, (cx, cy), axes, float(rng.integers(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        cv2.line(image, (cx - axes[0], cy), (cx + axes[0], cy), (20, 40, 20), max(1, width // 300), cv2.LINE_AA)
    return np.clip(image + rng.normal(0, 2.5, image.shape), 0, 255).astype(np.uint8)


def parse_photo_size(text: str) -> tuple[int, int]:
    """``640x480`` -> (640, 480)."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and int(width) >= 8 and int(height) >= 8):
        raise BenchmarkError(f"photo_size={text!r} (expected WIDTHxHEIGHT, e.g. 640x480 or 4000x3000)")
    return int(width), int(height)


@contextmanager
def cores(count: int | None) -> Iterator[None]:
    """Run the block on ``count`` of this process's cores (None: all) with as many torch threads (more
    threads than cores spin against each other); the affinity on Linux only."""
    import torch

    if count is None:
        yield
        return
    threads = torch.get_num_threads()
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if allowed is not None:
        os.sched_setaffinity(0, sorted(allowed)[:count])
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if allowed is not None:
            os.sched_setaffinity(0, allowed)


def one_pass(loader: Any) -> tuple[int, float]:
    """Images and seconds of one pass over ``loader`` (workers started inside the clock)."""
    started, images = time.perf_counter(), 0
    for inputs, _ in loader:
        images += len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
    return images, time.perf_counter() - started


class TimmFiles:
    """What a plain timm training script reads: PIL decode + timm's training transform."""

    def __init__(self, files: list[str], image_size: int):
        import timm.data

        self.files, self.transform = files, timm.data.create_transform(image_size, is_training=True)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        with Image.open(self.files[i]) as image:
            return self.transform(image.convert("RGB")), 0


def loader_of(dataset: Any, batch_size: int, workers: int, raw: bool = False) -> Any:
    import torch

    from paddy.data.datamodule import collate_raw

    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       collate_fn=collate_raw if raw else None,
                                       generator=torch.Generator().manual_seed(0))


# ---------------------------------------------------------------------------------------------- paddy


def rgb_preset(image_size: int) -> dict[str, Any]:
    """paddy's training and eval transforms for photos (``conf/data/transforms/rgb.yaml``) at ``image_size``."""
    from omegaconf import OmegaConf

    config = OmegaConf.create({"data": {"image_size": image_size, "transforms": OmegaConf.load(RGB_PRESET)}})
    return OmegaConf.to_container(config.data.transforms, resolve=True)


def datamodule(root: Path, image_size: int, workers: int, cache_dir: Path, cache: str, scaled: bool) -> Any:
    """paddy's data module on ``root`` (its Paddy Doctor layout, else class folders), every image for training."""
    from paddy.data import ImageDataModule, ImageFolderSource, PaddyDoctorSource

    source = PaddyDoctorSource if (root / "train.csv").exists() else ImageFolderSource
    return ImageDataModule(source, root=str(root), image_size=image_size, num_workers=workers, val_fraction=0.0,
                           test_fraction=0.0, transforms=rgb_preset(image_size), cache_dir=cache_dir, cache=cache,
                           scaled_decode=scaled)


def measure_workers(root: Path, files: list[str], workers: int, options: Mapping[str, int],
                    scratch: Path) -> list[dict[str, Any]]:
    """Every loader's pass over the images with ``workers`` loader processes (0: pinned to one core)."""
    size, batch = options["image_size"], options["batch_size"]
    rows: list[dict[str, Any]] = []

    def add(name: str, images: int, seconds: float) -> None:
        rows.append({"loader": name, "workers": workers, "images": images, "seconds": round(seconds, 3),
                     "img_s": round(images / seconds, 1)})
        print(f"  {name}, workers={workers}: {images / seconds:.1f} img/s", file=sys.stderr)

    with cores(1 if workers == 0 else None):
        add("timm (PIL + create_transform)", *one_pass(loader_of(TimmFiles(files, size), batch, workers)))
        verdicts = scratch / "verdicts"
        for scaled, label in ((True, "scaled decode"), (False, "full decode")):
            dm = datamodule(root, size, workers, verdicts, "none", scaled)
            dm.setup()
            add(f"paddy plain ({label})", *one_pass(loader_of(dm.dataset("train"), batch, workers)))
        cold: dict[bool, list[float]] = {False: [], True: []}
        for scaled in (True, False, False, True):  # ABBA, best of two: the order (page cache, disk) favours neither
            cache_dir = Path(tempfile.mkdtemp(prefix=f"cold-{workers}-", dir=scratch))
            started = time.perf_counter()
            dm = datamodule(root, size, workers, cache_dir, "memmap", scaled)
            dm.setup()
            images, _ = one_pass(loader_of(dm.dataset("train"), batch, workers))
            cold[scaled].append(time.perf_counter() - started)
            if not scaled:
                shutil.rmtree(cache_dir)
        for scaled, label in ((False, "full decode, as before"), (True, "scaled decode")):
            add(f"paddy cache cold ({label}: verify + fill + 1st pass, best of 2)", images, min(cold[scaled]))
        # dm: the last scaled cold run's module, its cache complete and checked
        add("paddy cache warm", *one_pass(loader_of(dm.dataset("train"), batch, workers)))
        add("raw uint8 (cache, device augmentation)", *one_pass(loader_of(dm.dataset("train", raw=True), batch,
                                                                          workers, raw=True)))
    timm = rows[0]["img_s"]
    for row in rows:
        row["x_timm"] = round(row["img_s"] / timm, 2)
    return rows


# ---------------------------------------------------------------------------------------------- decode


def decode_costs(files: list[str], side: int, repeats: int = 3) -> dict[str, Any]:
    """For a shorter side of ``side``: the reduction chosen, the ms per image (one core) of full decode +
    shrink, scaled decode (simplejpeg, strict) + shrink and OpenCV's ``IMREAD_REDUCED_COLOR_*`` + shrink,
    and the mean absolute difference (0-255) of the scaled pixels from the full decode's."""
    import cv2

    from paddy.data.cache import shrink
    from paddy.data.imageio import jpeg_reduction, read_image

    opencv_flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                   8: cv2.IMREAD_REDUCED_COLOR_8}
    times: dict[str, list[float]] = {"full_ms": [], "scaled_ms": [], "opencv_reduced_ms": []}
    differences, factors = [], set()
    for path in files:
        data = Path(path).read_bytes()
        full, scaled = shrink(read_image(path), side), shrink(read_image(path, side), side)
        factor = jpeg_reduction(*read_image(path).shape[:2], side)
        factors.add(factor)
        if scaled.shape != full.shape:  # libjpeg rounds the reduced size up: a pixel more on one side
            scaled = cv2.resize(scaled, full.shape[1::-1], interpolation=cv2.INTER_AREA)
        differences.append(float(np.abs(scaled.astype(np.int16) - full.astype(np.int16)).mean()))
        buffer, flag = np.frombuffer(data, np.uint8), opencv_flag[factor]
        jobs: dict[str, Callable[[], Any]] = {
            "full_ms": lambda path=path: shrink(read_image(path), side),
            "scaled_ms": lambda path=path: shrink(read_image(path, side), side),
            "opencv_reduced_ms": lambda buffer=buffer, flag=flag: shrink(cv2.imdecode(buffer, flag), side),
        }
        for key, job in jobs.items():
            started = time.perf_counter()
            for _ in range(repeats):
                job()
            times[key].append((time.perf_counter() - started) / repeats * 1000)
    result = {key: round(float(np.median(values)), 2) for key, values in times.items()}
    return {"side": side, "factors": sorted(factors), **result,
            "speedup": round(result["full_ms"] / result["scaled_ms"], 2),
            "mad": round(float(np.mean(differences)), 3), "mad_max": round(float(np.max(differences)), 3)}


# ---------------------------------------------------------------------------------------------- the mode


def ratios_of(rows: list[dict[str, Any]], workers: list[int]) -> dict[str, dict[str, float]]:
    """Per ``workers``: cold pass scaled vs full decode, warm and raw vs timm, plain scaled vs full."""
    by = {(row["loader"].split(" (")[0] + (" scaled" if "scaled" in row["loader"] else ""), row["workers"]): row
          for row in rows}
    ratios = {}
    for count in workers:
        def rate(name: str, count: int = count) -> float:
            return by[(name, count)]["img_s"]

        ratios[f"workers={count}"] = {
            "cold_scaled_vs_full": round(rate("paddy cache cold scaled") / rate("paddy cache cold"), 2),
            "warm_vs_timm": round(rate("paddy cache warm") / rate("timm"), 2),
            "raw_vs_timm": round(rate("raw uint8") / rate("timm"), 2),
            "plain_scaled_vs_full": round(rate("paddy plain scaled") / rate("paddy plain"), 2)}
    return ratios


def photo_set(options: Mapping[str, str]) -> tuple[Path, str]:
    """``root=``, or ``n_images`` generated photos of ``photo_size`` (written once under the cache folder)."""
    from paddy.benchmark.throughput import write_photo_set

    if options.get("root"):
        root = Path(options["root"]).expanduser()
        if not root.is_dir():
            raise BenchmarkError(f"root={options['root']}: no such folder")
        return root, "root"
    width, height = parse_photo_size(options["photo_size"])
    images = int_option(options, "n_images")
    folder = default_cache_dir() / "benchmark-photos" / f"loader-{images}-{width}x{height}"
    return write_photo_set(folder, images, width, height, classes=CLASSES, draw=photo_like), f"{width}x{height}"


def run(options: Mapping[str, str]) -> int:
    """Measure every loader for every ``workers`` value; print the table, write ``<out>.md/.csv/.json``."""
    import cv2

    from paddy.data.cache import default_short_side
    from paddy.data.sources import IMAGE_SUFFIXES

    root, label = photo_set(options)
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BenchmarkError(f"root={root}: no images")
    settings = {"image_size": int_option(options, "image_size"), "batch_size": int_option(options, "batch_size")}
    workers = int_list_option(options, "workers", minimum=0)
    env = environment()
    cv2.setNumThreads(1)  # one decode per thread or process, as in the loaders
    sides = {"cache": default_short_side(settings["image_size"]), "plain": settings["image_size"]}
    samples = files[:: max(1, len(files) // 8)][:8]
    with cores(1):
        decode = {name: decode_costs(samples, side) for name, side in sides.items()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="paddy-loader-") as scratch:
        for count in workers:
            rows += measure_workers(root, files, count, settings, Path(scratch))
    ratios = ratios_of(rows, workers)
    out = result_stem(options.get("out") or f"benchmarks/results/loader_{label}", "loader")
    what = f"files under {root}" if label == "root" else f"generated photo-like JPEGs of {label} (quality 90)"
    notes = [f"Images: {len(files)} {what}; {settings['image_size']} px, batch {settings['batch_size']}; "
             "workers=0: one process pinned to one core. Other jobs shared the CPUs: compare rows of one run.",
             *(f"Scaled decoding for the {name} ({d['side']} px): factor {d['factors']}, {d['full_ms']} -> "
               f"{d['scaled_ms']} ms per image on one core ({d['speedup']}x; OpenCV IMREAD_REDUCED "
               f"{d['opencv_reduced_ms']} ms); mean absolute difference from full decode + shrink {d['mad']} "
               f"(max {d['mad_max']}) on 0-255" for name, d in decode.items()),
             *(f"Ratios, {key}: " + ", ".join(f"{name} {value}" for name, value in values.items())
               for key, values in ratios.items())]
    meta = {"benchmark": "loader", "command": "python -m paddy.benchmark mode=loader " + " ".join(
                f"{k}={v}" for k, v in options.items() if k != "out"),
            "environment": env, "shared_machine": "other jobs shared the CPUs: compare rows of one run (ratios)",
            "settings": {**settings, "images": len(files), "photos": label, "workers": workers},
            "decode": decode, "ratios": ratios}
    write_results(rows, COLUMNS, out, meta, title=f"Loader images/s ({label})", notes=notes)
    print(out.with_suffix(".md").read_text() if out.with_suffix(".md").exists() else "")
    print(f"wrote {out}.md/.csv/.json", file=sys.stderr)
    return 0
