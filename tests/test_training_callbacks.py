"""Real tiny fits with the training callbacks: FreezeSchedule, EMAWeights, NonFiniteLossGuard."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import timm
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from paddy.data import ImageDataModule, SyntheticSource
from paddy.models.factory import build_model
from paddy.tasks.classification import ClassificationTask
from paddy.tasks.ema import EMAWeights, ema_state_dict
from paddy.tasks.freeze import FreezeSchedule, backbone_stages
from paddy.tasks.guard import NonFiniteLossError, NonFiniteLossGuard

SIZE = 32
RESIZE = {"Resize": {"height": SIZE, "width": SIZE}}


def datamodule() -> ImageDataModule:
    """3 classes x 16 images at 32 px: 36 training images (4 full batches of 8), 12 validation images."""
    dm = ImageDataModule(SyntheticSource(num_classes=3, samples_per_class=16, image_size=SIZE), image_size=SIZE,
                         batch_size=8, num_workers=0, val_fraction=0.25, test_fraction=0.0,
                         transforms={"train": RESIZE, "eval": RESIZE}, cache_dir=False)
    dm.setup("fit")
    return dm


def task(cls: type[ClassificationTask] = ClassificationTask, scheduler: str = "none", lr: float = 3e-3,
         **kwargs: Any) -> ClassificationTask:
    net = build_model(3, {"name": "test_resnet"})
    return cls(net, 3, optimizer={"name": "adamw", "lr": lr, "weight_decay": 0.01}, scheduler={"name": scheduler},
               **kwargs)


def trainer(callbacks: list, max_epochs: int = 1, batches: int = 2, checkpoint_dir: Path | None = None) -> L.Trainer:
    if checkpoint_dir is not None:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=checkpoint_dir, save_last=True)]
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=batches,
                     limit_val_batches=1, num_sanity_val_steps=0, logger=False,
                     enable_checkpointing=checkpoint_dir is not None, enable_progress_bar=False,
                     enable_model_summary=False, callbacks=callbacks)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: nn.Module, prefix: str = "") -> bool:
    now = module.state_dict()
    return any(not torch.equal(v, now[k]) for k, v in before.items() if k.startswith(prefix))


# ---------------------------------------------------------------------- FreezeSchedule


def test_backbone_stages_of_known_layouts_and_a_clear_error_otherwise():
    resnet = timm.create_model("test_resnet", num_classes=0)
    assert backbone_stages(resnet) == [resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]
    effnet = timm.create_model("test_efficientnet", num_classes=0)
    stages = backbone_stages(effnet)
    assert len(stages) == len(effnet.blocks) and stages[0] is effnet.blocks[0]
    assert list(stages[-1]) == [effnet.blocks[-1], effnet.conv_head, effnet.bn2]  # the final conv belongs to it
    with pytest.raises(ValueError, match="cannot find the stages of backbone Sequential"):
        backbone_stages(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="unfreeze_all_epoch=0 comes before unfreeze_epoch=1"):
        FreezeSchedule(unfreeze_epoch=1, unfreeze_all_epoch=0)


class FreezeProbe(L.Callback):
    """Per epoch: which parts are trainable, which BatchNorms train, and which weights changed."""

    def __init__(self) -> None:
        self.epochs: dict[int, dict[str, Any]] = {}
        self._before: dict[str, torch.Tensor] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._before = snapshot(pl_module.model)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        backbone = pl_module.model.backbone
        self.epochs[trainer.current_epoch] = {
            "stem_grad": backbone.conv1[0].weight.requires_grad,
            "layer1_grad": all(p.requires_grad for p in backbone.layer1.parameters()),
            "layer4_grad": all(p.requires_grad for p in backbone.layer4.parameters()),
            "head_grad": all(p.requires_grad for p in pl_module.model.head.parameters()),
            "bn1_train": backbone.bn1.training, "layer1_bn_train": backbone.layer1[0].bn1.training,
            "layer4_bn_train": backbone.layer4[0].bn1.training,
            "lr": {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups},
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        self.epochs[trainer.current_epoch].update({
            part: changed(self._before, model, prefix)
            for part, prefix in (("stem", "backbone.conv1."), ("layer1", "backbone.layer1."),
                                 ("layer4", "backbone.layer4."), ("backbone", "backbone."), ("head", "head."))})


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_freeze_schedule_unfreezes_at_the_right_epochs_and_survives_resume(tmp_path: Path):
    L.seed_everything(0, verbose=False)
    dm, probe = datamodule(), FreezeProbe()
    freeze = FreezeSchedule(unfreeze_epoch=1, unfreeze_all_epoch=2, last_stages=1)
    model = task(scheduler="cosine")
    trainer([freeze, probe], max_epochs=3, checkpoint_dir=tmp_path / "ckpt").fit(model, datamodule=dm)
    e0, e1, e2 = probe.epochs[0], probe.epochs[1], probe.epochs[2]
    # Epoch 0: the whole backbone frozen (BatchNorm in eval, weights and running stats unchanged), head trains.
    assert not (e0["stem_grad"] or e0["layer1_grad"] or e0["layer4_grad"]) and e0["head_grad"]
    assert not (e0["bn1_train"] or e0["layer1_bn_train"] or e0["layer4_bn_train"])
    assert not e0["backbone"] and e0["head"]
    # Epoch 1: the last stage trains (BatchNorm in train mode), the rest stays frozen.
    assert e1["layer4_grad"] and e1["layer4_bn_train"] and e1["layer4"]
    assert not (e1["stem_grad"] or e1["layer1_grad"] or e1["bn1_train"] or e1["layer1_bn_train"])
    assert not (e1["stem"] or e1["layer1"]) and e1["head"]
    # Epoch 2: everything trains, at the backbone group's (scheduled, non-zero) learning rate.
    assert e2["stem_grad"] and e2["layer1_grad"] and e2["bn1_train"] and e2["layer1_bn_train"]
    assert e2["stem"] and e2["layer1"] and e2["head"]
    assert 0 < e2["lr"]["backbone"] < e0["lr"]["backbone"]  # the cosine schedule drives the unfrozen params
    assert freeze.fired == {"unfreeze": 1, "unfreeze_all": 2}

    # Resume from the end of epoch 1 with a schedule that never unfreezes everything: the saved level
    # (last stage trainable) comes back, nothing is re-frozen, the stem stays frozen.
    first = tmp_path / "first"
    L.seed_everything(0, verbose=False)
    trainer([FreezeSchedule(unfreeze_epoch=1, last_stages=1)], max_epochs=2, checkpoint_dir=first).fit(
        task(), datamodule=dm)
    resumed, probe = FreezeSchedule(unfreeze_epoch=1, last_stages=1), FreezeProbe()
    trainer([resumed, probe], max_epochs=3).fit(task(), datamodule=dm, ckpt_path=first / "last.ckpt")
    assert list(probe.epochs) == [2] and resumed.fired == {"unfreeze": 1, "unfreeze_all": None}
    e2 = probe.epochs[2]
    assert e2["layer4_grad"] and e2["layer4_bn_train"] and e2["layer4"]
    assert not (e2["stem_grad"] or e2["layer1_grad"] or e2["layer1_bn_train"] or e2["stem"] or e2["layer1"])


# ---------------------------------------------------------------------- EMAWeights


def fit_for_ema(callbacks: list, checkpoint_dir: Path | None = None) -> tuple[ClassificationTask, dict[str, float]]:
    L.seed_everything(1, verbose=False)
    model, dm = task(), datamodule()
    fit = trainer(callbacks, max_epochs=2, batches=3, checkpoint_dir=checkpoint_dir)
    fit.fit(model, datamodule=dm)
    return model, {k: float(v) for k, v in fit.callback_metrics.items()}


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
def test_ema_weights_are_validated_restored_and_checkpointed(tmp_path: Path):
    plain, plain_metrics = fit_for_ema([])
    ema = EMAWeights(decay=0.9)
    model, ema_metrics = fit_for_ema([ema], checkpoint_dir=tmp_path)
    # Training is untouched: after validating with the EMA weights the model got its own weights back.
    plain_state = plain.model.state_dict()
    assert all(torch.equal(v, plain_state[k]) for k, v in model.model.state_dict().items())
    # ... but validation saw other weights.
    assert ema.updates == 6
    assert ema_metrics["val/loss"] != pytest.approx(plain_metrics["val/loss"], rel=1e-4)
    weights = model.model.state_dict()
    assert any(not torch.equal(ema.ema[k], weights[k]) for k in weights)

    # The checkpoint holds the raw weights and, in the callback state, the EMA weights...
    checkpoint = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert torch.equal(checkpoint["state_dict"]["model.head.mlp.1.weight"], weights["head.mlp.1.weight"])
    saved = ema_state_dict(checkpoint)
    assert saved.keys() == weights.keys() and all(torch.equal(saved[k], ema.ema[k]) for k in saved)
    # ... which a fresh callback restores: validating the checkpoint reproduces the EMA metrics.
    restored = EMAWeights(decay=0.9)
    results = trainer([restored]).validate(task(), datamodule=datamodule(), ckpt_path=tmp_path / "last.ckpt",
                                           verbose=False)
    assert restored.updates == 6 and all(torch.equal(restored.ema[k], saved[k]) for k in saved)
    assert results[0]["val/loss"] == pytest.approx(ema_metrics["val/loss"], rel=1e-5)


# ---------------------------------------------------------------------- NonFiniteLossGuard


class SometimesNaN(ClassificationTask):
    """Returns a NaN loss on the batches in ``nan_batches`` and puts an inf in one gradient on
    ``inf_grad_batches`` (the loss stays finite there)."""

    nan_batches: set[int] = set()
    inf_grad_batches: set[int] = set()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx in self.nan_batches else loss

    def on_after_backward(self) -> None:
        if self.trainer.fit_loop.epoch_loop.batch_idx in self.inf_grad_batches:
            self.model.head.mlp[-1].weight.grad[0, 0] = float("inf")


class StepProbe(L.Callback):
    """Which batches changed the parameters, and the training loss of each batch."""

    def __init__(self) -> None:
        self.moved: dict[int, bool] = {}
        self.losses: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        self._before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           i: int) -> None:
        self.moved[i] = any(not torch.equal(a, p) for a, p in zip(self._before, pl_module.parameters(), strict=True))
        self.losses[i] = float(outputs["loss"])


def test_guard_skips_non_finite_steps_and_stops_a_diverged_run(tmp_path: Path):
    L.seed_everything(2, verbose=False)
    model = task(SometimesNaN)
    model.nan_batches, model.inf_grad_batches = {1}, {2}
    guard, probe = NonFiniteLossGuard(max_bad_steps=3), StepProbe()
    fit = trainer([guard, probe], batches=4)
    fit.fit(model, datamodule=datamodule())
    assert probe.moved == {0: True, 1: False, 2: False, 3: True}
    assert guard.skipped_steps == 2 and fit.callback_metrics["train/skipped_steps"] == 2
    assert guard.last_finite_loss == pytest.approx(probe.losses[3])

    # NaN from batch 1 on: three bad steps in a row stop the run with one clear line.
    L.seed_everything(2, verbose=False)
    model = task(SometimesNaN)
    model.nan_batches = {1, 2, 3}
    guard, probe = NonFiniteLossGuard(max_bad_steps=3), StepProbe()
    with pytest.raises(NonFiniteLossError) as caught:
        trainer([guard, probe], batches=4).fit(model, datamodule=datamodule())
    err = caught.value
    assert (err.epoch, err.step, err.bad_steps) == (0, 3, 3)
    assert err.last_finite_loss == pytest.approx(probe.losses[0])
    message = str(err)
    assert "\n" not in message and "epoch 0" in message and "global step 3" in message
    assert f"last finite loss {probe.losses[0]:.6g}" in message and "lower optimizer.lr" in message
    assert probe.moved == {0: True, 1: False, 2: False}  # the raising step (batch 3) never reached its end
    assert str(pickle.loads(pickle.dumps(err))) == message  # multirun launchers send it between processes
