"""The files a run leaves in its directory: metrics.json (history.json comes from RunHistory)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn


def model_size(model: nn.Module) -> tuple[int, float]:
    """(number of parameters, size in MB of parameters + buffers as stored)."""
    from paddy.models.factory import count_parameters

    params = count_parameters(model)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return params, size / 1024**2


def best_epoch_summary(history: dict[str, Any], monitor_key: str = "valid_acc", mode: str = "max") -> dict[str, Any]:
    """The epoch where ``monitor_key`` was best, and the train/valid values of that epoch.

    Of epochs with equal values the first wins, as in Lightning's ModelCheckpoint (it replaces its
    best only on a strict improvement), so this names the epoch of the best checkpoint.
    """
    values = history.get(monitor_key) or []
    scored = [(v, i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not scored:
        return {}
    pick = max if mode == "max" else min
    _, i = pick(scored, key=lambda pair: pair[0])  # the first of equal values
    summary = {"best_epoch": history["epoch"][i]}
    for key in ("valid_acc", "valid_loss", "valid_f1", "train_acc", "train_loss", "train_f1"):
        if history.get(key):
            summary[key] = history[key][i]
    return summary


def to_float(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=to_float))


def measure_throughput(model: nn.Module, loader, device: torch.device | str, max_batches: int = 20,
                       warmup_batches: int = 2) -> float | None:
    """Inference images/s of ``model`` on batches of ``loader`` (model time only: batches are moved
    to ``device`` first; a few warm-up batches are not timed). None when the loader is empty."""
    import time

    batches = []
    for i, (inputs, _) in enumerate(loader):
        if i >= max_batches + warmup_batches:
            break
        if isinstance(inputs, dict):
            inputs = {k: v.to(device) for k, v in inputs.items()}
        else:
            inputs = inputs.to(device)
        batches.append(inputs)
    if not batches:
        return None
    was_training = model.training
    model.eval()
    timed = batches[warmup_batches:] or batches
    try:
        with torch.inference_mode():
            for inputs in batches[: len(batches) - len(timed)]:
                model(**inputs) if isinstance(inputs, dict) else model(inputs)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
            count = 0
            for inputs in timed:
                model(**inputs) if isinstance(inputs, dict) else model(inputs)
                count += len(next(iter(inputs.values()))) if isinstance(inputs, dict) else len(inputs)
            if str(device).startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - started
    finally:
        model.train(was_training)
    return round(count / elapsed, 1) if elapsed > 0 else None
