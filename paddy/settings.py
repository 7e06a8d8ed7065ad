"""The settings of a run that can be judged from the config alone, checked before anything is built.

One table (:data:`TRAIN_RULES`): a key, what it must be, and the check. :func:`check_settings`
raises one :class:`~paddy.errors.SettingError` naming the key, the value given and what is allowed,
before any data is read or model built. The library classes (the datamodule, the optimizer
factory) use the same checks (:func:`positive_int`, ...) for callers that skip the config.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from paddy.errors import SettingError

# The largest training image side: beyond it one batch no longer fits any GPU (and OpenCV fails to
# allocate the resize), so a typo like data.image_size=100000 stops here instead.
MAX_IMAGE_SIZE = 4096


def _number(key: str, value: Any, kind: type, wanted: str) -> Any:
    if isinstance(value, bool) or value is None:
        raise SettingError(f"{key}={value!r}: expected {wanted}")
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SettingError(f"{key}={value!r}: expected {wanted}") from None
    if kind is int and float(value) != number:  # 2.5 is not an integer
        raise SettingError(f"{key}={value!r}: expected {wanted}")
    if kind is float and not math.isfinite(number):
        raise SettingError(f"{key}={value!r}: expected {wanted}")
    return number


def _checked(key: str, value: Any, kind: type, wanted: str, ok: Callable[[Any], bool]) -> Any:
    number = _number(key, value, kind, wanted)
    if not ok(number):
        raise SettingError(f"{key}={value!r}: expected {wanted}")
    return number


def positive_int(key: str, value: Any, maximum: int | None = None) -> int:
    """``value`` as an int >= 1 (and <= ``maximum``), else a :class:`SettingError` naming ``key``."""
    wanted = "a positive integer" + (f" up to {maximum}" if maximum else "")
    return _checked(key, value, int, wanted, lambda n: n >= 1 and (maximum is None or n <= maximum))


def optional_positive_int(key: str, value: Any) -> int | None:
    return None if value is None else positive_int(key, value)


def non_negative_int(key: str, value: Any) -> int:
    return _checked(key, value, int, "an integer >= 0", lambda n: n >= 0)


def fraction(key: str, value: Any) -> float:
    """A fraction of a dataset: ``0 <= value < 1``."""
    return _checked(key, value, float, "a number with 0 <= value < 1", lambda n: 0 <= n < 1)


def split_fractions(val_fraction: Any, test_fraction: Any) -> tuple[float, float]:
    """``data.val_fraction`` and ``data.test_fraction``: each a fraction, and some training data left."""
    val, test = fraction("data.val_fraction", val_fraction), fraction("data.test_fraction", test_fraction)
    if val + test >= 1:
        raise SettingError(f"data.val_fraction + data.test_fraction = {val + test:g} leaves no training data "
                           f"(expected < 1)")
    return val, test


def positive_float(key: str, value: Any) -> float:
    return _checked(key, value, float, "a number > 0", lambda n: n > 0)


def non_negative_float(key: str, value: Any) -> float:
    return _checked(key, value, float, "a number >= 0", lambda n: n >= 0)


def max_epochs(key: str, value: Any) -> int:
    """Lightning's ``max_epochs``: at least one epoch, or -1 for no limit (0 would only test)."""
    return _checked(key, value, int, "a positive integer (or -1: no limit)", lambda n: n >= 1 or n == -1)


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else check(key, value)


def _cam_methods() -> tuple[str, ...]:
    from paddy.explain import CAM_METHODS  # imports Hydra and torch: only when the setting is checked

    return tuple(CAM_METHODS)


SAMPLERS = ("shuffle", "balanced")  # data.sampler: the training order (see paddy.data.datamodule)

