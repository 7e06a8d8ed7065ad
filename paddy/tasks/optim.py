"""Optimizers with backbone/head learning rates, and per-step learning-rate schedules.

Parameter groups: the backbone trains at ``lr``, the new parts (attention + head) at ``head_lr``;
norm-layer weights and biases get no weight decay (decay on them only hurts, see e.g. the
"bag of tricks" of He et al., 2019).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from paddy.errors import PaddyError
from paddy.settings import non_negative_float, positive_float


def _split_decay(parameters: Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    decay, no_decay = [], []
    for param in parameters:
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 else decay).append(param)
    return decay, no_decay


def parameter_groups(model: nn.Module, lr: float, head_lr: float | None, weight_decay: float) -> list[dict]:
    """Groups ``backbone``/``backbone_no_decay``/``head``/``head_no_decay`` for a model with
    ``backbone_parameters()`` and ``head_parameters()``; any other module is one group at ``lr``.

    1-D parameters (biases, norm scales) are the no-decay ones.
    """
    head_lr = lr if head_lr is None else head_lr
    if hasattr(model, "backbone_parameters") and hasattr(model, "head_parameters"):
        parts = [("backbone", model.backbone_parameters(), lr), ("head", model.head_parameters(), head_lr)]
    else:
        parts = [("all", list(model.parameters()), lr)]
    groups = []
    for name, params, group_lr in parts:
        decay, no_decay = _split_decay(params)
        if decay:
            groups.append({"name": name, "params": decay, "lr": group_lr, "weight_decay": weight_decay})
        if no_decay:
            groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": group_lr, "weight_decay": 0.0})
    return groups


def fused_available(optimizer_class: type[torch.optim.Optimizer], params: Iterable[nn.Parameter]) -> bool:
    """Whether torch has a fused (one kernel for all parameters) implementation of ``optimizer_class``
    for these parameters: Adam, AdamW and SGD on CUDA or CPU floating-point tensors."""
    if optimizer_class not in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
        return False
    params = list(params)
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def optimizer_class(target: str | None, name: str = "adamw") -> type[torch.optim.Optimizer]:
    """The optimizer class ``_target_`` names (``torch.optim.AdamW``, or a class of your own among the
    trusted targets); without one (a config saved by an older paddy), that of ``conf/optimizer/<name>``."""
    from paddy.config import shipped_target, trusted_callable

    return trusted_callable(target or shipped_target("optimizer", name), f"optimizer {name!r}")


def create_optimizer(model: nn.Module, name: str = "adamw", lr: float = 1e-3, head_lr: float | None = None,
                     weight_decay: float = 0.0, fused: bool | None = None, _target_: str | None = None,
                     **kwargs) -> torch.optim.Optimizer:
    """The optimizer class ``_target_`` (see :func:`optimizer_class`) over paddy's parameter groups;
    ``kwargs`` go to it (betas, momentum, ...).

    ``fused``: torch's fused implementation (one kernel per step instead of a few per parameter);
    ``None`` (default): fused whenever torch has one for these parameters.
    """
    optimizer = optimizer_class(_target_, name)
    lr = positive_float("optimizer.lr", lr)
    head_lr = None if head_lr is None else positive_float("optimizer.head_lr", head_lr)
    weight_decay = non_negative_float("optimizer.weight_decay", weight_decay)
    groups = parameter_groups(model, lr, head_lr, weight_decay)
    if fused is None:
        fused = fused_available(optimizer, (p for group in groups for p in group["params"]))
    if fused:
        kwargs["fused"] = True
    try:
        return optimizer(groups, lr=lr, **kwargs)
    except TypeError as err:  # an option the class does not take
        raise PaddyError(f"optimizer {name!r} ({optimizer.__module__}.{optimizer.__qualname__}): {err}") from err


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step``: linear warmup, then cosine to ``min_lr_ratio``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0, warmup_fraction: float = 0.0,
           min_lr_ratio: float = 0.01, t_max_epochs: int | None = None, steps_per_epoch: int | None = None) -> dict:
    """Linear warmup (``warmup_steps`` or ``warmup_fraction`` of the run), then cosine decay to
    ``min_lr_ratio * lr``, stepped every optimizer step, over the whole run (``total_steps``) or
    ``t_max_epochs`` epochs."""
    if t_max_epochs is not None:
        if not steps_per_epoch:
            raise ValueError("scheduler.t_max_epochs needs the number of steps per epoch")
        total_steps = int(t_max_epochs) * int(steps_per_epoch)
    if total_steps < 1:
        raise ValueError(f"a cosine schedule needs a known run length, got {total_steps} steps")
    warmup = warmup_steps or int(round(warmup_fraction * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: cosine_with_warmup(step, total_steps, warmup, min_lr_ratio))
    return {"scheduler": scheduler, "interval": "step", "frequency": 1}


def step(optimizer: torch.optim.Optimizer, step_size: int = 10, gamma: float = 0.1) -> dict:
    """StepLR: ``lr *= gamma`` every ``step_size`` epochs."""
    if step_size < 1 or not 0 < gamma <= 1:
        raise ValueError(f"scheduler=step needs step_size >= 1 and 0 < gamma <= 1, got {step_size}, {gamma}")
    return {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma),
            "interval": "epoch", "frequency": 1}


def plateau(optimizer: torch.optim.Optimizer, monitor: str = "val/loss", mode: str = "min", factor: float = 0.1,
            patience: int = 3) -> dict:
    """ReduceLROnPlateau on ``monitor``: ``lr *= factor`` after ``patience`` epochs without improvement."""
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience)
    return {"scheduler": scheduler, "interval": "epoch", "frequency": 1, "monitor": monitor}


def create_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, name: str = "cosine",
                     _target_: str | None = None, steps_per_epoch: int | None = None, **options: Any) -> dict | None:
    """A Lightning ``lr_scheduler`` dict from the function ``_target_`` names (:func:`cosine`,
    :func:`step`, :func:`plateau`, or one of your own among the trusted targets: it takes the optimizer
    and its options, and may take ``total_steps`` and ``steps_per_epoch``), or None for ``none``
    (``_target_: null``). Without ``_target_`` (a config saved by an older paddy): ``conf/scheduler/<name>``."""
    from paddy.config import shipped_target, trusted_callable

    if name == "none" and _target_ is None:
        return None
    factory = trusted_callable(_target_ or shipped_target("scheduler", name), f"scheduler {name!r}")
    accepted = inspect.signature(factory).parameters
    run = {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch}
    try:
        return factory(optimizer, **{k: v for k, v in run.items() if k in accepted}, **options)
    except TypeError as err:  # an option the schedule does not take
        raise PaddyError(f"scheduler {name!r} ({factory.__module__}.{factory.__qualname__}): {err}") from err
