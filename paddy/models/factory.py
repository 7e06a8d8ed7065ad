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

import inspect
import logging
from typing import Any

from torch import nn

from paddy.config import trusted_callable
from paddy.errors import PaddyError
from paddy.models.attention import AttentionSpec, attention_spec
from paddy.models.backbone import create_backbone, load_backbone_weights
from paddy.models.classifier import ImageClassifier
from paddy.models.fusion import DCTFusionClassifier
from paddy.models.heads import ClassifierHead

log = logging.getLogger(__name__)

class ModelConfigError(PaddyError):
    """``cfg.backbone`` / ``cfg.attention`` / ``cfg.model`` describe a network that cannot be built."""

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

    def __init__(self, spec: AttentionSpec):
        self.spec = spec
        self.channels: list[int] = []

    def __call__(self, channels: int, *args: Any, **kwargs: Any) -> nn.Module:
        self.channels.append(int(channels))
        return self.spec.make(channels)


def _replace_se_slots(net: nn.Module, spec: AttentionSpec) -> list[int]:
    """Swap the squeeze-excitation module of every EfficientNet/MobileNetV3 block for the attention
    block of ``spec``; return the channel counts of the replaced slots."""
    channels = []
    for block in net.modules():
        se = getattr(block, "se", None)
        if isinstance(se, nn.Module) and not isinstance(se, nn.Identity) and hasattr(se, "conv_reduce"):
            chs = int(se.conv_reduce.in_channels)
            block.se = spec.make(chs)
            channels.append(chs)
    return channels


def _check_reduction(knobs: dict[str, Any], channels: int, where: str) -> None:
    reduction = knobs.get("reduction")
    if isinstance(reduction, int) and reduction > channels:
        raise ValueError(f"attention.reduction={reduction} is larger than the {channels} channels of {where} "
                         f"(choose a reduction <= {channels})")


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


def _backbone_factory(target: str | None) -> Any:
    """The function ``backbone._target_`` names: ``(name, pretrained=, drop_path_rate=, **kwargs)`` -> a
    module with ``num_features`` whose forward returns the final feature map (default: timm's models,
    :func:`~paddy.models.backbone.create_backbone`; one of your own among the trusted targets)."""
    if target is None or target == "paddy.models.backbone.create_backbone":
        return create_backbone
    return trusted_callable(target, "backbone", ModelConfigError)


def _backbone(backbone: dict[str, Any], spec: AttentionSpec) -> tuple[nn.Module, bool]:
    """The timm feature extractor ``cfg.backbone`` describes, with the attention block of ``spec`` in
    every block when its placement is ``blocks``; also whether it was put there."""
    options = dict(backbone)
    backbone_name = options.pop("name")
    extra = dict(options.pop("kwargs", None) or {})
    create = _backbone_factory(options.pop("_target_", None))
    in_blocks = spec.placement == "blocks" and spec.enabled
    if in_blocks and create is not create_backbone:
        raise ModelConfigError("attention.placement=blocks needs a timm backbone (backbone._target_: "
                               "paddy.models.backbone.create_backbone); use attention.placement=head")
    family = backbone_family(backbone_name) if in_blocks else ""
    if in_blocks and family not in _SE_SLOT_FAMILIES + _ATTN_SLOT_FAMILIES:
        raise ModelConfigError(f"attention.placement=blocks needs an EfficientNet, MobileNetV3 or ResNet backbone; "
                               f"{backbone_name!r} is a timm {family!r} model (use attention.placement=head)")
    resnet_slots = _BlockAttentionFactory(spec)
    if family in _ATTN_SLOT_FAMILIES:
        extra["block_args"] = {**extra.get("block_args", {}), "attn_layer": resnet_slots}
    net = create(backbone_name, pretrained=options.get("pretrained", False),
                 drop_path_rate=options.get("drop_path_rate", 0.0), **extra)
    if not in_blocks:
        _check_reduction(spec.knobs, int(net.num_features), f"{backbone_name}'s final feature map")
        return net, False
    slots = _replace_se_slots(net, spec) if family in _SE_SLOT_FAMILIES else resnet_slots.channels
    if not slots:
        raise ModelConfigError(f"attention.placement=blocks: {backbone_name!r} has no attention slot in its blocks "
                               f"(EfficientNet-Lite and similar have no SE); use attention.placement=head")
    _check_reduction(spec.knobs, max(slots), f"the widest block of {backbone_name}")
    log.info("attention %s inserted into %d blocks of %s", spec.name, len(slots), backbone_name)
    return net, True


