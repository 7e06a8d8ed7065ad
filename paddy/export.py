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
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

import paddy  # noqa: F401  (sets the offline environment before albumentations is imported)
from paddy.config import TRUSTED_TARGETS, config_dir
from paddy.errors import PaddyError, SettingError, first_line, reported
from paddy.model_inputs import feature_extractors, feature_settings, input_features
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


@dataclass(frozen=True)
class Preprocessing:
    """What an image goes through before the exported model: the run's eval transform (side ``image_size``,
    ``mean``/``std`` normalisation) and the extractors of the model's extra inputs."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    extractors: Mapping[str, Callable]
    eval_transforms: Mapping[str, Any]

    def sample(self, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """:func:`sample_inputs` of this preprocessing."""
        return sample_inputs(batch, self.image_size, self.mean, self.std, self.extractors, rng)

    def check_note(self, seed: int) -> str:
        """What :meth:`sample` gives, for ``export.json``'s parity section."""
        return f"random 0-255 RGB images (seed {seed}), normalised with mean/std" + (
            f", and their {', '.join(self.extractors)} features" if self.extractors else "")

    def describe(self) -> dict[str, Any]:
        """``export.json``'s ``preprocessing`` section."""
        return {"image_size": self.image_size, "mean": [float(m) for m in self.mean],
                "std": [float(s) for s in self.std], "eval_transforms": dict(self.eval_transforms),
                "features": feature_settings(self.extractors)}

    def metadata(self) -> dict[str, str]:
        """The ONNX files' ``metadata_props`` entries that tell a deployment how to prepare an image."""
        return {"image_size": str(self.image_size), "mean": json.dumps([float(m) for m in self.mean]),
                "std": json.dumps([float(s) for s in self.std]),
                "input_layout": "images: N x 3 x H x W float32, RGB, (pixel / 255 - mean) / std",
                "eval_transforms": json.dumps(dict(self.eval_transforms)),
                "features": json.dumps(feature_settings(self.extractors))}


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


# ---------------------------------------------------------------------------------------------- numbers


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[int(q * (len(ordered) - 1))]


def _file_mb(path: Path) -> float:
    return round(path.stat().st_size / 1024**2, 3)


# ---------------------------------------------------------------------------------------------- steps


def _checked_options(exporter: str, batch_sizes: Sequence[int], atol: float, image_size: int) -> list[int]:
    """Refuse an option out of range before anything is written; returns the distinct batch sizes, ascending."""
    if exporter not in EXPORTERS:
        raise ExportError(f"exporter={exporter!r} (expected one of: {', '.join(EXPORTERS)})")
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ExportError(f"batch_sizes={list(batch_sizes)} (expected positive integers)")
    if not atol > 0:
        raise ExportError(f"atol={atol} (expected a positive number)")
    if int(image_size) < 1:
        raise ExportError(f"image_size={image_size} (expected a positive integer)")
    return sizes


def _label_names(model: nn.Module, example: Mapping[str, np.ndarray], class_names: Sequence[str] | None) -> list[str]:
    """The class names in logit order, checked against the logits the model gives on ``example``
    (``0 .. classes-1`` when none are given); an :class:`ExportError` where the model does not run."""
    try:
        reference = _torch_forward(model, example)
    except Exception as err:
        size = example["images"].shape[-1]
        raise ExportError(f"the model does not run on {size}-px inputs {list(example)}: {first_line(err)}") from err
    num_classes = int(reference.shape[1])
    names = [str(c) for c in class_names] if class_names else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ExportError(f"{len(names)} class names for a model with {num_classes} outputs")
    return names


