"""``python -m paddy.explain ckpt_path=<run> input=<image | folder | csv>``: class activation maps (Grad-CAM).

    python -m paddy.explain ckpt_path=outputs/2026-11-23/10-41-07 input=leaf.jpg
    python -m paddy.explain ckpt_path=outputs/... input=/data/paddy/test method=gradcam++ output=cams
    python -m paddy.explain ckpt_path=outputs/ca_run input=photos/ compare=outputs/base_run

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017) and its relatives (Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM, Eigen-CAM,
Score-CAM, Ablation-CAM), as implemented by the ``grad-cam`` package (``pytorch_grad_cam``), over a
paddy run's network: where in the photo the evidence for the predicted class lies, as the network's
``target_layer`` sees it.

The checkpoint, run directory, EMA weights, ``trust_checkpoint``, the inputs (an image, a folder, a
CSV) and each image's preprocessing are :mod:`paddy.predict`'s, so a map explains exactly the
prediction ``paddy.predict`` makes. The target layer is, by default, the attention block on the
final feature map (``model.attention``) when the network has one, else the backbone's final feature
map (``model.backbone``: its last stage, which also holds the per-block attention of
``attention.placement=blocks``). Every head-placed attention block (BoT and the linear one
included) maps ``B x C x H x W`` to the same shape, so no reshape is needed. A DCT-fusion network
gets each image's DCT features next to the image (:class:`_WithInputs`); its map shows the CNN
branch's evidence with the DCT features held fixed.

Writes into ``output`` (default ``explain/``): one PNG per image (the photo as the network saw it,
then the map over it, titled with the predicted label and probability, and the true label when
known: a CSV's label column, else an image folder named after a class), and ``grid.png`` of the
first ``grid_max`` images. ``compare=<run2>`` adds run2's map of the same image to each row.

Exit status: 0 when every image was explained; 1 when an image could not be read (one line each,
the others are still written); 2 for a bad checkpoint, input, method or layer (one line).
"""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torch import nn
from torch.utils.data import DataLoader

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir, plain
from paddy.errors import PaddyError, reported
from paddy.model_inputs import feature_extractors, input_features
from paddy.predict import _as_list, _ImageViews, collect_inputs, member_decode_side
from paddy.utils.checkpoints import load_trained_model, resolve_checkpoint, run_dir_of

log = logging.getLogger("paddy")

# ``method=`` -> the pytorch_grad_cam class (imported when used, so training never needs the package).
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM",
    "scorecam": "ScoreCAM",
    "ablationcam": "AblationCAM",
}
LABEL_COLUMNS = ("label", "class", "target")  # a CSV's true-label column, when label_column is null


class ExplainError(PaddyError):
    """A method, target layer or input that cannot be explained as asked."""


# ---------------------------------------------------------------------------------------------- the maps


def cam_class(method: str) -> type:
    """The ``pytorch_grad_cam`` class of ``method=`` (an :class:`ExplainError` listing the choices otherwise)."""
    if method not in CAM_METHODS:
        raise ExplainError(f"method={method!r}: unknown CAM method (one of: {', '.join(CAM_METHODS)})")
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method])


def target_layer(model: nn.Module, path: str | None = None) -> tuple[str, nn.Module]:
    """``(name, module)`` whose output the map is computed on: ``path`` (a module path such as
    ``backbone.blocks.5``) or by default the head-placed attention block, else the backbone."""
    if path:
        try:
            return str(path), model.get_submodule(str(path))
        except AttributeError:
            top = ", ".join(name for name, _ in model.named_children())
            raise ExplainError(f"target_layer={path!r}: the network has no such module "
                               f"(its top-level modules: {top}; separate deeper ones with dots)") from None
    attention = getattr(model, "attention", None)
    if isinstance(attention, nn.Module) and not isinstance(attention, nn.Identity):
        return "attention", attention
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return "backbone", backbone
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ExplainError(f"{type(model).__name__} has no attention, backbone or convolution to explain; "
                           f"name one with target_layer=<module path>")
    return convs[-1]


class _WithInputs(nn.Module):
    """``model(images)`` for a network that also takes per-image features (DCT-fusion): pytorch_grad_cam
    calls the model with the images only. One row of features is repeated for a batch of variants of
    one image (Score-CAM and Ablation-CAM feed masked copies)."""

    def __init__(self, model: nn.Module, extras: Mapping[str, torch.Tensor]):
        super().__init__()
        self.model, self.extras = model, dict(extras)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        extras = {k: v.expand(images.shape[0], *v.shape[1:]) if v.shape[0] == 1 else v for k, v in self.extras.items()}
        return self.model(images, **extras)


