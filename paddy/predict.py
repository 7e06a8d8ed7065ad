"""``python -m paddy.predict ckpt_path=<run dir or .ckpt> input=<image | folder | csv>``: label new images.

    python -m paddy.predict ckpt_path=outputs/2026-11-23/10-41-07 input=leaf.jpg
    python -m paddy.predict ckpt_path=outputs/... input=photos/ tta=true topk=5 output=photos.csv
    python -m paddy.predict ckpt_path=outputs/... input=/data/paddy/test_images   # + submission.csv
    python -m paddy.predict ckpt_path=multirun/kfold input=/data/paddy/test_images # the 5 folds' ensemble
    python -m paddy.predict 'ckpt_path=[outputs/a,outputs/b]' ensemble_weights=[2,1] input=photos/

Inputs: one image; a folder (every image file below it, recursively, in sorted order); or a CSV
whose path column is ``csv_column``, else the first of ``image_path``, ``path``, ``filename``,
``image_id``, else its first column (relative paths are relative to ``image_root``, default the
CSV's folder). Any size and format OpenCV reads (a 4000-px photo, grayscale, RGBA, 16-bit PNG): each
image is decoded to 8-bit RGB (:func:`paddy.data.imageio.read_image`) and goes through the run's
own eval transform and normalisation; DCT-fusion models also get the DCT features of the image.

Writes ``output`` (default ``predictions.csv``): ``path, label, confidence, top1_label, top1_prob,
... topK_prob``. ``tta=true`` averages the softmax of each image and of its horizontal mirror.
Images that cannot be read are skipped: one stderr line each and ``skipped.txt`` (``path<TAB>reason``)
next to the CSV (a stale ``skipped.txt`` from an earlier run is removed when nothing is skipped).
For the Kaggle Paddy Doctor ``test_images/`` folder (or with ``submission=true``) a
``submission.csv`` (``image_id,label``) is written next to the CSV too.

Ensembles: ``ckpt_path`` may name several runs, as a list or as a sweep (multirun) directory (its job
directories that hold a checkpoint, e.g. the folds of ``experiment=kfold``). Their class lists must be
the same (names and order); each image is decoded once and preprocessed for each run as that run was
trained (image size, mean/std, DCT features), ``tta`` applies per run, and the probabilities are the
mean of the runs' softmax outputs, weighted by ``ensemble_weights`` (normalised; default equal).

Exit status: 0 when at least one image was labelled; 1 when no image could be read; 2 for a bad
checkpoint or input path (one line, no traceback).
"""

from __future__ import annotations

import csv
import logging
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torch.utils.data import DataLoader, Dataset

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir, plain
from paddy.data.imageio import IMAGE_SUFFIXES, ImageDecodeError, check_and_decode
from paddy.errors import PaddyError, reported
from paddy.model_inputs import feature_extractors, features_of, input_features
from paddy.report import find_dirs, is_sweep_dir
from paddy.utils.checkpoints import CheckpointError, load_trained_model, resolve_checkpoint, run_dir_of

log = logging.getLogger("paddy")

PATH_COLUMNS = ("image_path", "path", "filename", "image_id")
SUBMISSION_FOLDER = "test_images"


class PredictionError(PaddyError):
    """Inputs that cannot be predicted at all (no such path, no images in a folder, an empty CSV)."""


class EnsembleError(PaddyError):
    """Runs that cannot be averaged into one ensemble (other class lists, weights that do not fit them)."""


# ---------------------------------------------------------------------------------------------- inputs


def collect_inputs(source: str | Path | Sequence[str | Path], csv_column: str | None = None,
                   image_root: str | Path | None = None) -> list[Path]:
    """The image paths an ``input=`` names: an image, a folder (recursive, sorted), a CSV, or a list of these."""
    if isinstance(source, (list, tuple, ListConfig)):
        return [p for item in source for p in collect_inputs(str(item), csv_column, image_root)]
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise PredictionError(f"input={source}: no such file or directory")
    if path.is_dir():
        found = sorted((p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(path).parts)),
                       key=lambda p: p.relative_to(path).as_posix())
        if not found:
            raise PredictionError(f"input={source}: no image files in this folder "
                                  f"(looked for {', '.join(IMAGE_SUFFIXES)}, recursively)")
        return found
    if path.suffix.lower() == ".csv":
        return _csv_paths(path, csv_column, image_root)
    return [path]


