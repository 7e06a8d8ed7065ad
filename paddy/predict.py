"""``python -m paddy.predict ckpt_path=<run dir or .ckpt> input=<image | folder | csv>``: label new images.

    python -m paddy.predict ckpt_path=outputs/2026-11-23/10-41-07 input=leaf.jpg
    python -m paddy.predict ckpt_path=outputs/... input=photos/ tta=true topk=5 output=photos.csv
    python -m paddy.predict ckpt_path=outputs/... input=/data/paddy/test_images   # + submission.csv

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

Exit status: 0 when at least one image was labelled; 1 when no image could be read; 2 for a bad
checkpoint or input path (one line, no traceback).
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir
from paddy.data.imageio import IMAGE_SUFFIXES, ImageDecodeError, check_image_file, read_image
from paddy.errors import PaddyError, reported
from paddy.model_inputs import feature_extractors, features_of, input_features
from paddy.utils.checkpoints import load_trained_model

log = logging.getLogger("paddy")

PATH_COLUMNS = ("image_path", "path", "filename", "image_id")
SUBMISSION_FOLDER = "test_images"


class PredictionError(PaddyError):
    """Inputs that cannot be predicted at all (no such path, no images in a folder, an empty CSV)."""


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


# ---------------------------------------------------------------------------------------------- inference


class _ImageFiles(Dataset):
    """``(index, image tensor, features, mirrored features, error)`` per path; errors instead of exceptions."""

    def __init__(self, paths: Sequence[Path], transform: Any, features: dict[str, Any], tta: bool):
        self.paths, self.transform, self.features, self.tta = list(paths), transform, features, tta

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, Any, Any, Any, str | None]:
        path = self.paths[i]
        try:
            problem = check_image_file(path)
            if problem:
                return i, None, None, None, problem
            image = read_image(path)
            extras = features_of(image, self.features)
            mirrored = None
            if self.tta and self.features:
                mirrored = features_of(np.ascontiguousarray(image[:, ::-1]), self.features)
            tensor = self.transform(image=image)["image"]
        except ImageDecodeError as err:
            return i, None, None, None, str(err).split(": ", 1)[-1]
        except Exception as err:  # an image the transform or a feature cannot take: skip it, say why
            return i, None, None, None, f"{type(err).__name__}: {err}"
        return i, tensor, extras, mirrored, None


def _as_list(batch: list) -> list:
    return batch


def _probabilities(model: torch.nn.Module, images: torch.Tensor, extras: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(images, **extras) if extras else model(images)
    return logits.float().softmax(dim=1)


def predict(ckpt_path: str | Path, inputs: Sequence[str | Path], tta: bool = False, topk: int = 3,
            batch_size: int = 32, device: str | torch.device | None = None, num_workers: int = 0,
            weights: str = "auto", trusted: bool = False) -> list[dict[str, Any]]:
    """Label images with a trained run's model.

    Returns one dict per input, in order: ``path``, ``label``, ``confidence``, ``topk`` (a list of
    ``{"label", "prob"}``, best first) and ``error``. An image that cannot be read has ``error`` set
    to the reason and ``label``/``confidence`` None (nothing is raised for it).
    """
    if int(batch_size) < 1:
        raise PredictionError(f"batch_size={batch_size} (expected >= 1)")
    from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, class_names, config = load_trained_model(ckpt_path, device=device, weights=weights, trusted=trusted)
    data = config.get("data") or {}
    transform = build_transform((data.get("transforms") or {}).get("eval"), data.get("mean") or IMAGENET_MEAN,
                                data.get("std") or IMAGENET_STD)
    features = feature_extractors(input_features(model), config.get("model"))
    k = max(1, min(int(topk), len(class_names)))
    paths = [Path(str(p)) for p in inputs]
    results: list[dict[str, Any]] = [{} for _ in paths]
    loader = DataLoader(_ImageFiles(paths, transform, features, tta), batch_size=int(batch_size),
                        num_workers=int(num_workers), collate_fn=_as_list)
    with torch.inference_mode():
        for batch in loader:
            good = [item for item in batch if item[4] is None]
            for i, *_, error in batch:
                if error is not None:
                    log.debug("skipped %s: %s", paths[i], error)
                    results[i] = {"path": str(paths[i]), "label": None, "confidence": None, "topk": [], "error": error}
            if not good:
                continue
            images = torch.stack([item[1] for item in good]).to(device)
            extras = {name: torch.stack([item[2][name] for item in good]).to(device) for name in features}
            probs = _probabilities(model, images, extras)
            if tta:
                mirrored = {name: torch.stack([item[3][name] for item in good]).to(device) for name in features}
                probs = (probs + _probabilities(model, torch.flip(images, dims=[3]), mirrored)) / 2
            top_p, top_i = probs.cpu().topk(k, dim=1)
            for row, item in enumerate(good):
                i = item[0]
                ranked = [{"label": class_names[c], "prob": float(p)} for p, c in zip(top_p[row].tolist(),
                                                                                       top_i[row].tolist())]
                results[i] = {"path": str(paths[i]), "label": ranked[0]["label"], "confidence": ranked[0]["prob"],
                              "topk": ranked, "error": None}
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
    source = OmegaConf.to_container(cfg.input) if isinstance(cfg.input, ListConfig) else cfg.input
    with reported(log):
        paths = collect_inputs(source, cfg.get("csv_column"), cfg.get("image_root"))
        log.info("Predicting %d image(s) with %s%s", len(paths), cfg.ckpt_path, " (+ flip TTA)" if cfg.tta else "")
        results = predict(cfg.ckpt_path, paths, tta=bool(cfg.tta), topk=int(cfg.topk),
                          batch_size=int(cfg.batch_size), device=cfg.get("device"),
                          num_workers=int(cfg.get("num_workers") or 0), weights=cfg.get("weights", "auto"),
                          trusted=bool(cfg.get("trust_checkpoint", False)))
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
