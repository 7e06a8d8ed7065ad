"""A network's extra per-sample inputs, set up one way for training, evaluation, prediction and export.

A network names the inputs it takes next to the image in ``input_features`` (``("dct",)`` for
:class:`paddy.models.fusion.DCTFusionClassifier`); each name is computed from the decoded,
un-augmented ``H x W x 3`` uint8 RGB image by an extractor of
:data:`paddy.data.features.FEATURE_EXTRACTORS` (:class:`paddy.data.features.DCTFeatures`), built with
the settings the run's ``model`` config holds under that name (``model.dct = {block, size, normalize}``).
The data module, ``python -m paddy.predict`` and ``python -m paddy.export`` all build them here, so
a model sees the same features whichever of them feeds it.

Importing this module is light (no torch, no Lightning): ``paddy.data`` is imported when the
extractors are built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from paddy.errors import PaddyError

# The constructor arguments of an extractor that a run's ``model.<feature>`` section may set.
EXTRACTOR_OPTIONS = ("block", "size", "normalize")

Extractor = Callable[[Any], Any]  # H x W x 3 uint8 RGB image -> float32 feature vector


class InputFeatureError(PaddyError):
    """A network asks for an input feature that paddy cannot compute."""


def input_features(model: Any) -> tuple[str, ...]:
    """The names of the inputs ``model`` takes besides the image (``()`` for a plain classifier)."""
    return tuple(getattr(model, "input_features", ()))


def feature_extractors(names: Iterable[str], options: Mapping[str, Any] | None = None) -> dict[str, Extractor]:
    """An extractor per feature name, set up as training did (``options[name]``: a run's ``model.dct``, ...)."""
    from paddy.data.features import FEATURE_EXTRACTORS

    extractors: dict[str, Extractor] = {}
    for name in names:
        if name not in FEATURE_EXTRACTORS:
            raise InputFeatureError(f"the model takes an input feature {name!r} that paddy cannot compute "
                                    f"(known: {', '.join(FEATURE_EXTRACTORS)})")
        settings = dict((options or {}).get(name) or {})
        extractors[name] = FEATURE_EXTRACTORS[name](**{k: v for k, v in settings.items() if k in EXTRACTOR_OPTIONS})
    return extractors


def features_of(image: Any, extractors: Mapping[str, Extractor]) -> dict[str, Any]:
    """Each extractor's features of one decoded image, as tensors (what the model's keyword inputs take)."""
    import torch

    return {name: torch.from_numpy(extract(image)) for name, extract in extractors.items()}


def feature_settings(extractors: Mapping[str, Extractor]) -> dict[str, dict[str, Any]]:
    """``{"dct": {"extractor": "paddy.data.features.DCTFeatures", "block": 32, "size": 64, "normalize": true}}``."""
    return {name: {"extractor": f"{type(e).__module__}.{type(e).__qualname__}",
                   **{k: getattr(e, k) for k in EXTRACTOR_OPTIONS if hasattr(e, k)}}
            for name, e in extractors.items()}


__all__ = ["EXTRACTOR_OPTIONS", "InputFeatureError", "feature_extractors", "feature_settings", "features_of",
           "input_features"]