TRAIN_RULES: dict[str, Callable[[str, Any], Any]] = {
    "seed": _optional(lambda k, v: _number(k, v, int, "an integer or null")),
    "data.image_size": lambda k, v: positive_int(k, v, MAX_IMAGE_SIZE),
    "data.batch_size": positive_int,
    "data.eval_batch_size": optional_positive_int,
    "data.num_workers": _optional(non_negative_int),
    "data.val_fraction": fraction,
    "data.test_fraction": fraction,
    "data.train_limit": optional_positive_int,
    "data.valid_limit": optional_positive_int,
    "data.test_limit": optional_positive_int,
    "data.cache_size": _optional(lambda k, v: positive_int(k, v, MAX_IMAGE_SIZE)),
    "optimizer.lr": positive_float,
    "optimizer.head_lr": _optional(positive_float),
    "optimizer.weight_decay": non_negative_float,
    "trainer.max_epochs": _optional(max_epochs),
    "trainer.accumulate_grad_batches": _optional(positive_int),
    "trainer.gradient_clip_val": _optional(non_negative_float),
    "model.label_smoothing": _optional(fraction),
    "model.class_weights": lambda key, value: class_weights(OmegaConf.to_container(value)
                                                            if OmegaConf.is_config(value) else value),
    "data.sampler": lambda key, value: one_of(key, value, SAMPLERS),
    "explain.method": lambda key, value: one_of(key, value, _cam_methods()),
    "explain.n_images": positive_int,
    "logger": lambda key, value: logger_packages(value),
    "save_predictions": lambda key, value: one_of(key, value, ("auto", True, False)),
}


def check_folds(n_folds: Any, fold: Any) -> tuple[int | None, int]:
    """``data.n_folds`` (null, or an integer >= 2) and ``data.fold`` (``0..n_folds-1``)."""
    if n_folds is None:
        return None, 0
    n = _checked("data.n_folds", n_folds, int, "null or an integer >= 2", lambda v: v >= 2)
    return n, _checked("data.fold", fold, int, f"an integer from 0 to {n - 1} (data.n_folds={n})", lambda v: 0 <= v < n)


# Loggers whose package comes with an optional extra of paddy: class name -> (module, extra).
LOGGER_EXTRAS = {"MLFlowLogger": ("mlflow", "paddy[mlflow]")}


def logger_packages(loggers: Any) -> None:
    """Each logger of the ``logger`` group that needs an optional extra has its package: without it the
    run stops here, before any data is read, with the install command (not at the end of setup)."""
    for name, node in (loggers.items() if OmegaConf.is_dict(loggers) else []):
        target = str(node.get("_target_", "")) if OmegaConf.is_dict(node) else ""
        module, extra = LOGGER_EXTRAS.get(target.rsplit(".", 1)[-1], (None, None))
        if module is None:
            continue
        try:
            __import__(module)
        except ImportError:
            raise SettingError(f"logger.{name} ({target}) needs the {module} package, which is not installed: "
                               f"pip install '{extra}'") from None


def one_of(key: str, value: Any, allowed: tuple[Any, ...]) -> Any:
    if value not in allowed:
        raise SettingError(f"{key}={value!r}: expected one of {', '.join(map(str, allowed))}")
    return value


def class_weights(spec: Any, train_counts: list[int] | None = None) -> list[float] | None:
    """``model.class_weights``: None (no weighting) | ``auto`` (inverse class frequency in the training
    split, ``n / (k * n_c)``: each class weighs the same in total; the mean over the images is 1) | one
    positive weight per class. Without ``train_counts`` only the form is checked (the settings check,
    before the data is read)."""
    if spec is None or (spec == "auto" and train_counts is None):
        return None
    if spec == "auto":
        if min(train_counts) < 1:
            raise SettingError(f"model.class_weights=auto: a class has no training image ({train_counts})")
        return [sum(train_counts) / (len(train_counts) * n) for n in train_counts]
    weights = list(spec) if isinstance(spec, (list, tuple)) else []
    positive = [isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) and w > 0 for w in weights]
    if not weights or not all(positive) or (train_counts is not None and len(weights) != len(train_counts)):
        wanted = f"{len(train_counts)} positive numbers" if train_counts is not None else "positive numbers"
        raise SettingError(f"model.class_weights={spec!r}: expected null, auto, or {wanted} (one per class)")
    return [float(w) for w in weights]


