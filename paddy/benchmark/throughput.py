"""``python -m paddy.benchmark mode=throughput``: does paddy keep the device busy? One process, one run:

    python -m paddy.benchmark mode=throughput model=lite0_ca precision=bf16 batch_size=256 epochs=15
    python -m paddy.benchmark mode=throughput model=effv2s_ca precision=bf16 batch_size=256 compile=true
    python -m paddy.benchmark mode=throughput model=mnv3s_ca device=cpu image_size=64 batch_size=32 images=400

Measured, for one model, batch size, image size and precision, in this order:

1. ``raw``: a plain PyTorch loop (forward, cross-entropy, backward, fused AdamW step, autocast and
   channels_last as paddy would use them) on one random batch already on the device: the ceiling.
2. ``paddy in-device``: paddy's real training path (the run's LightningModule, a Lightning
   Trainer with the configured callbacks, loggers and the non-finite guard, built by the same
   functions ``python -m paddy.train`` uses) fed the same in-device batch.
3. ``paddy JPEG``: ``python -m paddy.train``'s whole run (``paddy.pipeline.train``) on JPEG files
   in the Kaggle Paddy Doctor layout: ``root=`` or a generated set (``images=`` files of
   ``photo_size=`` 640x480 px in 10 classes, made once and kept under the cache folder), for
   ``epochs=`` epochs with validation every epoch and the final test, decoded-image cache cold
   (``cache_state=cold``: a fresh cache folder) unless ``cache_state=warm``. Its training
   throughput is that of the epochs after the first (steady state); the first epoch, the time from
   the command's start to the first training step and the run's wall time are reported too.
4. ``loader=plain`` (default on a CPU): the JPEG run again with the plain loader (no decoded-image
   cache, augmentation in the loader workers), the path paddy had before the fast one.

Throughput is timed between two device synchronisations (start of the first timed step, end of
the last), never per step. Ratios compare rows 2/1 and 3/2 (and 3/4). The table is printed and
written as ``<out>.md/.csv/.json`` with the machine, versions and settings.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from paddy.benchmark.common import (
    BenchmarkError,
    bool_option,
    compose_named,
    environment,
    int_option,
    list_option,
    resolve_devices,
    resolve_settings,
    result_stem,
    synchronize,
    write_results,
)
from paddy.data.validation import default_cache_dir

log = logging.getLogger("paddy")

PHOTO_CLASSES = 10
DEFAULTS_GPU = {"image_size": "224", "batch_size": "256", "precision": "bf16", "steps": "50", "warmup": "10",
                "epochs": "15", "images": "10400", "compile": "false"}
DEFAULTS_CPU = {"image_size": "64", "batch_size": "32", "precision": "32", "steps": "10", "warmup": "2",
                "epochs": "3", "images": "640", "compile": "false"}


def process_started_at() -> float:
    """The wall-clock time this process started (Linux: from /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


# ---------------------------------------------------------------------------------------------- data


def photo(class_id: int, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like BGR image: smooth random structure in a class tint, fine noise (JPEGs of a
    realistic size, ~30-60 KB at 640x480)."""
    import cv2

    coarse = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    tint = np.array([(37 * class_id) % 256, (91 * class_id + 60) % 256, (53 * class_id + 120) % 256], np.int16)
    image = (image + tint) // 2 + rng.integers(-12, 13, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photo_set(root: Path, images: int, width: int = 640, height: int = 480, classes: int = PHOTO_CLASSES,
                    draw: Any = None) -> Path:
    """The Kaggle Paddy Doctor layout (train.csv + train_images/<label>/<id>.jpg) of ``images`` photos,
    drawn by ``draw(rng, width, height)`` (default: :func:`photo` in its class tint).

    Written once: a folder holding a complete set (``.complete`` marker) is reused.
    """
    import cv2

    marker = root / ".complete"
    if marker.exists():
        return root
    labels = [f"class_{c:02d}" for c in range(classes)]

    def write(i: int) -> str:
        rng = np.random.default_rng(i)
        label = labels[i % classes]
        path = root / "train_images" / label / f"{100000 + i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = photo(i % classes, rng, width, height) if draw is None else draw(rng, width, height)
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        return f"{100000 + i}.jpg,{label},ADT45,45"

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(write, range(images)))
    (root / "train.csv").write_text("image_id,label,variety,age\n" + "\n".join(rows) + "\n")
    marker.write_text(f"{images} {width}x{height}\n")
    return root


# ---------------------------------------------------------------------------------------------- timing


class SteadyTimer(L.Callback):
    """Training images/s between two synchronisations per epoch: from the start of step ``warmup``
    to the end of the epoch's last training step (nothing per step; validation is not included),
    plus each epoch's training time and the wall-clock time of the first step."""

    def __init__(self, warmup: int = 0):
        self.warmup = warmup
        self.first_step_at: float | None = None
        self.epochs: list[dict[str, Any]] = []
        self._t0: float | None = None
        self._images = 0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()
        self._t0, self._images = None, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()
        if batch_idx == self.warmup:
            synchronize(pl_module.device)
            self._t0 = time.perf_counter()
        if self._t0 is not None:
            self._images += _batch_size(batch)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if batch_idx != trainer.num_training_batches - 1:
            return
        synchronize(pl_module.device)
        now = time.perf_counter()
        timed = now - self._t0 if self._t0 is not None else None
        self.epochs.append({"epoch_train_s": now - self._epoch_start, "timed_s": timed,
                            "timed_images": self._images, "img_s": self._images / timed if timed else None})


def _batch_size(batch: Any) -> int:
    inputs = batch[0]
    if isinstance(inputs, dict):
        inputs = next(iter(inputs.values()))
    return int(len(inputs))


# ---------------------------------------------------------------------------------------------- measurements


def raw_loop(cfg: Any, settings: Any, batch_size: int, image_size: int, steps: int, warmup: int,
             compile_model: bool) -> dict[str, Any]:
    """Plain PyTorch: the same network, fused AdamW, autocast, on one in-device batch."""
    import torch

    from paddy.benchmark.common import build_from_config, model_inputs

    device = settings.device
    net = build_from_config(cfg, PHOTO_CLASSES).to(device)
    if settings.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if compile_model:
        net.compile()
    inputs = model_inputs(net, batch_size, image_size, device, settings.channels_last)
    labels = torch.randint(0, PHOTO_CLASSES, (batch_size,), device=device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.05, fused=True)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "16")
    dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(settings.precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(**inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    net.train()
    for _ in range(warmup):
        step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {"img_s": steps * batch_size / elapsed, "timed_s": elapsed, "timed_images": steps * batch_size}


class InDeviceBatches:
    """A loader of ``n`` references to one batch already on the device (no copies, no workers)."""

    def __init__(self, batch: tuple[Any, Any], n: int):
        self.batch, self.n = batch, n

    def __iter__(self):
        return iter([self.batch] * self.n)

    def __len__(self) -> int:
        return self.n


def paddy_in_device(cfg: Any, settings: Any, batch_size: int, image_size: int, steps: int, warmup: int,
                    output_dir: Path) -> dict[str, Any]:
    """paddy's LightningModule + Trainer (configured callbacks, loggers, guard) on the in-device batch."""
    import torch

    from paddy.benchmark.common import build_from_config, model_inputs
    from paddy.pipeline import build_task, build_trainer, trainer_settings

    device = settings.device
    net = build_from_config(cfg, PHOTO_CLASSES)
    classes = [f"class_{c:02d}" for c in range(PHOTO_CLASSES)]
    inputs = model_inputs(net, batch_size, image_size, device)
    images = inputs.pop("images")
    batch = ({"images": images, **inputs} if inputs else images,
             torch.randint(0, PHOTO_CLASSES, (batch_size,), device=device))
    cfg.paths.output_dir = str(output_dir)
    options = trainer_settings(cfg)
    options.update(max_epochs=1, num_sanity_val_steps=0)
    task = build_task(cfg, net, classes, device.type == "cuda")
    timer = SteadyTimer(warmup=warmup)
    trainer = build_trainer(cfg, options, [timer])
    # Validation (two batches, after the timed steps) keeps the monitored metrics of the checkpoint
    # and early-stopping callbacks defined, as in a real run.
    trainer.fit(task, train_dataloaders=InDeviceBatches(batch, warmup + steps),
                val_dataloaders=InDeviceBatches(batch, 2))
    epoch = timer.epochs[-1]
    return {"img_s": epoch["img_s"], "timed_s": epoch["timed_s"], "timed_images": epoch["timed_images"]}


def paddy_jpeg_run(cfg: Any, epochs: int, output_dir: Path) -> dict[str, Any]:
    """``paddy.pipeline.train`` on the photo set: the whole run, timed from the call."""
    from paddy.pipeline import train

    started = time.time()
    timer = SteadyTimer(warmup=2)
    cfg.paths.output_dir = str(output_dir)
    metrics = train(cfg, extra_callbacks=[timer])
    wall = time.time() - started
    later = [e["img_s"] for e in timer.epochs[1:] if e.get("img_s")]
    first = timer.epochs[0] if timer.epochs else {}
    return {
        "img_s": float(np.median(later)) if later else first.get("img_s"),
        "first_epoch_img_s": first.get("img_s"),
        "first_epoch_train_s": first.get("epoch_train_s"),
        "setup_to_first_step_s": (timer.first_step_at - started) if timer.first_step_at else None,
        "run_wall_s": wall,
        "epochs": timer.epochs,
        "epochs_run": metrics.get("epochs_run"),
        "val_acc_best": metrics.get("val_acc_best"),
        "test_acc": metrics.get("test_acc"),
    }


# ---------------------------------------------------------------------------------------------- the command


def _jpeg_overrides(options: Mapping[str, str], settings: Any, root: Path, image_size: int, batch_size: int,
                    epochs: int, cache_dir: Path, loader: str) -> list[str]:
    result = ["data=paddy", f"data.root={root}", f"data.image_size={image_size}", f"data.batch_size={batch_size}",
              f"trainer.max_epochs={epochs}", *_trainer_overrides(settings), f"paths.cache_dir={cache_dir}",
              "callbacks.early_stopping=null"]
    if loader == "plain":
        result += ["data.cache=none", "data.gpu_augment=false"]
    else:
        for key in ("cache", "gpu_augment"):
            if options.get(key) is not None:
                result.append(f"data.{key}={options[key]}")
    if options.get("num_workers") is not None:
        result.append(f"data.num_workers={options['num_workers']}")
    return result


@dataclass
class ThroughputPlan:
    """What one ``mode=throughput`` run measures: the options, parsed and checked, with the device's defaults."""

    model: str
    image_size: int
    batch_size: int
    steps: int
    warmup: int
    epochs: int
    images: int
    compile_model: bool
    settings: Any  # paddy.benchmark.common.RunSettings
    loaders: list[str]
    cache_state: str
    parts: list[str]
    overrides: list[str]  # the command line's Hydra overrides
    options: dict[str, str]  # every option, the device's defaults filled in

    @property
    def base_overrides(self) -> list[str]:
        """The overrides of every config this run composes."""
        return [*self.overrides] + (["model.compile=true"] if self.compile_model else [])


def throughput_plan(options: Mapping[str, str | None], overrides: list[str]) -> ThroughputPlan:
    """The plan of options (``DEFAULTS_GPU`` or ``DEFAULTS_CPU`` for what is not given); a
    :class:`BenchmarkError` for a bad value."""
    device = resolve_devices(options.get("device") or "auto")[-1]  # auto: the GPU when there is one
    defaults = DEFAULTS_GPU if device.type == "cuda" else DEFAULTS_CPU
    opts = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    if len(list_option(opts, "model")) != 1:
        raise BenchmarkError("mode=throughput measures one model per run (model=<name>)")
    image_size, batch_size = int_option(opts, "image_size"), int_option(opts, "batch_size")
    steps, warmup, epochs = int_option(opts, "steps"), int_option(opts, "warmup", 0), int_option(opts, "epochs")
    images = int_option(opts, "images")
    compile_model = bool(bool_option(opts, "compile", auto=False))
    settings = resolve_settings(device, opts["precision"], None)
    loaders = list_option(opts, "loaders") if opts.get("loaders") else (
        ["fast", "plain"] if device.type == "cpu" else ["fast"])
    cache_state = opts.get("cache_state") or "cold"
    if cache_state not in ("cold", "warm"):
        raise BenchmarkError(f"cache_state={cache_state!r} (expected cold or warm)")
    parts = list_option(opts, "parts") if opts.get("parts") else ["raw", "in_device", "jpeg"]
    return ThroughputPlan(opts.get("model") or "lite0_ca", image_size, batch_size, steps, warmup, epochs, images,
                          compile_model, settings, loaders, cache_state, parts, list(overrides), opts)


def run(options: dict[str, str], overrides: list[str]) -> int:
    """The throughput benchmark (see the module docstring); returns the exit status."""
    import torch

    command_started = process_started_at()
    run_started = time.time()
    plan = throughput_plan(options, overrides)
    cfg = compose_named(plan.model, plan.base_overrides)
    if plan.settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    work = Path(tempfile.mkdtemp(prefix="paddy-throughput-"))
    try:
        rows, details = measure_parts(plan, cfg, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _add_ratios(rows)
    import_s = run_started - command_started
    for row in rows:
        if row.get("setup_to_first_step_s") is not None:
            row["command_to_first_step_s"] = import_s + row["setup_to_first_step_s"]
            row["command_wall_s"] = import_s + row["run_wall_s"]
    paths = write_throughput_results(plan, rows, details, import_s)
    print(paths[0].read_text())
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def measure_parts(plan: ThroughputPlan, cfg: Any, work: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of the parts the plan asks for (raw loop, paddy in-device, paddy from JPEG files per
    loader), in that order, and the JPEG runs' per-epoch details; scratch files go under ``work``."""
    settings, batch_size, image_size = plan.settings, plan.batch_size, plan.image_size
    rows: list[dict[str, Any]] = []
    details: dict[str, Any] = {}
    if "raw" in plan.parts:
        _progress(f"raw PyTorch loop: {plan.model}, batch {batch_size}, {image_size} px, {settings.precision}")
        rows.append({"measurement": "raw PyTorch loop (in-device data)",
                     **raw_loop(cfg, settings, batch_size, image_size, plan.steps, plan.warmup, plan.compile_model)})
    if "in_device" in plan.parts:
        _progress("paddy LightningModule + Trainer on the same in-device batch")
        in_cfg = compose_named(plan.model, [*plan.base_overrides, *_trainer_overrides(settings)])
        rows.append({"measurement": "paddy (in-device data)",
                     **paddy_in_device(in_cfg, settings, batch_size, image_size, plan.steps, plan.warmup, work / "in")})
    if "jpeg" in plan.parts:
        opts = plan.options
        root = Path(opts["root"]) if opts.get("root") else _photo_root(plan.images, opts.get("photo_size") or "640x480")
        for loader in plan.loaders:
            cache_dir = work / f"cache-{loader}" if plan.cache_state == "cold" else default_cache_dir()
            jpeg_cfg = compose_named(plan.model, [*plan.base_overrides, *_jpeg_overrides(
                opts, settings, root, image_size, batch_size, plan.epochs, cache_dir, loader)])
            _progress(f"paddy from JPEG files ({loader} loader): {root}, {plan.epochs} epochs")
            result = paddy_jpeg_run(jpeg_cfg, plan.epochs, work / f"jpeg-{loader}")
            details[f"jpeg_{loader}_epochs"] = result.pop("epochs")
            label = "fast path" if loader == "fast" else "plain loader: decode + CPU augmentation every epoch"
            rows.append({"measurement": f"paddy (JPEG files, {label})", **result})
    return rows, details


def write_throughput_results(plan: ThroughputPlan, rows: list[dict[str, Any]], details: dict[str, Any],
                             import_s: float) -> list[Path]:
    """``<out>.md/.csv/.json``: the table, the machine, versions and settings, and the JPEG runs' epochs."""
    settings, epochs = plan.settings, plan.epochs
    meta = {"benchmark": "throughput", "environment": environment(),
            "settings": {"model": plan.model, "image_size": plan.image_size, "batch_size": plan.batch_size,
                         "precision": settings.precision, "channels_last": settings.channels_last,
                         "device": str(settings.device), "steps": plan.steps, "warmup": plan.warmup,
                         "epochs": epochs, "images": plan.images, "compile": plan.compile_model,
                         "cache_state": plan.cache_state, "loaders": plan.loaders, "overrides": plan.overrides,
                         "imports_s": import_s},
            "command": "python -m paddy.benchmark " + " ".join(sys.argv[1:]), "details": details}
    columns = {"measurement": "measurement", "img_s": "train img/s", "ratio": "ratio",
               "first_epoch_img_s": "1st epoch img/s", "command_to_first_step_s": "command -> 1st step (s)",
               "command_wall_s": f"{epochs}-epoch run wall (s)", "val_acc_best": "val acc"}
    formats = {"img_s": ".0f", "first_epoch_img_s": ".0f", "ratio": ".3f", "command_to_first_step_s": ".1f",
               "command_wall_s": ".1f", "val_acc_best": ".3f"}
    stem = result_stem(plan.options.get("out") or "benchmarks/results/throughput", "throughput")
    title = (f"Training throughput: {plan.model}, batch {plan.batch_size}, {plan.image_size} px, "
             f"{settings.precision_name}, {settings.device.type}")
    notes = [f"ratio: paddy in-device / raw loop; JPEG fast path / paddy in-device; plain loader / fast path. "
             f"JPEG rows: {epochs} epochs with validation every epoch and a final test, cache {plan.cache_state}; "
             f"train img/s = median of the epochs after the first; times include {import_s:.1f} s of imports."]
    return write_results(rows, columns, stem, meta, formats, title=title, notes=notes)


def _trainer_overrides(settings: Any) -> list[str]:
    accelerator = "gpu" if settings.device.type == "cuda" else "cpu"
    precision = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}[settings.precision]
    return [f"trainer.accelerator={accelerator}", "trainer.devices=1", f"trainer.precision={precision}"]


def _add_ratios(rows: list[dict[str, Any]]) -> None:
    by_name = {row["measurement"].split(" (")[0] + (" jpeg" if "JPEG" in row["measurement"] else "")
               + (" plain" if "plain" in row["measurement"] else ""): row for row in rows}
    raw, in_device = by_name.get("raw PyTorch loop"), by_name.get("paddy")
    fast, plain = by_name.get("paddy jpeg"), by_name.get("paddy jpeg plain")
    pairs = [(in_device, raw), (fast, in_device), (plain, fast)]
    for row, reference in pairs:
        if row is not None and reference is not None and row.get("img_s") and reference.get("img_s"):
            row["ratio"] = row["img_s"] / reference["img_s"]


def _photo_root(images: int, size: str) -> Path:
    try:
        width, height = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise BenchmarkError(f"photo_size={size!r} (expected WIDTHxHEIGHT, e.g. 640x480)") from None
    root = default_cache_dir() / "benchmark-photos" / f"{images}-{width}x{height}"
    if not (root / ".complete").exists():
        _progress(f"writing {images} JPEG photos of {width}x{height} px (once) to {root}")
    return write_photo_set(root, images, width, height)


def _progress(message: str) -> None:
    print(f"[throughput] {message}", file=sys.stderr, flush=True)


__all__ = ["SteadyTimer", "ThroughputPlan", "measure_parts", "paddy_in_device", "paddy_jpeg_run", "raw_loop", "run",
           "throughput_plan", "write_photo_set", "write_throughput_results"]