def classifier(net: nn.Module, num_classes: int, attention: nn.Module | None = None,
               head: dict[str, Any] | None = None) -> nn.Module:
    """``model._target_`` of the plain recipe: backbone -> attention -> pooled head (``model.head``)."""
    head = dict(head or {})
    head_module = ClassifierHead(int(net.num_features), num_classes, dropout=head.get("dropout", 0.2),
                                 hidden=head.get("hidden") or (), hidden_dropout=head.get("hidden_dropout", 0.2),
                                 pool=head.get("pool", "avg"))
    return ImageClassifier(net, head_module, attention)


def dct_fusion(net: nn.Module, num_classes: int, attention: nn.Module | None = None,
               head: dict[str, Any] | None = None, dct: dict[str, Any] | None = None) -> nn.Module:
    """``model._target_`` of :class:`~paddy.models.fusion.DCTFusionClassifier`, which also takes DCT features."""
    head, dct = dict(head or {}), dict(dct or {})
    block = int(dct.get("block", 32))
    return DCTFusionClassifier(
        net, int(net.num_features), num_classes, dct_dim=block * block, attention=attention,
        dct_hidden=dct.get("hidden", (256, 128)), dct_dropout=dct.get("dropout", 0.2),
        hidden=head.get("hidden") or (256, 128), dropout=head.get("hidden_dropout", (0.3, 0.2)))


def _recipe(model_options: dict[str, Any]) -> Any:
    """The function ``model._target_`` names (:func:`classifier`, :func:`dct_fusion`, or a trusted one of
    your own taking the backbone, num_classes, the head-placed attention and ``model.*`` options it
    names); a config saved before ``_target_`` names it by ``kind``."""
    target = model_options.get("_target_") or f"{__name__}.{model_options.get('kind') or 'classifier'}"
    return trusted_callable(target, "model", ModelConfigError)


def build_model(num_classes: int, backbone: dict[str, Any], attention: dict[str, Any] | None = None,
                model: dict[str, Any] | None = None) -> nn.Module:
    """The network for plain config dicts ``cfg.backbone``, ``cfg.attention``, ``cfg.model``.

    ``model._target_`` is the recipe: :func:`classifier` (backbone -> attention -> pooled head) or
    :func:`dct_fusion`; ``cfg.attention`` is checked by :func:`paddy.models.attention.attention_spec`.
    """
    if num_classes < 1:
        raise ModelConfigError(f"num_classes={num_classes} (expected >= 1)")
    model_options = dict(model or {})
    recipe = _recipe(model_options)
    spec = attention_spec(attention)
    net, in_blocks = _backbone(backbone, spec)
    head_attention = spec.make(int(net.num_features)) if spec.placement == "head" else None
    weights = backbone.get("pretrained_file")
    head_state = load_backbone_weights(net, weights, ignore=_BLOCK_SLOT_KEYS if in_blocks else ()) if weights else {}
    accepted = inspect.signature(recipe).parameters
    result = recipe(net, num_classes, head_attention,
                    **{k: v for k, v in model_options.items() if k in accepted and k not in ("net", "num_classes")})
    _reuse_weights(result, head_state, num_classes, weights)
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


__all__ = ["ModelConfigError", "backbone_family", "build_model", "classifier", "count_parameters",
           "dct_fusion", "gflops"]