def _csv_paths(path: Path, column: str | None, image_root: str | Path | None) -> list[Path]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c for c in (reader.fieldnames or []) if c is not None]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise PredictionError(f"input={path}: cannot read the CSV ({err})") from err
    if not columns:
        raise PredictionError(f"input={path}: the CSV has no header row")
    by_name = {c.strip().lower(): c for c in columns}
    if column:
        if column.strip().lower() not in by_name:
            raise PredictionError(f"input={path}: no column {column!r} (columns: {', '.join(columns)})")
        chosen = by_name[column.strip().lower()]
    else:
        chosen = next((by_name[c] for c in PATH_COLUMNS if c in by_name), columns[0])
    base = Path(image_root).expanduser() if image_root else path.parent
    paths = [base / value.strip() for row in rows if (value := (row.get(chosen) or "")).strip()]
    if not paths:
        raise PredictionError(f"input={path}: no paths in column {chosen!r}")
    log.info("%s: %d paths from column %r (relative to %s)", path, len(paths), chosen, base)
    return paths


# ---------------------------------------------------------------------------------------------- members


@dataclass
class Member:
    """One run of an ensemble (a single model is an ensemble of one): its network and its run config,
    whose data section is this member's own preprocessing (image size, mean/std, extra inputs)."""

    name: str  # the run as given (``outputs/...``) or as found in a sweep (``multirun/kfold/3``)
    checkpoint: Path
    model: torch.nn.Module
    class_names: list[str]
    config: dict[str, Any]
    sweep: Path | None = None  # the sweep directory it was found in; None: named directly

    @property
    def run_dir(self) -> Path:
        return run_dir_of(self.checkpoint)


def member_runs(ckpt_path: Any) -> list[tuple[Path, Path | None]]:
    """The runs a ``ckpt_path=`` names, in order, each with the sweep it was found in (or None).

    A run directory or ``.ckpt`` file stands for itself; a sweep (multirun) directory, as
    :func:`paddy.report.is_sweep_dir` knows one, for its job directories that hold a checkpoint (the
    five folds of ``multirun/kfold``), in job order; a list (``ckpt_path=[a,b,c]``) for all of its entries'.
    """
    entries = list(ckpt_path) if isinstance(ckpt_path, (list, tuple, ListConfig)) else [ckpt_path]
    if not entries:
        raise EnsembleError("ckpt_path=[]: name a run directory, a .ckpt file or a sweep directory")
    runs: list[tuple[Path, Path | None]] = []
    for entry in entries:
        path = Path(str(entry)).expanduser()
        if (path.is_dir() and path.name != "checkpoints" and not (path / "checkpoints").is_dir()
                and is_sweep_dir(path)):
            runs += [(job, path) for job in _sweep_jobs(path)]
        else:
            runs.append((path, None))
    return runs


def _sweep_jobs(sweep: Path) -> list[Path]:
    """The runs under a sweep directory that hold a checkpoint (``2/`` before ``10/``); the others are
    named in a warning (a failed or unfinished job is left out, not fatal)."""
    jobs, left_out = [], []
    for run in sorted(find_dirs(sweep)[0], key=_natural_key):
        try:
            resolve_checkpoint(run)
            jobs.append(run)
        except CheckpointError:
            left_out.append(run)
    for run in left_out:
        log.warning("%s: no checkpoint (a failed or unfinished job): left out of the ensemble", run)
    if not jobs:
        raise EnsembleError(f"ckpt_path={sweep}: a sweep directory without a run that holds a checkpoint "
                            f"(expected <job>/checkpoints/*.ckpt in {len(left_out)} job folder(s))")
    return jobs


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def load_members(ckpt_path: Any, device: str | torch.device | None = "cpu", weights: str = "auto",
                 trusted: bool = False) -> list[Member]:
    """Load every run ``ckpt_path`` names (see :func:`member_runs`), refusing runs of other class lists.
    ``weights`` and ``trusted`` as for :func:`paddy.utils.checkpoints.load_trained_model`, for each run."""
    members = []
    for path, sweep in member_runs(ckpt_path):
        checkpoint = resolve_checkpoint(path)
        model, class_names, config = load_trained_model(checkpoint, device=device, weights=weights, trusted=trusted)
        members.append(Member(str(path), checkpoint, model, class_names, config, sweep))
    check_same_classes(members)
    if len(members) > 1:
        log.info("Ensemble of %d runs: %s", len(members), ", ".join(m.name for m in members))
    return members


