"""``python -m paddy.evaluate ckpt_path=<run dir or .ckpt> [split=test]``: a trained model's full evaluation.

    python -m paddy.evaluate ckpt_path=outputs/2026-11-23/10-41-07                 # best checkpoint, test split
    python -m paddy.evaluate ckpt_path=outputs/.../checkpoints/last.ckpt split=val batch_size=64
    python -m paddy.evaluate ckpt_path=outputs/... +data.root=/mnt/paddy            # the run's data config, moved
    python -m paddy.evaluate ckpt_path=outputs/... data=imagefolder data.root=/x data.image_size=224
    python -m paddy.evaluate ckpt_path=multirun/kfold                              # the folds' ensemble, test split

Data: by default the run's own data config, stored in the checkpoint (same source, same seeded
split, same eval transform), so ``split=test`` is the very test set the run was tested on.
``+data.<key>=...`` overrides single keys of it (``+data.root=``, ``+data.test_limit=``); picking a
group (``data=imagefolder ...``) replaces it with that data config (keep the image size and
transforms of training yourself). The data's classes must be the checkpoint's.

Writes into ``output_dir`` (default ``<run dir>/eval_<split>/``): ``metrics_<split>.json`` (accuracy,
loss, precision/recall/F1 macro + weighted, per-class table, confusion matrix, ROC AUC, latency,
throughput, peak GPU memory), ``classification_report.txt``/``.json``, ``confusion_matrix.png``
(counts), ``confusion_matrix_normalized.png`` (rows sum to 1), ``roc_curves.png`` (binary: one
curve; multiclass: one-vs-rest per class + macro AUC), ``predictions_<split>.csv`` (one row per
sample) and ``eval_config.yaml``. Hydra writes nothing of its own (no ``outputs/`` folder, no log
file): ``hydra.run.dir`` is the working directory and ``hydra.output_subdir`` is null.

Ensembles (``ckpt_path`` a sweep directory or a list, see :mod:`paddy.predict`): each run is
evaluated on the split with its own data config (same images, its own preprocessing; refused when the
runs' splits hold other images, and on ``split=val`` for different k-fold folds, whose val images the
other folds trained on); the ensemble's probabilities are the weighted mean of the runs' softmax outputs
and get the full reports above, in ``<sweep dir>/eval_<split>_ensemble/`` (runs of one sweep) or
``<first run>/eval_<split>_ensemble/``, plus ``ensemble.md``/``.json``: each run's metrics next to the
ensemble's (also printed).

Exit status: 0 when evaluated; 2 for a bad checkpoint, split or data config (one line, no traceback).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.artifacts import write_metrics
from paddy.config import TRUSTED_TARGETS, config_dir, plain
from paddy.errors import PaddyError, reported
from paddy.model_inputs import input_features
from paddy.predict import Member, ensemble_shares, load_members
from paddy.utils.runtime import resolve_channels_last, time_steps

log = logging.getLogger("paddy")

_SPLIT_ALIASES = {"valid": "val", "validation": "val", "testing": "test", "training": "train"}
MAX_ANNOTATED_CLASSES = 30
MAX_LEGEND_CLASSES = 20
# The data keys that decide which images a split holds (compared when an ensemble's members' splits differ).
SPLIT_KEYS = ("source", "root", "split_seed", "val_fraction", "test_fraction", "n_folds", "fold", "train_limit",
              "valid_limit", "test_limit", "on_bad_image")
# The ensemble table's metric columns: metrics key -> header.
ENSEMBLE_COLUMNS = {"accuracy": "accuracy", "f1_macro": "F1 macro", "f1_weighted": "F1 weighted",
                    "precision_macro": "precision macro", "recall_macro": "recall macro", "auc": "AUC",
                    "top3_accuracy": "top-3 acc", "loss": "loss"}


class EvaluationError(PaddyError):
    """An evaluation that cannot be run as asked (unknown split, data whose classes differ, ...)."""


# ---------------------------------------------------------------------------------------------- data


def _data_config(run_config: Mapping[str, Any], override: Mapping[str, Any] | None, batch_size: int | None = None,
                 num_workers: int | None = None) -> dict[str, Any]:
    """The run's data config; a full data config (with ``_target_``) replaces it, a partial one is merged.
    ``batch_size`` and ``num_workers`` (when given) replace its eval batch size and loader processes."""
    base = run_config.get("data")
    if override and "_target_" in override:
        data = dict(override)
    elif not isinstance(base, Mapping) or "_target_" not in base:
        raise EvaluationError("the checkpoint's config has no data section: pass a data config (data=<option>)")
    elif override:
        data = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(base)), OmegaConf.create(dict(override))),
                                      resolve=True)
    else:
        data = dict(base)
    if batch_size is not None:
        data["eval_batch_size"] = int(batch_size)
    if num_workers is not None:
        data["num_workers"] = int(num_workers)
    return data


def _build_datamodule(data: dict[str, Any], seed: Any):
    from paddy.config import instantiate

    datamodule = instantiate(OmegaConf.create(data), _convert_="all")
    if seed is not None:
        datamodule.shuffle_seed = int(seed)
    datamodule.setup("test")
    return datamodule


def _to_device(inputs: Any, device: torch.device, channels_last: bool) -> Any:
    if isinstance(inputs, dict):
        return {k: _to_device(v, device, channels_last and k == "images") for k, v in inputs.items()}
    inputs = inputs.to(device, non_blocking=True)
    if channels_last and inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    return inputs


def _forward(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _batch_len(inputs: Any) -> int:
    return len(inputs["images"]) if isinstance(inputs, dict) else len(inputs)


# ---------------------------------------------------------------------------------------------- metrics


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, loss, precision/recall/F1 (macro, weighted, per class), confusion matrix and ROC AUC
    (binary: the second class's curve; multiclass: one-vs-rest per class and their macro mean).

    Classes without samples (or with nothing but) have no ROC curve: their AUC is null and the
    macro AUC averages the others.
    """
    from torchmetrics.functional.classification import (
        binary_auroc,
        binary_roc,
        multiclass_accuracy,
        multiclass_confusion_matrix,
        multiclass_f1_score,
        multiclass_precision,
        multiclass_recall,
    )

    n = len(class_names)
    logits, labels = logits.float(), labels.long()
    probs = logits.softmax(dim=1)
    kw = {"num_classes": n}
    result: dict[str, Any] = {
        "num_samples": int(len(labels)),
        "accuracy": float(multiclass_accuracy(logits, labels, average="micro", **kw)),
        "loss": float(torch.nn.functional.cross_entropy(logits, labels)) if len(labels) else None,
    }
    for average in ("macro", "weighted"):
        result[f"precision_{average}"] = float(multiclass_precision(logits, labels, average=average, **kw))
        result[f"recall_{average}"] = float(multiclass_recall(logits, labels, average=average, **kw))
        result[f"f1_{average}"] = float(multiclass_f1_score(logits, labels, average=average, **kw))
    if n > 3:
        result["top3_accuracy"] = float(multiclass_accuracy(logits, labels, average="micro", top_k=3, **kw))
    precision = multiclass_precision(logits, labels, average=None, **kw)
    recall = multiclass_recall(logits, labels, average=None, **kw)
    f1 = multiclass_f1_score(logits, labels, average=None, **kw)
    support = torch.bincount(labels, minlength=n)

    curves: dict[str, dict[str, list[float]]] = {}
    aucs: dict[str, float | None] = {}
    positives = [1] if n == 2 else list(range(n))
    for c in positives:
        target = (labels == c).long()
        if 0 < int(target.sum()) < len(target):
            fpr, tpr, _ = binary_roc(probs[:, c], target)
            curves[class_names[c]] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
            aucs[class_names[c]] = float(binary_auroc(probs[:, c], target))
        else:
            aucs[class_names[c]] = None
    defined = [v for v in aucs.values() if v is not None]
    result["auc"] = float(np.mean(defined)) if defined else None
    result["auc_kind"] = f"binary (positive class {class_names[1]!r})" if n == 2 else "one-vs-rest macro"
    result["per_class"] = {
        name: {"precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
               "support": int(support[c]), **({"auc": aucs.get(name)} if n > 2 else {})}
        for c, name in enumerate(class_names)
    }
    result["confusion_matrix"] = multiclass_confusion_matrix(logits, labels, **kw).to(torch.int64).tolist()
    result["_roc_curves"] = curves
    return result


