"""Where paddy's Hydra configs live, and helpers to compose them without ``@hydra.main``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# Packages whose classes paddy's configs may name as ``_target_`` (Hydra 1.4 asks for a whitelist:
# config-selected targets can run arbitrary code). Extend it for your own blocks, callbacks, data
# layouts and loggers with the environment variable ``PADDY_TRUSTED_TARGETS`` (comma-separated
# patterns, e.g. ``PADDY_TRUSTED_TARGETS='mypkg.*'``) or, from Python, ``paddy.config.TRUSTED_TARGETS``.
TRUSTED_ENV = "PADDY_TRUSTED_TARGETS"
TRUSTED_TARGETS: tuple[str, ...] = (
    "paddy.*", "lightning.*", "pytorch_lightning.*", "torch.*", "torchmetrics.*", "timm.*",
    "albumentations.*", "optuna.*",
) + tuple(p.strip() for p in os.environ.get(TRUSTED_ENV, "").split(",") if p.strip())


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


def trusted_callable(target: str, what: str, error: type[Exception] | None = None) -> Any:
    """The class or function ``target`` names, if the trusted targets allow it; otherwise ``error`` (a
    PaddyError by default) saying so for ``what`` (``"attention 'gc'"``) in one line."""
    from paddy.errors import PaddyError

    try:
        return instantiate({"_target_": target, "_partial_": True}).func
    except Exception as err:  # noqa: BLE001 - Hydra's refusal or an import error, in one line
        reason = " ".join(str(err).split())
        raise (error or PaddyError)(f"{what}: cannot use _target_ {target!r} ({reason}); one of your own needs its "
                                    f"package importable and trusted: {TRUSTED_ENV}='mypkg.*'") from err


def shipped_target(group: str, name: str) -> str:
    """The ``_target_`` of paddy's ``conf/<group>/<name>.yaml``, for configs saved before that group named
    its class (their ``name`` says which file); a name paddy does not ship is a PaddyError listing those."""
    from paddy.errors import PaddyError

    try:
        return str(compose_config([f"{group}={name}"])[group]._target_)
    except Exception as err:  # noqa: BLE001 - Hydra's "could not find <group>/<name>", said plainly
        shipped = ", ".join(sorted(p.stem for p in (config_dir() / group).glob("*.yaml")))
        raise PaddyError(f"{group} {name!r} names no _target_ and is not one of paddy's ({shipped})") from err


def plain(value: Any) -> Any:
    """A config value as plain Python (a Hydra list ``[a,b]`` given on the command line as a list)."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def override_value(value: Any) -> str:
    """``value`` in Hydra's override grammar: strings quoted (quotes escaped), lists and
    dicts recursively, None as ``null``: ``f"key={override_value(v)}"`` sets exactly ``v``."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "\\'") + "'"  # (Hydra unescapes backslashes only before quotes)


def run_stamp() -> str:
    """The name of a run's directory under ``outputs/``: the same in every process of one run.

    Hydra's default is the clock (``%Y-%m-%d/%H-%M-%S``), which each process of a distributed run
    reads for itself. So: in a SLURM job, ``slurm-<job id>[_<array task>][.<step>]`` (also after the job
    is requeued, so ``resume=auto`` finds its checkpoints); under ``torchrun``, the clock of whichever
    process asks first, shared through the rendezvous' key-value store; else the clock.
    (Lightning's own launcher passes rank 0's run directory to the processes it starts.)
    """
    env = os.environ
    if env.get("SLURM_JOB_ID"):
        name = f"slurm-{env.get('SLURM_ARRAY_JOB_ID') or env['SLURM_JOB_ID']}"
        if env.get("SLURM_ARRAY_TASK_ID"):
            name += f"_{env['SLURM_ARRAY_TASK_ID']}"
        if env.get("SLURM_STEP_ID") not in (None, "0", "4294967294"):  # several sruns in one job
            name += f".{env['SLURM_STEP_ID']}"
        return name
    stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
    if env.get("TORCHELASTIC_RUN_ID") and env.get("MASTER_ADDR") and env.get("MASTER_PORT"):
        from torch.distributed import TCPStore

        store = TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), is_master=False, wait_for_workers=False)
        # The first process to ask sets it; an elastic restart of the same run keeps it (resume=auto).
        stamp = store.compare_set("paddy/run_stamp", "", stamp).decode()
    return stamp


if not OmegaConf.has_resolver("paddy.run_stamp"):
    OmegaConf.register_resolver("paddy.run_stamp", run_stamp, use_cache=True)