def check_same_classes(members: Sequence[Member]) -> None:
    """Refuse, in one line naming the two runs and the difference, members whose class lists (names and
    order: the meaning of each output) are not the first member's."""
    first = members[0]
    for other in members[1:]:
        if other.class_names != first.class_names:
            raise EnsembleError(f"runs of different class lists cannot be ensembled: {other.name} vs {first.name}: "
                                f"{_class_difference(first.class_names, other.class_names, other.name)}")


def _class_difference(first: Sequence[str], other: Sequence[str], other_name: str) -> str:
    missing = [name for name in first if name not in other]
    extra = [name for name in other if name not in first]
    if not missing and not extra:
        if len(first) != len(other):
            return f"{len(other)} classes vs {len(first)} (repeated names)"
        at = next(i for i, (a, b) in enumerate(zip(first, other)) if a != b)
        return f"the same {len(first)} classes in another order (class {at} is {other[at]!r} vs {first[at]!r})"
    parts = [f"{other_name} lacks {_names(missing)}"] if missing else []
    parts += [f"{other_name} has {_names(extra)} that the other lacks"] if extra else []
    return "; ".join(parts)


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def ensemble_shares(weights: Sequence[Any] | None, members: Sequence[Member]) -> list[float]:
    """Each member's share of the average: ``ensemble_weights`` (one per member, in order, >= 0) divided by
    their sum; None: equal shares (an ensemble of one: 1.0)."""
    n = len(members)
    if weights is None:
        return [1.0 / n] * n
    values = list(weights) if isinstance(weights, (list, tuple, ListConfig)) else None
    if values is None or len(values) != n:
        given = f"{len(values)} value(s)" if values is not None else "not a list"
        raise EnsembleError(f"ensemble_weights={weights}: {given} for {n} run(s) ({', '.join(m.name for m in members)})"
                            f": give one weight per run, in that order")
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise EnsembleError(f"ensemble_weights={weights}: every weight must be a number") from None
    bad = [v for v in numbers if not math.isfinite(v) or v < 0]
    if bad or sum(numbers) <= 0:
        reason = f"{bad[0]:g} is not a finite number >= 0" if bad else "at least one must be > 0"
        raise EnsembleError(f"ensemble_weights={weights}: {reason}")
    return [v / sum(numbers) for v in numbers]


# ---------------------------------------------------------------------------------------------- inference


class _ImageViews(Dataset):
    """``(index, views, error)`` per path, errors instead of exceptions: each image is decoded once and put
    through every member's preprocessing, ``views[m] = (image tensor, features, mirrored features)``
    (mirrored: for ``tta``, when the member takes extra inputs)."""

    def __init__(self, paths: Sequence[Path], preprocessing: Sequence[tuple[Any, dict[str, Any]]], tta: bool,
                 sides: Sequence[int | None] | None = None):
        self.paths, self.preprocessing, self.tta = list(paths), list(preprocessing), tta
        # Per member, the shorter side its preprocessing needs (member_decode_side): a JPEG is decoded at the smallest
        # scale that has it, once per distinct side, so every member sees what it would see alone.
        self.sides = list(sides) if sides is not None else [None] * len(self.preprocessing)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, list[tuple[Any, Any, Any]] | None, str | None]:
        path = self.paths[i]
        try:
            decoded: dict[int | None, np.ndarray] = {}
            for side in self.sides:
                if side not in decoded:  # checked as strictly at every scale
                    problem, decoded[side] = check_and_decode(path, side)
                    if problem:
                        return i, None, problem
            views = [self._view(decoded[side], transform, features)
                     for side, (transform, features) in zip(self.sides, self.preprocessing)]
        except ImageDecodeError as err:
            return i, None, str(err).split(": ", 1)[-1]
        except Exception as err:  # an image the transform or a feature cannot take: skip it, say why
            return i, None, f"{type(err).__name__}: {err}"
        return i, views, None

    def _view(self, image: np.ndarray, transform: Any, features: dict[str, Any]) -> tuple[Any, Any, Any]:
        extras = features_of(image, features)
        mirrored = None
        if self.tta and features:
            mirrored = features_of(np.ascontiguousarray(image[:, ::-1]), features)
        return transform(image=image)["image"], extras, mirrored


def _as_list(batch: list) -> list:
    return batch


