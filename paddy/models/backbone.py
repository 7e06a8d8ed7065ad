"""timm backbones as feature extractors, with pretrained weights from the hub or a local file.

:func:`create_backbone` returns a timm model without its classifier or pooling, so it outputs the
final feature map ``B x C x H' x W'`` (attention blocks work on it; the head pools it).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from paddy.errors import PaddyError

log = logging.getLogger(__name__)


class PretrainedWeightsError(PaddyError):
    """Pretrained weights were asked for but cannot be had."""


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_hub_weights(name: str) -> bool:
    """Whether timm's pretrained weights for ``name`` are already in the local Hugging Face cache."""
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub_id:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    hub_id = hub_id.split("@")[0]
    for filename in ("model.safetensors", "pytorch_model.bin", getattr(cfg, "hf_hub_filename", None)):
        if filename and isinstance(try_to_load_from_cache(hub_id, filename), str):
            return True
    return False


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a weights file (``.safetensors``, ``.pth``/``.pt``/``.bin``, or a Lightning/timm checkpoint)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise PretrainedWeightsError(f"backbone.pretrained_file={path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise PretrainedWeightsError(f"backbone.pretrained_file={path}: cannot load ({err})") from err
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedWeightsError(f"backbone.pretrained_file={path}: not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def split_paddy_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]] | None:
    """A paddy model's weights (a Lightning checkpoint of a run, or ``model.state_dict()``) split into
    ``backbone`` / ``attention`` / ``head`` parts; None for any other (e.g. timm) state dict."""
    for prefix in ("model.", ""):
        if any(k.startswith(prefix + "backbone.") for k in state):
            parts: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "attention": {}, "head": {}}
            for key, value in state.items():
                for part in parts:
                    if key.startswith(f"{prefix}{part}."):
                        parts[part][key[len(prefix) + len(part) + 1:]] = value
            return parts
    return None


def load_backbone_weights(model: nn.Module, path: str | Path,
                          ignore: tuple[str, ...] = ()) -> dict[str, dict[str, torch.Tensor]]:
    """Load ``path`` into a classifier-less timm model, strictly; return the file's other weights:
    ``{"classifier": ...}`` for a timm/torchvision-style file, ``{"attention": ..., "head": ...}`` for
    a paddy checkpoint (so the caller can reuse them where they fit).

    Keys containing any of ``ignore`` (e.g. ``".se."`` when attention replaced the SE slots) may be
    missing or unexpected. Anything else that does not fit raises :class:`PretrainedWeightsError`
    naming the missing/unexpected/mis-shaped keys, since a file for another architecture would
    otherwise load "successfully" into nothing.
    """
    state = load_state_dict_file(path)
    paddy_parts = split_paddy_state(state)
    if paddy_parts is not None:
        state = paddy_parts.pop("backbone")
        rest = paddy_parts
    else:
        classifier = model.pretrained_cfg.get("classifier", "") if hasattr(model, "pretrained_cfg") else ""
        classifier_names = classifier if isinstance(classifier, (list, tuple)) else [classifier]

        def is_classifier(key: str) -> bool:
            return any(c and (key == c or key.startswith(c + ".")) for c in classifier_names)

        rest = {"classifier": {k: v for k, v in state.items() if is_classifier(k)}}
        state = {k: v for k, v in state.items() if not is_classifier(k)}
    ignore = tuple(ignore) + _dropped_head_keys(model)
    own = model.state_dict()

    def ignored(key: str) -> bool:
        return any(pattern in key for pattern in ignore)

    mismatched = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and own[k].shape != v.shape and not ignored(k)]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked") and not ignored(k)]
    unexpected = [k for k in state if k not in own and not ignored(k)]
    if mismatched or missing or unexpected:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise PretrainedWeightsError(
            f"backbone.pretrained_file={path} does not fit backbone {model.default_cfg.get('architecture', '?')}: "
            + "; ".join(details)
        )
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(fitting, strict=False)
    skipped = len(own) - len(fitting)
    log.info("loaded backbone weights from %s (%d tensors%s)", path, len(fitting),
             f"; {skipped} attention-slot tensors keep their fresh initialisation" if skipped else "")
    return rest


def create_backbone(name: str, pretrained: bool = False, pretrained_file: str | None = None,
                    drop_path_rate: float = 0.0, in_chans: int = 3, **kwargs) -> nn.Module:
    """A timm model by ``name`` that returns its final feature map (no pooling, no classifier).

    ``pretrained_file`` (a local file) wins over ``pretrained``; ``pretrained=True`` without it uses
    timm's hub and fails at once, pointing at ``pretrained_file``, when the hub cannot be reached
    and the weights are not cached. (:func:`paddy.models.factory.build_model` loads the file itself,
    to also reuse its classifier and to skip attention slots.)
    """
    if name not in timm.list_models() and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8]
        raise ValueError(f"unknown backbone {name!r} (timm has no such model; similar: {', '.join(close) or 'none'})")
    use_hub = bool(pretrained) and not pretrained_file
    if use_hub and not _cached_hub_weights(name) and not _hub_reachable():
        raise PretrainedWeightsError(
            f"backbone.pretrained=true needs the timm weights of {name!r}, but the model hub cannot be reached "
            f"and they are not cached. Download them on a machine with internet and pass "
            f"backbone.pretrained_file=/path/to/weights.safetensors (or .pth), or set backbone.pretrained=false."
        )
    model = timm.create_model(name, pretrained=use_hub, num_classes=0, global_pool="",
                              drop_path_rate=drop_path_rate or None, in_chans=in_chans, **kwargs)
    _drop_pooled_head(model)
    if pretrained_file:
        load_backbone_weights(model, pretrained_file)
    return model


_POOLED_HEAD_LAYERS = ("conv_head", "norm_head")


def _dropped_head_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict prefixes of layers :func:`_drop_pooled_head` removed (weights files still hold them)."""
    if not getattr(model, "_paddy_dropped_head", False):
        return ()
    return tuple(f"{name}." for name in _POOLED_HEAD_LAYERS)


def _drop_pooled_head(model: nn.Module) -> None:
    """Remove layers that timm applies only after global pooling (MobileNetV3's 1x1 ``conv_head``
    to ``head_hidden_size``), so ``forward`` returns the ``num_features``-channel feature map and
    no parameter goes unused (DDP would complain). Pretrained
    files that contain those layers still load (their tensors for these layers are skipped)."""
    hidden = getattr(model, "head_hidden_size", None)
    if hidden is None or hidden == model.num_features or not hasattr(model, "conv_head"):
        return
    for name in (*_POOLED_HEAD_LAYERS, "act2"):
        if hasattr(model, name):
            setattr(model, name, nn.Identity())
    model.head_hidden_size = model.num_features
    model._paddy_dropped_head = True
