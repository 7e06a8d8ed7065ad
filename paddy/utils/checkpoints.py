"""Find and load the trained network of a paddy run: shared by ``paddy.evaluate`` and ``paddy.predict``.

A training run directory holds ``checkpoints/epoch_NNN.ckpt`` (the best by ``val/acc``),
``checkpoints/last.ckpt`` and ``metrics.json`` (whose ``ckpt_path`` names the best one). A paddy
checkpoint is a Lightning checkpoint whose ``hyper_parameters`` carry ``num_classes``,
``class_names`` and ``config`` (the run's resolved config as plain dicts), so the network can be
rebuilt from the file alone: :func:`paddy.models.factory.build_model` with the run's ``backbone``,
``attention`` and ``model`` sections (no pretrained download), then a strict ``load_state_dict`` of
the ``model.``-prefixed weights.

Trust: a checkpoint is a pickle, and unpickling can run any code its author put in it. So every
checkpoint paddy reads (evaluate, predict, export, train's ``ckpt_path`` and ``resume``) is read with
``torch.load(weights_only=True)``, which only rebuilds tensors and plain containers and reads every
checkpoint paddy writes. A file that needs more (pickled objects of other classes, e.g. a custom
callback's state, or a crafted file) is refused with one line saying why, unless the user passes
``trust_checkpoint=true`` (``trusted=True`` in Python) for a file whose origin they trust.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paddy.errors import PaddyError, first_line
from paddy.utils.runtime import logs_muted

log = logging.getLogger("paddy")

WEIGHT_CHOICES = ("auto", "raw", "ema")
_SHOWN_KEYS = 5


class CheckpointError(PaddyError):
    """A checkpoint (or run directory) that cannot be found, read or turned back into its network."""


def run_dir_of(ckpt: str | Path) -> Path:
    """The run directory of a checkpoint file (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    ckpt = Path(ckpt)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def resolve_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file as given, or for a run directory its best checkpoint.

    For a directory: the file that ``metrics.json``'s ``ckpt_path`` names, looked up by its name under
    this directory's ``checkpoints/`` (never outside it: a copied or moved run directory is evaluated
    itself, not the original it was copied from), else ``checkpoints/last.ckpt``, else the newest
    ``checkpoints/*.ckpt``. A ``checkpoints/`` folder itself is taken as its run's.

    Raises:
        CheckpointError: the path does not exist, or the directory holds no checkpoint.
    """
    given = Path(str(path)).expanduser()
    if not given.exists():
        raise CheckpointError(f"ckpt_path={path}: no such file or directory "
                              f"(expected a .ckpt file or a training run directory)")
    if given.is_file():
        return given
    run_dir = given.parent if given.name == "checkpoints" and not (given / "checkpoints").is_dir() else given
    ckpt_dir = run_dir / "checkpoints"
    best = _metrics_ckpt(run_dir / "metrics.json")
    if best is not None and (ckpt_dir / best.name).is_file():
        return ckpt_dir / best.name
    if (ckpt_dir / "last.ckpt").is_file():
        return ckpt_dir / "last.ckpt"
    found = sorted(ckpt_dir.glob("*.ckpt"), key=lambda p: p.stat().st_mtime) if ckpt_dir.is_dir() else []
    if found:
        return found[-1]
    raise CheckpointError(f"no checkpoint in {run_dir} (expected checkpoints/*.ckpt)")


def _metrics_ckpt(metrics_file: Path) -> Path | None:
    if not metrics_file.is_file():
        return None
    try:
        value = json.loads(metrics_file.read_text()).get("ckpt_path")
    except (OSError, ValueError, AttributeError):
        return None
    if not value:
        return None
    return Path(value)


def read_checkpoint(path: str | Path, trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` of a paddy checkpoint onto the CPU, weights only unless ``trusted`` (see the
    module docstring on trust)."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as err:
        needs = _refused_global(err)
        if needs is None:  # not a pickle at all (a JPEG, random bytes)
            raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint "
                                  f"({_weights_only_reason(err)})") from None
        raise CheckpointError(
            f"{path}: refused: it holds pickled objects that could run code when loaded (it needs {needs}); "
            f"if you trust where this file comes from, pass trust_checkpoint=true"
        ) from None
    except Exception as err:  # a truncated/zeroed/non-torch file: torch raises many kinds
        raise CheckpointError(f"{path}: cannot read it as a PyTorch checkpoint ({first_line(err)})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    return checkpoint


def _refused_global(err: BaseException) -> str | None:
    """The object the weights-only unpickler refused (``posix.system``), from torch's long message."""
    match = re.search(r"GLOBAL ([\w.]+)", str(err))
    return match.group(1) if match else None


def _weights_only_reason(err: BaseException) -> str:
    """torch's own reason under its weights-only preamble (``Unsupported operand 255``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
    return reason or type(err).__name__


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path = "<checkpoint>") -> tuple[int, list[str], dict]:
    """(num_classes, class_names, run config) from a loaded checkpoint's ``hyper_parameters``."""
    hparams = checkpoint.get("hyper_parameters") or {}
    config = hparams.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("backbone"), dict):
        raise CheckpointError(f"{path}: has no paddy run config (hyper_parameters.config); "
                              f"was it written by paddy.train?")
    try:
        num_classes = int(hparams["num_classes"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: hyper_parameters.num_classes is missing or not a number") from err
    names = [str(n) for n in (hparams.get("class_names") or [])]
    if len(names) != num_classes:
        if names:
            log.warning("%s: %d class names for %d classes; using class indices", path, len(names), num_classes)
        names = [str(i) for i in range(num_classes)]
    return num_classes, names, config


def _model_state(checkpoint: dict[str, Any], config: dict, weights: str, path: Path) -> tuple[dict, str]:
    """The bare model's state dict: the EMA average (when the run validated with it) or the raw weights."""
    if weights not in WEIGHT_CHOICES:
        raise CheckpointError(f"weights={weights!r} (expected one of: {', '.join(WEIGHT_CHOICES)})")
    if weights in ("auto", "ema"):
        for key, state in (checkpoint.get("callbacks") or {}).items():
            if str(key).startswith("EMAWeights") and isinstance(state, dict) and state.get("ema") is not None:
                # The run validated, picked its best checkpoint and tested with these weights.
                if weights == "ema" or (config.get("ema") or {}).get("enabled", True):
                    return dict(state["ema"]), "ema"
        if weights == "ema":
            raise CheckpointError(f"{path}: holds no EMA weights (the run was trained without ema.enabled)")
    state = model_weights(checkpoint)
    if not state:
        raise CheckpointError(f"{path}: its state_dict has no model.* weights (not a paddy ClassificationTask)")
    return state, "raw"


def model_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bare network's weights of a Lightning checkpoint of a paddy task (its ``model.*`` keys)."""
    return {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def _describe(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > _SHOWN_KEYS else "")


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`CheckpointError` naming the missing, unexpected and mis-shaped keys (if any)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in sorted(set(own) & set(state))
              if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {_describe(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches (checkpoint vs config): {_describe(shapes)}")
    raise CheckpointError(f"{where}: the weights do not fit the network its config describes "
                          f"(edited config, or weights of another model): " + "; ".join(parts))


def load_trained_model(ckpt: str | Path, device: str | torch.device | None = "cpu", weights: str = "auto",
                       trusted: bool = False) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """Rebuild a run's network from a checkpoint (or run directory) and load its weights.

    Args:
        ckpt: a ``.ckpt`` file or a run directory (see :func:`resolve_checkpoint`).
        device: where to put the model (``None``: CUDA when available, else CPU).
        weights: ``auto`` (the EMA average when the run trained with ``ema.enabled``, as its
            validation and test did; else the raw weights), ``raw`` or ``ema``.
        trusted: also read checkpoints that need the unsafe loader (see the module docstring).

    Returns:
        ``(model in eval mode on device, class names, run config as plain dicts)``.

    Raises:
        CheckpointError: with one clear message (missing file, no paddy config, weights that do not
            fit the config: the missing/unexpected keys are named).
    """
    path = resolve_checkpoint(ckpt)
    checkpoint = read_checkpoint(path, trusted=trusted)
    num_classes, class_names, config = checkpoint_config(checkpoint, path)
    from paddy.models.factory import build_model

    backbone = {**config["backbone"], "pretrained": False, "pretrained_file": None}
    try:
        with logs_muted("paddy.models"):
            model = build_model(num_classes, backbone, config.get("attention"), config.get("model"))
    except Exception as err:  # unknown timm name, bad knob, ...: one line naming the checkpoint
        raise CheckpointError(f"{path}: cannot rebuild the network from its config "
                              f"(backbone {backbone.get('name')!r}): {first_line(err)}") from err
    state, kind = _model_state(checkpoint, config, weights, path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    log.debug("loaded %s (%s weights, %d classes)", path, kind, num_classes)
    return model, class_names, config


__all__ = ["WEIGHT_CHOICES", "CheckpointError", "check_state_dict", "checkpoint_config", "first_line",
           "load_trained_model", "model_weights", "read_checkpoint", "resolve_checkpoint", "run_dir_of"]
