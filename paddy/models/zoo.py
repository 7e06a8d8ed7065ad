"""The model zoo from Python: ``paddy.create_model`` and ``paddy.list_models``.

Both compose the same Hydra config files as ``python -m paddy.train`` and build through
:func:`paddy.models.factory.build_model`, so a preset built here is exactly the network the CLI trains.
``python -m paddy.models`` prints the zoo with parameters and GFLOPs at 224 px.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from paddy.config import compose_config, config_dir, override_value
from paddy.models.factory import build_model, count_parameters, gflops

BACKBONE_KEYS = ("pretrained", "pretrained_file", "drop_path_rate")
HEAD_KEYS = ("dropout", "hidden", "hidden_dropout", "pool")


def preset_names() -> list[str]:
    """Every model preset in ``conf/model`` (``classifier`` is the generic recipe, not a preset)."""
    return sorted(p.stem for p in (config_dir() / "model").glob("*.yaml") if p.stem != "classifier")


def backbone_names() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "backbone").glob("*.yaml"))


def _attention_keys(selection: list[str]) -> tuple[str, ...]:
    """The keys the attention block that ``selection`` composes to takes (its class's keyword arguments)."""
    from paddy.models.attention import RESERVED, attention_knobs

    return RESERVED + attention_knobs(str(compose_config(selection).attention._target_))


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
    result += [f"{key}={value}" for key, value in overrides.items()
               if key in ("attention", "backbone") and isinstance(value, str)]
    attention_keys = _attention_keys(result)
    for key, value in overrides.items():
        if key in ("attention", "backbone") and isinstance(value, str):
            continue
        if key in BACKBONE_KEYS:
            result.append(f"backbone.{key}={override_value(value)}")
        elif key in attention_keys:
            result.append(f"++attention.{key}={override_value(value)}")
        elif key in HEAD_KEYS:
            result.append(f"model.head.{key}={override_value(value)}")
        elif "." in key:
            result.append(f"++{key}={override_value(value)}")
        else:
            raise ValueError(f"create_model: unknown option {key!r}: the attention block has no knob {key!r} (use "
                             f"attention=, backbone=, {', '.join(BACKBONE_KEYS + attention_keys + HEAD_KEYS)}, "
                             f"or a dotted config key)")
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