def _fresh_output_dir(output_dir: str | Path) -> Path:
    """``output_dir``, created, without the ONNX files of an earlier export."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / MODEL_FILE, out / INT8_FILE):
        stale.unlink(missing_ok=True)
    return out


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's CPU thread count set to ``threads`` for the block, then restored."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _onnx_metadata(class_names: Sequence[str], preprocessing: Preprocessing,
                   source: Mapping[str, Any] | None) -> tuple[dict[str, str], str]:
    """The ``metadata_props`` of the exported files (class names, preprocessing, paddy version, model
    name) and their ``doc_string``."""
    metadata = {"class_names": json.dumps(list(class_names)), **preprocessing.metadata(),
                "paddy_version": str(paddy.__version__),
                **({"model_name": str(source["model_name"])} if source and source.get("model_name") else {})}
    return metadata, f"paddy export: logits over {len(class_names)} classes; see metadata_props for preprocessing"


def write_onnx(model: nn.Module, example: Mapping[str, np.ndarray], path: Path, exporter: str, opset: int | None,
               metadata: Mapping[str, str], doc: str, threads: int) -> tuple[dict[str, Any], Any]:
    """Export ``model`` to ``path`` with ``metadata``, check the file (ONNX checker, dynamic batch axis) and
    load it in ONNX Runtime: ``export.json``'s ``onnx`` section and the session."""
    import onnx

    started = time.perf_counter()
    try:
        _torch_to_onnx(model, example, path, exporter, opset)
    except Exception as err:
        other = EXPORTERS[1 - EXPORTERS.index(exporter)]
        cause = f"; {first_line(err.__cause__)}" if err.__cause__ is not None else ""
        raise ExportError(f"torch.onnx.export ({exporter} exporter) failed: {first_line(err)}{cause} "
                          f"(try exporter={other})") from err
    seconds = time.perf_counter() - started
    _add_metadata(path, metadata, doc)
    proto = onnx.load(str(path), load_external_data=False)
    try:
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ExportError(f"{path}: the ONNX checker rejects it ({first_line(err)})") from err
    batch_dims = [i.type.tensor_type.shape.dim[0] for i in proto.graph.input if i.name in example]
    if not batch_dims or not all(d.dim_param for d in batch_dims):
        other = EXPORTERS[1 - EXPORTERS.index(exporter)]
        raise ExportError(f"{path}: the exported batch axis is fixed, not dynamic "
                          f"({[d.dim_value for d in batch_dims]}); try exporter={other}")
    session = _session(path, threads)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"file": str(path), "size_mb": _file_mb(path), "opset": opset_used, "exporter": exporter,
            "export_time_s": round(seconds, 2), "inputs": _describe_io(session.get_inputs()),
            "outputs": _describe_io(session.get_outputs()), "dynamic_batch": True}, session


def check_parity(model: nn.Module, session: Any, checks: Mapping[int, Mapping[str, np.ndarray]], atol: float,
                 inputs_note: str) -> tuple[dict[str, Any], np.ndarray]:
    """PyTorch's and ONNX Runtime's logits on the ``checks`` inputs (per batch size): ``export.json``'s
    ``parity`` section, and PyTorch's logits of all of them (the reference of the int8 model)."""
    torch_logits = {b: _torch_forward(model, x) for b, x in checks.items()}
    ort_logits = {b: _ort_run(session, x, "fp32") for b, x in checks.items()}
    num_classes = next(iter(torch_logits.values())).shape[1]
    for b, logits in ort_logits.items():
        if logits.shape != (b, num_classes):
            raise ExportError(f"ONNX Runtime gives logits of shape {logits.shape} at batch {b} "
                              f"(expected {(b, num_classes)})")
    per_batch = {b: float(np.abs(ort_logits[b] - torch_logits[b]).max()) for b in checks}
    max_diff = max(per_batch.values())
    all_torch = np.concatenate(list(torch_logits.values()))
    parity = {
        "atol": float(atol), "max_abs_diff": max_diff, "ok": bool(max_diff <= atol),
        "max_abs_diff_per_batch": {str(b): d for b, d in per_batch.items()},
        "max_abs_logit": float(np.abs(all_torch).max()),
        "top1_agreement": float(np.mean(np.concatenate(list(ort_logits.values())).argmax(1) == all_torch.argmax(1))),
        "samples": int(sum(checks)),
        "inputs": inputs_note,
    }
    return parity, all_torch


def quantize_and_compare(onnx_path: Path, metadata: Mapping[str, str], doc: str,
                         checks: Mapping[int, Mapping[str, np.ndarray]], reference: np.ndarray, threads: int,
                         op_types: Sequence[str] | None, weight_type: str, per_channel: bool) -> tuple[dict, Any]:
    """``model.int8.onnx`` next to ``onnx_path`` (dynamic int8, with the fp32 file's metadata) and its
    ONNX Runtime session; ``export.json``'s ``int8`` section compares its logits with ``reference``."""
    int8_path = onnx_path.with_name(INT8_FILE)
    log.info("Quantizing to %s (dynamic int8)", int8_path)
    nodes = quantize_onnx(onnx_path, int8_path, op_types, weight_type, per_channel)
    _add_metadata(int8_path, {**metadata, "quantization": f"dynamic int8 ({weight_type} weights)"}, doc)
    session = _session(int8_path, threads)
    logits = np.concatenate([_ort_run(session, x, "int8") for x in checks.values()])
    int8 = {
        "file": str(int8_path), "size_mb": _file_mb(int8_path),
        "size_ratio": round(int8_path.stat().st_size / onnx_path.stat().st_size, 4),
        "weight_type": weight_type, "per_channel": bool(per_channel),
        "op_types": list(op_types) if op_types else "onnxruntime default", "integer_nodes": nodes,
        "max_abs_diff_vs_torch": float(np.abs(logits - reference).max()),
        "top1_agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
        "samples": int(len(reference)),
    }
    return int8, session


