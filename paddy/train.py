"""``python -m paddy.train [overrides]``: train one model (or a sweep with ``-m``) from conf/train.yaml."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir
from paddy.errors import in_multirun, reported

log = logging.getLogger("paddy")


@hydra.main(config_path=str(config_dir()), config_name="train", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> float | None:
    from paddy.pipeline import train

    # Bad input or config: one clear message and exit code 2 (a diverged run: 3), not a traceback;
    # in a sweep the error goes on to the sweeper, which records a failed trial.
    with reported(log, reraise=in_multirun()):
        return train(cfg).get("optimized_value")


if __name__ == "__main__":
    main()
