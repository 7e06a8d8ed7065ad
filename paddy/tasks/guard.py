"""Skip optimizer steps with a non-finite loss or gradients; stop a run that keeps producing them."""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch.optim import Optimizer

from paddy.errors import PaddyError

log = logging.getLogger(__name__)

HINT = "lower optimizer.lr or enable trainer.gradient_clip_val"


class NonFiniteLossError(PaddyError, RuntimeError):
    """Training produced a non-finite loss or gradients for too many optimizer steps in a row.

    The message is one line (epoch, global step, last finite loss and what to try); the values are
    also attributes: :attr:`epoch`, :attr:`step`, :attr:`last_finite_loss` (None when no step had a
    finite loss) and :attr:`bad_steps`. The command exits 3 (diverged), not 2 (bad input).
    """

    exit_code = 3

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
    its gradients is NaN/inf. A bad step is skipped: torch's optimizers leave all parameters and
    their state (moments, step counts, weight decay) as they were; Lightning still counts the step
    (``global_step``) and steps the LR scheduler. Buffers the bad forward pass changed (BatchNorm
    running statistics) are not rolled back. Skipped steps are counted (:attr:`skipped_steps`, kept
    in checkpoints) and logged as ``train/skipped_steps`` (the run's total, at every epoch end) with
    a warning when they happen.

    After ``max_bad_steps`` bad steps in a row it raises :class:`NonFiniteLossError`. It deletes
    nothing and saves nothing: the checkpoints written so far (the best one included) stay.

    Cost, and how the skip is done without reading anything back from the GPU:

    - The checks and the counters live on the device. The host reads them every
      ``check_every_n_steps`` optimizer steps and at each epoch end (one synchronisation then), so a
      diverged run stops at most that many steps after the ``max_bad_steps``-th bad step in a row;
      the error names the step where that happened.
    - With a fused Adam/AdamW (paddy's default where torch has one) the skip itself happens on the
      device: the optimizer's ``found_inf`` flag (the mechanism ``GradScaler`` uses) makes the fused
      kernel leave parameters, moments and step counts untouched. Other optimizers need the
      decision on the host: one boolean read back per optimizer step.
    - ``check_every_n_steps=None`` (the default) is 1 on a CPU (where reading a value costs nothing)
      and 50 on a GPU.

    With fp16 mixed precision, inf/NaN gradients are how the GradScaler calibrates its scale (it
    skips those steps itself): the guard then checks the loss only and leaves the skipping to the
    scaler. Under DDP gradients are averaged before the check, so every rank takes the same decision.

    Args:
        max_bad_steps: consecutive bad optimizer steps tolerated; one more stops the run.
        check_every_n_steps: optimizer steps between host checks (see above).
    """

    def __init__(self, max_bad_steps: int = 5, check_every_n_steps: int | None = None):
        if isinstance(max_bad_steps, bool) or int(max_bad_steps) != max_bad_steps or max_bad_steps < 1:
            raise ValueError(f"NonFiniteLossGuard max_bad_steps={max_bad_steps!r} (expected an integer >= 1)")
        if check_every_n_steps is not None and int(check_every_n_steps) < 1:
            raise ValueError(f"NonFiniteLossGuard check_every_n_steps={check_every_n_steps!r} (expected >= 1 or null)")
        self.max_bad_steps = int(max_bad_steps)
        self.check_every_n_steps = None if check_every_n_steps is None else int(check_every_n_steps)
        self.skipped_steps = 0
        self.consecutive = 0
        self._interval = 1
        self._since_check = 0
        self._bad: torch.Tensor | None = None
        self._last_finite: torch.Tensor | None = None
        # Device-side counters: [bad steps in a row, skipped since the last check, longest bad run
        # since the last check, index of the step where max_bad_steps was first reached (-1: not
        # yet), steps counted]. Built from device values only: nothing crosses to the host per step.
        self._counters: torch.Tensor | None = None

    @staticmethod
    def _scaler_active(trainer: Trainer) -> bool:
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return scaler is not None and scaler.is_enabled()

    @staticmethod
    def _skips_on_device(optimizer: Optimizer) -> bool:
        """Fused Adam/AdamW honour ``optimizer.found_inf`` (skip on the device, state untouched)."""
        return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)) and bool(optimizer.defaults.get("fused"))

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.check_every_n_steps is not None:
            self._interval = self.check_every_n_steps
        else:
            self._interval = 1 if pl_module.device.type == "cpu" else 50

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        flag = ~torch.isfinite(loss.detach()).all()
        self._bad = flag if self._bad is None else self._bad | flag

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Optimizer) -> None:
        bad = self._bad
        self._bad = None
        scaler = self._scaler_active(trainer)
        if not scaler:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                flag = ~torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0))
                bad = flag if bad is None else bad | flag.to(bad.device)
        if bad is None:
            return
        self._count(bad)
        if not scaler:
            if self._skips_on_device(optimizer):
                optimizer.found_inf = bad.to(torch.float32).reshape(())
            elif bool(bad):  # the host decision non-fused optimizers need
                optimizer.zero_grad(set_to_none=True)
        self._since_check += 1
        if self._since_check >= self._interval:
            self._check(trainer, trainer.global_step)

    def _count(self, bad: torch.Tensor) -> None:
        bad = bad.to(torch.float32)
        if self._counters is None or self._counters.device != bad.device:
            self._counters = torch.tensor([float(self.consecutive), 0.0, 0.0, -1.0, 0.0], device=bad.device)
        c = self._counters
        run = (c[0] + 1) * bad
        trip = torch.where((run >= self.max_bad_steps) & (c[3] < 0), c[4], c[3])
        self._counters = torch.stack([run, c[1] + bad, torch.maximum(c[2], run), trip, c[4] + 1])

    def _check(self, trainer: Trainer, last_step: int) -> None:
        """Read the device counters (the one synchronisation); warn about skipped steps; raise when due.

        ``last_step``: the global step of the newest counted optimizer step.
        """
        self._since_check = 0
        if self._counters is None:
            return
        run, skipped, longest, trip, counted = (float(v) for v in self._counters.tolist())
        self._counters[1:3] = 0.0
        self.consecutive = int(run)
        if skipped:
            self.skipped_steps += int(skipped)
            where = f"epoch {trainer.current_epoch}, global step {trainer.global_step}"
            log.warning("non-finite loss or gradients: %d optimizer step(s) skipped (up to %s; %d in a row, "
                        "%d tolerated)", int(skipped), where, int(longest), self.max_bad_steps - 1)
        if trip >= 0:
            # Checks run at least once per epoch, so the step that tripped it is in this epoch.
            step = last_step - int(counted - 1 - trip)
            raise NonFiniteLossError(trainer.current_epoch, step, self.last_finite_loss, self.max_bad_steps)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        for optimizer in trainer.optimizers:  # found_inf applies to one step only
            if hasattr(optimizer, "found_inf") and not self._scaler_active(trainer):
                del optimizer.found_inf
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        loss = loss.detach().reshape(())
        if self._last_finite is None or self._last_finite.device != loss.device:
            self._last_finite = torch.full((), math.nan, device=loss.device, dtype=torch.float32)
        # On the device: keep the newest finite loss without reading it back.
        self._last_finite = torch.where(torch.isfinite(loss), loss.float(), self._last_finite)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check(trainer, trainer.global_step - 1)
        pl_module.log("train/skipped_steps", float(self.skipped_steps), on_step=False, on_epoch=True, sync_dist=True)

    @property
    def last_finite_loss(self) -> float | None:
        """The newest finite training loss (reads it from the device), or None before any."""
        if self._last_finite is None:
            return None
        value = float(self._last_finite)
        return None if math.isnan(value) else value

    def state_dict(self) -> dict[str, Any]:
        pending = int(self._counters[1]) if self._counters is not None else 0
        return {"skipped_steps": self.skipped_steps + pending}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.consecutive = 0
        self._counters = None


__all__ = ["HINT", "NonFiniteLossError", "NonFiniteLossGuard"]
