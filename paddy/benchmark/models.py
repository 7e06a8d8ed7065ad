"""``mode=models`` (the comparison table) and ``mode=scaling`` (BoT vs BoT-linear over input sizes).

Both measure on random data that is already on the device, so the figures are the model's own
cost, without data loading or augmentation (``mode=throughput`` measures those):

- inference: ``model.eval()`` under ``torch.inference_mode()`` (and autocast for bf16/fp16);
- training: ``model.train()``, forward, cross-entropy, backward and an AdamW step (fp16: through a
  GradScaler), gradients reset with ``zero_grad(set_to_none=True)``;
- throughput = ``batch_size / median step time`` over ``steps`` timed steps after ``warmup``
  untimed ones (:func:`paddy.benchmark.common.time_steps`);
- activation MB: what one training forward at ``batch_size`` saves for backward
  (:func:`paddy.benchmark.common.saved_activation_bytes`); peak MB (CUDA only):
  ``torch.cuda.max_memory_allocated`` over the timed inference / training steps.

Each device gets its own copy of the freshly built model (random weights, seed 0); inference is
measured before training, so its peak memory holds no gradients or optimizer state.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from paddy.benchmark.common import (
    BenchmarkError,
    RunSettings,
    bool_option,
    build_from_config,
    compose_named,
    cuda_peak,
    environment,
    images_per_second,
    int_list_option,
    int_option,
    list_option,
    markdown_table,
    model_inputs,
    out_of_memory_errors,
    resolve_devices,
    resolve_settings,
    result_stem,
    saved_activation_bytes,
    set_threads,
    synchronize,
    time_steps,
    write_results,
)

log = logging.getLogger("paddy")

MB = 1024**2
# The old notes' claim for linear attention against BoT, at this input size (checked by mode=scaling).
OLD_CLAIM = {"image_size": 224, "memory_change_pct": -35.0, "speed_change_pct": 6.0}
OLD_CLAIM_TEXT = "-35% memory, +6% speed"

MODELS_COLUMNS = {
    "model": "model", "backbone": "backbone", "attention": "attention", "device": "device",
    "precision": "precision", "params_m": "params (M)", "gflops": "GFLOPs", "size_mb": "size (MB)",
    "infer_img_s": "inference img/s", "train_img_s": "training img/s", "activation_mb": "activations (MB)",
}
SCALING_COLUMNS = {
    "image_size": "px", "model": "model", "device": "device", "feature_map": "feature map",
    "infer_img_s": "inference img/s", "train_img_s": "training img/s", "activation_mb": "activations (MB)",
    "block_activation_mb": "block activations (MB)", "block_train_ms": "block fwd+bwd (ms)",
    "block_infer_ms": "block fwd (ms)",
}
CUDA_COLUMNS = {"peak_infer_mb": "peak inference MB (CUDA)", "peak_train_mb": "peak training MB (CUDA)"}
RATIO_COLUMNS = {
    "image_size": "px", "device": "device", "compared": "compared", "activation_change_pct": "Δ activations (%)",
    "train_speed_change_pct": "Δ training speed (%)", "infer_speed_change_pct": "Δ inference speed (%)",
    "block_activation_change_pct": "Δ block activations (%)",
    "block_train_speed_change_pct": "Δ block fwd+bwd speed (%)", "old_claim": "old notes",
}
RATIO_FORMATS = {key: "+.1f" for key in RATIO_COLUMNS if key.endswith("_pct")} | {"peak_train_change_pct": "+.1f"}
MODELS_FORMATS = {"params_m": ".3f", "gflops": ".3f", "size_mb": ".2f", "infer_img_s": ".1f", "train_img_s": ".1f",
                  "activation_mb": ".1f", "peak_infer_mb": ".0f", "peak_train_mb": ".0f"}
SCALING_FORMATS = {"infer_img_s": ".1f", "train_img_s": ".1f", "activation_mb": ".1f", "block_activation_mb": ".2f",
                   "block_train_ms": ".2f", "block_infer_ms": ".2f", "peak_infer_mb": ".0f", "peak_train_mb": ".0f"}


def _rounded(row: Mapping[str, Any], digits: int = 5) -> dict[str, Any]:
    """Floats to ``digits`` significant digits (the CSV and JSON stay readable; the clock is not more exact)."""
    return {key: float(f"{value:.{digits}g}") if isinstance(value, float) and math.isfinite(value) else value
            for key, value in row.items()}


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- measurements


def _prepare(model: nn.Module, settings: RunSettings) -> nn.Module:
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [*model.parameters(), *model.buffers()]


def measure_inference(model: nn.Module, inputs: Mapping[str, torch.Tensor], settings: RunSettings, steps: int,
                      warmup: int) -> dict[str, Any]:
    """Inference img/s (median step) and peak CUDA MB of ``model`` on ``inputs``."""
    batch = len(inputs["images"])
    model.eval()

    def step() -> None:
        with settings.autocast():
            model(**inputs)

    with torch.inference_mode(), cuda_peak(settings.device) as peak:
        times = time_steps(step, steps, warmup, settings.device)
    return {"infer_img_s": images_per_second(times, batch), "peak_infer_mb": peak["mb"],
            "infer_step_s": [round(t, 6) for t in times]}


def measure_training(model: nn.Module, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor,
                     settings: RunSettings, steps: int, warmup: int) -> dict[str, Any]:
    """Training img/s (forward + cross-entropy + backward + AdamW step) and peak CUDA MB."""
    batch = len(labels)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(settings.device.type) if settings.use_scaler else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with settings.autocast():
            loss = F.cross_entropy(model(**inputs), labels)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    with cuda_peak(settings.device) as peak:
        times = time_steps(step, steps, warmup, settings.device)
    optimizer.zero_grad(set_to_none=True)
    return {"train_img_s": images_per_second(times, batch), "peak_train_mb": peak["mb"],
            "train_step_s": [round(t, 6) for t in times]}


def measure_activations(model: nn.Module, inputs: Mapping[str, torch.Tensor], settings: RunSettings) -> float:
    """MB saved for backward by one training forward of ``model`` on ``inputs``."""
    model.train()
    with settings.autocast():
        saved = saved_activation_bytes(lambda: model(**inputs), exclude=_state_tensors(model))
    synchronize(settings.device)
    return saved / MB


def measure_model(model: nn.Module, settings: RunSettings, batch_size: int, image_size: int, num_classes: int,
                  steps: int, warmup: int) -> dict[str, Any]:
    """Inference, activations and training of a copy of ``model`` on ``settings.device``.

    Training is skipped at ``batch_size=1`` (BatchNorm needs two samples); a CUDA out-of-memory
    error leaves the measurements of that phase empty and says so in ``note``.
    """
    torch.manual_seed(0)
    model = _prepare(copy.deepcopy(model), settings)
    inputs = model_inputs(model, batch_size, image_size, settings.device, settings.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,), device=settings.device)
    result: dict[str, Any] = {}
    notes = []
    try:
        result |= measure_inference(model, inputs, settings, steps, warmup)
        if batch_size > 1:
            result["activation_mb"] = measure_activations(model, inputs, settings)
            result |= measure_training(model, inputs, labels, settings, steps, warmup)
        else:
            notes.append("training skipped at batch_size=1 (BatchNorm needs 2 samples)")
    except out_of_memory_errors():
        notes.append(f"out of memory on {settings.device} at batch_size={batch_size}")
        if settings.device.type == "cuda":
            torch.cuda.empty_cache()
    except ValueError as err:  # e.g. a feature map too small for BoT at a tiny image size
        raise BenchmarkError(f"{image_size} px: {' '.join(str(err).split())}") from None
    finally:
        del model, inputs
    if notes:
        result["note"] = "; ".join(notes)
    return result


def feature_map_shape(model: nn.Module, image_size: int) -> tuple[int, int, int]:
    """(C, H, W) of the backbone's final feature map for one ``image_size`` image (what the head's attention sees)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise BenchmarkError(f"{type(model).__name__} has no .backbone: cannot find its feature map")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.inference_mode():
            shape = backbone(torch.zeros(1, 3, image_size, image_size)).shape
    finally:
        backbone.train(was_training)
    return int(shape[1]), int(shape[2]), int(shape[3])