def time_backends(backends: Mapping[str, tuple[Callable, Callable]], batch_size: int, threads: int,
                  latency_runs: int, warmup_runs: int, throughput_runs: int) -> tuple[dict, dict]:
    """Batch-1 latency (median, p90 ms) and images/s at ``batch_size`` of each backend's (single, batched)
    forward, one backend at a time: ``export.json``'s ``latency_ms`` and ``throughput_img_s``."""
    latency: dict[str, Any] = {"batch_size": 1, "runs": int(latency_runs), "warmup": int(warmup_runs),
                               "threads": threads}
    throughput: dict[str, Any] = {"batch_size": batch_size, "runs": int(throughput_runs)}
    for name, (single, batched) in backends.items():  # one backend at a time: their thread pools never compete
        if latency_runs > 0:
            ms = [t * 1000 for t in time_steps(single, int(latency_runs), int(warmup_runs))]
            latency[name] = {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(_percentile(ms, 0.9), 3)}
        if throughput_runs > 0:
            median = statistics.median(time_steps(batched, int(throughput_runs), min(int(warmup_runs), 1)))
            throughput[name] = round(batch_size / median, 1) if median > 0 else None
    return latency, throughput


def _backends(model: nn.Module, session: Any, int8_session: Any | None, one: Mapping[str, np.ndarray],
              big: Mapping[str, np.ndarray]) -> dict[str, tuple[Callable, Callable]]:
    """The (batch 1, large batch) forward passes of PyTorch, ONNX Runtime fp32 and, when there is one, int8."""
    backends: dict[str, tuple[Callable, Callable]] = {
        "pytorch": (lambda: _torch_forward(model, one), lambda: _torch_forward(model, big)),
        "onnxruntime": (lambda: session.run(["logits"], one), lambda: session.run(["logits"], big)),
    }
    if int8_session is not None:
        backends["onnxruntime_int8"] = (lambda: int8_session.run(["logits"], one),
                                        lambda: int8_session.run(["logits"], big))
    return backends


def _parity_error(parity: Mapping[str, Any], out: Path) -> ExportError:
    """The error of a parity difference above ``atol`` (the files stay for inspection)."""
    per_batch = ", ".join(f"{b}: {d:.3g}" for b, d in parity["max_abs_diff_per_batch"].items())
    return ExportError(f"ONNX Runtime's logits differ from PyTorch's by {parity['max_abs_diff']:.3g} > "
                       f"atol={parity['atol']:g} (per batch size: {per_batch}); the files are kept in {out} "
                       "for inspection")


def write_export_files(out: Path, result: dict[str, Any], threads: int, started: float) -> dict[str, Any]:
    """``labels.txt`` and ``export.json`` (``result`` and the machine, versions, files and time taken)."""
    import onnx
    import onnxruntime as ort

    (out / "labels.txt").write_text("".join(f"{name}\n" for name in result["classes"]))
    result = {**result, "device": f"cpu ({platform.processor() or platform.machine()}), {threads} threads",
              "versions": _versions(ort.__version__, onnx.__version__), "output_dir": str(out),
              "labels_file": str(out / "labels.txt"), "total_time_s": round(time.perf_counter() - started, 2)}
    (out / "export.json").write_text(json.dumps(result, indent=2, default=str))
    return result


# ---------------------------------------------------------------------------------------------- export


