"""``python -m paddy.train [overrides]``: train one model (or a sweep with ``-m``) from conf/train.yaml."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir

log = logging.getLogger("paddy")


@hydra.main(config_path=str(config_dir()), config_name="train", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> float | None:
    from paddy.data.errors import DataSourceError, DataValidationError
    from paddy.models.backbone import PretrainedWeightsError
    from paddy.models.factory import ModelConfigError
    from paddy.pipeline import RunConfigError, train
    from paddy.tasks.guard import NonFiniteLossError

    try:
        metrics = train(cfg)
    except (DataSourceError, DataValidationError, PretrainedWeightsError, ModelConfigError, RunConfigError) as err:
        # Bad input or config: one clear message and a non-zero exit, not a traceback.
        log.error("%s", err)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(2)
    except NonFiniteLossError as err:
        # Diverged: one line; the checkpoints written so far stay. A sweep records a failed trial.
        log.error("%s", err)
        if HydraConfig.get().mode.name == "MULTIRUN":
            raise
        sys.exit(3)
    return metrics.get("optimized_value")


if __name__ == "__main__":
    main()