def measure_block(block: nn.Module, shape: tuple[int, int, int], settings: RunSettings, batch_size: int,
                  steps: int, warmup: int) -> dict[str, Any]:
    """The attention block alone on a random ``batch_size x C x H x W`` map: forward ms, forward+backward ms
    (median step) and the MB it saves for backward."""
    torch.manual_seed(0)
    block = _prepare(copy.deepcopy(block), settings)
    x = torch.randn(batch_size, *shape, device=settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    result: dict[str, Any] = {}
    try:
        block.eval()

        def forward() -> None:
            with settings.autocast():
                block(x)

        with torch.inference_mode():
            infer = time_steps(forward, steps, warmup, settings.device)
        block.train()
        with settings.autocast():
            saved = saved_activation_bytes(lambda: block(x), exclude=_state_tensors(block))

        def train_step() -> None:
            block.zero_grad(set_to_none=True)
            with settings.autocast():
                out = block(x)
            out.float().square().mean().backward()

        train = time_steps(train_step, steps, warmup, settings.device)
        result = {"block_infer_ms": 1000 * statistics.median(infer), "block_train_ms": 1000 * statistics.median(train),
                  "block_activation_mb": saved / MB}
    except out_of_memory_errors():
        result = {"note": f"attention block out of memory on {settings.device}"}
        torch.cuda.empty_cache()
    return result


# ---------------------------------------------------------------------------------------------- shared set-up


def _common_settings(options: Mapping[str, str]) -> dict[str, Any]:
    set_threads(options)
    devices = resolve_devices(options["device"])
    channels_last = bool_option(options, "channels_last", auto=None)
    runs = [resolve_settings(device, options["precision"], channels_last) for device in devices]
    return {
        "runs": runs,
        "names": list_option(options, "model"),
        "batch_size": int_option(options, "batch_size"),
        "steps": int_option(options, "steps"),
        "warmup": int_option(options, "warmup", minimum=0),
        "num_classes": int_option(options, "num_classes"),
    }


def _build_all(names: Sequence[str], overrides: Sequence[str], num_classes: int) -> list[dict[str, Any]]:
    """Compose and build every model before measuring any (a typo in the last name fails at once)."""
    built = []
    for name in names:
        cfg = compose_named(name, overrides)
        torch.manual_seed(0)
        model = build_from_config(cfg, num_classes, name)
        attention = cfg.attention.get("name", "none")
        placement = cfg.attention.get("placement", "head")
        built.append({"name": name, "model": model, "backbone": cfg.backbone.name,
                      "attention": attention if attention == "none" or placement == "head"
                      else f"{attention} (blocks)"})
    return built


def process_warmup(entry: Mapping[str, Any], settings: RunSettings, batch_size: int, image_size: int,
                   num_classes: int) -> None:
    """One untimed inference + training step of ``entry``'s model before the first measurement on a device.

    The per-measurement warm-up steps do not cover what a fresh process does once (the memory
    allocator settling, oneDNN/cuDNN set-up): without this, whichever model is measured first on a
    CPU comes out about 30% slower than when it is measured second.
    """
    _progress(f"warming up on {settings.device} with {entry['name']}...")
    try:
        measure_model(entry["model"], settings, batch_size, image_size, num_classes, steps=1, warmup=0)
    except BenchmarkError as err:
        raise BenchmarkError(f"{entry['name']}: {err}") from None


def _busy_cpu_note(env: Mapping[str, Any], runs: Sequence[RunSettings]) -> None:
    busy = env.get("cpu_busy_percent")
    if busy is not None and busy > 20 and any(r.device.type == "cpu" for r in runs):
        _progress(f"note: other processes keep the CPUs {busy}% busy: the CPU timings will be noisy "
                  f"(the JSON records this as environment.cpu_busy_percent)")


def _meta(mode: str, argv: Sequence[str] | None, options: Mapping[str, str], overrides: Sequence[str],
          runs: Sequence[RunSettings], env: Mapping[str, Any]) -> dict[str, Any]:
    command = "python -m paddy.benchmark" + ("".join(f" {a}" for a in argv) if argv is not None else "")
    env = dict(env)
    if hasattr(os, "getloadavg"):
        env["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    return {"mode": mode, "command": command, "environment": env,
            "settings": {**options, "overrides": list(overrides),
                         "runs": [{"device": str(r.device), "precision": r.precision,
                                   "channels_last": r.channels_last} for r in runs],
                         "throughput": "batch_size / median step time",
                         "process_warmup": "one untimed inference + training step of the first model per device",
                         "activation_mb": "bytes saved for backward by one training forward (distinct storages, "
                                          "parameters and buffers excluded)"}}


def _columns(base: Mapping[str, str], runs: Sequence[RunSettings]) -> dict[str, str]:
    columns = dict(base)
    if any(r.device.type == "cuda" for r in runs):
        columns |= CUDA_COLUMNS
    return columns


def _report(paths: Sequence[Any]) -> None:
    _progress("wrote " + ", ".join(str(p) for p in paths))


# ---------------------------------------------------------------------------------------------- mode=models


def run_models(options: Mapping[str, str], overrides: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """The comparison table: one row per model and device."""
    from paddy.models.factory import gflops
    from paddy.utils.artifacts import model_size

    common = _common_settings(options)
    image_size = int_option(options, "image_size")
    runs, batch_size = common["runs"], common["batch_size"]
    built = _build_all(common["names"], overrides, common["num_classes"])
    env = environment()
    _busy_cpu_note(env, runs)
    for entry in built:
        model = entry["model"]
        entry["params"], entry["size_mb"] = model_size(model)
        extra = {k: v for k, v in model_inputs(model, 1, image_size, zeros=True).items() if k != "images"}
        try:
            entry["gflops"] = gflops(model, image_size, extra)
        except ValueError as err:
            raise BenchmarkError(f"{entry['name']} at {image_size} px: {' '.join(str(err).split())}") from None
    rows = []
    for settings in runs:
        process_warmup(built[0], settings, batch_size, image_size, common["num_classes"])
        for entry in built:
            _progress(f"{entry['name']} on {settings.device} ({settings.precision_name}, batch {batch_size}, "
                      f"{image_size} px)...")
            row = {"model": entry["name"], "backbone": entry["backbone"], "attention": entry["attention"],
                   "device": str(settings.device), "precision": settings.precision_name, "batch_size": batch_size,
                   "image_size": image_size, "params": entry["params"], "params_m": entry["params"] / 1e6,
                   "gflops": entry["gflops"], "size_mb": entry["size_mb"]}
            try:
                row |= measure_model(entry["model"], settings, batch_size, image_size, common["num_classes"],
                                     common["steps"], common["warmup"])
            except BenchmarkError as err:
                raise BenchmarkError(f"{entry['name']}: {err}") from None
            rows.append(row)
    rows = [_rounded(row) for row in rows]
    columns = _columns(MODELS_COLUMNS, runs)
    if any(row.get("note") for row in rows):
        columns["note"] = "note"
    meta = _meta("models", argv, options, overrides, runs, env)
    title = f"Model comparison: batch {batch_size}, {image_size} px, {common['num_classes']} classes"
    notes = [f"Throughput: batch_size / median of {common['steps']} timed steps after {common['warmup']} warm-up "
             f"steps; training = forward + cross-entropy + backward + AdamW step on random data on the device. "
             f"Activations: bytes saved for backward by one training forward at batch {batch_size}. "
             f"GFLOPs: one image, forward."]
    paths = write_results(rows, columns, result_stem(options["out"], "models"), meta, MODELS_FORMATS, title, notes)
    print(markdown_table(rows, columns, MODELS_FORMATS))
    _report(paths)
    return 0


# ---------------------------------------------------------------------------------------------- mode=scaling


def _change(new: Any, reference: Any) -> float | None:
    """``new / reference - 1`` in percent (None when either is missing or the reference is 0)."""
    if new is None or reference is None or reference == 0:
        return None
    return 100.0 * (new / reference - 1.0)


def _is_claim_pair(row: Mapping[str, Any], reference: Mapping[str, Any]) -> bool:
    """Linear attention against BoT at the claim's input size: the case the old notes made a claim about."""
    return (row.get("attention") == "bot_linear" and reference.get("attention") == "bot"
            and row["image_size"] == OLD_CLAIM["image_size"])


def ratio_rows(rows: Sequence[Mapping[str, Any]], reference: str) -> list[dict[str, Any]]:
    """Per device, size and model other than ``reference``: percent changes against ``reference``.

    Memory: negative = less than the reference; speed (img/s, block steps/s): positive = faster.
    """
    index = {(r["device"], r["image_size"], r["model"]): r for r in rows}
    result = []
    for row in rows:
        if row["model"] == reference:
            continue
        ref = index.get((row["device"], row["image_size"], reference))
        if ref is None:
            continue
        block_speed = None
        if row.get("block_train_ms") and ref.get("block_train_ms"):
            block_speed = _change(1 / row["block_train_ms"], 1 / ref["block_train_ms"])
        result.append({
            "image_size": row["image_size"], "device": row["device"], "compared": f"{row['model']} vs {reference}",
            "activation_change_pct": _change(row.get("activation_mb"), ref.get("activation_mb")),
            "train_speed_change_pct": _change(row.get("train_img_s"), ref.get("train_img_s")),
            "infer_speed_change_pct": _change(row.get("infer_img_s"), ref.get("infer_img_s")),
            "block_activation_change_pct": _change(row.get("block_activation_mb"), ref.get("block_activation_mb")),
            "block_train_speed_change_pct": block_speed,
            "peak_train_change_pct": _change(row.get("peak_train_mb"), ref.get("peak_train_mb")),
            "old_claim": OLD_CLAIM_TEXT if _is_claim_pair(row, ref) else "",
        })
    return result


def claim_check(ratios: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sentences that put the measured changes at the claim's size next to the old notes' claim."""
    lines = []
    for r in ratios:
        if not r.get("old_claim"):
            continue

        def pct(value: float | None) -> str:
            return "n/a" if value is None else f"{value:+.1f}%"

        memory = f"activations {pct(r['activation_change_pct'])}"
        if r.get("peak_train_change_pct") is not None:
            memory += f", peak training memory {pct(r['peak_train_change_pct'])}"
        lines.append(f"Old claim at {OLD_CLAIM['image_size']} px ({r['compared']}, {r['device']}): "
                     f"{OLD_CLAIM['memory_change_pct']:+.0f}% memory, {OLD_CLAIM['speed_change_pct']:+.0f}% speed. "
                     f"Measured: {memory}; training speed {pct(r['train_speed_change_pct'])}, "
                     f"inference speed {pct(r['infer_speed_change_pct'])}; attention block alone: activations "
                     f"{pct(r['block_activation_change_pct'])}, fwd+bwd speed "
                     f"{pct(r['block_train_speed_change_pct'])}.")
    return lines


def run_scaling(options: Mapping[str, str], overrides: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Training/inference speed and memory of the models (default BoT and BoT-linear) per input size, and the
    ratio of each model to the first one."""
    common = _common_settings(options)
    sizes = int_list_option(options, "sizes")
    with_block = bool(bool_option(options, "block"))
    runs, batch_size = common["runs"], common["batch_size"]
    built = _build_all(common["names"], overrides, common["num_classes"])
    reference = built[0]["name"]
    env = environment()
    _busy_cpu_note(env, runs)
    block_steps = max(common["steps"], 10)
    rows = [_rounded(row) for row in scaling_rows(built, common, sizes, block_steps if with_block else None)]
    ratios = [_rounded(row, 4) for row in ratio_rows(rows, reference)]
    columns, ratio_columns = scaling_columns(rows, ratios, runs, with_block)
    checks = claim_check(ratios)
    meta = _meta("scaling", argv, options, overrides, runs, env)
    stem = result_stem(options["out"], "scaling")
    notes = [f"Throughput: batch_size / median of {common['steps']} timed steps after {common['warmup']} warm-up "
             f"steps. Activations: bytes saved for backward by one training forward at batch {batch_size}. "
             f"Block: the model's attention block alone on a random feature map of the size it sees "
             f"(median of {block_steps} steps)."]
    paths = write_results(rows, columns, stem, meta, SCALING_FORMATS,
                          f"Scaling with input size: batch {batch_size}", notes)
    ratio_notes = ["Percent change of each model against the first "
                   f"({reference}): memory below 0 = less memory, speed above 0 = faster.", *checks]
    paths += write_results(ratios, ratio_columns, stem.with_name(stem.name + "_ratios"), meta, RATIO_FORMATS,
                           "Ratios against " + reference, ratio_notes)
    print(markdown_table(rows, columns, SCALING_FORMATS))
    print()
    print(markdown_table(ratios, ratio_columns, RATIO_FORMATS))
    for line in checks:
        print()
        print(line)
    _report(paths)
    return 0


def scaling_rows(built: Sequence[Mapping[str, Any]], common: Mapping[str, Any], sizes: Sequence[int],
                 block_steps: int | None) -> list[dict[str, Any]]:
    """One row per device, input size and model (after one process warm-up per device); with ``block_steps``
    the model's attention block is also measured alone, for that many steps."""
    rows = []
    for settings in common["runs"]:
        process_warmup(built[0], settings, common["batch_size"], sizes[0], common["num_classes"])
        for size in sizes:
            for entry in built:
                rows.append(scaling_row(entry, settings, size, common, block_steps))
    return rows


def scaling_row(entry: Mapping[str, Any], settings: RunSettings, size: int, common: Mapping[str, Any],
                block_steps: int | None) -> dict[str, Any]:
    """The measurements of one built model at one input size on one device (see :func:`scaling_rows`)."""
    model, batch_size = entry["model"], common["batch_size"]
    channels, h, w = feature_map_shape(model, size)
    _progress(f"{entry['name']} on {settings.device} at {size} px (feature map {h}x{w}, batch {batch_size})...")
    row: dict[str, Any] = {
        "image_size": size, "model": entry["name"], "attention": entry["attention"], "device": str(settings.device),
        "precision": settings.precision_name, "batch_size": batch_size, "feature_map": f"{channels}x{h}x{w}",
        "tokens": h * w}
    try:
        row |= measure_model(model, settings, batch_size, size, common["num_classes"], common["steps"],
                             common["warmup"])
    except BenchmarkError as err:
        raise BenchmarkError(f"{entry['name']}: {err}") from None
    block = getattr(model, "attention", None)
    if block_steps is not None and block is not None and not isinstance(block, nn.Identity):
        measured = measure_block(block, (channels, h, w), settings, batch_size, block_steps, common["warmup"])
        if "note" in measured and row.get("note"):
            measured["note"] = f"{row['note']}; {measured['note']}"
        row |= measured
    return row


def scaling_columns(rows: Sequence[Mapping[str, Any]], ratios: Sequence[Mapping[str, Any]],
                    runs: Sequence[RunSettings], with_block: bool) -> tuple[dict[str, str], dict[str, str]]:
    """The columns of the scaling table and of the ratio table: CUDA peaks where a GPU was measured, the
    block's only with ``block=true``, a note column where a row has a note."""
    columns = _columns(SCALING_COLUMNS, runs)
    if not with_block:
        columns = {k: v for k, v in columns.items() if not k.startswith("block_")}
    if any(row.get("note") for row in rows):
        columns["note"] = "note"
    ratio_columns = dict(RATIO_COLUMNS)
    if any(r["peak_train_change_pct"] is not None for r in ratios):
        ratio_columns = {**{k: v for k, v in RATIO_COLUMNS.items() if k != "old_claim"},
                         "peak_train_change_pct": "Δ peak training MB (%, CUDA)", "old_claim": "old notes"}
    if not with_block:
        ratio_columns = {k: v for k, v in ratio_columns.items() if not k.startswith("block_")}
    return columns, ratio_columns


__all__ = ["OLD_CLAIM", "claim_check", "feature_map_shape", "measure_block", "measure_model", "ratio_rows",
           "run_models", "run_scaling", "scaling_columns", "scaling_row", "scaling_rows"]
