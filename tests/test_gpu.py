"""The CUDA paths, on a real GPU: mixed precision with channels_last, the device augmentation's CUDA
generator, the non-finite skip of fused AdamW on the device, DDP over NCCL and torch.compile.

Every test is marked ``gpu`` and skipped without CUDA (like lightning-hydra-template's
``RunIf(min_gpus=1)``); the default ``pytest`` run deselects them. Run them on a GPU machine with
``pytest -m gpu tests/test_gpu.py``, or ``make gpu-check`` (which also measures throughput:
docs/development.md#gpu-check). About 3-4 minutes on an H200, 2 of them compiling lite0_ca.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import lightning as L
import numpy as np
import pytest
import torch
from conftest import class_image
from lightning.fabric.utilities.apply_func import move_data_to_device
from test_training_callbacks import SometimesNaN, StepProbe, datamodule, task

from paddy.config import compose_config
from paddy.data import ImageDataModule, SyntheticSource
from paddy.data.gpu_augment import BatchAugment, _random_resized_boxes
from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform
from paddy.pipeline import build_datamodule, build_network, build_task, model_parts, recipe_callbacks, train
from paddy.tasks.guard import NonFiniteLossGuard

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

REPO = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda")
ACCELERATOR = "gpu"
PRESETS = ("mnv3s_ca", "lite0_ca", "effv2s_ca")
# The photo training augmentation (conf/data/transforms/rgb.yaml) at 64 px.
RGB_TRAIN = {
    "RandomResizedCrop": {"size": [64, 64], "scale": [0.5, 1.0]},
    "HorizontalFlip": {"p": 0.5},
    "VerticalFlip": {"p": 0.5},
    "ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.02, "p": 0.5},
}


def small_run(*extra: str) -> list[str]:
    """A few steps of a real run on the GPU: generated 64 px images, batches of 16, loader workers."""
    return ["data=synthetic", "data.image_size=64", "data.batch_size=16", "data.num_workers=2",
            f"trainer.accelerator={ACCELERATOR}", "trainer.devices=1", "trainer.max_epochs=1",
            "trainer.limit_train_batches=6", "trainer.limit_val_batches=2", "trainer.num_sanity_val_steps=0",
            "logger=none", "++callbacks.rich_progress_bar=null", *extra]


class DeviceProbe(L.Callback):
    """What the training steps ran with: the inputs the network got (device, dtype, memory format),
    the dtype the head computed in (autocast), each step's loss (kept on the device until the end),
    the weights before and after, and the trainer's precision settings."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, torch.dtype, bool]] = []
        self.head_dtypes: list[torch.dtype] = []
        self.losses: list[torch.Tensor] = []
        self.seen: dict[str, Any] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.model
        self.before = {name: p.detach().clone() for name, p in net.named_parameters()}
        head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        net.register_forward_pre_hook(self._input, with_kwargs=True)
        head.register_forward_hook(lambda module, args, out: self.head_dtypes.append(out.dtype)
                                   if module.training else None)

    def _input(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training:
            images = kwargs["images"] if "images" in kwargs else args[0]
            self.inputs.append((images.device.type, images.dtype,
                                images.is_contiguous(memory_format=torch.channels_last)))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        net = pl_module.model
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.seen = {
            "precision": trainer.precision, "scaler": scaler is not None,
            "gpu_augment": trainer.datamodule.uses_gpu_augment(),
            "conv_weights_channels_last": all(p.is_contiguous(memory_format=torch.channels_last)
                                              for p in net.parameters() if p.dim() == 4),
            "moved": any(not torch.equal(p, self.before[name]) for name, p in net.named_parameters()),
            "fused": trainer.optimizers[0].defaults.get("fused"),
        }


# ---------------------------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("preset", PRESETS)
def test_presets_train_in_mixed_precision_with_channels_last(preset: str, precision: str, tmp_path: Path):
    """The real run (paddy.pipeline.train) with the GPU defaults: channels_last (model.channels_last=auto),
    device augmentation (data.gpu_augment=auto) fed by pinned uint8 batches, fused AdamW, autocast."""
    probe = DeviceProbe()
    cfg = compose_config(small_run(f"model={preset}", f"trainer.precision={precision}", "test=false"))
    cfg.paths.output_dir = str(tmp_path)
    metrics = train(cfg, extra_callbacks=[probe])
    assert metrics["epochs_run"] == 1
    assert len(probe.losses) == 6 and bool(torch.isfinite(torch.stack(probe.losses)).all()), probe.losses
    assert probe.inputs and all(seen == (DEVICE.type, torch.float32, True) for seen in probe.inputs), probe.inputs
    autocast = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    assert probe.head_dtypes and set(probe.head_dtypes) == {autocast}
    assert probe.seen == {"precision": precision, "scaler": precision == "16-mixed", "gpu_augment": True,
                          "conv_weights_channels_last": True, "moved": True, "fused": True}
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


# ---------------------------------------------------------------------------------------------- augmentation


def albumentations_crop_fractions(shape: tuple[int, int], scale: tuple[float, float], ratio: tuple[float, float],
                                  n: int) -> tuple[np.ndarray, np.ndarray]:
    """Area fractions and aspect ratios of ``n`` crops drawn by albumentations' RandomResizedCrop."""
    crop = A.RandomResizedCrop(size=(8, 8), scale=scale, ratio=ratio)
    crop.set_random_seed(0)
    image = np.zeros((*shape, 3), np.uint8)
    areas, aspects = [], []
    for _ in range(n):
        x1, y1, x2, y2 = crop.get_params_dependent_on_data({"shape": image.shape}, {"image": image})["crop_coords"]
        areas.append((x2 - x1) * (y2 - y1) / (shape[0] * shape[1]))
        aspects.append((x2 - x1) / (y2 - y1))
    return np.array(areas), np.array(aspects)


def cuda_random(seed: int) -> tuple[torch.Generator, random.Random]:
    return torch.Generator(device=DEVICE).manual_seed(seed), random.Random(seed)


@pytest.mark.parametrize("shape", [(480, 640), (256, 341)])
def test_device_crops_draw_like_albumentations(shape: tuple[int, int]):
    """RandomResizedCrop's boxes from the CUDA generator: inside the image, area fraction and aspect
    ratio distributed as albumentations draws them (mean and 10th/90th percentiles)."""
    n, scale, ratio = 4000, (0.25, 1.0), (0.75, 4 / 3)
    sizes = torch.tensor([shape], dtype=torch.float32, device=DEVICE).repeat(n, 1)
    boxes = _random_resized_boxes(sizes, scale, ratio, cuda_random(0)[0])
    assert boxes.device.type == DEVICE.type
    boxes = boxes.cpu()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= shape[1]).all() and (boxes[:, 3] <= shape[0]).all()
    ours = {"area": (w * h / (shape[0] * shape[1])).numpy(), "aspect": (w / h).numpy()}
    theirs = dict(zip(("area", "aspect"), albumentations_crop_fractions(shape, scale, ratio, n), strict=True))
    for key, tolerance in (("area", 0.02), ("aspect", 0.03)):
        assert abs(ours[key].mean() - theirs[key].mean()) < tolerance, (key, ours[key].mean(), theirs[key].mean())
        for q in (10, 90):
            a, b = np.percentile(ours[key], q), np.percentile(theirs[key], q)
            assert abs(a - b) < 1.5 * tolerance, (key, q, a, b)
    assert ours["aspect"].min() >= 0.74 and ours["aspect"].max() <= 1.35


