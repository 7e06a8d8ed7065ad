"""An exponential moving average (EMA) of the model weights, used for validation and checkpointed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

log = logging.getLogger(__name__)


def ema_module(pl_module: nn.Module) -> tuple[nn.Module, str]:
    """The module whose weights are averaged and its state-dict prefix in the LightningModule:
    ``pl_module.model`` (``"model."``) for :class:`~paddy.tasks.ClassificationTask`, else ``pl_module``."""
    model = getattr(pl_module, "model", None)
    if isinstance(model, nn.Module):
        return model, "model."
    return pl_module, ""


class EMAWeights(Callback):
    """Keeps ``ema = decay * ema + (1 - decay) * weights`` of the model after every optimizer step.

    The average covers the ``state_dict()`` of ``pl_module.model`` (parameters and buffers, such as
    BatchNorm running statistics; integer buffers like ``num_batches_tracked`` are copied) and lives
    on the model's device, in the weights' dtype. It starts from the weights at the start of fitting.

    With ``validate=True``, validation and test run with the EMA weights swapped into the model, and
    the model's own weights are swapped back after (also when validation fails), so training always
    continues from the raw weights. Metrics such as ``val/acc`` (and so the best checkpoint) are
    then those of the EMA weights.

    What is checkpointed: the checkpoint's ``state_dict`` holds the raw (trained) weights, so a
    resumed run continues the optimisation exactly; this callback's state,
    ``checkpoint["callbacks"]["EMAWeights"]``, holds ``decay``, ``updates`` (optimizer steps
    averaged) and ``ema``: the averaged ``state_dict`` of ``pl_module.model`` (on the CPU). Resuming
    (``ckpt_path=``) or testing a checkpoint restores it; :func:`ema_state_dict` reads it from a file
    to load into a bare model.

    Args:
        decay: weight of the running average per optimizer step, in (0, 1); the average spans about
            ``1 / (1 - decay)`` steps.
        validate: run validation and test with the EMA weights.
    """

    def __init__(self, decay: float = 0.999, validate: bool = True):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"EMAWeights decay={decay!r} (expected 0 < decay < 1, e.g. 0.999)")
        self.decay = float(decay)
        self.validate = bool(validate)
        self.ema: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._update_fn = get_ema_multi_avg_fn(self.decay)
        self._float_keys: list[str] = []
        self._other_keys: list[str] = []
        self._last_step: int | None = None
        self._backup: dict[str, torch.Tensor] | None = None
        self._decay_logged = False
        self._warned_missing = False

    # ------------------------------------------------------------------ the average

    def _prepare(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """Start the average from the weights (first fit), or move a loaded one next to the weights."""
        model, _ = ema_module(pl_module)
        live = model.state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in live.items()}
        else:
            missing, unexpected = sorted(set(live) - set(self.ema)), sorted(set(self.ema) - set(live))
            if missing or unexpected:
                raise RuntimeError(f"the EMA weights in the checkpoint do not fit the model: missing "
                                   f"{missing[:3] or 'none'}, unexpected {unexpected[:3] or 'none'}")
            self.ema = {k: self.ema[k].to(device=v.device, dtype=v.dtype) for k, v in live.items()}
        self._float_keys = [k for k, v in live.items() if v.is_floating_point()]
        self._other_keys = [k for k, v in live.items() if not v.is_floating_point()]
        return live

    @torch.no_grad()
    def update(self, pl_module: LightningModule) -> None:
        """One averaging step with the module's current weights (one fused ``lerp`` on the device)."""
        if self.ema is None:
            self._prepare(pl_module)
        assert self.ema is not None
        live = ema_module(pl_module)[0].state_dict()
        if self._float_keys:
            self._update_fn([self.ema[k] for k in self._float_keys], [live[k] for k in self._float_keys], None)
        for k in self._other_keys:
            self.ema[k].copy_(live[k])
        self.updates += 1

    @torch.no_grad()
    def _swap_in(self, pl_module: LightningModule) -> None:
        if not self.validate or self._backup is not None:
            return
        if self.ema is None:
            if not self._warned_missing:
                log.warning("EMAWeights: no EMA weights yet (not fitted, no checkpoint state): evaluating the "
                            "model's own weights")
                self._warned_missing = True
            return
        live = ema_module(pl_module)[0].state_dict()
        if any(self.ema[k].device != v.device or self.ema[k].dtype != v.dtype for k, v in live.items()):
            live = self._prepare(pl_module)
        assert self.ema is not None
        self._backup = {k: v.clone() for k, v in live.items()}
        for k, v in live.items():
            v.copy_(self.ema[k])

    @torch.no_grad()
    def _swap_out(self, pl_module: LightningModule) -> None:
        if self._backup is None:
            return
        live = ema_module(pl_module)[0].state_dict()
        for k, v in live.items():
            v.copy_(self._backup[k])
        self._backup = None

    # ------------------------------------------------------------------ Lightning hooks

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._prepare(pl_module)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the checkpoint's loop state is restored: global_step is that of the resumed run.
        self._last_step = trainer.global_step
        if not self._decay_logged:
            for logger in trainer.loggers:
                logger.log_metrics({"ema/decay": self.decay}, step=trainer.global_step)
            self._decay_logged = True

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step counts optimizer steps: with gradient accumulation, average once per step.
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.update(pl_module)

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out(pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_in(pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._swap_out(pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._swap_out(pl_module)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint written while the EMA weights are swapped in must still hold the raw weights.
        if self._backup is not None and "state_dict" in checkpoint:
            prefix = ema_module(pl_module)[1]
            for k, v in self._backup.items():
                checkpoint["state_dict"][prefix + k] = v.detach().clone()

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema is None else {k: v.detach().to("cpu", copy=True) for k, v in self.ema.items()}
        return {"decay": self.decay, "updates": self.updates, "ema": ema}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict.get("ema")
        self.ema = None if ema is None else dict(ema)
        self.updates = int(state_dict.get("updates", 0))
        saved = state_dict.get("decay")
        if saved is not None and float(saved) != self.decay:
            log.info("EMAWeights: the checkpoint's average used decay=%s; continuing with decay=%s", saved, self.decay)


def ema_state_dict(checkpoint: str | Path | dict[str, Any]) -> dict[str, torch.Tensor]:
    """The EMA weights saved by :class:`EMAWeights` in a Lightning checkpoint (a path or a loaded dict),
    as a ``state_dict`` for the bare model (``ImageClassifier.load_state_dict``)."""
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("EMAWeights") and isinstance(state, dict) and state.get("ema") is not None:
            return dict(state["ema"])
    raise KeyError("the checkpoint holds no EMA weights (it was not trained with paddy.tasks.ema.EMAWeights)")


__all__ = ["EMAWeights", "ema_module", "ema_state_dict"]
