"""``python -m paddy.export ckpt_path=<run dir or .ckpt> [format=onnx]``: a trained model as ONNX, checked and timed.

    python -m paddy.export ckpt_path=outputs/2026-11-23/10-41-07                   # best checkpoint -> export/
    python -m paddy.export ckpt_path=outputs/... quantize=true                      # + dynamic int8 model
    python -m paddy.export ckpt_path=outputs/.../checkpoints/last.ckpt output_dir=deploy/ opset=18 threads=4

The network is rebuilt from the checkpoint alone (:func:`paddy.utils.checkpoints.load_trained_model`)
and exported on the CPU in eval mode, fp32, by ``torch.onnx.export`` (``exporter=dynamo``, the
``torch.export``-based exporter, the default; ``exporter=torchscript`` is PyTorch's older tracer).
The ONNX graph takes ``images`` (``batch x 3 x S x S`` float32, RGB, resized/cropped and normalised
exactly as the run's eval transform: ``data.image_size``, ``data.mean``/``data.std``) and, for
DCT-fusion models, ``dct`` (``batch x dct_dim``, :class:`paddy.data.features.DCTFeatures` of the same
image); it returns ``logits`` (``batch x classes``). The batch axis is dynamic.

Checks, on random 0-255 RGB images put through the run's normalisation (and their DCT features):

- parity: PyTorch and ONNX Runtime (CPUExecutionProvider) on the same inputs at every batch size of
  ``batch_sizes`` (default 1 and 16, which also proves the batch axis is dynamic); the largest
  absolute logit difference is printed and must stay within ``atol`` (default 1e-3: fp32 kernels that
  only add up in another order differ by about 1e-7 to 1e-6 of the largest logit, 1.5e-5 for a
  ResNet-18 + ECA with logits up to 45, while a real export error moves logits by far more).
- ``quantize=true``: ``onnxruntime.quantization.quantize_dynamic`` (int8 weights, activations
  quantized per batch at run time; ``Conv`` becomes ``ConvInteger``, ``MatMul``/``Gemm`` become
  ``MatMulInteger``); its difference from PyTorch and its top-1 agreement with it are reported, not
  bounded (int8 changes the numbers), with its size next to the fp32 file's.
- latency: batch-1 forward passes of PyTorch (eager, ``inference_mode``), ORT fp32 and ORT int8, one
  backend after the other (so their thread pools never compete for the cores): median and 90th
  percentile of ``latency_runs`` after ``warmup_runs``; and images/s at the largest batch size
  (median of ``throughput_runs``). PyTorch runs with ``torch.set_num_threads(threads)``, ONNX Runtime
  with ``intra_op_num_threads=threads`` and one inter-op thread (``threads=null``: PyTorch's default,
  the number of physical cores).

Writes into ``output_dir`` (default ``<run dir>/export/``): ``model.onnx``; ``model.int8.onnx`` with
``quantize=true`` (a stale one from an earlier export is removed otherwise); ``labels.txt`` (one class
name per line, in logit order); ``export.json`` (every number above, the inputs and outputs with their
shapes, the class names, the preprocessing, the opset and the versions of torch, onnx, onnxruntime).
The ONNX files carry the class names and the preprocessing in their metadata (``metadata_props``:
``class_names``, ``image_size``, ``mean``, ``std``, ``eval_transforms``, ``features``), so a deployment
needs neither paddy nor PyTorch. Hydra writes nothing of its own (no ``outputs/`` folder, no log file).

Exit status: 0 when exported and within ``atol``; 2 for a bad checkpoint or option, a failed export or
a parity difference above ``atol`` (one line, no traceback; the files are kept for inspection).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir
from paddy.errors import PaddyError, first_line, reported
from paddy.utils.checkpoints import CheckpointError, load_trained_model, resolve_checkpoint, run_dir_of
from paddy.utils.runtime import logs_muted, time_steps

log = logging.getLogger("paddy")

SUPPORTED_FORMATS = ("onnx",)
EXPORTERS = ("dynamo", "torchscript")
WEIGHT_TYPES = ("qint8", "quint8")
DEFAULT_ATOL = 1e-3
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
EXAMPLE_BATCH = 2  # torch.export treats sizes 0 and 1 as constants: trace with a batch of 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # as paddy.data.transforms (not imported: it pulls in Lightning)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportError(PaddyError):
    """An export that cannot be done as asked (unknown format or option, a failed export, a parity failure)."""


# ---------------------------------------------------------------------------------------------- inputs


def input_names(model: nn.Module) -> list[str]:
    """The ONNX input names: ``images`` and the model's extra per-sample features (``dct``)."""
    return ["images", *getattr(model, "input_features", ())]


