"""Attention blocks: shapes, gradients, autocast, any-size self-attention, knobs and their errors."""

from __future__ import annotations

import pytest
import torch

from paddy.config import config_dir
from paddy.models.attention import (
    CBAM,
    BoTSelfAttention,
    CoordinateAttention,
    EfficientChannelAttention,
    LinearSelfAttention,
    attention_knobs,
    attention_spec,
    create_attention,
)
from paddy.models.attention.linear import relu_linear_attention

C = 32
NAMES = ["none", "se", "ca", "eca", "cbam", "bot", "bot_linear", "hybrid"]
# CBAM's default MLP over 32 channels has 2 hidden ReLUs, which can both be off for a random input
GRAD_KNOBS = {"cbam": {"reduction": 4}}


def feature_map(h: int = 7, w: int = 7, c: int = C, seed: int = 0) -> torch.Tensor:
    return torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_every_shipped_block_is_tested():
    """conf/attention holds these blocks (and two CBAM ablations); a new one shows up here."""
    shipped = {p.stem for p in (config_dir() / "attention").glob("*.yaml")}
    assert shipped == {*NAMES, "cbam_channel", "cbam_spatial"}


@pytest.mark.parametrize("name", NAMES)
def test_shape_and_gradients(name):
    torch.manual_seed(0)
    block = create_attention(name, C, **GRAD_KNOBS.get(name, {}))
    x = feature_map().requires_grad_(True)
    out = block(x)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in block.named_parameters():
        assert param.grad is not None, f"{name}: no gradient for {pname}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", NAMES)
def test_autocast_bfloat16(name):
    torch.manual_seed(0)
    block = create_attention(name, C)
    x = feature_map()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.shape == x.shape
    assert torch.isfinite(out.float()).all()
    if name != "none":
        out.float().sum().backward()
        assert all(p.grad is not None for p in block.parameters())


@pytest.mark.parametrize("name", ["bot", "bot_linear", "hybrid"])
def test_self_attention_runs_at_any_size(name):
    block = create_attention(name, C, heads=4)
    for size in (7, 10, 16):
        assert block(feature_map(size, size)).shape == (2, C, size, size)
    assert block(feature_map(5, 9)).shape == (2, C, 5, 9)


def test_bot_refuses_tiny_maps_and_bad_heads():
    with pytest.raises(ValueError, match=r"feature map 1x1 is too small for bot attention.*data\.image_size"):
        BoTSelfAttention(C)(feature_map(1, 1))
    with pytest.raises(ValueError, match=r"feature map 1x1 is too small"):
        create_attention("hybrid", C)(feature_map(1, 1))
    for name in ("bot", "bot_linear", "hybrid"):
        with pytest.raises(ValueError, match=r"channels=32 is not divisible by heads=5"):
            create_attention(name, C, heads=5)
    with pytest.raises(ValueError, match=r"heads must be a positive integer, got 0"):
        create_attention("bot", C, heads=0)
    assert BoTSelfAttention(C, heads=5, dim_head=8).proj.in_channels == 40  # dim_head given: no divisibility


def test_bot_starts_near_identity():
    x = feature_map()
    for block in (BoTSelfAttention(C), LinearSelfAttention(C)):
        out = block(x)
        assert (out - x).abs().max() < 0.1 * x.abs().max()
        assert torch.allclose(block.gamma.gamma, torch.full((C,), 1e-2))


