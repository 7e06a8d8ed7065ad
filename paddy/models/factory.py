"""Build the network a config describes: backbone + attention (on the head or in every block) + head.

:func:`build_model` is the one place where ``cfg.backbone``, ``cfg.attention`` and ``cfg.model``
become an ``nn.Module``; the training pipeline and :func:`paddy.create_model` both call it.

Placement of the attention block (``attention.placement``):

- ``head``: one block on the backbone's final feature map, before pooling (the old paddy scripts);
- ``blocks``: one block inside every residual / inverted-residual block, as CBAM-ResNet does. For
  the EfficientNet/MobileNetV3 families it replaces the blocks' squeeze-excitation slot (timm's
  ``se_layer``; architectures without SE slots, such as EfficientNet-Lite, cannot take it); for
  ResNets it fills timm's ``attn_layer`` slot after the last convolution of each block.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from paddy.errors import PaddyError
from paddy.models.attention import ATTENTION_BLOCKS, attention_knobs, create_attention
from paddy.models.backbone import create_backbone, load_backbone_weights
from paddy.models.classifier import ImageClassifier
from paddy.models.fusion import DCTFusionClassifier
from paddy.models.heads import ClassifierHead

log = logging.getLogger(__name__)

PLACEMENTS = ("head", "blocks")


class ModelConfigError(PaddyError):
    """``cfg.backbone`` / ``cfg.attention`` / ``cfg.model`` describe a network that cannot be built."""

MODEL_KINDS = ("classifier", "dct_fusion")
# The timm modules whose models take attention inside their blocks, and the keyword that does it.
_SE_SLOT_FAMILIES = ("efficientnet", "mobilenetv3")
_ATTN_SLOT_FAMILIES = ("resnet",)
# State-dict names of the per-block attention slots (their pretrained SE weights no longer fit).
_BLOCK_SLOT_KEYS = (".se.",)


def backbone_family(name: str) -> str:
    """The timm module that defines model ``name`` (``resnet``, ``efficientnet``, ``mobilenetv3``...)."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__.rsplit(".", 1)[-1]


class _BlockAttentionFactory:
    """What timm calls to make each ResNet block's attention: ``factory(channels, **timm_extras)``."""

    def __init__(self, name: str, knobs: dict[str, Any]):
        self.name, self.knobs = name, knobs
        self.channels: list[int] = []

    def __call__(self, channels: int, *args: Any, **kwargs: Any) -> nn.Module:
        self.channels.append(int(channels))
        return create_attention(self.name, channels, **self.knobs)


def _replace_se_slots(net: nn.Module, name: str, knobs: dict[str, Any]) -> list[int]:
    """Swap the squeeze-excitation module of every EfficientNet/MobileNetV3 block for attention
    ``name``; return the channel counts of the replaced slots."""
    channels = []
    for block in net.modules():
        se = getattr(block, "se", None)
        if isinstance(se, nn.Module) and not isinstance(se, nn.Identity) and hasattr(se, "conv_reduce"):
            chs = int(se.conv_reduce.in_channels)
            block.se = create_attention(name, chs, **knobs)
            channels.append(chs)
    return channels


def _check_reduction(knobs: dict[str, Any], channels: int, where: str) -> None:
    reduction = knobs.get("reduction")
    if isinstance(reduction, int) and reduction > channels:
        raise ValueError(f"attention.reduction={reduction} is larger than the {channels} channels of {where} "
                         f"(choose a reduction <= {channels})")


def split_attention(attention: dict[str, Any] | None) -> tuple[str, str, dict[str, Any]]:
    """``cfg.attention`` -> (name, placement, knobs), checked against the block's knobs."""
    options = dict(attention or {})
    name = options.pop("name", "none") or "none"
    placement = options.pop("placement", "head") or "head"
    if name not in ATTENTION_BLOCKS:
        raise ValueError(f"unknown attention {name!r} (conf/attention has: {', '.join(ATTENTION_BLOCKS)})")
    if placement not in PLACEMENTS:
        raise ValueError(f"attention.placement={placement!r} (expected one of: {', '.join(PLACEMENTS)})")
    knobs = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(knobs) - set(attention_knobs(name)))
    if unknown:
        has = ", ".join(attention_knobs(name)) or "none"
        raise ValueError(f"attention {name!r} has no knob {unknown[0]!r} (its knobs: {has})")
    return name, placement, knobs


