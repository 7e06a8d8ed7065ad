"""Freeze the backbone for the first epochs of a fine-tune, then unfreeze it stage by stage.

:class:`FreezeSchedule` is a Lightning callback for :class:`~paddy.tasks.ClassificationTask` (any
LightningModule whose ``.model`` has a ``.backbone`` works). How the optimizer copes with parameters
that change ``requires_grad`` during training:

- the callback makes every backbone parameter trainable in ``setup("fit")``, so
  ``configure_optimizers`` (which skips ``requires_grad=False`` parameters, see
  :func:`paddy.tasks.optim.parameter_groups`) puts all of them in their ``backbone`` /
  ``backbone_no_decay`` groups;
- it freezes them afterwards, in ``on_fit_start``. A frozen parameter never gets a gradient
  (``grad is None``), and torch's optimizers (AdamW, Adam, SGD) skip such parameters entirely: no
  update, no weight decay, no momentum. Once unfrozen, they train in their own group at its *current*
  learning rate, which the LR scheduler keeps driving: no parameter group is added, so LambdaLR,
  StepLR and ReduceLROnPlateau, and the optimizer state in checkpoints, stay valid.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lightning import Callback, LightningModule, Trainer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger(__name__)

# Layers after the last block that belong to the last stage (EfficientNet's conv_head + bn2, ...).
_TAIL_LAYERS = ("conv_head", "bn2", "norm_head", "final_conv")
# Numbered stage containers: ResNet's layer1..layer4, RegNet's s1..s4.
_NUMBERED_STAGES = (re.compile(r"layer(\d+)"), re.compile(r"s(\d+)"))
# Sequential containers whose children are the stages (EfficientNet/MobileNet, ConvNeXt, ...).
_STAGE_CONTAINERS = ("blocks", "stages")

# Freeze levels: the whole backbone frozen, its last stages trainable, everything trainable.
FROZEN, LAST_STAGES, ALL = 0, 1, 2
_LEVEL_NAMES = {FROZEN: "backbone frozen", LAST_STAGES: "last stages trainable", ALL: "all trainable"}


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The stages of a timm backbone, input to output (the stem is not a stage).

    - ResNet-style ``layer1``..``layerN`` (and RegNet's ``s1``..``sN``): one stage per container;
    - EfficientNet / MobileNet ``blocks`` (and ConvNeXt-style ``stages``): ``blocks[i]`` is stage i.

    Layers that run after the last stage and hold parameters (EfficientNet's ``conv_head`` +
    ``bn2``, RegNet's ``final_conv``) belong to the last stage: it is then returned as an
    ``nn.ModuleList`` grouping the (shared, not copied) modules.

    Raises:
        ValueError: the layout is none of these (the message lists the backbone's children).
    """
    children = dict(backbone.named_children())
    stages: list[nn.Module] = []
    for pattern in _NUMBERED_STAGES:
        numbered = sorted((int(m.group(1)), module) for name, module in children.items()
                          if (m := pattern.fullmatch(name)))
        if len(numbered) >= 2:
            stages = [module for _, module in numbered]
            break
    if not stages:
        for name in _STAGE_CONTAINERS:
            container = children.get(name)
            if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 0:
                stages = list(container)
                break
    if not stages:
        features = [info.get("module") for info in getattr(backbone, "feature_info", None) or []
                    if isinstance(info, dict)]
        raise ValueError(
            f"cannot find the stages of backbone {type(backbone).__name__} (children: {', '.join(children) or 'none'}"
            f"; feature_info modules: {', '.join(map(str, features)) or 'none'}); known layouts are ResNet-style "
            f"layer1..layerN / s1..sN and EfficientNet/MobileNet 'blocks' or ConvNeXt 'stages'. Use "
            f"FreezeSchedule without unfreeze_epoch (only unfreeze_all_epoch) for this backbone")
    tail = [module for name in _TAIL_LAYERS if (module := children.get(name)) is not None and _has_parameters(module)]
    if tail:
        stages[-1] = nn.ModuleList([stages[-1], *tail])
    return stages


