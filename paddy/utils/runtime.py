"""Trainer set-up that the config alone cannot express: precision fallback, hardware detection."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

_HALF = {"16", "16-mixed", "16-true"}
_BF16 = {"bf16", "bf16-mixed"}


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def uses_gpu(accelerator: str | None) -> bool:
    """Whether Lightning will train on a CUDA GPU with this ``trainer.accelerator``."""
    accelerator = str(accelerator or "auto").lower()
    if accelerator in ("gpu", "cuda"):
        return True
    return accelerator == "auto" and torch.cuda.is_available()


def resolve_precision(precision: str | int | None, accelerator: str | None) -> str | int | None:
    """Map ``trainer.precision`` to what the device can run.

    fp16 autocast needs a GPU: on a CPU, ``16``/``16-mixed`` becomes ``bf16-mixed`` with one line
    saying so (Lightning would otherwise print a wall of warnings and do the same). ``bf16``
    becomes ``bf16-mixed``.
    """
    if precision is None:
        return None
    text = str(precision).lower()
    if text in _BF16:
        return "bf16-mixed"
    if text in _HALF and not uses_gpu(accelerator):
        log.warning("trainer.precision=%s needs a GPU; training on CPU with bf16-mixed instead", precision)
        return "bf16-mixed"
    if text == "16":
        return "16-mixed"
    return precision


def resolve_channels_last(value: object, on_gpu: bool) -> bool:
    """``model.channels_last``: ``auto``/null = on a GPU (NHWC convolutions use its tensor cores;
    on a CPU they gain little), or an explicit true/false."""
    if value is None or str(value).lower() == "auto":
        return on_gpu
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "false"):
        return text == "true"
    raise ValueError(f"model.channels_last={value!r} (expected auto, true or false)")


def gpu_trainer_defaults(options: dict) -> dict:
    """Trainer options with the fast GPU defaults filled in: cuDNN autotuning (``benchmark``) when
    left null and the run is not ``deterministic``. Off a GPU the options are returned as they are."""
    options = dict(options)
    if uses_gpu(options.get("accelerator")) and options.get("benchmark") is None and not options.get("deterministic"):
        options["benchmark"] = True
    return options


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of a CUDA ``device`` (a no-op elsewhere): call before reading a clock."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], steps: int, warmup: int, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each of ``steps`` calls of ``step`` after ``warmup`` untimed calls; on CUDA the
    device is synchronised before the clock starts and before it stops."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return times


@contextlib.contextmanager
def logs_muted(name: str) -> Iterator[None]:
    """Silence INFO messages of logger ``name`` (and its children) inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def file_lock(path: str | Path, required: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed), so processes of this machine that
    prepare the same thing (DDP ranks, parallel sweep trials) take turns. ``required=False``: where
    the lock file cannot be made (a read-only folder), go on without it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "w")  # noqa: SIM115 - closed below, which also releases the lock
    except OSError:
        if required:
            raise
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def derived_seed(seed: int, *parts: int) -> int:
    """A seed for (``seed``, ``parts``...): the augmentation of sample i in epoch e, the global
    generators of epoch e on rank r. Independent streams for neighbouring values (SeedSequence)."""
    return int(np.random.SeedSequence([int(seed) % 2**32, *(int(p) for p in parts)]).generate_state(1)[0])
