"""Skip optimizer steps with a non-finite loss or gradients; stop a run that keeps producing them."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch.optim import Optimizer

log = logging.getLogger(__name__)

HINT = "lower optimizer.lr or enable trainer.gradient_clip_val"


class NonFiniteLossError(RuntimeError):
    """Training produced a non-finite loss or gradients for too many optimizer steps in a row.

    The message is one line (epoch, global step, last finite loss and what to try); the values are
    also attributes: :attr:`epoch`, :attr:`step`, :attr:`last_finite_loss` (None when no step had a
    finite loss) and :attr:`bad_steps`.
    """

    def __init__(self, epoch: int, step: int, last_finite_loss: float | None, bad_steps: int):
        self.epoch, self.step, self.last_finite_loss, self.bad_steps = epoch, step, last_finite_loss, bad_steps
        loss = "n/a" if last_finite_loss is None else f"{last_finite_loss:.6g}"
        super().__init__(f"non-finite loss or gradients for {bad_steps} optimizer steps in a row at epoch {epoch}, "
                         f"global step {step} (last finite loss {loss}): {HINT}")

    def __reduce__(self) -> tuple[Any, tuple[int, int, float | None, int]]:
        # Picklable (multiprocessing launchers send exceptions back): rebuild from the values.
        return type(self), (self.epoch, self.step, self.last_finite_loss, self.bad_steps)


class NonFiniteLossGuard(Callback):
    """Skips every optimizer step whose loss or gradients are not finite; raises after too many in a row.

    Before each optimizer step (``on_before_optimizer_step``, after backward and before gradient
    clipping), a step is bad when a loss of its (accumulated) backward passes or the total norm of
    its gradients is NaN/inf. A bad step is skipped: every gradient of the optimizer is set to None,
    so torch's optimizers leave all parameters and their state (moments, weight decay) as they
    were; Lightning still counts the step (``global_step``) and steps the LR scheduler. Buffers the
    bad forward pass changed (BatchNorm running statistics) are not rolled back. Skipped steps are
    counted (:attr:`skipped_steps`, kept in checkpoints) and logged as ``train/skipped_steps`` (the
    run's total, at every epoch end) with a warning per skipped step.

    After ``max_bad_steps`` bad steps in a row it raises :class:`NonFiniteLossError`. It deletes
    nothing and saves nothing: the checkpoints written so far (the best one included) stay.

    Cost: the checks run on the device without synchronising; deciding whether to skip reads one
    boolean back to the host, the only host synchronisation the guard adds per optimizer step. The
    last finite loss stays on the device and is read only when raising.

    With fp16 mixed precision, inf/NaN gradients are how the GradScaler calibrates its scale (it
    skips those steps itself): the guard then checks the loss only. Under DDP gradients are
    averaged before the check, so every rank takes the same decision.

    Args:
        max_bad_steps: consecutive bad optimizer steps tolerated; one more stops the run.
    """

    def __init__(self, max_bad_steps: int = 5):
        if isinstance(max_bad_steps, bool) or int(max_bad_steps) != max_bad_steps or max_bad_steps < 1:
            raise ValueError(f"NonFiniteLossGuard max_bad_steps={max_bad_steps!r} (expected an integer >= 1)")
        self.max_bad_steps = int(max_bad_steps)
        self.skipped_steps = 0
        self.consecutive = 0
        self._bad: torch.Tensor | None = None
        self._last_finite: torch.Tensor | None = None

    @staticmethod
    def _scaler_active(trainer: Trainer) -> bool:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return scaler is not None and scaler.is_enabled()

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        flag = ~torch.isfinite(loss.detach()).all()
        self._bad = flag if self._bad is None else self._bad | flag

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        bad = self._bad
        self._bad = None
        if not self._scaler_active(trainer):
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                flag = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
                bad = flag if bad is None else bad | flag.to(bad.device)
        if bad is None or not bool(bad):  # the one host synchronisation per step
            self.consecutive = 0
            return
        optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        self.consecutive += 1
        epoch, step = trainer.current_epoch, trainer.global_step
        if self.consecutive >= self.max_bad_steps:
            raise NonFiniteLossError(epoch, step, self.last_finite_loss, self.consecutive)
        log.warning("non-finite loss or gradients at epoch %d, global step %d: optimizer step skipped (%d in a row, "
                    "%d tolerated)", epoch, step, self.consecutive, self.max_bad_steps - 1)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        loss = loss.detach().reshape(())
        if self._last_finite is None or self._last_finite.device != loss.device:
            self._last_finite = torch.full((), math.nan, device=loss.device, dtype=torch.float32)
        # On the device: keep the newest finite loss without reading it back.
        self._last_finite = torch.where(torch.isfinite(loss), loss.float(), self._last_finite)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=False, on_epoch=True)

    @property
    def last_finite_loss(self) -> float | None:
        """The newest finite training loss (reads it from the device), or None before any."""
        if self._last_finite is None:
            return None
        value = float(self._last_finite)
        return None if math.isnan(value) else value

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = 0


__all__ = ["HINT", "NonFiniteLossError", "NonFiniteLossGuard"]
