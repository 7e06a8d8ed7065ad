"""Where paddy's Hydra configs live, and helpers to compose them without ``@hydra.main``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

# Packages whose classes paddy's configs may name as ``_target_`` (Hydra 1.4 asks for a whitelist:
# config-selected targets can run arbitrary code). Extend it for your own callbacks/loggers with
# ``paddy.config.TRUSTED_TARGETS += ("mypackage.*",)``.
TRUSTED_TARGETS: tuple[str, ...] = (
    "paddy.*", "lightning.*", "pytorch_lightning.*", "torch.*", "torchmetrics.*", "timm.*",
    "albumentations.*", "optuna.*",
)


def config_dir() -> Path:
    """``conf/`` of a source checkout, or the copy that wheels carry inside the package."""
    packaged = Path(__file__).resolve().parent / "conf"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "conf"


def compose_config(overrides: list[str] | None = None, config_name: str = "train") -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with CLI-style ``overrides`` (for Python and tests).

    Interpolations of Hydra's runtime (``${hydra:...}``) stay unresolved: set ``paths.output_dir``
    before using the result.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir())):
        return compose(config_name=config_name, overrides=list(overrides or []))


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` restricted to :data:`TRUSTED_TARGETS`."""
    from hydra.utils import instantiate as hydra_instantiate

    return hydra_instantiate(node, _execution_whitelist_=list(TRUSTED_TARGETS), **kwargs)
