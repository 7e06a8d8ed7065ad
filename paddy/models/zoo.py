"""The model zoo from Python: ``paddy.create_model`` and ``paddy.list_models``.

Both compose the same Hydra config files as ``python -m paddy.train`` and build through
:func:`paddy.models.factory.build_model`, so a preset built here is exactly the network the CLI trains.
``python -m paddy.models`` prints the zoo with parameters and GFLOPs at 224 px.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from paddy.config import compose_config, config_dir
from paddy.models.factory import build_model, count_parameters, gflops

BACKBONE_KEYS = ("pretrained", "pretrained_file", "drop_path_rate")
ATTENTION_KEYS = ("reduction", "kernel_size", "heads", "placement", "channel", "spatial")
HEAD_KEYS = ("dropout", "hidden", "hidden_dropout", "pool")


def preset_names() -> list[str]:
    """Every model preset in ``conf/model`` (``classifier`` is the generic recipe, not a preset)."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if p.stem != "classifier")


def backbone_names() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "backbone").glob("*.yaml"))


def _override_value(value: Any) -> str:
    """A Python value as Hydra override syntax."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def model_overrides(name: str, **overrides: Any) -> list[str]:
    """Hydra overrides that select ``name`` (a preset, a backbone config or any timm model) and apply
    keyword ``overrides`` (``attention="eca"``, ``reduction=16``, ``pretrained_file="w.pth"``,
    ``dropout=0.3``, or dotted config keys passed as ``**{"backbone.drop_path_rate": 0.1}``)."""
    import timm

    if name in preset_names():
        result = [f"model={name}"]
    elif name in backbone_names():
        result = [f"backbone={name}"]
    elif timm.is_model(name):
        result = [f"backbone.name={name}"]
    else:
        raise ValueError(f"unknown model {name!r}: not a preset ({', '.join(preset_names())}), "
                         f"a backbone config ({', '.join(backbone_names())}) or a timm model name")
    for key, value in overrides.items():
        if key in ("attention", "backbone") and isinstance(value, str):
            result.append(f"{key}={value}")
        elif key in BACKBONE_KEYS:
            result.append(f"backbone.{key}={_override_value(value)}")
        elif key in ATTENTION_KEYS:
            result.append(f"++attention.{key}={_override_value(value)}")
        elif key in HEAD_KEYS:
            result.append(f"model.head.{key}={_override_value(value)}")
        elif "." in key:
            result.append(f"++{key}={_override_value(value)}")
        else:
            raise ValueError(f"create_model: unknown option {key!r} (use attention=, backbone=, "
                             f"{', '.join(BACKBONE_KEYS + ATTENTION_KEYS + HEAD_KEYS)}, or a dotted config key)")
    return result


def create_model(name: str, num_classes: int = 1000, **overrides: Any) -> nn.Module:
    """Build a preset (``"effv2s_ca"``) or a backbone (``"tf_efficientnet_lite0"``) as the CLI would.

    Examples::

        paddy.create_model("effv2s_ca", num_classes=10, reduction=16)
        paddy.create_model("tf_efficientnet_lite0", attention="none", num_classes=1000,
                           pretrained_file="w.safetensors")
    """
    from omegaconf import OmegaConf

    cfg = compose_config(model_overrides(name, **overrides))
    parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("backbone", "attention", "model")}
    return build_model(num_classes, parts["backbone"], parts["attention"], parts["model"])


def list_models(measure: bool = True, image_size: int = 224, num_classes: int = 10) -> list[dict[str, Any]]:
    """One row per preset: backbone, attention, placement, recipe, and (``measure``) parameters and GFLOPs."""
    from omegaconf import OmegaConf

    rows = []
    for name in preset_names():
        cfg = compose_config([f"model={name}"])
        row = {"name": name, "backbone": cfg.backbone.name, "attention": cfg.attention.name,
               "placement": cfg.attention.get("placement", "head"), "kind": cfg.model.get("kind", "classifier")}
        if measure:
            parts = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("backbone", "attention", "model")}
            model = build_model(num_classes, parts["backbone"], parts["attention"], parts["model"])
            extra = None
            if getattr(model, "input_features", ()):
                import torch

                extra = {"dct": torch.zeros(1, model.dct_dim)}
            row["params_m"] = round(count_parameters(model) / 1e6, 3)
            row["gflops"] = round(gflops(model, image_size, extra), 3)
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, Any]], image_size: int = 224, num_classes: int = 10) -> str:
    lines = [f"| preset | backbone | attention | placement | recipe | params (M, {num_classes} classes) | "
             f"GFLOPs @ {image_size} px |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['backbone']} | {r['attention']} | {r['placement']} | {r['kind']} | "
                     f"{r.get('params_m', '')} | {r.get('gflops', '')} |")
    return "\n".join(lines)