def feature_extractors(model: nn.Module, options: Mapping[str, Any] | None = None) -> dict[str, Callable]:
    """The extractors of the model's extra inputs, set up as training did (``options[name]``: ``model.dct``)."""
    from paddy.data.features import FEATURE_EXTRACTORS

    extractors = {}
    for name in getattr(model, "input_features", ()):
        if name not in FEATURE_EXTRACTORS:
            raise ExportError(f"the model takes an input feature {name!r} that paddy cannot compute "
                              f"(known: {', '.join(FEATURE_EXTRACTORS)})")
        kwargs = {k: v for k, v in dict((options or {}).get(name) or {}).items() if k in ("block", "size", "normalize")}
        extractors[name] = FEATURE_EXTRACTORS[name](**kwargs)
    return extractors


def sample_inputs(batch: int, image_size: int, mean: Sequence[float], std: Sequence[float],
                  extractors: Mapping[str, Callable], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """``batch`` random 0-255 RGB images, normalised as the run's eval transform does, and their features."""
    pixels = rng.integers(0, 256, (batch, image_size, image_size, 3), dtype=np.uint8)
    scale = np.asarray(std, dtype=np.float32) * 255.0
    images = (pixels.astype(np.float32) - np.asarray(mean, dtype=np.float32) * 255.0) / scale
    inputs = {"images": np.ascontiguousarray(images.transpose(0, 3, 1, 2))}
    for name, extract in extractors.items():
        inputs[name] = np.stack([np.asarray(extract(image), dtype=np.float32) for image in pixels])
    return inputs


def _torch_forward(model: nn.Module, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    images = tensors.pop("images")
    with torch.inference_mode():
        return model(images, **tensors).float().numpy()


# ---------------------------------------------------------------------------------------------- export


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Hide the exporters' advisory warnings (the legacy tracer's deprecation notice, tracer hints) and the
    INFO lines of the ONNX graph optimizer (``onnxscript``/``onnx_ir`` passes)."""
    with contextlib.ExitStack() as stack:
        for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):
            stack.enter_context(logs_muted(name))
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
        yield


def _torch_to_onnx(model: nn.Module, example: Mapping[str, np.ndarray], path: Path, exporter: str,
                   opset: int | None) -> None:
    """``torch.onnx.export`` with named inputs, output ``logits`` and a dynamic batch axis."""
    names = list(example)
    tensors = {k: torch.from_numpy(v) for k, v in example.items()}
    images = tensors.pop("images")
    kwargs: dict[str, Any] = {"input_names": names, "output_names": ["logits"], "verbose": False}
    if opset is not None:
        kwargs["opset_version"] = int(opset)
    with _quiet_export():
        if exporter == "dynamo":
            first = next(iter(inspect.signature(model.forward).parameters))
            batch = torch.export.Dim("batch", min=1)
            dynamic = {first: {0: batch}, **{name: {0: batch} for name in tensors}}
            program = torch.onnx.export(model, (images,), kwargs=tensors, dynamo=True, dynamic_shapes=dynamic,
                                        **kwargs)
            program.save(str(path))
        else:
            axes = {name: {0: "batch"} for name in [*names, "logits"]}
            torch.onnx.export(model, (images,), str(path), kwargs=tensors, dynamo=False, dynamic_axes=axes, **kwargs)


def _add_metadata(path: Path, metadata: Mapping[str, str], doc: str | None = None) -> None:
    import onnx

    proto = onnx.load(str(path))
    existing = {p.key for p in proto.metadata_props}
    for key, value in metadata.items():
        if key in existing:
            continue
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    if doc:
        proto.doc_string = doc
    onnx.save(proto, str(path))


def _describe_io(values: Sequence[Any]) -> list[dict[str, Any]]:
    kinds = {"float": "float32", "double": "float64"}
    return [{"name": v.name, "shape": list(v.shape), "dtype": kinds.get(t := v.type[len("tensor("):-1], t)}
            for v in values]


def _feature_settings(extractors: Mapping[str, Callable]) -> dict[str, dict[str, Any]]:
    """``{"dct": {"extractor": "paddy.data.features.DCTFeatures", "block": 32, "size": 64, "normalize": true}}``."""
    return {name: {"extractor": f"{type(e).__module__}.{type(e).__qualname__}",
                   **{k: getattr(e, k) for k in ("block", "size", "normalize") if hasattr(e, k)}}
            for name, e in extractors.items()}


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types
        raise ExportError(f"{path}: ONNX Runtime cannot load it ({first_line(err)})") from err


def _ort_run(session: Any, inputs: Mapping[str, np.ndarray], what: str) -> np.ndarray:
    try:
        return np.asarray(session.run(["logits"], dict(inputs))[0], dtype=np.float32)
    except Exception as err:
        batch = len(inputs["images"])
        raise ExportError(f"ONNX Runtime cannot run the {what} model at batch {batch} "
                          f"(is the batch axis not dynamic?): {first_line(err)}") from err


# ---------------------------------------------------------------------------------------------- quantize


class _RootChatter(logging.Filter):
    """Drop what ``quantize_dynamic`` logs on the root logger: an INFO line per tensor and a warning
    recommending pre-processing (which changes nothing for these CNNs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "consider to run pre-processing" not in record.getMessage()


def quantize_onnx(source: Path, target: Path, op_types: Sequence[str] | None = None, weight_type: str = "qint8",
                  per_channel: bool = False) -> dict[str, int]:
    """Dynamic int8 quantization of ``source`` into ``target``; returns the integer nodes it created by type."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if weight_type not in WEIGHT_TYPES:
        raise ExportError(f"quantize_weight_type={weight_type!r} (expected one of: {', '.join(WEIGHT_TYPES)})")
    advice = _RootChatter()
    logging.getLogger().addFilter(advice)
    try:
        quantize_dynamic(str(source), str(target), op_types_to_quantize=list(op_types) if op_types else None,
                         per_channel=bool(per_channel),
                         weight_type=QuantType.QInt8 if weight_type == "qint8" else QuantType.QUInt8)
    except Exception as err:
        raise ExportError(f"dynamic int8 quantization failed: {first_line(err)}") from err
    finally:
        logging.getLogger().removeFilter(advice)
    counts: dict[str, int] = {}
    for node in onnx.load(str(target), load_external_data=False).graph.node:
        if node.op_type.endswith("Integer"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not counts:
        raise ExportError(f"dynamic int8 quantization changed nothing (no node of the types "
                          f"{list(op_types) if op_types else 'ONNX Runtime quantizes by default'} in the graph)")
    return dict(sorted(counts.items()))


# ---------------------------------------------------------------------------------------------- timing


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def _file_mb(path: Path) -> float:
    return round(path.stat().st_size / 1024**2, 3)


# ---------------------------------------------------------------------------------------------- export


def export_model(model: nn.Module, output_dir: str | Path, *, class_names: Sequence[str] | None = None,
                 image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 feature_options: Mapping[str, Any] | None = None, eval_transforms: Mapping[str, Any] | None = None,
                 exporter: str = "dynamo", opset: int | None = None, atol: float = DEFAULT_ATOL,
                 batch_sizes: Sequence[int] = (1, 16), quantize: bool = False,
                 quantize_ops: Sequence[str] | None = None,
                 quantize_weight_type: str = "qint8", quantize_per_channel: bool = False, latency_runs: int = 50,
                 warmup_runs: int = 5, throughput_runs: int = 5, threads: int | None = None, seed: int = 0,
                 source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export a network to ONNX (CPU, eval, fp32, dynamic batch), check it against PyTorch and time both.

    Works on any paddy network (``paddy.create_model(...)`` or a trained run's); see the module
    docstring for what is checked and written.

    Args:
        model: the network; exported as is (its weights), on the CPU in eval mode.
        output_dir: where ``model.onnx``, ``model.int8.onnx``, ``labels.txt`` and ``export.json`` go.
        class_names: names in logit order (default ``0 .. classes-1``).
        image_size, mean, std: the model's input side and normalisation (for the check inputs and the
            metadata).
        feature_options: the extra inputs' extractor settings (a run's ``model`` section: ``dct.block``, ...).
        eval_transforms: the run's ``data.transforms.eval`` (metadata only).
        exporter: ``dynamo`` (``torch.export``-based) or ``torchscript`` (the legacy tracer).
        opset: ONNX opset (``None``: the exporter's default).
        atol: the largest absolute logit difference between PyTorch and ONNX Runtime allowed.
        batch_sizes: batch sizes checked (at least one besides 1 shows the batch axis is dynamic); the
            largest is also the throughput batch.
        quantize, quantize_ops, quantize_weight_type, quantize_per_channel: write ``model.int8.onnx``
            with ``quantize_dynamic`` (``quantize_ops=None``: every op type ONNX Runtime quantizes).
        latency_runs, warmup_runs, throughput_runs: timed rounds (0 skips that measurement).
        threads: CPU threads of PyTorch and ONNX Runtime (``None``: ``torch.get_num_threads()``).
        seed: seed of the random check inputs.
        source: extra keys for ``export.json`` (the checkpoint, run directory, model name, ...).

    Returns:
        The contents of ``export.json``.

    Raises:
        ExportError: a bad option, an export or ONNX Runtime failure, or a parity difference above
            ``atol`` (then the files are written first, for inspection).
    """
    import onnx
    import onnxruntime as ort

    started = time.perf_counter()
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter={exporter!r} (expected one of: {', '.join(EXPORTERS)})")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ExportError(f"batch_sizes={list(batch_sizes)} (expected positive integers)")
    if not atol > 0:
        raise ExportError(f"atol={atol} (expected a positive number)")
    if int(image_size) < 1:
        raise ExportError(f"image_size={image_size} (expected a positive integer)")
    threads = int(threads) if threads else torch.get_num_threads()
    model = model.float().to("cpu").eval()
    names = input_names(model)
    extractors = feature_extractors(model, feature_options)
    rng = np.random.default_rng(seed)
    example = sample_inputs(EXAMPLE_BATCH, int(image_size), mean, std, extractors, rng)
    try:
        reference = _torch_forward(model, example)
    except Exception as err:
        raise ExportError(f"the model does not run on {image_size}-px inputs {names}: {first_line(err)}") from err
    num_classes = int(reference.shape[1])
    class_names = [str(c) for c in class_names] if class_names else [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ExportError(f"{len(class_names)} class names for a model with {num_classes} outputs")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, int8_path = out / MODEL_FILE, out / INT8_FILE
    for stale in (onnx_path, int8_path):
        stale.unlink(missing_ok=True)
    log.info("Exporting to %s (%s exporter, %d px, inputs %s)", onnx_path, exporter, image_size, ", ".join(names))
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        export_started = time.perf_counter()
        try:
            _torch_to_onnx(model, example, onnx_path, exporter, opset)
        except Exception as err:
            other = EXPORTERS[1 - EXPORTERS.index(exporter)]
            cause = f"; {first_line(err.__cause__)}" if err.__cause__ is not None else ""
            raise ExportError(f"torch.onnx.export ({exporter} exporter) failed: {first_line(err)}{cause} "
                              f"(try exporter={other})") from err
        export_seconds = time.perf_counter() - export_started
        metadata = {
            "class_names": json.dumps(class_names), "image_size": str(int(image_size)),
            "mean": json.dumps([float(m) for m in mean]), "std": json.dumps([float(s) for s in std]),
            "input_layout": "images: N x 3 x H x W float32, RGB, (pixel / 255 - mean) / std",
            "eval_transforms": json.dumps(eval_transforms or {}),
            "features": json.dumps(_feature_settings(extractors)),
            "paddy_version": str(paddy.__version__),
            **({"model_name": str(source["model_name"])} if source and source.get("model_name") else {}),
        }
        doc = f"paddy export: logits over {num_classes} classes; see metadata_props for preprocessing"
        _add_metadata(onnx_path, metadata, doc)
        proto = onnx.load(str(onnx_path), load_external_data=False)
        try:
            onnx.checker.check_model(str(onnx_path))
        except Exception as err:
            raise ExportError(f"{onnx_path}: the ONNX checker rejects it ({first_line(err)})") from err
        opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
        batch_dims = [i.type.tensor_type.shape.dim[0] for i in proto.graph.input if i.name in names]
        if not batch_dims or not all(d.dim_param for d in batch_dims):
            other = EXPORTERS[1 - EXPORTERS.index(exporter)]
            raise ExportError(f"{onnx_path}: the exported batch axis is fixed, not dynamic "
                              f"({[d.dim_value for d in batch_dims]}); try exporter={other}")

        session = _session(onnx_path, threads)
        checks: dict[int, dict[str, np.ndarray]] = {
            b: sample_inputs(b, int(image_size), mean, std, extractors, rng) for b in sizes}
        torch_logits = {b: _torch_forward(model, x) for b, x in checks.items()}
        ort_logits = {b: _ort_run(session, x, "fp32") for b, x in checks.items()}
        for b, logits in ort_logits.items():
            if logits.shape != (b, num_classes):
                raise ExportError(f"ONNX Runtime gives logits of shape {logits.shape} at batch {b} "
                                  f"(expected {(b, num_classes)})")
        per_batch = {b: float(np.abs(ort_logits[b] - torch_logits[b]).max()) for b in sizes}
        max_diff = max(per_batch.values())
        all_torch = np.concatenate([torch_logits[b] for b in sizes])
        parity = {
            "atol": float(atol), "max_abs_diff": max_diff, "ok": bool(max_diff <= atol),
            "max_abs_diff_per_batch": {str(b): d for b, d in per_batch.items()},
            "max_abs_logit": float(np.abs(all_torch).max()),
            "top1_agreement": float(np.mean(np.concatenate([ort_logits[b] for b in sizes]).argmax(1)
                                            == all_torch.argmax(1))),
            "samples": int(sum(sizes)),
            "inputs": f"random 0-255 RGB images (seed {seed}), normalised with mean/std"
                      + (f", and their {', '.join(extractors)} features" if extractors else ""),
        }

        int8: dict[str, Any] | None = None
        int8_session = None
        if quantize:
            log.info("Quantizing to %s (dynamic int8)", int8_path)
            nodes = quantize_onnx(onnx_path, int8_path, quantize_ops, quantize_weight_type, quantize_per_channel)
            _add_metadata(int8_path, {**metadata, "quantization": f"dynamic int8 ({quantize_weight_type} weights)"},
                          doc)
            int8_session = _session(int8_path, threads)
            int8_logits = {b: _ort_run(int8_session, x, "int8") for b, x in checks.items()}
            all_int8 = np.concatenate([int8_logits[b] for b in sizes])
            int8 = {
                "file": str(int8_path), "size_mb": _file_mb(int8_path),
                "size_ratio": round(int8_path.stat().st_size / onnx_path.stat().st_size, 4),
                "weight_type": quantize_weight_type, "per_channel": bool(quantize_per_channel),
                "op_types": list(quantize_ops) if quantize_ops else "onnxruntime default", "integer_nodes": nodes,
                "max_abs_diff_vs_torch": float(np.abs(all_int8 - all_torch).max()),
                "top1_agreement": float(np.mean(all_int8.argmax(1) == all_torch.argmax(1))),
                "samples": int(len(all_torch)),
            }

        one = sample_inputs(1, int(image_size), mean, std, extractors, rng)
        big = checks[sizes[-1]]
        backends: dict[str, tuple[Callable, Callable]] = {
            "pytorch": (lambda: _torch_forward(model, one), lambda: _torch_forward(model, big)),
            "onnxruntime": (lambda: session.run(["logits"], one), lambda: session.run(["logits"], big)),
        }
        if int8_session is not None:
            backends["onnxruntime_int8"] = (lambda: int8_session.run(["logits"], one),
                                            lambda: int8_session.run(["logits"], big))
        latency: dict[str, Any] = {"batch_size": 1, "runs": int(latency_runs), "warmup": int(warmup_runs),
                                   "threads": threads}
        throughput: dict[str, Any] = {"batch_size": sizes[-1], "runs": int(throughput_runs)}
        for name, (single, batched) in backends.items():  # one backend at a time: their thread pools never compete
            if latency_runs > 0:
                ms = [t * 1000 for t in time_steps(single, int(latency_runs), int(warmup_runs))]
                latency[name] = {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(_percentile(ms, 0.9), 3)}
            if throughput_runs > 0:
                median = statistics.median(time_steps(batched, int(throughput_runs), min(int(warmup_runs), 1)))
                throughput[name] = round(sizes[-1] / median, 1) if median > 0 else None
    finally:
        torch.set_num_threads(previous_threads)

    (out / "labels.txt").write_text("".join(f"{name}\n" for name in class_names))
    result: dict[str, Any] = {
        "format": "onnx",
        **dict(source or {}),
        "num_classes": num_classes,
        "classes": class_names,
        "onnx": {"file": str(onnx_path), "size_mb": _file_mb(onnx_path), "opset": opset_used, "exporter": exporter,
                 "export_time_s": round(export_seconds, 2), "inputs": _describe_io(session.get_inputs()),
                 "outputs": _describe_io(session.get_outputs()), "dynamic_batch": True},
        "preprocessing": {"image_size": int(image_size), "mean": [float(m) for m in mean],
                          "std": [float(s) for s in std], "eval_transforms": dict(eval_transforms or {}),
                          "features": _feature_settings(extractors)},
        "parity": parity,
        "int8": int8,
        "latency_ms": latency,
        "throughput_img_s": throughput,
        "device": f"cpu ({platform.processor() or platform.machine()}), {threads} threads",
        "versions": _versions(ort.__version__, onnx.__version__),
        "output_dir": str(out),
        "labels_file": str(out / "labels.txt"),
        "total_time_s": round(time.perf_counter() - started, 2),
    }
    (out / "export.json").write_text(json.dumps(result, indent=2, default=str))
    if not parity["ok"]:
        raise ExportError(f"ONNX Runtime's logits differ from PyTorch's by {max_diff:.3g} > atol={atol:g} "
                          f"(per batch size: {', '.join(f'{b}: {d:.3g}' for b, d in per_batch.items())}); "
                          f"the files are kept in {out} for inspection")
    return result


def _versions(ort_version: str, onnx_version: str) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version(), "paddy": paddy.__version__,
                                       "torch": torch.__version__, "onnx": onnx_version, "onnxruntime": ort_version}
    try:
        import onnxscript

        versions["onnxscript"] = onnxscript.__version__
    except ImportError:
        versions["onnxscript"] = None
    return versions


def export_onnx(ckpt_path: str | Path, output_dir: str | Path | None = None, weights: str = "auto",
                trusted: bool = False, **options: Any) -> dict[str, Any]:
    """Export a trained run's checkpoint (or run directory: its best checkpoint) to ONNX.

    The input size, normalisation and extra-input settings come from the run's config; ``options``
    are :func:`export_model`'s (``exporter``, ``opset``, ``atol``, ``batch_sizes``, ``quantize``, ...).
    ``output_dir`` defaults to ``<run dir>/export``; ``weights`` is ``auto``/``raw``/``ema`` (see
    :func:`paddy.utils.checkpoints.load_trained_model`).

    Returns:
        The contents of ``export.json``.
    """
    ckpt = resolve_checkpoint(ckpt_path)
    model, class_names, run_config = load_trained_model(ckpt, device="cpu", weights=weights, trusted=trusted)
    data = run_config.get("data") or {}
    model_config = run_config.get("model") or {}
    try:
        image_size = int(data.get("image_size") or 224)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{ckpt}: data.image_size={data.get('image_size')!r} is not a number") from err
    source = {"checkpoint": str(ckpt), "run_dir": str(run_dir_of(ckpt)), "model_name": model_config.get("name"),
              "weights": weights}
    out = Path(output_dir) if output_dir else run_dir_of(ckpt) / "export"
    return export_model(model, out, class_names=class_names, image_size=image_size,
                        mean=data.get("mean") or IMAGENET_MEAN, std=data.get("std") or IMAGENET_STD,
                        feature_options=model_config, eval_transforms=(data.get("transforms") or {}).get("eval"),
                        source=source, **options)


def export(ckpt_path: str | Path, format: str = "onnx", **options: Any) -> dict[str, Any]:
    """``export_onnx`` for ``format="onnx"`` (the one supported format); any other is an :class:`ExportError`."""
    kind = str(format).lower()
    if kind not in SUPPORTED_FORMATS:
        raise ExportError(f"format={format!r} is not supported (supported formats: {', '.join(SUPPORTED_FORMATS)})")
    return export_onnx(ckpt_path, **options)


def format_summary(result: Mapping[str, Any]) -> str:
    """Console lines: the files, the parity check, the int8 model and the side-by-side latency table."""
    onnx_info, parity, int8 = result["onnx"], result["parity"], result.get("int8")
    versions = result["versions"]
    shapes = ", ".join(f"{i['name']} {i['shape']}" for i in onnx_info["inputs"])
    outputs = ", ".join(f"{o['name']} {o['shape']}" for o in onnx_info["outputs"])
    per_batch = ", ".join(f"{d:.3g} at batch {b}" for b, d in parity["max_abs_diff_per_batch"].items())
    source = result.get("checkpoint") or result.get("model_name") or "model"
    lines = [
        f"Exported {source} -> {onnx_info['file']} ({onnx_info['size_mb']:.2f} MB, opset {onnx_info['opset']}, "
        f"{onnx_info['exporter']} exporter, {result['num_classes']} classes)",
        f"  inputs: {shapes}; output: {outputs} (dynamic batch)",
        f"  parity vs PyTorch (fp32, CPU): max abs diff {parity['max_abs_diff']:.3g} ({per_batch}; "
        f"largest |logit| {parity['max_abs_logit']:.3g}) <= atol {parity['atol']:g}: "
        f"{'OK' if parity['ok'] else 'FAILED'}",
    ]
    if int8:
        nodes = ", ".join(f"{n} {k}" for k, n in int8["integer_nodes"].items())
        lines.append(f"  int8 (dynamic, {int8['weight_type']} weights; {nodes}): {int8['size_mb']:.2f} MB "
                     f"({int8['size_ratio']:.2f}x the fp32 file), max abs diff vs PyTorch "
                     f"{int8['max_abs_diff_vs_torch']:.3g}, top-1 agreement {100 * int8['top1_agreement']:.1f}% "
                     f"on {int8['samples']} check inputs")
    latency, throughput = result["latency_ms"], result["throughput_img_s"]
    rows = [("pytorch", f"PyTorch {versions['torch']} (eager)"),
            ("onnxruntime", f"ONNX Runtime {versions['onnxruntime']} fp32")]
    if int8:
        rows.append(("onnxruntime_int8", f"ONNX Runtime {versions['onnxruntime']} int8"))
    if latency.get("pytorch") or throughput.get("pytorch"):
        base = (latency.get("pytorch") or {}).get("median_ms")
        threads = f"{latency['threads']} thread" + ("s" if latency["threads"] != 1 else "")
        lines += ["", f"| CPU, {threads} | batch 1 median ms | batch 1 p90 ms | vs PyTorch | "
                      f"img/s at batch {throughput['batch_size']} |", "|---|---:|---:|---:|---:|"]
        for key, label in rows:
            timing = latency.get(key) or {}
            median = timing.get("median_ms")
            speedup = f"{base / median:.2f}x" if base and median else "n/a"
            lines.append(f"| {label} | {median if median is not None else 'n/a'} | {timing.get('p90_ms', 'n/a')} | "
                         f"{speedup} | {throughput.get(key) or 'n/a'} |")
        lines.append("")
        lines.append(f"  ({latency['runs']} timed runs after {latency['warmup']} warm-up per backend, one backend at a "
                     f"time; throughput: median of {throughput['runs']} runs)")
    lines.append(f"  files in {result['output_dir']}: {MODEL_FILE}" + (f", {INT8_FILE}" if int8 else "")
                 + ", labels.txt, export.json")
    return "\n".join(lines)


@hydra.main(config_path=str(config_dir()), config_name="export", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> None:
    def listed(value: Any) -> list[Any] | None:
        if value is None:
            return None
        return list(OmegaConf.to_container(value, resolve=True)) if OmegaConf.is_list(value) else [value]

    try:
        options = {
            "output_dir": cfg.get("output_dir"), "weights": cfg.get("weights", "auto"),
            "trusted": bool(cfg.get("trust_checkpoint", False)),
            "exporter": str(cfg.get("exporter", "dynamo")).lower(), "opset": cfg.get("opset"),
            "atol": float(cfg.get("atol", DEFAULT_ATOL)), "batch_sizes": [int(b) for b in listed(cfg.get("batch_sizes"))
                                                                           or [1, 16]],
            "quantize": bool(cfg.get("quantize", False)), "quantize_ops": listed(cfg.get("quantize_ops")),
            "quantize_weight_type": str(cfg.get("quantize_weight_type", "qint8")).lower(),
            "quantize_per_channel": bool(cfg.get("quantize_per_channel", False)),
            "latency_runs": int(cfg.get("latency_runs", 50)), "warmup_runs": int(cfg.get("warmup_runs", 5)),
            "throughput_runs": int(cfg.get("throughput_runs", 5)), "threads": cfg.get("threads"),
            "seed": int(cfg.get("seed", 0)),
        }
        if options["opset"] is not None:
            options["opset"] = int(options["opset"])
        if options["threads"] is not None:
            options["threads"] = int(options["threads"])
    except (TypeError, ValueError) as err:  # atol=abc, batch_sizes=[x], ...
        log.error("bad option: %s", first_line(err))
        sys.exit(2)
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        log.error("ckpt_path is required: python -m paddy.export ckpt_path=<run dir or .ckpt> [format=onnx]")
        sys.exit(2)
    with reported(log):
        result = export(cfg.ckpt_path, format=cfg.get("format", "onnx"), **options)
    print(format_summary(result))


if __name__ == "__main__":
    main()
