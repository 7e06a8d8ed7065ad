"""DCT features and the DCT-fusion classifier.

Reference for the features: ``scipy.fft.dctn(gray / 255, norm="ortho") / sqrt(H * W)`` (the
orthonormal 2-D DCT-II, which ``cv2.dct`` computes, with paddy's normalisation).
"""

from __future__ import annotations

import math
import pickle

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from paddy.data.features import DCTFeatures, dct_features
from paddy.models.backbone import create_backbone
from paddy.models.fusion import DCTFusionClassifier


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image with some texture: gradients, a blob and noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    blob = np.exp(-((x - width / 3) ** 2 + (y - height / 2) ** 2) / 50)
    base = 60 + 100 * x / width + 40 * np.sin(y / 5.0) + 30 * blob
    rgb = np.stack([base, base * 0.8 + 20, 255 - base], axis=-1) + rng.normal(0, 8, (height, width, 3))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _reference(gray: np.ndarray, block: int) -> np.ndarray:
    scipy_fft = pytest.importorskip("scipy.fft")
    coeffs = scipy_fft.dctn(gray.astype(np.float64) / 255.0, norm="ortho") / math.sqrt(gray.size)
    return coeffs[:block, :block].ravel()


def test_dct_features_shape_type_and_determinism():
    image = _image(96, 80)
    features = dct_features(image)
    assert features.shape == (1024,) and features.dtype == np.float32
    assert np.array_equal(features, DCTFeatures()(image.copy()))
    assert np.abs(features).max() <= 2.0 + 1e-6
    assert DCTFeatures(block=8, size=16)(image).shape == (64,)


def test_dct_features_equal_the_scipy_reference():
    image = _image(64, 48)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    as_given = DCTFeatures(block=32, size=None)(image)
    np.testing.assert_allclose(as_given, _reference(gray, 32), atol=1e-5)
    assert as_given[0] == pytest.approx(gray.mean() / 255.0, abs=1e-5)  # DC coefficient = mean intensity

    large = _image(128, 96)
    resized = cv2.resize(cv2.cvtColor(large, cv2.COLOR_RGB2GRAY), (64, 64), interpolation=cv2.INTER_AREA)
    resized_features = DCTFeatures(size=64)(large)
    np.testing.assert_allclose(resized_features, _reference(resized, 32), atol=1e-5)
    assert resized_features[0] == pytest.approx(cv2.cvtColor(large, cv2.COLOR_RGB2GRAY).mean() / 255.0, abs=2e-3)

    raw = DCTFeatures(size=None, normalize=False)(image)  # the old scripts' raw cv2.dct of the 0-255 image
    np.testing.assert_allclose(raw, _reference(gray, 32) * 255.0 * math.sqrt(gray.size), rtol=1e-4, atol=1e-2)


def test_dct_features_of_a_known_cosine_and_a_gray_rgb_image():
    # A gray image (equal RGB channels) of mean 128/255 plus a horizontal cosine of frequency v = 3:
    # only C[0, 0] = 128/255 and C[0, 3] = amplitude / sqrt(2) are non-zero (up to uint8 rounding).
    height, width, amplitude = 32, 64, 100
    x = np.arange(width)
    row = 128 + amplitude * np.cos(np.pi * (2 * x + 1) * 3 / (2 * width))
    gray = np.rint(np.tile(row, (height, 1))).astype(np.uint8)
    features = DCTFeatures(block=8, size=None)(np.repeat(gray[..., None], 3, axis=2)).reshape(8, 8)
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[0, 0] = gray.mean() / 255.0
    expected[0, 3] = amplitude / 255.0 / math.sqrt(2)
    np.testing.assert_allclose(features, expected, atol=2e-3)
    np.testing.assert_array_equal(features.ravel(), DCTFeatures(block=8, size=None)(gray))  # H x W gray too


def test_dct_features_reject_small_images_and_bad_settings():
    with pytest.raises(ValueError, match=r"image of 20x40 px is smaller than the DCT block 32x32"):
        DCTFeatures(size=None)(_image(20, 40))
    with pytest.raises(ValueError, match="size=16"):
        DCTFeatures(block=32, size=16)
    with pytest.raises(ValueError, match="must be even"):
        DCTFeatures(block=8, size=33)
    with pytest.raises(ValueError, match="uint8"):
        DCTFeatures()(_image(64, 64).astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        DCTFeatures()(np.zeros((64, 64, 4), dtype=np.uint8))
    assert DCTFeatures(size=64)(_image(20, 40)).shape == (1024,)  # resized first: fine
    assert DCTFeatures(block=32, size=None)(_image(33, 35)).shape == (1024,)  # odd sides lose one row/column


def test_dct_features_pickle():
    extractor = DCTFeatures(block=16, size=32, normalize=False)
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone == extractor and repr(clone) == "DCTFeatures(block=16, size=32, normalize=False)"
    image = _image(50, 70)
    assert np.array_equal(clone(image), extractor(image))


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    return create_backbone("test_resnet")


def _model(backbone: nn.Module, num_classes: int = 3, attention: nn.Module | None = None) -> DCTFusionClassifier:
    torch.manual_seed(0)
    return DCTFusionClassifier(backbone, backbone.num_features, num_classes, attention=attention)


def test_fusion_logits_and_parameter_groups(backbone):
    attention = nn.Conv2d(backbone.num_features, backbone.num_features, 1)
    model = _model(backbone, num_classes=5, attention=attention)
    assert model.input_features == ("dct",) and DCTFusionClassifier.input_features == ("dct",)
    logits = model(torch.randn(4, 3, 32, 32), torch.randn(4, 1024))
    assert logits.shape == (4, 5)

    groups = model.backbone_parameters() + model.head_parameters()
    assert len({id(p) for p in groups}) == len(groups)
    assert {id(p) for p in groups} == {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in attention.parameters()} <= {id(p) for p in model.head_parameters()}

    with pytest.raises(ValueError, match=r"dct features of shape \(4, 64\)"):
        model(torch.randn(4, 3, 32, 32), torch.randn(4, 64))


def test_fusion_layers_match_the_old_scripts(backbone):
    model = _model(backbone)
    block = ["Linear", "BatchNorm1d", "ReLU", "Dropout"]
    assert [type(m).__name__ for m in model.dct_mlp] == block * 2
    assert [type(m).__name__ for m in model.head] == block * 2 + ["Linear"]
    dct_linear = [(m.in_features, m.out_features) for m in model.dct_mlp if isinstance(m, nn.Linear)]
    assert dct_linear == [(1024, 256), (256, 128)]
    fused_linear = [(m.in_features, m.out_features) for m in model.head if isinstance(m, nn.Linear)]
    assert fused_linear == [(backbone.num_features + 128, 256), (256, 128), (128, 3)]
    assert [m.p for m in model.dct_mlp if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    assert [m.p for m in model.head if isinstance(m, nn.Dropout)] == [0.3, 0.2]


def test_fusion_learns_a_fixed_batch():
    torch.manual_seed(0)
    model = _model(create_backbone("test_resnet"))
    generator = torch.Generator().manual_seed(0)
    images, dct = torch.randn(8, 3, 32, 32, generator=generator), torch.randn(8, 1024, generator=generator)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(images, dct), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(images, dct), labels).item()
    assert losses[-1] < 0.5 * losses[0] and final < losses[0], losses