def test_device_flips_and_brightness_draw_like_albumentations():
    """Flip rates and the brightness factor's distribution: the CUDA generator's draws against
    albumentations' on the same images."""
    n = 4000
    image = np.zeros((8, 8, 3), np.uint8)
    image[:4, :4] = 200  # top-left quadrant: where it ends up says which flips happened
    flips = {"Resize": {"height": 8, "width": 8}, "HorizontalFlip": {"p": 0.5}, "VerticalFlip": {"p": 0.25}}
    batch = torch.from_numpy(image).to(DEVICE).expand(n, 8, 8, 3).contiguous()
    sizes = torch.tensor([[8, 8]], device=DEVICE).repeat(n, 1)
    out = BatchAugment(flips, (0, 0, 0), (1, 1, 1))(batch, sizes, *cuda_random(1))[:, 0].cpu().numpy() * 255
    cpu = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.25)], seed=1)
    flipped = np.stack([cpu(image=image)["image"] for _ in range(n)])[..., 0]

    def rates(lit: np.ndarray) -> dict[str, float]:
        """Flip rates from where the quadrant went: top-right (h), bottom-left (v), bottom-right (both)."""
        both = (lit[:, 7, 7] > 100).mean()
        return {"h": float((lit[:, 0, 7] > 100).mean() + both), "v": float((lit[:, 7, 0] > 100).mean() + both)}

    ours, theirs = rates(out), rates(flipped)
    for key, p in (("h", 0.5), ("v", 0.25)):
        margin = 4 * (p * (1 - p) / n) ** 0.5
        assert abs(ours[key] - p) < margin and abs(theirs[key] - p) < margin, (key, ours, theirs)

    gray = np.full((8, 8, 3), 100, np.uint8)
    jitter = {"brightness": 0.2, "contrast": 0, "saturation": 0, "hue": 0, "p": 1.0}
    spec = {"Resize": {"height": 8, "width": 8}, "ColorJitter": jitter}
    values = BatchAugment(spec, (0, 0, 0), (1, 1, 1))(
        torch.from_numpy(gray).to(DEVICE).expand(2000, 8, 8, 3).contiguous(), sizes[:2000], *cuda_random(2))
    ours_v = values[:, 0, 0, 0].cpu().numpy() * 255
    cpu_jitter = A.Compose([A.ColorJitter(**jitter)], seed=2)
    theirs_v = np.array([cpu_jitter(image=gray)["image"][0, 0, 0] for _ in range(2000)], np.float32)
    assert ours_v.min() >= 80 - 1e-3 and ours_v.max() <= 120 + 1e-3
    assert abs(ours_v.mean() - theirs_v.mean()) < 1.5 and abs(ours_v.std() - theirs_v.std()) < 1.0, (
        ours_v.mean(), theirs_v.mean(), ours_v.std(), theirs_v.std())