def check_settings(cfg: DictConfig, rules: dict[str, Callable[[str, Any], Any]] = TRAIN_RULES) -> None:
    """Raise :class:`SettingError` for the first required value left unset (``???``) or value that
    breaks its rule. Keys the config does not have are not checked."""
    missing = _missing_keys(cfg)
    if missing:
        raise SettingError(f"{missing[0]} is required: set {missing[0]}=<value> on the command line"
                           + (f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    for key, check in rules.items():
        if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            continue
        check(key, OmegaConf.select(cfg, key))
    data = cfg.get("data") or {}
    if "val_fraction" in data and "test_fraction" in data:
        split_fractions(data.val_fraction, data.test_fraction)
    if "n_folds" in data:
        check_folds(data.n_folds, data.get("fold", 0))
    if OmegaConf.is_dict(cfg.get("attention")):  # its class, knobs and placement (no module is built)
        from paddy.models.attention import attention_spec

        attention_spec(OmegaConf.to_container(cfg.attention, resolve=True))


_ABSENT = object()


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    """Keys left at ``???`` (OmegaConf.missing_keys would resolve every interpolation on the way)."""
    if not OmegaConf.is_dict(node):
        return []
    found = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if path == "hydra":
            continue
        if OmegaConf.is_missing(node, key):
            found.append(path)
        elif not OmegaConf.is_interpolation(node, key):
            found += _missing_keys(node._get_node(key), f"{path}.")
    return sorted(found)


def check_writable(folder: str | Path, what: str) -> None:
    """Create ``folder`` if needed and write a file in it, or raise :class:`SettingError` saying
    which folder and why: a run learns this before its first epoch, not after it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".paddy-write-check-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        who = f" (running as uid {os.getuid()})" if hasattr(os, "getuid") else ""
        raise SettingError(f"{what} {folder} is not writable: {reason}{who}; pick another with "
                           f"hydra.run.dir=<folder> or fix its permissions") from None


def check_fresh_or_resumed(run_dir: Path, resume: Any, ckpt_path: Any) -> None:
    """A run directory that already holds a run's checkpoints is continued (``resume=auto``), never
    silently trained over from scratch."""
    from paddy.pipeline import resumable_checkpoints

    if resume == "auto" or ckpt_path or not resumable_checkpoints(run_dir):
        return
    raise SettingError(f"the run directory {run_dir} already holds a run's checkpoints: pass resume=auto to continue "
                       f"it, or hydra.run.dir=<another folder> for a new run")


class EarlyChecks(Callback):
    """A Hydra callback (``hydra.callbacks`` in conf/train.yaml) that judges the settings and the
    run directory before Hydra writes into it: a bad value leaves no empty run folder behind, and a
    folder that cannot be written gets one line instead of a logging traceback."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        def checks() -> None:
            check_settings(config)
            check_fresh_or_resumed(Path(config.hydra.run.dir), config.get("resume"), config.get("ckpt_path"))
            check_writable(config.hydra.run.dir, "the run directory")

        self._exit_on_error(checks)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_on_error(lambda: check_writable(config.hydra.sweep.dir, "the sweep directory"))

    @staticmethod
    def _exit_on_error(check: Callable[[], Any]) -> None:
        try:
            check()
        except SettingError as err:
            # Hydra has not set up logging yet and would print a traceback for an exception.
            print(f"[paddy][ERROR] - {err}", file=sys.stderr)
            sys.exit(err.exit_code)


__all__ = ["MAX_IMAGE_SIZE", "TRAIN_RULES", "EarlyChecks", "check_settings", "check_writable", "fraction", "max_epochs",
           "non_negative_float", "non_negative_int", "optional_positive_int", "positive_float", "positive_int",
           "split_fractions"]