def find_backbone(pl_module: nn.Module) -> nn.Module:
    """``pl_module.model.backbone`` (an :class:`~paddy.models.ImageClassifier`'s), or ``pl_module.backbone``."""
    model = getattr(pl_module, "model", pl_module)
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"{type(pl_module).__name__} has no backbone: FreezeSchedule needs pl_module.model.backbone "
                        f"(paddy's ImageClassifier) or pl_module.backbone")
    return backbone


class FreezeSchedule(Callback):
    """Train the head on a frozen backbone first, then unfreeze the backbone's last stages, then all.

    Args:
        backbone: freeze the whole backbone at the start of fitting (False: the callback does nothing).
        unfreeze_epoch: from this epoch on, the last ``last_stages`` stages of the backbone (see
            :func:`backbone_stages`) are trainable; None: never (only ``unfreeze_all_epoch`` applies).
        unfreeze_all_epoch: from this epoch on, the whole backbone is trainable; None: never.
        last_stages: how many stages ``unfreeze_epoch`` unfreezes.

    Frozen parameters get ``requires_grad=False`` and the BatchNorm layers of the frozen part stay in
    eval mode (their running statistics stay as they are), re-applied at every training epoch and
    batch start since Lightning calls ``model.train()`` at each epoch start and after validation.
    Unfrozen parameters train at the current learning rate of their optimizer group (``backbone``
    / ``backbone_no_decay``; see the module docstring for why that needs no new parameter group).

    Checkpoints keep the level reached and the epochs at which each threshold fired; on resume the
    saved level is re-applied (never re-frozen), then the level of the resumed epoch.

    Under DDP, parameters that change ``requires_grad`` after wrapping need
    ``strategy=ddp_find_unused_parameters_true``.
    """

    def __init__(self, backbone: bool = True, unfreeze_epoch: int | None = None,
                 unfreeze_all_epoch: int | None = None, last_stages: int = 1):
        for name, value in (("unfreeze_epoch", unfreeze_epoch), ("unfreeze_all_epoch", unfreeze_all_epoch)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
                raise ValueError(f"FreezeSchedule {name}={value!r} (expected an epoch number >= 0 or null)")
        if int(last_stages) != last_stages or last_stages < 1:
            raise ValueError(f"FreezeSchedule last_stages={last_stages!r} (expected an integer >= 1)")
        if unfreeze_epoch is not None and unfreeze_all_epoch is not None and unfreeze_all_epoch < unfreeze_epoch:
            raise ValueError(f"FreezeSchedule unfreeze_all_epoch={unfreeze_all_epoch} comes before "
                             f"unfreeze_epoch={unfreeze_epoch} (expected unfreeze_epoch <= unfreeze_all_epoch)")
        if not backbone and (unfreeze_epoch is not None or unfreeze_all_epoch is not None):
            raise ValueError("FreezeSchedule(backbone=False) freezes nothing, so unfreeze_epoch / unfreeze_all_epoch "
                             "have no effect: set backbone=True or drop them")
        self.backbone = bool(backbone)
        self.unfreeze_epoch = None if unfreeze_epoch is None else int(unfreeze_epoch)
        self.unfreeze_all_epoch = None if unfreeze_all_epoch is None else int(unfreeze_all_epoch)
        self.last_stages = int(last_stages)
        self.level = FROZEN if self.backbone else ALL
        self.fired: dict[str, int | None] = {"unfreeze": None, "unfreeze_all": None}
        self._frozen_norms: list[nn.Module] = []

    # ------------------------------------------------------------------ schedule

    def level_for_epoch(self, epoch: int) -> int:
        """The freeze level the schedule asks for at ``epoch`` (ignoring what already fired)."""
        if not self.backbone:
            return ALL
        if self.unfreeze_all_epoch is not None and epoch >= self.unfreeze_all_epoch:
            return ALL
        if self.unfreeze_epoch is not None and epoch >= self.unfreeze_epoch:
            return LAST_STAGES
        return FROZEN

    def apply(self, pl_module: nn.Module, level: int, set_modes: bool = True) -> None:
        """Set ``requires_grad`` of the backbone for ``level`` and (``set_modes``) put the frozen
        BatchNorms in eval mode, the trainable parts in the backbone's mode."""
        backbone = find_backbone(pl_module)
        trainable: list[nn.Module] = []
        if level == ALL:
            trainable = [backbone]
        elif level == LAST_STAGES:
            trainable = self._last_stages(backbone)
        trainable_params = {id(p) for module in trainable for p in module.parameters()}
        for param in backbone.parameters():
            param.requires_grad_(id(param) in trainable_params)
        trainable_modules = {id(m) for module in trainable for m in module.modules()}
        self._frozen_norms = [m for m in backbone.modules() if isinstance(m, _BatchNorm)
                              and id(m) not in trainable_modules]
        self.level = level
        if not set_modes:
            return
        if backbone.training:
            # Newly trainable norms follow the model's (training) mode; frozen ones go to eval.
            for module in trainable:
                module.train()
        self._keep_frozen_norms_in_eval()

    def _last_stages(self, backbone: nn.Module) -> list[nn.Module]:
        stages = backbone_stages(backbone)
        if self.last_stages > len(stages):
            raise ValueError(f"FreezeSchedule last_stages={self.last_stages}, but backbone {type(backbone).__name__} "
                             f"has {len(stages)} stages (use unfreeze_all_epoch to unfreeze everything)")
        return stages[-self.last_stages:]

    def _keep_frozen_norms_in_eval(self) -> None:
        for module in self._frozen_norms:
            if module.training:
                module.eval()

    def _advance(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        target = max(self.level, self.level_for_epoch(epoch))  # never re-freeze what was unfrozen
        if target != self.level:
            if self.unfreeze_epoch is not None and self.fired["unfreeze"] is None and epoch >= self.unfreeze_epoch:
                self.fired["unfreeze"] = epoch
            if target == ALL and self.fired["unfreeze_all"] is None:
                self.fired["unfreeze_all"] = epoch
            self.apply(pl_module, target)
            backbone = find_backbone(pl_module)
            trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
            total = sum(p.numel() for p in backbone.parameters())
            log.info("FreezeSchedule: epoch %d: %s (%d of %d backbone parameters trainable)", epoch,
                     _LEVEL_NAMES[target] if target != LAST_STAGES else f"last {self.last_stages} stage(s) trainable",
                     trainable, total)
        else:
            self._keep_frozen_norms_in_eval()

    # ------------------------------------------------------------------ Lightning hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not self.backbone:
            return
        backbone = find_backbone(pl_module)
        if self.unfreeze_epoch is not None:
            self._last_stages(backbone)  # an unknown layout fails before any training
        # configure_optimizers runs after this: let it put every backbone parameter in its group.
        for param in backbone.parameters():
            param.requires_grad_(True)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.backbone:
            return
        backbone = find_backbone(pl_module)
        in_optimizer = {id(p) for optimizer in trainer.optimizers for group in optimizer.param_groups
                        for p in group["params"]}
        missing = [name for name, p in backbone.named_parameters() if id(p) not in in_optimizer]
        if missing:
            raise RuntimeError(
                f"FreezeSchedule needs every backbone parameter in the optimizer (frozen ones are skipped by "
                f"their grad being None), but {len(missing)} are not, e.g. {missing[0]!r}: build the optimizer "
                f"from all backbone parameters (paddy.tasks.optim.parameter_groups skips requires_grad=False ones)")
        # The level saved in a checkpoint (restored before this hook) or, on a fresh run, FROZEN; the
        # epoch's own level follows in on_train_epoch_start, once the loop's epoch is restored (which
        # also sets the BatchNorm modes: Lightning would warn about eval-mode modules before that).
        self.apply(pl_module, self.level, set_modes=False)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.backbone:
            self._advance(trainer, pl_module)

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        # Validation in the middle of an epoch ends with model.train(): put the frozen norms back.
        self._keep_frozen_norms_in_eval()

    def state_dict(self) -> dict[str, Any]:
        return {"level": self.level, "fired": dict(self.fired)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        level = int(state_dict.get("level", FROZEN if self.backbone else ALL))
        self.level = max(level, FROZEN if self.backbone else ALL)
        self.fired = {"unfreeze": None, "unfreeze_all": None, **dict(state_dict.get("fired") or {})}


__all__ = ["ALL", "FROZEN", "LAST_STAGES", "FreezeSchedule", "backbone_stages", "find_backbone"]