def _probabilities(model: torch.nn.Module, images: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(images, **extras) if extras else model(images)
    return logits.float().softmax(dim=1)


def member_preprocessing(member: Member) -> tuple[Any, dict[str, Any]]:
    """The member's own eval transform (its image size, mean and std) and extra-input extractors (its DCT
    settings), as its run's data module built them."""
    from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

    data = member.config.get("data") or {}
    transform = build_transform((data.get("transforms") or {}).get("eval"), data.get("mean") or IMAGENET_MEAN,
                                data.get("std") or IMAGENET_STD)
    return transform, feature_extractors(input_features(member.model), member.config.get("model"))


def member_decode_side(config: dict[str, Any], features: dict[str, Any]) -> int | None:
    """The shorter side a run's eval preprocessing needs of a decoded photo
    (:func:`paddy.data.transforms.decode_side`); None (the full size) when the run turned
    ``data.scaled_decode`` off."""
    from paddy.data.transforms import decode_side

    data = config.get("data") or {}
    if not data.get("scaled_decode", True):
        return None
    return decode_side(data.get("image_size"), [(data.get("transforms") or {}).get("eval")], features)


def ensemble_probabilities(members: Sequence[Member], paths: Sequence[Path], shares: Sequence[float],
                           tta: bool = False, batch_size: int = 32, device: str | torch.device = "cpu",
                           num_workers: int = 0) -> tuple[torch.Tensor, list[str | None]]:
    """Per image, the members' softmax outputs averaged with ``shares`` (``len(paths) x classes`` on the CPU; a
    row of NaN for an image that could not be read), and why each image could not be read (None: it was).

    Each image is decoded once and preprocessed for each member as its run was; ``tta``: each member's
    softmax is the mean of the image's and its horizontal mirror's. One member with share 1: its own softmax.
    """
    device = torch.device(device)
    probs = torch.full((len(paths), len(members[0].class_names)), float("nan"))
    errors: list[str | None] = [None] * len(paths)
    preprocessing = [member_preprocessing(m) for m in members]
    sides = [member_decode_side(m.config, features) for m, (_, features) in zip(members, preprocessing)]
    loader = DataLoader(_ImageViews(paths, preprocessing, tta, sides),
                        batch_size=int(batch_size), num_workers=int(num_workers), collate_fn=_as_list)
    with torch.inference_mode():
        for batch in loader:
            for i, _, error in batch:
                errors[i] = error
                if error is not None:
                    log.debug("skipped %s: %s", paths[i], error)
            good = [item for item in batch if item[2] is None]
            if good:
                rows = torch.tensor([item[0] for item in good])
                probs[rows] = sum(share * _member_probabilities(member, [item[1][m] for item in good], device, tta)
                                  for m, (member, share) in enumerate(zip(members, shares))).cpu()
    return probs, errors


def _member_probabilities(member: Member, views: Sequence[tuple[Any, Any, Any]], device: torch.device,
                          tta: bool) -> torch.Tensor:
    """One member's softmax of a batch of its views (with ``tta``, averaged with the mirrored images')."""
    names = list(views[0][1])
    images = torch.stack([view[0] for view in views]).to(device)
    extras = {name: torch.stack([view[1][name] for view in views]).to(device) for name in names}
    probs = _probabilities(member.model, images, extras)
    if tta:
        mirrored = {name: torch.stack([view[2][name] for view in views]).to(device) for name in names}
        probs = (probs + _probabilities(member.model, torch.flip(images, dims=[3]), mirrored)) / 2
    return probs


def predict(ckpt_path: Any, inputs: Sequence[str | Path], tta: bool = False, topk: int = 3,
            batch_size: int = 32, device: str | torch.device | None = None, num_workers: int = 0,
            weights: str = "auto", trusted: bool = False,
            ensemble_weights: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """Label images with a trained run's model, or with an ensemble of runs.

    ``ckpt_path``: a run directory or ``.ckpt`` file; a sweep directory or a list names several runs
    (see :func:`member_runs`), whose softmax outputs are averaged, weighted by ``ensemble_weights``
    (one per run, normalised; None: equal). ``weights`` picks each run's EMA or raw weights.

    Returns one dict per input, in order: ``path``, ``label``, ``confidence``, ``topk`` (a list of
    ``{"label", "prob"}``, best first) and ``error``. An image that cannot be read has ``error`` set
    to the reason and ``label``/``confidence`` None (nothing is raised for it).
    """
    if int(batch_size) < 1:
        raise PredictionError(f"batch_size={batch_size} (expected >= 1)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    members = load_members(ckpt_path, device=device, weights=weights, trusted=trusted)
    shares = ensemble_shares(ensemble_weights, members)
    paths = [Path(str(p)) for p in inputs]
    probs, errors = ensemble_probabilities(members, paths, shares, tta, batch_size, device, num_workers)
    class_names = members[0].class_names
    top_p, top_i = probs.topk(max(1, min(int(topk), len(class_names))), dim=1)
    results: list[dict[str, Any]] = []
    for i, path in enumerate(paths):
        if errors[i] is not None:
            results.append({"path": str(path), "label": None, "confidence": None, "topk": [], "error": errors[i]})
            continue
        ranked = [{"label": class_names[c], "prob": float(p)} for p, c in zip(top_p[i].tolist(), top_i[i].tolist())]
        results.append({"path": str(path), "label": ranked[0]["label"], "confidence": ranked[0]["prob"],
                        "topk": ranked, "error": None})
    return results


# ---------------------------------------------------------------------------------------------- files


def write_predictions(path: Path, results: Sequence[dict[str, Any]], topk: int) -> None:
    """``path, label, confidence, top1_label, top1_prob, ...`` for the labelled images."""
    path.parent.mkdir(parents=True, exist_ok=True)
    good = [r for r in results if r.get("error") is None]
    k = max([len(r["topk"]) for r in good] + [0]) if good else topk
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "confidence"] + [f"top{j}_{x}" for j in range(1, k + 1)
                                                           for x in ("label", "prob")])
        for r in good:
            ranked = [v for entry in r["topk"] for v in (entry["label"], f"{entry['prob']:.6f}")]
            writer.writerow([r["path"], r["label"], f"{r['confidence']:.6f}", *ranked])


def write_submission(path: Path, results: Sequence[dict[str, Any]]) -> int:
    """Kaggle's ``image_id,label`` (the file name and the predicted class); returns the row count."""
    good = [r for r in results if r.get("error") is None]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image_id", "label"])
        for r in good:
            writer.writerow([Path(r["path"]).name, r["label"]])
    return len(good)


def _wants_submission(flag: Any, source: Any) -> bool:
    if flag is not None:
        return bool(flag)
    if isinstance(source, (list, tuple, ListConfig)):
        return False
    path = Path(str(source)).expanduser()
    return path.is_dir() and path.resolve().name == SUBMISSION_FOLDER


@hydra.main(config_path=str(config_dir()), config_name="predict", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> None:
    source, ckpt_path, shares = (plain(cfg.get(key)) for key in ("input", "ckpt_path", "ensemble_weights"))
    with reported(log):
        paths = collect_inputs(source, cfg.get("csv_column"), cfg.get("image_root"))
        log.info("Predicting %d image(s) with %s%s", len(paths), ckpt_path, " (+ flip TTA)" if cfg.tta else "")
        results = predict(ckpt_path, paths, tta=bool(cfg.tta), topk=int(cfg.topk),
                          batch_size=int(cfg.batch_size), device=cfg.get("device"),
                          num_workers=int(cfg.get("num_workers") or 0), weights=cfg.get("weights", "auto"),
                          trusted=bool(cfg.get("trust_checkpoint", False)), ensemble_weights=shares)
    output = Path(cfg.output).expanduser()
    output.parent.mkdir(parents=True, exist_ok=True)
    skipped = [r for r in results if r["error"] is not None]
    skipped_file = output.parent / "skipped.txt"
    for r in skipped:
        print(f"skipped {r['path']}: {r['error']}", file=sys.stderr)
    if skipped:
        skipped_file.write_text("".join(f"{r['path']}\t{r['error']}\n" for r in skipped))
    elif skipped_file.is_file():
        skipped_file.unlink()
    if len(skipped) == len(results):
        print(f"error: none of the {len(results)} input image(s) could be read (see {skipped_file})", file=sys.stderr)
        sys.exit(1)
    write_predictions(output, results, int(cfg.topk))
    good = [r for r in results if r["error"] is None]
    for r in good[:10]:
        print(f"{r['path']}: {r['label']} ({r['confidence']:.3f})")
    if len(good) > 10:
        print(f"... and {len(good) - 10} more")
    print(f"{len(good)} image(s) labelled -> {output}" + (f"; {len(skipped)} skipped -> {skipped_file}"
                                                           if skipped else ""))
    if _wants_submission(cfg.get("submission"), source):
        submission = output.parent / "submission.csv"
        rows = write_submission(submission, results)
        print(f"Kaggle submission: {submission} ({rows} rows"
              + (f"; {len(skipped)} unreadable test images are missing from it)" if skipped else ")"))


if __name__ == "__main__":
    main()