def test_device_normalisation_equals_the_cpu_paths():
    """Constant images of two sizes in one padded batch, through the photo augmentation without its
    colour jitter: every output pixel is the CPU path's normalised value (no padding leaks in)."""
    spec = {key: value for key, value in RGB_TRAIN.items() if key != "ColorJitter"}
    colours = [(10, 128, 240), (255, 0, 77)]
    shapes = [(60, 80), (96, 128)]
    batch = torch.zeros((2, 96, 128, 3), dtype=torch.uint8)
    for i, ((height, width), colour) in enumerate(zip(shapes, colours, strict=True)):
        batch[i, :height, :width] = torch.tensor(colour, dtype=torch.uint8)
    out = BatchAugment(spec, IMAGENET_MEAN, IMAGENET_STD)(batch.to(DEVICE), torch.tensor(shapes).to(DEVICE),
                                                          *cuda_random(3))
    assert out.device.type == DEVICE.type and out.dtype == torch.float32 and out.shape == (2, 3, 64, 64)
    cpu = build_transform(spec)
    for i, ((height, width), colour) in enumerate(zip(shapes, colours, strict=True)):
        expected = cpu(image=np.full((height, width, 3), colour, np.uint8))["image"]
        torch.testing.assert_close(out[i].cpu(), expected, atol=1e-4, rtol=0)
        value = (torch.tensor(colour) / 255.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
        torch.testing.assert_close(out[i].cpu().mean(dim=(1, 2)), value.float(), atol=1e-4, rtol=0)


def photos(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` RGB photos of 96x128 (class tints over stripes and noise), each channel dimmer than the
    one before it, so that a channel-order slip moves the channels' statistics far."""
    gains = np.array([1.0, 0.7, 0.4])
    return np.stack([(cv2.resize(class_image(i % 3, rng, size=64), (128, 96), interpolation=cv2.INTER_LINEAR)
                      * gains).astype(np.uint8) for i in range(n)])


def test_whole_augmentation_matches_the_cpu_paths_statistics():
    """The photo augmentation on 1,024 images, on the GPU and with albumentations: the outputs' per-channel
    mean and standard deviation agree within 0.05 (CPU draws of both differ by at most 0.015; swapping
    two channels moves a mean by 0.58); the same seed gives the same batch again (a resumed run sees
    the same augmentation). Hue jitter is left out here: albumentations' uint8 path quantises hue to
    2 degrees and truncates the shifted value (about 1 degree lower on average), which alone moves
    the green channel's mean by 0.047 at p=1 (0.02 turns), more than the rest of the pipeline."""
    spec = {**RGB_TRAIN, "ColorJitter": {**RGB_TRAIN["ColorJitter"], "hue": 0}}
    images = photos(1024, np.random.default_rng(0))
    batch = torch.from_numpy(images).to(DEVICE)
    sizes = torch.tensor([[96, 128]], device=DEVICE).repeat(len(images), 1)
    augment = BatchAugment(spec, IMAGENET_MEAN, IMAGENET_STD)
    ours = augment(batch, sizes, *cuda_random(4))
    assert torch.equal(ours, augment(batch, sizes, *cuda_random(4)))
    cpu = build_transform(spec)
    cpu.set_random_seed(4)
    theirs = torch.stack([cpu(image=image)["image"] for image in images])
    ours = ours.cpu()
    for stat in (lambda x: x.mean(dim=(0, 2, 3)), lambda x: x.std(dim=(0, 2, 3))):
        torch.testing.assert_close(stat(ours), stat(theirs), atol=0.05, rtol=0)


def test_datamodule_augments_raw_batches_on_the_gpu():
    """The training loader's raw uint8 batch, moved to the GPU as Lightning moves it, becomes a
    normalised float batch there (generators made on the batch's device)."""
    def module(gpu_augment: bool) -> ImageDataModule:
        dm = ImageDataModule(SyntheticSource(num_classes=3, samples_per_class=16, image_size=64), image_size=64,
                             batch_size=16, num_workers=0, val_fraction=0.25, test_fraction=0.0,
                             transforms={"train": RGB_TRAIN, "eval": {"Resize": {"height": 64, "width": 64}}},
                             cache_dir=False, gpu_augment=gpu_augment)
        dm.setup("fit")
        return dm

    device_dm, cpu_dm = module(True), module(False)
    raw = move_data_to_device(next(iter(device_dm.train_dataloader())), DEVICE)
    images, labels = device_dm.on_after_batch_transfer(raw, 0)
    cpu_images, cpu_labels = next(iter(cpu_dm.train_dataloader()))
    assert images.device.type == DEVICE.type and images.dtype == torch.float32 and images.shape == (16, 3, 64, 64)
    assert bool(torch.isfinite(images).all()) and torch.equal(labels.cpu(), cpu_labels)
    assert abs(float(images.mean()) - float(cpu_images.mean())) < 0.5


# ---------------------------------------------------------------------------------------------- non-finite steps


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_nan_step_is_skipped_on_the_device(precision: str):
    """A NaN loss (batch 1) and an inf gradient (batch 2): fused AdamW's found_inf leaves weights,
    moments and step counts as they were, with the guard's GPU setting (no host check per step);
    the steps after them train."""
    L.seed_everything(2, verbose=False)
    model = task(SometimesNaN)
    model.nan_batches, model.inf_grad_batches = {1}, {2}
    guard, probe = NonFiniteLossGuard(max_bad_steps=3), StepProbe()
    fit = L.Trainer(accelerator=ACCELERATOR, devices=1, precision=precision, max_epochs=1, limit_train_batches=4,
                    limit_val_batches=1, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[guard, probe])
    fit.fit(model, datamodule=datamodule())
    optimizer = fit.optimizers[0]
    assert optimizer.defaults["fused"] is True and guard._interval == 50  # skipped on the device
    assert probe.moved == {0: True, 1: False, 2: False, 3: True}
    assert guard.skipped_steps == 2 and fit.callback_metrics["train/skipped_steps"] == 2
    steps = {float(state["step"]) for state in optimizer.state.values()}
    assert steps == {2.0}, steps  # only the two good steps counted
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert math.isnan(probe.losses[1]) and math.isfinite(probe.losses[3])  # training goes on after them


# ---------------------------------------------------------------------------------------------- DDP


DDP_SCRIPT = """
import json, sys
import lightning as L
import torch
from paddy.config import compose_config
from paddy.pipeline import train

class Where(L.Callback):
    \"\"\"The process group and strategy of the first training step.\"\"\"
    seen = {}
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.seen:
            self.seen = {"backend": torch.distributed.get_backend(), "world_size": torch.distributed.get_world_size(),
                         "strategy": type(trainer.strategy).__name__, "wrapper": type(trainer.strategy.model).__name__,
                         "device": pl_module.device.type,
                         "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules())}

where = Where()
metrics = train(compose_config(sys.argv[2:]), extra_callbacks=[where])
with open(sys.argv[1], "w") as handle:
    json.dump({**where.seen, "epochs_run": metrics["epochs_run"], "split_sizes": metrics["split_sizes"],
               "confusion_matrix": metrics["confusion_matrix"]}, handle)
"""


def test_ddp_on_one_gpu_over_nccl(tmp_path: Path):
    """trainer=ddp with one device: a process group over NCCL, the network wrapped in
    DistributedDataParallel with SyncBatchNorm, fp16 (the ddp config's precision), and the test
    split's images each counted once."""
    script, result = tmp_path / "ddp_one_gpu.py", tmp_path / "seen.json"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    args = [*small_run("model=mnv3s_ca", "trainer=ddp"), f"paths.output_dir={tmp_path / 'run'}"]
    # The parent's PYTHONPATH (the GPU check's installed wheels) stays behind the checkout.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "PADDY_CACHE_DIR": str(tmp_path / "cache"), "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, str(script), str(result), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    seen = json.loads(result.read_text())
    assert {k: seen[k] for k in ("backend", "world_size", "strategy", "wrapper", "device", "sync_batchnorm")} == {
        "backend": "nccl", "world_size": 1, "strategy": "DDPStrategy", "wrapper": "DistributedDataParallel",
        "device": DEVICE.type, "sync_batchnorm": True}
    assert seen["epochs_run"] == 1
    assert sum(map(sum, seen["confusion_matrix"]["test"])) == seen["split_sizes"]["test"]
    assert (tmp_path / "run" / "metrics.json").is_file()


# ---------------------------------------------------------------------------------------------- compile


class LossProbe(L.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.losses.append(outputs["loss"].detach())


def test_lite0_ca_compiles_and_trains_on_the_gpu(tmp_path: Path):
    """model.compile=true (Inductor, the default backend) for lite0_ca under bf16 autocast with
    channels_last: one graph, no graph break, no recompile over 4 steps of one shape; the loss is
    finite and the weights train. Training steps only: the eval graph would double the compile time."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    cfg = compose_config(small_run("model=lite0_ca", "model.compile=true", "trainer.precision=bf16-mixed"))
    cfg.paths.output_dir = str(tmp_path)
    dm = build_datamodule(cfg)
    net, _ = build_network(dm, *model_parts(cfg))
    compiled = build_task(cfg, net, list(dm.classes), on_gpu=True)
    assert compiled.channels_last and compiled.model._compiled_call_impl is not None
    probe = LossProbe()
    fit = L.Trainer(accelerator=ACCELERATOR, devices=1, precision="bf16-mixed", max_epochs=1, limit_train_batches=4,
                    limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[probe, *recipe_callbacks(cfg)])
    fit.fit(compiled, datamodule=dm)
    assert len(probe.losses) == 4 and bool(torch.isfinite(torch.stack(probe.losses)).all()), probe.losses
    assert any(not torch.equal(a, p) for a, p in zip(probe.before, compiled.parameters(), strict=True))
    assert dict(counters["graph_break"]) == {}, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
