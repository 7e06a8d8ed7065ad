"""No framework tax: the training step reads nothing back to the host, and the guard still works.

On a GPU every read of a tensor's value (``.item()``, ``bool(t)``, ``float(t)``, ``.tolist()``,
``.cpu()``, ``.numpy()``) waits for all queued GPU work, so one per step leaves the GPU idle while the
host catches up. On the CPU there is no queue to wait for, but the same calls are made, so counting
them on a CPU run of the real training path (Trainer + paddy's callbacks + loggers) catches them.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY
from test_training_callbacks import SometimesNaN, StepProbe, datamodule, task, trainer

from paddy.config import compose_config
from paddy.pipeline import train
from paddy.tasks.guard import NonFiniteLossError, NonFiniteLossGuard
from paddy.tasks.optim import create_optimizer

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy")


class HostReadCounter(L.Callback):
    """Counts host reads of tensor values from the first training batch of an epoch until that
    epoch's validation or end: the step, the optimizer, logging, progress bar and callbacks."""

    def __init__(self) -> None:
        self.reads: list[str] = []
        self.batches = 0
        self._active = False
        self._saved: dict[str, Any] = {}

    def _patch(self) -> None:
        for name in READS:
            original = getattr(torch.Tensor, name)
            self._saved[name] = original

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                if self._active:
                    frame = traceback.extract_stack(limit=3)[0]
                    # The DataLoader draws its iterators' seeds from a CPU generator: never a device read.
                    if "torch/utils/data/" not in frame.filename:
                        self.reads.append(f"{_name} at {frame.filename}:{frame.lineno}")
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)

    def _unpatch(self) -> None:
        for name, original in self._saved.items():
            setattr(torch.Tensor, name, original)
        self._saved = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._patch()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = False
        self._unpatch()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._active = False
        self._unpatch()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        self.batches += 1
        self._active = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._active = False


def test_training_steps_read_nothing_back(tmp_path: Path):
    """The real path (paddy's configured callbacks, TensorBoard and CSV-free logging, progress bar,
    guard in its GPU setting) over 8 steps of an epoch: zero host reads between the steps."""
    overrides = [o for o in TINY if "rich_progress_bar" not in o and "log_every_n_steps" not in o]
    cfg = compose_config([*overrides, "data=synthetic", "data.train_limit=64", "trainer.max_epochs=1",
                          "trainer.log_every_n_steps=50", "trainer_guard.check_every_n_steps=50", "test=false"])
    cfg.paths.output_dir = str(tmp_path / "run")
    counter = HostReadCounter()
    metrics = train(cfg, extra_callbacks=[counter])
    assert metrics["epochs_run"] == 1 and counter.batches >= 8
    assert counter.reads == [], "\n".join(counter.reads[:20])


def test_fused_adamw_is_the_default_and_skips_on_the_device():
    model = torch.nn.Linear(3, 2)
    optimizer = create_optimizer(model, "adamw", lr=0.1, weight_decay=0.01)
    assert optimizer.defaults["fused"] is True
    assert create_optimizer(model, "adamw", lr=0.1, fused=False).defaults.get("fused") in (None, False)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    optimizer.found_inf = torch.ones(())
    optimizer.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(float(state["step"]) == 0 for state in optimizer.state.values())


@pytest.mark.parametrize("fused", [True, False])
def test_guard_with_deferred_checks_skips_and_stops_at_the_right_step(fused: bool, monkeypatch: pytest.MonkeyPatch):
    """check_every_n_steps=50 (the GPU setting): bad steps are still skipped at once (on the device
    for fused AdamW, by a host decision otherwise); counting and stopping happen at the next check."""
    if not fused:
        import paddy.tasks.optim as optim

        monkeypatch.setattr(optim, "fused_available", lambda *args: False)
    L.seed_everything(2, verbose=False)
    model = task(SometimesNaN)
    model.nan_batches, model.inf_grad_batches = {1}, {2}
    guard, probe = NonFiniteLossGuard(max_bad_steps=3, check_every_n_steps=50), StepProbe()
    fit = trainer([guard, probe], batches=4)
    fit.fit(model, datamodule=datamodule())
    assert probe.moved == {0: True, 1: False, 2: False, 3: True}
    assert guard.skipped_steps == 2 and fit.callback_metrics["train/skipped_steps"] == 2

    L.seed_everything(2, verbose=False)
    model = task(SometimesNaN)
    model.nan_batches = {1, 2, 3}
    guard, probe = NonFiniteLossGuard(max_bad_steps=3, check_every_n_steps=50), StepProbe()
    with pytest.raises(NonFiniteLossError) as caught:
        trainer([guard, probe], batches=4).fit(model, datamodule=datamodule())
    # Raised at the epoch-end check, naming the step where the third bad step in a row happened.
    assert (caught.value.epoch, caught.value.step, caught.value.bad_steps) == (0, 3, 3)
    assert caught.value.last_finite_loss == pytest.approx(probe.losses[0])
    assert probe.moved == {0: True, 1: False, 2: False, 3: False}


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_gradients_of_fused_optimizers_are_clipped(precision: str):
    """Lightning refuses to clip for fused optimizers under mixed precision; paddy clips them itself."""

    class GradNorm(L.Callback):
        norms: list[float] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            self.norms.append(float(torch.nn.utils.get_total_norm(grads)))

    L.seed_everything(0, verbose=False)
    probe = GradNorm()
    fit = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=2, limit_val_batches=0,
                    precision=precision, gradient_clip_val=1e-3, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[probe])
    model = task()
    fit.fit(model, datamodule=datamodule())
    assert fit.optimizers[0].defaults["fused"] is True
    assert len(probe.norms) == 2 and all(n <= 1e-3 * 1.01 for n in probe.norms), probe.norms