def export_model(model: nn.Module, output_dir: str | Path, *, class_names: Sequence[str] | None = None,
                 image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 feature_options: Mapping[str, Any] | None = None, eval_transforms: Mapping[str, Any] | None = None,
                 exporter: str = "dynamo", opset: int | None = None, atol: float = DEFAULT_ATOL, seed: int = 0,
                 batch_sizes: Sequence[int] = (1, 16), quantize: bool = False, latency_runs: int = 50,
                 quantize_ops: Sequence[str] | None = None, quantize_weight_type: str = "qint8",
                 quantize_per_channel: bool = False, warmup_runs: int = 5, throughput_runs: int = 5,
                 threads: int | None = None, source: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Export a network to ONNX (CPU, eval, fp32, dynamic batch), check it against PyTorch and time both.

    Works on any paddy network (``paddy.create_model(...)`` or a trained run's); the module docstring
    says what is checked and written into ``output_dir``. Returns the contents of ``export.json``; raises
    :class:`ExportError` for a bad option, a failed export or ONNX Runtime run, or a parity difference
    above ``atol`` (after the files are written, for inspection).

    Args:
        model: exported as is (its weights), on the CPU in eval mode.
        class_names: names in logit order (default ``0 .. classes-1``).
        image_size, mean, std, feature_options, eval_transforms: the run's input side, normalisation,
            extra-input settings (its ``model`` section: ``dct.block``, ...) and ``data.transforms.eval``.
        exporter, opset: ``dynamo`` (``torch.export``-based) or ``torchscript`` (the legacy tracer); the
            ONNX opset (``None``: the exporter's default).
        atol, batch_sizes: the largest absolute logit difference allowed between PyTorch and ONNX Runtime
            at each batch size checked (one besides 1 shows a dynamic batch axis; the largest is timed too).
        quantize, quantize_ops, quantize_weight_type, quantize_per_channel: also ``model.int8.onnx`` by
            ``quantize_dynamic`` (``quantize_ops=None``: every op type ONNX Runtime quantizes).
        latency_runs, warmup_runs, throughput_runs, threads: timed rounds (0 skips that measurement); CPU
            threads of PyTorch and ONNX Runtime (``None``: ``torch.get_num_threads()``).
        seed, source: the check inputs' seed; extra keys for ``export.json`` (checkpoint, run dir, ...).
    """
    started = time.perf_counter()
    sizes = _checked_options(exporter, batch_sizes, atol, image_size)
    threads = int(threads) if threads else torch.get_num_threads()
    model = model.float().to("cpu").eval()
    extractors = feature_extractors(input_features(model), feature_options)
    preprocessing = Preprocessing(int(image_size), mean, std, extractors, dict(eval_transforms or {}))
    rng = np.random.default_rng(seed)
    example = preprocessing.sample(EXAMPLE_BATCH, rng)
    class_names = _label_names(model, example, class_names)
    out = _fresh_output_dir(output_dir)
    log.info("Exporting to %s (%s exporter, %d px, inputs %s)", out / MODEL_FILE, exporter, image_size,
             ", ".join(example))
    metadata, doc = _onnx_metadata(class_names, preprocessing, source)
    with _torch_threads(threads):
        onnx_file, session = write_onnx(model, example, out / MODEL_FILE, exporter, opset, metadata, doc, threads)
        checks = {b: preprocessing.sample(b, rng) for b in sizes}
        parity, reference = check_parity(model, session, checks, atol, preprocessing.check_note(seed))
        int8, int8_session = quantize_and_compare(out / MODEL_FILE, metadata, doc, checks, reference, threads,
                                                  quantize_ops, quantize_weight_type,
                                                  quantize_per_channel) if quantize else (None, None)
        backends = _backends(model, session, int8_session, preprocessing.sample(1, rng), checks[sizes[-1]])
        latency, throughput = time_backends(backends, sizes[-1], threads, latency_runs, warmup_runs, throughput_runs)
    result = {"format": "onnx", **dict(source or {}), "num_classes": len(class_names), "classes": class_names,
              "onnx": onnx_file, "preprocessing": preprocessing.describe(), "parity": parity, "int8": int8,
              "latency_ms": latency, "throughput_img_s": throughput}
    result = write_export_files(out, result, threads, started)
    if not parity["ok"]:
        raise _parity_error(parity, out)
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


def cli_options(cfg: DictConfig) -> dict[str, Any]:
    """:func:`export`'s options from ``python -m paddy.export``'s config (conf/export.yaml and the command
    line); a :class:`~paddy.errors.SettingError` for a value of the wrong type (``atol=abc``, ``batch_sizes=[x]``)."""

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
        raise SettingError(f"bad option: {first_line(err)}") from err
    return options


@hydra.main(config_path=str(config_dir()), config_name="export", execution_whitelist=list(TRUSTED_TARGETS))
def main(cfg: DictConfig) -> None:
    with reported(log):
        options = cli_options(cfg)
        if OmegaConf.is_missing(cfg, "ckpt_path"):
            raise SettingError("ckpt_path is required: python -m paddy.export ckpt_path=<run dir or .ckpt> "
                               "[format=onnx]")
        result = export(cfg.ckpt_path, format=cfg.get("format", "onnx"), **options)
    print(format_summary(result))

if __name__ == "__main__":
    main()