def _reuse_weights(model: nn.Module, rest: dict[str, dict], num_classes: int, source: str | None) -> None:
    """Load the weights file's attention/head (paddy checkpoint) or classifier (timm file) where they
    fit; otherwise say once that the head starts fresh."""
    if not source:
        return
    loaded = []
    for part in ("attention", "head"):
        state = rest.get(part) or {}
        target = getattr(model, part, None)
        if state and target is not None:
            own = target.state_dict()
            if own.keys() == state.keys() and all(own[k].shape == v.shape for k, v in state.items()):
                target.load_state_dict(state)
                loaded.append(part)
    classifier = rest.get("classifier") or {}
    head = getattr(model, "head", None)
    weights = [v for k, v in classifier.items() if k.endswith("weight") and v.ndim == 2]
    if isinstance(head, ClassifierHead) and len(head.mlp) == 2 and len(weights) == 1:
        linear = head.mlp[-1]
        biases = [v for k, v in classifier.items() if k.endswith("bias") and v.ndim == 1]
        if weights[0].shape == linear.weight.shape:
            linear.weight.data.copy_(weights[0])
            if len(biases) == 1 and linear.bias is not None and biases[0].shape == linear.bias.shape:
                linear.bias.data.copy_(biases[0])
            loaded.append("head")
    if "head" in loaded:
        log.info("loaded %s from %s (%d classes)", " and ".join(loaded), source, num_classes)
    else:
        found = rest.get("head") or classifier
        log.info("the head is freshly initialised (%s holds %s for this %d-class model)", source,
                 "no classifier" if not found else "a classifier of another shape", num_classes)


def build_model(num_classes: int, backbone: dict[str, Any], attention: dict[str, Any] | None = None,
                model: dict[str, Any] | None = None) -> nn.Module:
    """The network for plain config dicts ``cfg.backbone``, ``cfg.attention``, ``cfg.model``.

    ``model.kind`` picks the recipe: ``classifier`` (backbone -> attention -> pooled head) or
    ``dct_fusion`` (:class:`~paddy.models.fusion.DCTFusionClassifier`, which also takes DCT features).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} (expected >= 1)")
    model_options = dict(model or {})
    kind = model_options.get("kind", "classifier") or "classifier"
    if kind not in MODEL_KINDS:
        raise ValueError(f"model.kind={kind!r} (expected one of: {', '.join(MODEL_KINDS)})")
    name, placement, knobs = split_attention(attention)

    options = dict(backbone)
    backbone_name = options.pop("name")
    extra = dict(options.pop("kwargs", None) or {})
    in_blocks = placement == "blocks" and name != "none"
    family = backbone_family(backbone_name) if in_blocks else ""
    if in_blocks and family not in _SE_SLOT_FAMILIES + _ATTN_SLOT_FAMILIES:
        raise ValueError(f"attention.placement=blocks needs an EfficientNet, MobileNetV3 or ResNet backbone; "
                         f"{backbone_name!r} is a timm {family!r} model (use attention.placement=head)")
    resnet_slots = _BlockAttentionFactory(name, knobs)
    if family in _ATTN_SLOT_FAMILIES:
        extra["block_args"] = {**extra.get("block_args", {}), "attn_layer": resnet_slots}
    net = create_backbone(backbone_name, pretrained=options.get("pretrained", False),
                          drop_path_rate=options.get("drop_path_rate", 0.0), **extra)
    channels = int(net.num_features)
    if in_blocks:
        slots = _replace_se_slots(net, name, knobs) if family in _SE_SLOT_FAMILIES else resnet_slots.channels
        if not slots:
            raise ValueError(f"attention.placement=blocks: {backbone_name!r} has no attention slot in its blocks "
                             f"(EfficientNet-Lite and similar have no SE); use attention.placement=head")
        _check_reduction(knobs, max(slots), f"the widest block of {backbone_name}")
        log.info("attention %s inserted into %d blocks of %s", name, len(slots), backbone_name)
    else:
        _check_reduction(knobs, channels, f"{backbone_name}'s final feature map")
    head_attention = create_attention(name, channels, **knobs) if placement == "head" else None
    head_state: dict = {}
    if options.get("pretrained_file"):
        ignore = _BLOCK_SLOT_KEYS if in_blocks else ()
        head_state = load_backbone_weights(net, options["pretrained_file"], ignore=ignore)

    head = dict(model_options.get("head") or {})
    if kind == "dct_fusion":
        dct = dict(model_options.get("dct") or {})
        block = int(dct.get("block", 32))
        result: nn.Module = DCTFusionClassifier(
            net, channels, num_classes, dct_dim=block * block, attention=head_attention,
            dct_hidden=dct.get("hidden", (256, 128)), dct_dropout=dct.get("dropout", 0.2),
            hidden=head.get("hidden") or (256, 128), dropout=head.get("hidden_dropout", (0.3, 0.2)))
    else:
        head_module = ClassifierHead(channels, num_classes, dropout=head.get("dropout", 0.2),
                                     hidden=head.get("hidden") or (), hidden_dropout=head.get("hidden_dropout", 0.2),
                                     pool=head.get("pool", "avg"))
        result = ImageClassifier(net, head_module, head_attention)
    _reuse_weights(result, head_state, num_classes, options.get("pretrained_file"))
    return result


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def gflops(module: nn.Module, image_size: int = 224, extra_inputs: dict | None = None) -> float:
    """Forward GFLOPs for one image (multiply-adds counted as 2 FLOPs), via torch's FLOP counter."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, 3, image_size, image_size), **(extra_inputs or {}))
    finally:
        module.train(was_training)
    return counter.get_total_flops() / 1e9


__all__ = ["MODEL_KINDS", "PLACEMENTS", "ModelConfigError", "backbone_family", "build_model", "count_parameters",
           "gflops", "split_attention"]