def test_bot_relative_positions_matter():
    torch.manual_seed(0)
    block = BoTSelfAttention(C, heads=2).eval()
    with torch.no_grad():
        block.gamma.gamma.fill_(1.0)
    x = feature_map(4, 4)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))

    def permuted(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(2)[..., perm].reshape(t.shape)

    with torch.no_grad():
        # with relative tables, moving the positions around changes more than their order
        assert not torch.allclose(block(permuted(x)), permuted(block(x)), atol=1e-4)
        before = block(x)
        block.rel_w.add_(torch.randn_like(block.rel_w))
        assert not torch.allclose(block(x), before, atol=1e-4)
        # without them the block is pure content attention: permutation-equivariant over positions
        block.rel_h.zero_()
        block.rel_w.zero_()
        assert torch.allclose(block(permuted(x)), permuted(block(x)), atol=1e-5)


def test_bot_relative_tables_are_interpolated():
    block = BoTSelfAttention(C, feat_size=7)
    assert block.rel_h.shape == (13, C // 4)
    from paddy.models.attention.bot import resize_rel_table

    table = torch.arange(13.0).unsqueeze(1)
    resized = resize_rel_table(table, 10)
    assert resized.shape == (19, 1)
    assert resized[0, 0] == 0 and resized[-1, 0] == 12 and resized[9, 0] == 6  # ends and offset 0 kept
    assert resize_rel_table(table, 7) is table


def test_linear_attention_matches_quadratic_reference():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    eps = 1e-6
    out = relu_linear_attention(q, k, v, eps)
    weights = torch.relu(q) @ torch.relu(k).transpose(-1, -2)  # B x heads x N x N
    reference = (weights @ v) / (weights.sum(-1, keepdim=True) + eps)
    torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert relu_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()).dtype == torch.float32


def test_eca_kernel_size():
    assert EfficientChannelAttention(C, kernel_size=5).eca.conv.kernel_size == (5,)
    assert create_attention("eca", C, kernel_size=9).kernel_size == 9
    assert EfficientChannelAttention(C).kernel_size == 3  # adaptive: |(log2 32 + 1) / 2|_odd = 3
    assert EfficientChannelAttention(1024).kernel_size == 5  # |(10 + 1) / 2| = 5
    with pytest.raises(ValueError, match=r"kernel_size must be odd, got 4"):
        EfficientChannelAttention(C, kernel_size=4)


def test_cbam_halves():
    x = feature_map()
    channel_only = CBAM(C, channel=True, spatial=False)
    spatial_only = create_attention("cbam", C, channel=False, kernel_size=3)
    assert channel_only.spatial is None and channel_only.channel.fc1.out_channels == 2
    assert spatial_only.channel is None and spatial_only.spatial.conv.conv.kernel_size == (3, 3)
    assert channel_only(x).shape == spatial_only(x).shape == x.shape
    with pytest.raises(ValueError, match=r"channel=false and spatial=false"):
        CBAM(C, channel=False, spatial=False)


@pytest.mark.parametrize(("channels", "reduction", "width"), [(32, 32, 8), (256, 32, 8), (1024, 32, 32), (64, 4, 16)])
def test_coordinate_attention_width(channels, reduction, width):
    block = CoordinateAttention(channels, reduction=reduction)
    assert block.rd_channels == width == max(8, channels // reduction)


def test_factory_errors_and_knobs():
    with pytest.raises(ValueError, match=r"attention 'cbma' names no _target_ and is not one of paddy's "
                                         r"\(bot, bot_linear, ca, cbam, cbam_channel, cbam_spatial, eca, hybrid, "
                                         r"none, se\)"):
        create_attention("cbma", C)
    with pytest.raises(ValueError, match=r"attention 'ca' \(paddy.models.attention.CoordinateAttention\) has no knob "
                                         r"'heads' \(its knobs: reduction\)"):
        create_attention("ca", C, heads=4)
    with pytest.raises(ValueError, match=r"attention 'none' \(torch.nn.Identity\) has no knob 'reduction' "
                                         r"\(its knobs: none\)"):
        create_attention("none", C, reduction=8)
    assert isinstance(create_attention("none", C, heads=None), torch.nn.Identity)
    assert create_attention("ca", C, reduction=4, heads=None, kernel_size=None).rd_channels == 8
    assert attention_knobs(CBAM) == ("reduction", "kernel_size", "channel", "spatial")
    assert attention_knobs("paddy.models.attention.HybridAttention")[:2] == ("reduction", "heads")
    assert attention_knobs(torch.nn.Identity) == ()
    with pytest.raises(ValueError, match=r"reduction must be a positive integer, got 0"):
        create_attention("se", C, reduction=0)


def test_spec_reads_target_name_placement_and_knobs():
    spec = attention_spec({"_target_": "paddy.models.attention.CBAM", "name": "cbam", "placement": "blocks",
                           "reduction": 4, "kernel_size": None})
    assert (spec.name, spec.placement, spec.knobs, spec.enabled) == ("cbam", "blocks", {"reduction": 4}, True)
    assert isinstance(spec.make(C), CBAM) and spec.make(C).channel.fc1.out_channels == C // 4
    assert not attention_spec({"_target_": "torch.nn.Identity", "name": "none"}).enabled
    # a run saved before attention configs named their class: the shipped config supplies it
    old_run = attention_spec({"name": "eca", "kernel_size": 5})
    assert old_run.target == "paddy.models.attention.EfficientChannelAttention"
    with pytest.raises(ValueError, match=r"attention.placement='neck' \(expected one of: head, blocks\)"):
        attention_spec({"_target_": "paddy.models.attention.CBAM", "placement": "neck"})
    with pytest.raises(ValueError, match=r"cannot use _target_ 'os.system'.*PADDY_TRUSTED_TARGETS='mypkg.\*'"):
        attention_spec({"_target_": "os.system", "name": "evil"})
