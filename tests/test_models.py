"""Backbones, heads, weights files and optimizer groups."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from paddy.models import ClassifierHead, PretrainedWeightsError, build_model, create_backbone
from paddy.tasks.optim import cosine_with_warmup, create_optimizer, create_scheduler

TINY = {"name": "test_resnet", "pretrained": False, "pretrained_file": None, "drop_path_rate": 0.0}


def test_classifier_shapes_and_groups():
    model = build_model(5, TINY, model={"head": {"dropout": 0.1}})
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 5)
    n_backbone, n_head = len(model.backbone_parameters()), len(model.head_parameters())
    assert n_backbone > 0 and n_head == 2  # head: one linear layer (weight + bias)


def test_mlp_head_like_the_old_scripts():
    head = ClassifierHead(64, 4, dropout=0.3, hidden=[256, 128], hidden_dropout=[0.2, 0.2])
    layers = [type(m).__name__ for m in head.mlp]
    assert layers == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2 + ["Dropout", "Linear"]
    head.eval()
    assert head(torch.randn(3, 64, 2, 2)).shape == (3, 4)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown backbone 'resnet1800'"):
        create_backbone("resnet1800")


def test_backbone_named_by_target():
    default = build_model(3, {**TINY, "_target_": "paddy.models.backbone.create_backbone"})
    assert default.backbone.num_features == build_model(3, TINY).backbone.num_features
    with pytest.raises(ValueError, match=r"backbone: cannot use _target_ 'os.system' .*PADDY_TRUSTED_TARGETS"):
        build_model(3, {**TINY, "_target_": "os.system"})
    with pytest.raises(ValueError, match=r"attention.placement=blocks needs a timm backbone"):
        build_model(3, {**TINY, "_target_": "torch.nn.Identity"},
                    {"_target_": "paddy.models.attention.SqueezeExcite", "placement": "blocks"})


def test_pretrained_without_network_fails_at_once_pointing_to_the_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsError, match="backbone.pretrained_file"):
        create_backbone("resnet18", pretrained=True)
    assert time.perf_counter() - started < 10


def test_pretrained_file_loads_and_a_wrong_one_is_refused(tmp_path: Path):
    source = create_backbone("test_resnet")
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.5)
    # A DataParallel-style state dict wrapped in a checkpoint, as users often have.
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "weights.pth")
    target = create_backbone("test_resnet", pretrained_file=str(tmp_path / "weights.pth"))
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        assert torch.equal(a, b), name

    torch.save(create_backbone("test_efficientnet").state_dict(), tmp_path / "other.pth")
    with pytest.raises(PretrainedWeightsError, match="does not fit backbone"):
        create_backbone("test_resnet", pretrained_file=str(tmp_path / "other.pth"))
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        create_backbone("test_resnet", pretrained_file=str(tmp_path / "absent.pth"))


def test_safetensors_weights_file(tmp_path: Path):
    from safetensors.torch import save_file

    source = create_backbone("test_resnet")
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    create_backbone("test_resnet", pretrained_file=str(tmp_path / "w.safetensors"))


def test_optimizer_groups_backbone_and_head_lr_no_decay_on_norms():
    model = build_model(3, TINY)
    optimizer = create_optimizer(model, "adamw", lr=1e-4, head_lr=1e-3, weight_decay=0.05)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == 1e-4 and groups["head"]["lr"] == 1e-3
    assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"])
    assert all(p.ndim > 1 for p in groups["backbone"]["params"])
    counted = sum(len(g["params"]) for g in optimizer.param_groups)
    assert counted == len([p for p in model.parameters() if p.requires_grad])
    with pytest.raises(ValueError, match=r"optimizer 'adamax' names no _target_ and is not one of paddy's "
                                         r"\(adam, adamw, sgd\)"):
        create_optimizer(model, "adamax")
    radam = create_optimizer(model, "radam", lr=1e-3, _target_="torch.optim.RAdam", decoupled_weight_decay=True)
    assert isinstance(radam, torch.optim.RAdam) and radam.defaults["decoupled_weight_decay"]
    with pytest.raises(ValueError, match=r"optimizer 'sgd' \(torch.optim.sgd.SGD\): .*'betas'"):
        create_optimizer(model, "sgd", _target_="torch.optim.SGD", betas=(0.9, 0.99))
    with pytest.raises(ValueError, match=r"cannot use _target_ 'os.system'"):
        create_optimizer(model, "evil", _target_="os.system")


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 100, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, min_lr_ratio=0.01) == pytest.approx(0.01)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert create_scheduler(optimizer, 10, name="none") is None
    with pytest.raises(ValueError, match=r"scheduler .linear. names no _target_ and is not one of paddy.s "
                                         r"\(cosine, cosine_warmup, none, plateau, step\)"):
        create_scheduler(optimizer, 10, name="linear")
    with pytest.raises(ValueError, match=r"scheduler .step. \(paddy.tasks.optim.step\): .*.warmup_steps."):
        create_scheduler(optimizer, 10, name="step", _target_="paddy.tasks.optim.step", warmup_steps=3)