def class_activation_maps(model: nn.Module, images: torch.Tensor, layer: nn.Module, method: str = "gradcam",
                          extras: Mapping[str, torch.Tensor] | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """The maps of each image's predicted class: ``(B x H x W`` floats in 0..1, ``B x classes`` softmax).

    Runs with gradients on (also inside Lightning's inference mode) and puts the model back in the
    train/eval mode it had. A network with ``extras`` (DCT features) is explained one image at a time.
    """
    cam_type = cam_class(method)
    was_training = model.training
    cams, probs = [], []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            # The input needs a gradient so the target layer's output has one even under a frozen backbone.
            images = images.detach().clone().float().requires_grad_(True)
            if extras:
                parts = [(images[i:i + 1], _WithInputs(model, {k: v[i:i + 1].detach().clone().float()
                                                               for k, v in extras.items()}))
                         for i in range(images.shape[0])]
            else:
                parts = [(images, model)]
            for batch, wrapped in parts:
                cam = cam_type(model=wrapped, target_layers=[layer])
                try:  # not `with cam`: its __exit__ swallows an IndexError
                    cams.append(np.asarray(cam(input_tensor=batch, targets=None), dtype=np.float32))
                    probs.append(cam.outputs.detach().float().softmax(dim=1).cpu())
                finally:
                    cam.activations_and_grads.release()
    finally:
        model.train(was_training)
    return np.concatenate(cams), torch.cat(probs)


# ---------------------------------------------------------------------------------------------- runs and inputs


@dataclass
class Run:
    """A trained run ready to explain: its network and what ``paddy.predict`` feeds it."""

    model: nn.Module
    class_names: list[str]
    transform: Any
    features: dict[str, Any]
    mean: np.ndarray
    std: np.ndarray
    name: str
    device: torch.device
    decode_side: int | None = None  # the side its preprocessing needs of a photo (member_decode_side)


@dataclass
class Explanation:
    """One image's map: ``image`` as the network saw it (``H x W x 3`` in 0..1) and ``cam`` (``H x W`` in
    0..1) of the predicted ``label`` (softmax ``prob``); or ``error`` when the image could not be read."""

    path: Path
    image: np.ndarray | None = None
    cam: np.ndarray | None = None
    label: str | None = None
    prob: float | None = None
    error: str | None = None


def load_run(ckpt_path: str | Path, device: str | torch.device | None = None, weights: str = "auto",
             trusted: bool = False) -> Run:
    """A run's network (checkpoint or run directory, EMA weights as ``weights`` says) and its eval
    transform and input features, as :func:`paddy.predict.predict` uses them."""
    from paddy.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_transform

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, class_names, config = load_trained_model(ckpt_path, device=device, weights=weights, trusted=trusted)
    data = config.get("data") or {}
    mean, std = data.get("mean") or IMAGENET_MEAN, data.get("std") or IMAGENET_STD
    transform = build_transform((data.get("transforms") or {}).get("eval"), mean, std)
    features = feature_extractors(input_features(model), config.get("model"))
    name = str((config.get("model") or {}).get("name") or run_dir_of(resolve_checkpoint(ckpt_path)).name)
    return Run(model, class_names, transform, features, np.asarray(mean, dtype=np.float32).reshape(-1),
               np.asarray(std, dtype=np.float32).reshape(-1), name, device, member_decode_side(config, features))


def explain_run(run: Run, paths: Sequence[Path], method: str = "gradcam", layer: str | None = None,
                batch_size: int = 16) -> list[Explanation]:
    """One :class:`Explanation` per path, in order (an unreadable image gets ``error``, nothing raised)."""
    if int(batch_size) < 1:
        raise ExplainError(f"batch_size={batch_size} (expected >= 1)")
    from paddy.tasks.dashboards import _to_unit_image  # the un-normalisation TensorBoard's sample grid uses

    layer_name, module = target_layer(run.model, layer)
    log.info("%s: %s of the predicted class on %s (%s)", run.name, method, layer_name, type(module).__name__)
    paths = [Path(str(p)) for p in paths]
    results = [Explanation(p) for p in paths]
    files = _ImageViews(paths, [(run.transform, run.features)], tta=False, sides=[run.decode_side])
    loader = DataLoader(files, batch_size=int(batch_size), collate_fn=_as_list)
    for batch in loader:
        for i, _, error in batch:
            results[i].error = error
        good = [(i, *views[0]) for i, views, error in batch if error is None]  # (index, image, features, _)
        if not good:
            continue
        images = torch.stack([item[1] for item in good]).to(run.device)
        extras = {name: torch.stack([item[2][name] for item in good]).to(run.device) for name in run.features}
        cams, probs = class_activation_maps(run.model, images, module, method, extras)
        top_p, top_i = probs.max(dim=1)
        for row, item in enumerate(good):
            result = results[item[0]]
            result.image = _to_unit_image(item[1], run.mean, run.std)
            result.cam, result.label, result.prob = cams[row], run.class_names[int(top_i[row])], float(top_p[row])
    return results


def true_labels(source: Any, paths: Sequence[Path], class_names: Sequence[str], label_column: str | None = None,
                image_root: str | Path | None = None) -> list[str | None]:
    """Each image's true label when known: from a CSV input's label column (``label_column``, else
    ``label``/``class``/``target``), else its folder's name when that is one of ``class_names``."""
    sources = source if isinstance(source, (list, tuple, ListConfig)) else [source]
    from_csv: dict[Path, str] = {}
    for item in sources:
        if Path(str(item)).suffix.lower() == ".csv":
            from_csv.update(_csv_labels(Path(str(item)).expanduser(), label_column, image_root))
    names = set(class_names)
    return [from_csv.get(p) or (p.parent.name if p.parent.name in names else None) for p in paths]


def _csv_labels(path: Path, label_column: str | None, image_root: str | Path | None) -> dict[Path, str]:
    """``{image path: label}`` of a CSV: any cell of a row, taken as a path the way
    :func:`paddy.predict.collect_inputs` takes it, maps to that row's label."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (reader.fieldnames or []) if c is not None]
        rows = list(reader)
    by_name = {c.strip().lower(): c for c in columns}
    if label_column and label_column.strip().lower() not in by_name:
        raise ExplainError(f"label_column={label_column!r}: {path} has no such column (columns: {', '.join(columns)})")
    wanted = [label_column.strip().lower()] if label_column else list(LABEL_COLUMNS)
    chosen = next((by_name[c] for c in wanted if c in by_name), None)
    if chosen is None:
        return {}
    base = Path(image_root).expanduser() if image_root else path.parent
    return {base / cell.strip(): (row.get(chosen) or "").strip() for row in rows if (row.get(chosen) or "").strip()
            for column in columns if column != chosen and (cell := row.get(column) or "").strip()}


# ---------------------------------------------------------------------------------------------- figures

Panel = tuple[np.ndarray, str, str]  # (H x W x 3 image, title, title colour)


def overlay(image: np.ndarray, cam: np.ndarray, image_weight: float = 0.5) -> np.ndarray:
    """The map as a JET heatmap over ``image`` (``H x W x C`` in 0..1): ``H x W x 3`` uint8 RGB."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    if cam.shape != rgb.shape[:2]:
        cam = cv2.resize(cam, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb.astype(np.float32), np.clip(cam, 0, 1), use_rgb=True, image_weight=image_weight)


def explanation_row(image: np.ndarray, caption: str, maps: Sequence[tuple[np.ndarray, np.ndarray, str, bool]]
                    ) -> list[Panel]:
    """The panels of one image: the photo (``caption``), then per run its map over that run's view of the
    photo, titled with the prediction (red when it differs from a known true label).
    ``maps``: ``(run's view of the image, cam, title, wrong)`` per run."""
    return [(image, caption, "black")] + [(overlay(view, cam), title, "red" if wrong else "black")
                                          for view, cam, title, wrong in maps]


def explanation_figure(rows: Sequence[Sequence[Panel]], title: str | None = None) -> Any:
    """Images' rows of panels in a near-square layout (each image's panels stay side by side)."""
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("no images to draw")
    per_image = max(len(r) for r in rows)
    cells = max(1, min(len(rows), round(math.sqrt(len(rows) / per_image))))
    lines = math.ceil(len(rows) / cells)
    figure = Figure(figsize=(2.2 * cells * per_image, 2.4 * lines + (0.4 if title else 0)), dpi=100)
    for k, row in enumerate(rows):
        for j, (image, text, colour) in enumerate(row):
            ax = figure.add_subplot(lines, cells * per_image, (k // cells) * cells * per_image
                                    + (k % cells) * per_image + j + 1)
            ax.imshow(image, interpolation="bilinear")
            ax.set_title(text, fontsize=7, color=colour)
            ax.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _caption(path: Path, true: str | None) -> str:
    """``blast/103.jpg`` (its path below the inputs' common folder) and the true label when known."""
    name = path.as_posix() if len(path.as_posix()) <= 28 else "…" + path.as_posix()[-27:]
    return f"{name}\ntrue: {true}" if true else name


def output_names(paths: Sequence[Path]) -> list[Path]:
    """A distinct ``.png`` name per image: its path below the inputs' common folder (``blast/1.png``)."""
    import os

    absolute = [Path(os.path.abspath(p)) for p in paths]
    common = Path(os.path.commonpath([str(p.parent) for p in absolute])) if absolute else Path(".")
    names: list[Path] = []
    for p in absolute:
        name = p.relative_to(common).with_suffix(".png")
        names.append(name.with_name(p.name + ".png") if name in names else name)
    return names


def write_explanations(output: Path, runs: Sequence[Run], results: Sequence[Sequence[Explanation]],
                       truths: Sequence[str | None], method: str, grid_max: int = 32) -> tuple[list[Path], Path]:
    """One PNG per explained image and ``grid.png`` of the first ``grid_max`` under ``output``."""
    output.mkdir(parents=True, exist_ok=True)
    paths = [r.path for r in results[0]]
    rows: list[list[Panel]] = []
    written = []
    for i, name in enumerate(output_names(paths)):
        per_run = [run_results[i] for run_results in results]
        if any(e.error is not None for e in per_run):
            continue
        maps = [(e.image, e.cam, f"{run.name}: {e.label} {e.prob:.2f}", truths[i] is not None and e.label != truths[i])
                for run, e in zip(runs, per_run)]
        row = explanation_row(per_run[0].image, _caption(name.with_name(paths[i].name), truths[i]), maps)
        target = output / name
        target.parent.mkdir(parents=True, exist_ok=True)
        explanation_figure([row]).savefig(target)
        written.append(target)
        rows.append(row)
    grid = output / "grid.png"
    if rows:
        shown = rows[:max(1, int(grid_max))]
        title = f"{method}: " + " vs ".join(run.name for run in runs) + (
            f" (first {len(shown)} of {len(rows)})" if len(shown) < len(rows) else "")
        explanation_figure(shown, title=title).savefig(grid)
    return written, grid


# ---------------------------------------------------------------------------------------------- command


def _run_names(runs: list[Run], ckpts: Sequence[Any]) -> None:
    """Two runs of the same model are told apart by their run directories."""
    if len(runs) > 1 and len({r.name for r in runs}) < len(runs):
        for run, ckpt in zip(runs, ckpts):
            run.name = f"{run.name} ({run_dir_of(resolve_checkpoint(ckpt)).name})"


def explain_command(cfg: DictConfig) -> int:
    """``python -m paddy.explain``'s work for a composed ``conf/explain.yaml``; returns the exit status
    (a bad setting or path ends it through :func:`paddy.errors.reported`)."""
    source = plain(cfg.input)
    with reported(log):
        cam_class(str(cfg.method))
        paths = collect_inputs(source, cfg.get("csv_column"), cfg.get("image_root"))
        ckpts = [cfg.ckpt_path] + ([cfg.compare] if cfg.get("compare") else [])
        runs = [load_run(c, device=cfg.get("device"), weights=cfg.get("weights", "auto"),
                         trusted=bool(cfg.get("trust_checkpoint", False))) for c in ckpts]
        _run_names(runs, ckpts)
        log.info("Explaining %d image(s) with %s", len(paths), " and ".join(str(c) for c in ckpts))
        results = [explain_run(run, paths, str(cfg.method), cfg.get("target_layer"), int(cfg.batch_size))
                   for run in runs]
        truths = true_labels(source, paths, runs[0].class_names, cfg.get("label_column"), cfg.get("image_root"))
    unreadable = [e for e in results[0] if e.error is not None]
    for e in unreadable:
        print(f"error: cannot read {e.path}: {e.error}", file=sys.stderr)
    output = Path(str(cfg.output)).expanduser()
    written, grid = write_explanations(output, runs, results, truths, str(cfg.method), int(cfg.grid_max))
    if written:
        print(f"{len(written)} image(s) explained ({cfg.method}) -> {output}/ (grid: {grid})")
    return 1 if unreadable or not written else 0


@hydra.main(config_path=str(config_dir()), config_name="explain", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> None:
    status = explain_command(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