def classification_report(metrics: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A scikit-learn-style text table and its JSON twin."""
    rows = metrics["per_class"]
    width = max([len(str(name)) for name in rows] + [len("weighted avg")]) + 2
    has_auc = any("auc" in v for v in rows.values())
    header = f"{'':<{width}}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}" + (
        f"{'auc':>10}" if has_auc else "")
    lines = [header, ""]

    def fmt(value: Any) -> str:
        return f"{'-':>10}" if value is None else f"{value:>10.4f}"

    for name, row in rows.items():
        lines.append(f"{name:<{width}}{fmt(row['precision'])}{fmt(row['recall'])}{fmt(row['f1'])}{row['support']:>10}"
                     + (fmt(row.get("auc")) if has_auc else ""))
    total = metrics["num_samples"]
    lines.append("")
    lines.append(f"{'accuracy':<{width}}{'':>20}{metrics['accuracy']:>10.4f}{total:>10}")
    averages = {}
    for average, label in (("macro", "macro avg"), ("weighted", "weighted avg")):
        averages[label] = {"precision": metrics[f"precision_{average}"], "recall": metrics[f"recall_{average}"],
                           "f1": metrics[f"f1_{average}"], "support": total}
        auc = fmt(metrics.get("auc")) if has_auc and average == "macro" else ""
        lines.append(f"{label:<{width}}{fmt(averages[label]['precision'])}{fmt(averages[label]['recall'])}"
                     f"{fmt(averages[label]['f1'])}{total:>10}{auc}")
    if metrics.get("auc") is not None:
        lines += ["", f"ROC AUC ({metrics['auc_kind']}): {metrics['auc']:.4f}"]
    report = {"per_class": rows, "accuracy": metrics["accuracy"], **averages, "auc": metrics.get("auc"),
              "auc_kind": metrics.get("auc_kind"), "num_samples": total}
    return "\n".join(lines) + "\n", report


# ---------------------------------------------------------------------------------------------- plots


def _figure(n: int):
    from matplotlib.figure import Figure

    side = min(max(4.5, 0.45 * n + 2.5), 24.0)
    return Figure(figsize=(side + 1.2, side), dpi=100)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, normalized: bool) -> None:
    """Rows = true class, columns = predicted; counts, or each row divided by its total."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    totals = counts.sum(axis=1, keepdims=True)
    values = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0) if normalized else counts
    figure = _figure(n)
    ax = figure.add_subplot(1, 1, 1)
    shown = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=1.0 if normalized else max(int(counts.max()), 1),
                      interpolation="nearest")
    figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04,
                    label="fraction of the true class" if normalized else "images")
    if n <= MAX_ANNOTATED_CLASSES:
        top = float(values.max()) or 1.0
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalized else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if values[i, j] > 0.5 * top else "black")
    if n <= 60:
        labels = [str(name)[:20] for name in class_names]
        ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    accuracy = np.trace(counts) / max(int(counts.sum()), 1)
    kind = "row-normalised" if normalized else "counts"
    ax.set_title(f"confusion matrix, {kind} (accuracy {accuracy:.4f}, n={int(counts.sum())})", fontsize=10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    figure.tight_layout()
    figure.savefig(path)


def plot_roc(curves: Mapping[str, Mapping[str, list[float]]], metrics: Mapping[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 6.5), dpi=100)
    ax = figure.add_subplot(1, 1, 1)
    per_class = metrics["per_class"]
    for k, (name, curve) in enumerate(curves.items()):
        auc = per_class[name].get("auc", metrics.get("auc"))
        label = f"{name} (AUC {auc:.3f})" if k < MAX_LEGEND_CLASSES and auc is not None else None
        ax.plot(curve["fpr"], curve["tpr"], linewidth=1.2, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    auc = metrics.get("auc")
    ax.set_title(f"ROC, {metrics['auc_kind']}: AUC {'n/a' if auc is None else f'{auc:.4f}'}", fontsize=10)
    if len(curves) > MAX_LEGEND_CLASSES:
        ax.text(0.98, 0.02, f"legend: first {MAX_LEGEND_CLASSES} of {len(curves)} classes", ha="right",
                transform=ax.transAxes, fontsize=7)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


# ---------------------------------------------------------------------------------------------- timing


def _forward_seconds(model: torch.nn.Module, inputs: Any, device: torch.device, runs: int,
                     warmup: int) -> list[float]:
    """Wall seconds of each of ``runs`` forward passes on ``inputs``, after ``warmup`` untimed ones."""
    with torch.inference_mode():
        return time_steps(lambda: _forward(model, inputs), runs, warmup, device)


def measure_latency(model: torch.nn.Module, sample: Any, device: torch.device, runs: int = 50,
                    warmup: int = 5) -> dict[str, Any] | None:
    """Milliseconds per forward pass of one image (batch 1): median and 90th percentile of ``runs``."""
    if runs < 1:
        return None
    times = sorted(t * 1000 for t in _forward_seconds(model, sample, device, runs, warmup))
    return {"median_ms": round(statistics.median(times), 4), "p90_ms": round(times[int(0.9 * (len(times) - 1))], 4),
            "runs": runs, "warmup": warmup, "batch_size": 1}


def measure_batch_throughput(model: torch.nn.Module, batch: Any, device: torch.device, runs: int = 10,
                             warmup: int = 2) -> float | None:
    """Images/s of forward passes on one full eval batch (median time of ``runs``, after ``warmup``)."""
    if runs < 1:
        return None
    elapsed = statistics.median(_forward_seconds(model, batch, device, runs, warmup))
    return round(_batch_len(batch) / elapsed, 1) if elapsed > 0 else None


# ---------------------------------------------------------------------------------------------- evaluate


def evaluate(ckpt_path: Any, split: str = "test", data_config: Mapping[str, Any] | None = None,
             output_dir: str | Path | None = None, device: str | torch.device | None = None,
             batch_size: int | None = None, num_workers: int | None = None, latency_runs: int = 50,
             throughput_runs: int = 10, weights: str = "auto", trusted: bool = False,
             ensemble_weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Evaluate a trained run's checkpoint, or an ensemble of runs, on one split of its data; write the reports.

    Args:
        ckpt_path: a ``.ckpt`` file or a run directory (its best checkpoint); a sweep directory or a
            list names several runs (:func:`paddy.predict.member_runs`): an ensemble, whose
            probabilities are the weighted mean of its members' softmax outputs.
        split: ``train``, ``val`` or ``test``.
        data_config: ``None``: each run's data config (from its checkpoint); a mapping with
            ``_target_``: a full data config used instead; otherwise keys merged into each run's.
        output_dir: where the files go (default :func:`default_output_dir`).
        device: ``cuda``, ``cpu``, ... (default: CUDA when available).
        batch_size: eval batch size (default: the run's ``data.eval_batch_size`` / ``batch_size``).
        num_workers: loader processes (default: the data config's).
        latency_runs, throughput_runs: timed forward passes (0 skips that measurement).
        weights: ``auto`` / ``raw`` / ``ema`` (see :func:`paddy.utils.checkpoints.load_trained_model`).
        trusted: read a checkpoint that needs more than the weights-only loader (can run code).
        ensemble_weights: one weight per run, in order (normalised; None: equal).

    Returns:
        The contents of ``metrics_<split>.json``; for an ensemble also ``members`` (each run's metrics).
    """
    started = time.perf_counter()
    split = _SPLIT_ALIASES.get(str(split).lower(), str(split).lower())
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    members = load_members(ckpt_path, device=device, weights=weights, trusted=trusted)
    shares = ensemble_shares(ensemble_weights, members)
    datas = [_data_config(m.config, data_config, batch_size, num_workers) for m in members]
    _check_fold_split(members, split)
    out = Path(output_dir) if output_dir else default_output_dir(members, split)
    out.mkdir(parents=True, exist_ok=True)
    runs = _run_members(members, datas, split, device, latency_runs, throughput_runs)
    class_names = members[0].class_names
    logits, labels = ensemble_logits([run.logits for run in runs], shares), runs[0].labels
    metrics = classification_metrics(logits, labels, class_names)
    curves = metrics.pop("_roc_curves")
    result: dict[str, Any] = {
        **_identity(members, split), "num_classes": len(class_names), "classes": list(class_names), **metrics,
        **ensemble_speed([run.speed for run in runs]), "device": str(device), "torch": torch.__version__,
    }
    write_reports(out, metrics, curves, class_names)
    _write_predictions(out / f"predictions_{split}.csv", runs[0].items, labels, logits, class_names)
    OmegaConf.save(_eval_config(members, shares, split, datas), out / "eval_config.yaml")
    result["output_dir"] = str(out)
    if len(members) > 1:
        result["ensemble_weights"] = shares
        result["members"] = member_results(members, shares, runs)
        write_ensemble_table(out, result)
    result["eval_time_s"] = round(time.perf_counter() - started, 2)
    write_metrics(out, result, f"metrics_{split}.json")
    return result


@dataclass
class MemberRun:
    """One member's outputs on the split: logits and labels (CPU), the split's items and its speed."""

    logits: torch.Tensor
    labels: torch.Tensor
    items: list[str]
    speed: dict[str, Any]


def _identity(members: Sequence[Member], split: str) -> dict[str, Any]:
    """What was evaluated: one run's checkpoint, run directory and model name; an ensemble's, as lists."""
    if len(members) == 1:
        member = members[0]
        return {"checkpoint": str(member.checkpoint), "run_dir": str(member.run_dir), "split": split,
                "model_name": (member.config.get("model") or {}).get("name")}
    return {"checkpoint": [str(m.checkpoint) for m in members], "run_dir": [str(m.run_dir) for m in members],
            "split": split, "model_name": [(m.config.get("model") or {}).get("name") for m in members]}


def _eval_config(members: Sequence[Member], shares: Sequence[float], split: str,
                 datas: Sequence[dict[str, Any]]) -> DictConfig:
    """What ``eval_config.yaml`` records: the checkpoint(s), the split and the data config(s) (+ the weights)."""
    if len(members) == 1:
        return OmegaConf.create({"ckpt_path": str(members[0].checkpoint), "split": split, "data": datas[0]})
    return OmegaConf.create({"ckpt_path": [str(m.checkpoint) for m in members], "ensemble_weights": list(shares),
                             "split": split, "data": list(datas)})


def default_output_dir(members: Sequence[Member], split: str) -> Path:
    """One run: ``<run dir>/eval_<split>``. An ensemble: ``<sweep dir>/eval_<split>_ensemble`` when its runs
    are the jobs of one sweep directory (``multirun/kfold/eval_test_ensemble``), else the same folder in the
    first run's directory."""
    if len(members) == 1:
        return members[0].run_dir / f"eval_{split}"
    sweeps = {m.sweep for m in members}
    base = members[0].sweep if len(sweeps) == 1 and members[0].sweep is not None else members[0].run_dir
    return base / f"eval_{split}_ensemble"


def _check_fold_split(members: Sequence[Member], split: str) -> None:
    """Refuse the val (or train) split of an ensemble of runs trained as different k-fold folds: each fold's val
    split is other images, and the others trained on them; the test split, set aside first, is the folds' common
    one. The runs' own data configs decide (a ``+data.fold=`` override does not undo what they trained on)."""
    folds = [((m.config.get("data") or {}).get("n_folds"), (m.config.get("data") or {}).get("fold")) for m in members]
    if split == "test" or not any(n for n, _ in folds):
        return
    other = next((i for i, fold in enumerate(folds) if fold != folds[0]), None)
    if other is not None:
        raise EvaluationError(
            f"split={split}: {members[0].name} (data.fold={folds[0][1]} of n_folds={folds[0][0]}) and "
            f"{members[other].name} (data.fold={folds[other][1]} of n_folds={folds[other][0]}) are different k-fold "
            f"folds, so their {split} splits hold other images (and each fold's val images trained the other folds): "
            f"evaluate a fold ensemble on split=test")


def _run_members(members: Sequence[Member], datas: Sequence[dict[str, Any]], split: str, device: torch.device,
                 latency_runs: int, throughput_runs: int) -> list[MemberRun]:
    """Each member's logits on ``split`` of its own data config (its image size, normalisation and extra inputs),
    refused when a member's split holds other images than the first's. Members whose data configs split alike
    share one set-up data module."""
    modules: dict[str, Any] = {}
    runs: list[MemberRun] = []
    for member, data in zip(members, datas):
        key = json.dumps({"data": {k: v for k, v in data.items() if not (split == "test" and k == "fold")},
                          "seed": member.config.get("seed")}, sort_keys=True, default=str)
        if key not in modules:
            modules[key] = _split_datamodule(data, member.config, member.class_names, split)
        datamodule = modules[key]
        datamodule.request_features(input_features(member.model), member.config.get("model"))
        items = list(datamodule.split_indices[split].items)
        if runs and items != runs[0].items:
            raise EvaluationError(_split_difference(members[0], member, datas[0], data, split, len(runs[0].items),
                                                    len(items)))
        runs.append(_run_member(member, datamodule, split, items, device, latency_runs, throughput_runs))
    return runs


def _split_difference(first: Member, other: Member, first_data: Mapping[str, Any], data: Mapping[str, Any],
                      split: str, n_first: int, n_other: int) -> str:
    keys = [key for key in SPLIT_KEYS if first_data.get(key) != data.get(key)]
    differences = [f"data.{key}={data.get(key)} vs {first_data.get(key)}"
                   if not isinstance(data.get(key), Mapping) else f"another data.{key}" for key in keys]
    return (f"{other.name} and {first.name} have different {split} splits ({n_other} vs {n_first} images"
            + "".join(f"; {d}" for d in differences) + "): an ensemble is evaluated on runs of the same data split")


def _run_member(member: Member, datamodule: Any, split: str, items: list[str], device: torch.device,
                latency_runs: int, throughput_runs: int) -> MemberRun:
    """One member's logits on ``split`` (:func:`predict_split`) and its speed (:func:`measure_speed`)."""
    model = member.model
    channels_last = resolve_channels_last((member.config.get("model") or {}).get("channels_last"),
                                          device.type == "cuda") and device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(datamodule.dataset(split), batch_size=datamodule.eval_batch_size,
                                         shuffle=False, num_workers=datamodule.num_workers,
                                         pin_memory=device.type == "cuda")
    log.info("Evaluating %s on the %s split (%d images, batch %d) on %s", member.checkpoint, split,
             len(loader.dataset), datamodule.eval_batch_size, device)
    logits, labels, first_batch, loop_time = predict_split(model, loader, device, channels_last, split)
    speed = measure_speed(model, first_batch, device, latency_runs, throughput_runs, len(labels), loop_time)
    return MemberRun(logits, labels, items, speed)


def ensemble_logits(logits: Sequence[torch.Tensor], shares: Sequence[float]) -> torch.Tensor:
    """The members' logits as one model's: one member's as they are; several: the log of the ``shares``-weighted
    mean of their softmax outputs (so its softmax is that mean and its cross-entropy the ensemble's loss)."""
    if len(logits) == 1:
        return logits[0]
    mean = sum(share * member.float().softmax(dim=1) for member, share in zip(logits, shares))
    return mean.clamp_min(torch.finfo(mean.dtype).tiny).log()


def ensemble_speed(speeds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One member's :func:`measure_speed`; an ensemble's members run one after another: their latencies add up
    (median and p90: the sums of theirs), as do their seconds per image; peak memory: the largest."""
    if len(speeds) == 1:
        return dict(speeds[0])
    latencies = [speed["latency_ms"] for speed in speeds]
    latency = None if None in latencies else {
        **latencies[0], "median_ms": round(sum(lat["median_ms"] for lat in latencies), 4),
        "p90_ms": round(sum(lat["p90_ms"] for lat in latencies), 4)}

    def rate(key: str) -> float | None:
        values = [speed[key] for speed in speeds]
        return None if not all(values) else round(1 / sum(1 / v for v in values), 1)

    peaks = [speed["peak_gpu_memory_mb"] for speed in speeds if speed["peak_gpu_memory_mb"] is not None]
    return {"latency_ms": latency, "throughput_img_s": rate("throughput_img_s"),
            "throughput_batch_size": speeds[0]["throughput_batch_size"], "end_to_end_img_s": rate("end_to_end_img_s"),
            "peak_gpu_memory_mb": max(peaks) if peaks else None}


def _split_datamodule(data: dict[str, Any], run_config: Mapping[str, Any], class_names: Sequence[str], split: str):
    """The data module of ``data``, set up as the run's (its seed), refused when its classes are not the
    checkpoint's or it has no ``split`` (each member then requests its own extra inputs)."""
    datamodule = _build_datamodule(data, run_config.get("seed"))
    if list(datamodule.classes) != list(class_names):
        raise EvaluationError(f"the data's classes {_short_list(datamodule.classes)} are not the checkpoint's "
                              f"{_short_list(class_names)}: evaluate on data with the classes it was trained on")
    if not datamodule.has_split(split):
        available = ", ".join(datamodule.split_indices) or "none"
        raise EvaluationError(f"the data has no {split!r} split (available splits: {available})")
    return datamodule


def predict_split(model: torch.nn.Module, loader: Any, device: torch.device, channels_last: bool,
                  split: str) -> tuple[torch.Tensor, torch.Tensor, Any, float]:
    """The logits and labels of every batch of ``loader`` (on the CPU), the first batch of inputs (on the
    device, for the timings) and the loop's wall seconds. Resets CUDA's peak-memory counter first."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    all_logits, all_labels = [], []
    first_batch = None
    loop_started = time.perf_counter()
    with torch.inference_mode():
        for inputs, labels in loader:
            inputs = _to_device(inputs, device, channels_last)
            if first_batch is None:
                first_batch = inputs
            all_logits.append(_forward(model, inputs).float().cpu())
            all_labels.append(labels)
    loop_time = time.perf_counter() - loop_started
    if not all_logits:
        raise EvaluationError(f"the {split} split is empty")
    return torch.cat(all_logits), torch.cat(all_labels), first_batch, loop_time


def measure_speed(model: torch.nn.Module, batch: Any, device: torch.device, latency_runs: int,
                  throughput_runs: int, num_samples: int, loop_time: float) -> dict[str, Any]:
    """Batch-1 latency and full-batch throughput on ``batch``, the evaluation loop's images/s and the
    peak GPU memory (CUDA only) since :func:`predict_split` began."""
    single = batch[:1] if not isinstance(batch, dict) else {k: v[:1] for k, v in batch.items()}
    latency = measure_latency(model, single, device, runs=latency_runs)
    throughput = measure_batch_throughput(model, batch, device, runs=throughput_runs)
    peak = torch.cuda.max_memory_allocated(device) / 1024**2 if device.type == "cuda" else None
    return {
        "latency_ms": latency,
        "throughput_img_s": throughput,
        "throughput_batch_size": _batch_len(batch),
        "end_to_end_img_s": round(num_samples / loop_time, 1) if loop_time > 0 else None,
        "peak_gpu_memory_mb": None if peak is None else round(peak, 1),
    }


def write_reports(out: Path, metrics: Mapping[str, Any], curves: Mapping[str, Mapping[str, list[float]]],
                  class_names: Sequence[str]) -> None:
    """``classification_report.txt``/``.json``, the confusion matrices (counts, row-normalised) and the ROC curves."""
    text, report = classification_report(metrics)
    (out / "classification_report.txt").write_text(text)
    (out / "classification_report.json").write_text(json.dumps(report, indent=2))
    matrix = np.asarray(metrics["confusion_matrix"])
    plot_confusion(matrix, class_names, out / "confusion_matrix.png", normalized=False)
    plot_confusion(matrix, class_names, out / "confusion_matrix_normalized.png", normalized=True)
    plot_roc(curves, metrics, out / "roc_curves.png")


def _write_predictions(path: Path, items: Sequence[str], labels: torch.Tensor, logits: torch.Tensor,
                       class_names: Sequence[str]) -> None:
    probs = logits.softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "label", "predicted", "confidence", "correct"])
        for item, true, pred, conf in zip(items, labels.tolist(), predicted.tolist(), confidence.tolist()):
            writer.writerow([item, class_names[true], class_names[pred], f"{conf:.6f}", int(true == pred)])


def _short_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(map(str, list(names)[:limit]))
    return f"[{shown}{', ...' if len(names) > limit else ''}] ({len(names)})"


def member_results(members: Sequence[Member], shares: Sequence[float], runs: Sequence[MemberRun]) -> list[dict]:
    """Each member's own metrics on the split (as :func:`classification_metrics` gives them) with its weight."""
    rows = []
    for member, share, run in zip(members, shares, runs):
        metrics = classification_metrics(run.logits, run.labels, member.class_names)
        metrics.pop("_roc_curves")
        rows.append({"name": member.name, "checkpoint": str(member.checkpoint),
                     "model_name": (member.config.get("model") or {}).get("name"),
                     "image_size": (member.config.get("data") or {}).get("image_size"), "weight": share,
                     **metrics, **run.speed})
    return rows


def ensemble_table(result: Mapping[str, Any]) -> str:
    """A Markdown table: one row per member of an ensemble and one for the ensemble (``result``: its
    :func:`evaluate` result), with :data:`ENSEMBLE_COLUMNS` where any row has a value."""
    rows = [*result["members"], {**result, "name": "**ensemble**", "model_name": "", "image_size": "",
                                 "weight": sum(m["weight"] for m in result["members"])}]
    keys = [key for key in ENSEMBLE_COLUMNS if any(row.get(key) is not None for row in rows)]
    lines = ["| run | model | img px | weight | " + " | ".join(ENSEMBLE_COLUMNS[k] for k in keys) + " |",
             "|---|---|---:|---:|" + "---:|" * len(keys)]
    for row in rows:
        values = ["-" if row.get(k) is None else f"{row[k]:.4f}" for k in keys]
        lines.append(f"| {row['name']} | {row.get('model_name') or ''} | {row.get('image_size') or ''} | "
                     f"{row['weight']:.3f} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def write_ensemble_table(out: Path, result: Mapping[str, Any]) -> None:
    """``ensemble.md`` (:func:`ensemble_table` under a title) and ``ensemble.json`` (each member's metrics and
    the ensemble's) for an ensemble's :func:`evaluate` result."""
    title = (f"# Ensemble of {len(result['members'])} runs, {result['split']} split ({result['num_samples']} "
             f"images)\n\nThe ensemble's probabilities: the weighted mean of its members' softmax outputs.\n\n")
    (out / "ensemble.md").write_text(title + ensemble_table(result))
    summary = {key: result.get(key) for key in ("num_samples", *ENSEMBLE_COLUMNS, "latency_ms", "throughput_img_s")}
    write_metrics(out, {"split": result["split"], "classes": result["classes"],
                        "ensemble_weights": result["ensemble_weights"], "members": result["members"],
                        "ensemble": summary}, "ensemble.json")


def format_summary(metrics: Mapping[str, Any]) -> str:
    """A few lines for the console."""

    def num(key: str, digits: int = 4) -> str:
        value = metrics.get(key)
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    latency = metrics.get("latency_ms") or {}
    members = metrics.get("members")
    evaluated = f"ensemble of {len(members)} runs" if members else metrics["checkpoint"]
    lines = [
        f"{metrics['split']} split: {metrics['num_samples']} images, {metrics['num_classes']} classes ({evaluated})",
        f"  accuracy {num('accuracy')}  loss {num('loss')}  F1 macro {num('f1_macro')}  weighted {num('f1_weighted')}"
        f"  AUC {num('auc')}",
        f"  precision macro {num('precision_macro')}  recall macro {num('recall_macro')}",
        f"  latency (batch 1, median{', members summed' if members else ''}) {latency.get('median_ms', 'n/a')} ms"
        f"  throughput "
        f"{metrics.get('throughput_img_s') or 'n/a'} img/s at batch {metrics.get('throughput_batch_size')} "
        f"on {metrics['device']}"
        + (f"  peak GPU memory {metrics['peak_gpu_memory_mb']} MB" if metrics.get("peak_gpu_memory_mb") else ""),
        f"  files in {metrics['output_dir']}",
    ]
    return "\n".join(lines) + (f"\n\n{ensemble_table(metrics)}" if members else "")


@hydra.main(config_path=str(config_dir()), config_name="evaluate", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> None:
    with reported(log):
        data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") else None
        ckpt_path, shares = (plain(v) for v in (cfg.ckpt_path, cfg.get("ensemble_weights")))
        metrics = evaluate(ckpt_path, split=cfg.split, data_config=data, output_dir=cfg.get("output_dir"),
                           device=cfg.get("device"), batch_size=cfg.get("batch_size"),
                           num_workers=cfg.get("num_workers"), latency_runs=int(cfg.get("latency_runs", 50)),
                           throughput_runs=int(cfg.get("throughput_runs", 10)), weights=cfg.get("weights", "auto"),
                           trusted=bool(cfg.get("trust_checkpoint", False)), ensemble_weights=shares)
    print(format_summary(metrics))


if __name__ == "__main__":
    main()
