"""What every ``python -m paddy.benchmark`` mode shares: the command line, the machine, the models, the
clock, the memory counters and the result files.

Command line (:func:`parse_cli`): every argument is ``key=value``. ``mode=`` picks the mode; the keys
of that mode's table in :data:`MODE_OPTIONS` are benchmark options (missing ones take the table's
default); every other ``key=value`` (and ``+key=value``, ``++key=value``, ``~key``) is a Hydra override
applied to each model's config, after the overrides that select the model.

Timing (:func:`time_steps`): ``warmup`` untimed steps, then ``steps`` steps each timed alone (on CUDA
the device is synchronised before the clock starts and before it stops, so a step's time is the
device's time, not the launch time). Throughput is ``batch_size / median step time``: the median
keeps one slow step (a page fault, another process on a shared CPU) from moving the figure. The
per-step times go to the JSON file too.

Memory (:func:`saved_activation_bytes`, :func:`cuda_peak`): "activation MB" is the size of the
tensors autograd saves for backward during one training forward pass at ``batch_size`` (distinct
storages, parameters and buffers excluded): the memory a training step holds on top of weights,
gradients and optimizer state. It is exact and the same on every device and run, so it is the
memory figure of CPU runs. On CUDA the tables add PyTorch's peak allocated memory
(``torch.cuda.max_memory_allocated``) over the training steps (weights + gradients + AdamW state +
activations + workspace) and over the inference steps.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from paddy.errors import PaddyError
from paddy.utils.runtime import synchronize, time_steps  # noqa: F401  (re-exported for the modes)

log = logging.getLogger("paddy")

MODES = ("models", "scaling", "throughput", "loader")
DEFAULT_MODE = "models"

# The options each mode understands, with their defaults as typed on the command line. A default of
# None means "no default": the key is in the options dict only when given. Any key=value that is not
# in the selected mode's table is passed to Hydra as an override of each model's config.
# (mode=throughput is implemented in paddy/benchmark/throughput.py, which owns its own entries here.)
MODE_OPTIONS: dict[str, dict[str, str | None]] = {
    "models": {
        "model": "mnv3s_ca,lite0_ca,effv2s_ca,resnet18_eca",
        "image_size": "224",
        "batch_size": "32",
        "device": "auto",            # auto (cpu, and cuda when present) | cpu | cuda | cpu,cuda | cuda:1
        "precision": "32",           # 32 | bf16 | 16 (fp16 + GradScaler, CUDA only; bf16 on CPU)
        "steps": "20",               # timed steps per measurement
        "warmup": "3",               # untimed steps before them
        "num_classes": "10",
        "channels_last": "auto",     # auto (on for CUDA) | true | false
        "threads": None,             # torch CPU threads (default: torch's own choice)
        "out": "benchmarks/results/models",
    },
    "scaling": {
        "model": "mnv3s_bot,mnv3s_botlinear",  # the first one is the reference of the ratio table
        "sizes": "224,320,384,512",
        "batch_size": "16",
        "device": "auto",
        "precision": "32",
        "steps": "10",
        "warmup": "2",
        "num_classes": "10",
        "channels_last": "auto",
        "threads": None,
        "block": "true",             # also time the attention block alone on its feature map
        "out": "benchmarks/results/scaling",
    },
    "throughput": {  # defaults left to throughput.py (they differ between CPU and GPU)
        "model": None,
        "image_size": None,
        "batch_size": None,
        "precision": None,
        "steps": None,
        "warmup": None,
        "epochs": None,
        "images": None,
        "root": None,
        "device": "auto",
        "out": "benchmarks/results/throughput",
        "compile": None,
        "cache": None,              # data.cache of the JPEG run (default: the data config's, auto)
        "gpu_augment": None,        # data.gpu_augment of the JPEG run (default: auto)
        "num_workers": None,
        "cache_state": None,        # cold (default): a fresh cache folder for the JPEG runs | warm: the usual one
        "loaders": None,            # fast,plain (default on a CPU) | fast (default on a GPU)
        "parts": None,              # raw,in_device,jpeg (default: all)
        "photo_size": None,         # generated photos' WIDTHxHEIGHT (default 640x480)
    },
    "loader": {  # paddy/benchmark/loader.py
        "photo_size": "640x480",     # generated photo-like JPEGs, WIDTHxHEIGHT
        "n_images": "512",
        "root": None,                # your images instead (Paddy Doctor layout or class folders)
        "image_size": "224",
        "batch_size": "64",
        "workers": "0",              # loader processes, comma-separated: 0 (one process, one core), 2, ...
        "out": None,                 # default: benchmarks/results/loader_<photo_size>
    },
}

PRECISIONS = {"32": "32", "fp32": "32", "32-true": "32", "bf16": "bf16", "bf16-mixed": "bf16",
              "16": "16", "fp16": "16", "16-mixed": "16"}
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


class BenchmarkError(PaddyError):
    """A benchmark that cannot run as asked: unknown mode, model or option, a bad value, no CUDA.

    ``python -m paddy.benchmark`` prints its message as one line and exits with status 2.
    """


# ---------------------------------------------------------------------------------------------- command line


def parse_cli(argv: Sequence[str]) -> tuple[str, dict[str, str], list[str]]:
    """``key=value`` arguments -> (mode, options of that mode with defaults filled in, Hydra overrides).

    Raises :class:`BenchmarkError` for an unknown mode, an argument that is not ``key=value``, an
    option of another mode (``sizes=`` without ``mode=scaling``) or an empty value of an option.
    """
    mode = DEFAULT_MODE
    pairs: list[tuple[str, str | None]] = []  # in command-line order (Hydra applies overrides in order)
    for arg in argv:
        if arg.startswith(("+", "~")):
            pairs.append((arg, None))
            continue
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise BenchmarkError(f"expected key=value arguments, got {arg!r} (e.g. model=mnv3s_ca,effv2s_ca "
                                 f"image_size=224; see python -m paddy.benchmark --help)")
        if key == "mode":
            mode = value
        else:
            pairs.append((key, value))
    if mode not in MODES:
        raise BenchmarkError(f"mode={mode!r} (expected one of: {', '.join(MODES)})")
    table = MODE_OPTIONS[mode]
    options = {key: value for key, value in table.items() if value is not None}
    overrides: list[str] = []
    for key, value in pairs:
        if value is None:
            overrides.append(key)
            continue
        if key in table:
            if value == "" and table[key] is not None:
                raise BenchmarkError(f"{key}= needs a value (default: {table[key]})")
            options[key] = value
            continue
        others = [m for m in MODES if m != mode and key in MODE_OPTIONS[m]]
        if others:
            raise BenchmarkError(f"{key}= is an option of mode={others[0]}, not of mode={mode} "
                                 f"(mode={mode} takes: {', '.join(table)})")
        overrides.append(f"{key}={value}")
    return mode, options, overrides


def int_option(options: Mapping[str, str], key: str, minimum: int = 1) -> int:
    text = options[key]
    try:
        value = int(text)
    except ValueError:
        raise BenchmarkError(f"{key}={text!r} is not an integer") from None
    if value < minimum:
        raise BenchmarkError(f"{key}={value} (expected >= {minimum})")
    return value


def int_list_option(options: Mapping[str, str], key: str, minimum: int = 1) -> list[int]:
    items = list_option(options, key)
    return [int_option({key: item}, key, minimum) for item in items]


def list_option(options: Mapping[str, str], key: str) -> list[str]:
    """A comma-separated option (brackets allowed: ``[a,b]``); duplicates dropped, order kept."""
    text = options.get(key, "").strip().strip("[]")
    items = list(dict.fromkeys(item.strip() for item in text.split(",") if item.strip()))
    if not items:
        raise BenchmarkError(f"{key}= is empty (give one or more comma-separated values)")
    return items


def bool_option(options: Mapping[str, str], key: str, auto: bool | None = None) -> bool | None:
    """``true``/``false`` (and ``yes``/``no``, ``on``/``off``, ``1``/``0``); ``auto`` gives ``auto``."""
    text = options[key].strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text == "auto":
        return auto
    raise BenchmarkError(f"{key}={options[key]!r} (expected true, false or auto)")


def set_threads(options: Mapping[str, str]) -> None:
    if options.get("threads"):
        import torch

        torch.set_num_threads(int_option(options, "threads"))


# ---------------------------------------------------------------------------------------------- devices


@dataclass(frozen=True)
class RunSettings:
    """How one device runs a measurement: precision, autocast dtype, GradScaler, memory format."""

    device: Any  # torch.device
    precision: str  # "32" | "bf16" | "16"
    channels_last: bool

    @property
    def precision_name(self) -> str:
        """``fp32``, ``bf16`` or ``fp16`` (for tables)."""
        return {"32": "fp32", "bf16": "bf16", "16": "fp16"}[self.precision]

    @property
    def autocast_dtype(self) -> Any:
        import torch

        return {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[self.precision]

    @property
    def use_scaler(self) -> bool:
        return self.precision == "16"

    @contextmanager
    def autocast(self) -> Iterator[None]:
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            yield
        else:
            with torch.autocast(device_type=self.device.type, dtype=dtype):
                yield


def resolve_devices(text: str) -> list[Any]:
    """``auto`` -> cpu (+ cuda when present); otherwise the listed devices, which must exist."""
    import torch

    names = list_option({"device": text}, "device")
    if names == ["auto"]:
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    devices = []
    for name in names:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise BenchmarkError(f"device={name!r} (expected auto, cpu, cuda or cuda:<index>)") from None
        if device.type not in ("cpu", "cuda"):
            raise BenchmarkError(f"device={name!r}: only cpu and cuda are benchmarked")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
                raise BenchmarkError(f"device={name} asked for, but torch sees no CUDA GPU "
                                     f"(torch {torch.__version__}, {built}); use device=cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise BenchmarkError(f"device={name}: torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        devices.append(device)
    return list(dict.fromkeys(devices))


def resolve_settings(device: Any, precision: str, channels_last: bool | None) -> RunSettings:
    """Precision and memory format for ``device``. fp16 on a CPU becomes bf16 (with a note on stderr);
    bf16 on a GPU without bf16 support is an error; ``channels_last=None`` (auto) is on for CUDA."""
    import torch

    key = PRECISIONS.get(str(precision).strip().lower())
    if key is None:
        raise BenchmarkError(f"precision={precision!r} (expected 32, bf16 or 16)")
    if key == "16" and device.type == "cpu":
        print("note: precision=16 (fp16 autocast + GradScaler) needs a GPU; the CPU runs bf16 autocast instead",
              file=sys.stderr)
        key = "bf16"
    if key == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise BenchmarkError(f"precision=bf16: {torch.cuda.get_device_name(device)} has no bf16 support; "
                             f"use precision=16")
    if channels_last is None:
        channels_last = device.type == "cuda"
    return RunSettings(device=device, precision=key, channels_last=bool(channels_last))


# ---------------------------------------------------------------------------------------------- environment


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_busy_percent(interval: float = 0.5) -> float | None:
    """How busy the CPUs are while this process sleeps for ``interval`` seconds (Linux ``/proc/stat``),
    in percent of all cores: the share other processes take from a CPU benchmark. None elsewhere."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return round(100.0 * (1 - (idle1 - idle0) / total), 1) if total > 0 else None


def environment() -> dict[str, Any]:
    """The machine and the software a benchmark ran on (stored in every JSON result)."""
    import torch

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        # What other processes took of the CPUs just before measuring (CPU timings are noisy when > 0).
        "cpu_busy_percent": cpu_busy_percent(),
        "paddy": _version("paddy"),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "lightning": _version("lightning"),
        "torchmetrics": _version("torchmetrics"),
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            env["gpus"].append({"index": index, "name": props.name, "capability": f"{props.major}.{props.minor}",
                                "memory_gb": round(props.total_memory / 1024**3, 1)})
    return env


def describe_machine(env: Mapping[str, Any]) -> str:
    """One line: CPU (usable cores), GPUs, torch version."""
    text = f"{env['cpu']} ({env['cpu_usable']} usable cores, {env['torch_threads']} torch threads"
    if env.get("cpu_busy_percent") is not None:
        text += f", {env['cpu_busy_percent']}% busy with other work at the start"
    text += ")"
    for gpu in env.get("gpus") or []:
        text += f", {gpu['name']} ({gpu['memory_gb']} GB)"
    return text + f"; torch {env['torch']}, timm {env['timm']}, Python {env['python']}"


# ---------------------------------------------------------------------------------------------- models


def compose_named(name: str, overrides: Sequence[str] = ()) -> Any:
    """The composed training config of model ``name`` (a preset, a backbone config or a timm model)
    with the Hydra ``overrides`` applied after the ones that select the model."""
    from paddy.config import compose_config
    from paddy.models.zoo import model_overrides

    try:
        selection = model_overrides(name)
    except ValueError as err:
        raise BenchmarkError(str(err)) from None
    try:
        return compose_config([*selection, *overrides])
    except Exception as err:  # Hydra's override and composition errors
        raise BenchmarkError(f"model {name!r} with overrides {' '.join(overrides) or '(none)'}: "
                             f"{_one_line(err)}") from None


def build_from_config(cfg: Any, num_classes: int, name: str = "") -> Any:
    """:func:`paddy.models.factory.build_model` on a composed config, as :func:`paddy.create_model` does."""
    from omegaconf import OmegaConf

    from paddy.models.factory import build_model

    try:
        parts = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("backbone", "attention", "model")}
        return build_model(num_classes, parts["backbone"], parts["attention"], parts["model"])
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        raise BenchmarkError(f"model {name or cfg.model.get('name')!r} cannot be built: {_one_line(err)}") from None


def build_named_model(name: str, num_classes: int = 10, overrides: Sequence[str] = ()) -> Any:
    """``paddy.create_model(name, num_classes)`` with Hydra ``overrides`` (``attention.reduction=16``)."""
    return build_from_config(compose_named(name, overrides), num_classes, name)


def model_inputs(model: Any, batch_size: int, image_size: int, device: Any = "cpu",
                 channels_last: bool = False, zeros: bool = False) -> dict[str, Any]:
    """Keyword inputs of ``model.forward``: ``images`` and the extra features it declares
    (``dct`` for the DCT fusion model), random (or zeros) on ``device``."""
    import torch

    make = torch.zeros if zeros else torch.randn
    images = make(batch_size, 3, image_size, image_size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    inputs = {"images": images}
    for feature in getattr(model, "input_features", ()):
        if feature != "dct":
            raise BenchmarkError(f"the benchmark cannot make input feature {feature!r} for {type(model).__name__}")
        inputs["dct"] = make(batch_size, model.dct_dim, device=device)
    return inputs


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


# ---------------------------------------------------------------------------------------------- clock and memory


def images_per_second(times: Sequence[float], batch_size: int) -> float:
    """``batch_size / median(times)``."""
    median = statistics.median(times)
    return batch_size / median if median > 0 else math.inf


def saved_activation_bytes(forward: Callable[[], Any], exclude: Iterable[Any] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``forward()`` runs; tensors
    sharing a storage with one of ``exclude`` (the model's parameters and buffers) are not counted."""
    import torch

    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = forward()
    del output
    return sum(storages.values())


@contextmanager
def cuda_peak(device: Any) -> Iterator[dict[str, float | None]]:
    """``{"mb": peak MB allocated on device}`` over the block (None on a CPU)."""
    import torch

    result: dict[str, float | None] = {"mb": None}
    if device.type != "cuda":
        yield result
        return
    synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    yield result
    synchronize(device)
    result["mb"] = torch.cuda.max_memory_allocated(device) / 1024**2


def out_of_memory_errors() -> tuple[type[BaseException], ...]:
    import torch

    return (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)


# ---------------------------------------------------------------------------------------------- result files


def format_value(value: Any, spec: str | None = None) -> str:
    """A table cell: blank for None, ``spec`` for numbers when given, otherwise a readable width."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if spec:
            return format(value, spec)
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"
    if spec and isinstance(value, int):
        return format(value, spec)
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str],
                   formats: Mapping[str, str] | None = None) -> str:
    """A Markdown table of ``rows``: one column per ``columns`` entry (row key -> header)."""
    formats = formats or {}
    lines = ["| " + " | ".join(columns.values()) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format_value(row.get(key), formats.get(key)).replace("|", "\\|") for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _csv_keys(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str]) -> list[str]:
    """The table's columns, then every other scalar key of the rows (exact counts, notes...)."""
    keys = list(columns)
    for row in rows:
        for key, value in row.items():
            if key not in keys and not isinstance(value, (list, tuple, dict)):
                keys.append(key)
    return keys


def result_stem(out: str | Path, mode: str) -> Path:
    """``out`` as a file stem: an existing folder gets ``<mode>`` inside it; a .md/.csv/.json suffix is dropped."""
    path = Path(out).expanduser()
    if path.is_dir():
        return path / mode
    return path.with_suffix("") if path.suffix in (".md", ".csv", ".json") else path


def write_results(rows: Sequence[Mapping[str, Any]], columns: Mapping[str, str], out_stem: str | Path,
                  meta: Mapping[str, Any], formats: Mapping[str, str] | None = None,
                  title: str | None = None, notes: Sequence[str] = ()) -> list[Path]:
    """``<stem>.md`` (title, machine, command, table, notes), ``<stem>.csv`` (the table's columns and
    every other scalar of the rows) and ``<stem>.json`` (``meta`` + columns + rows + notes)."""
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + suffix) for suffix in (".md", ".csv", ".json")]
    md, csv_path, json_path = paths
    head = [f"### {title}", ""] if title else []
    env = meta.get("environment")
    if env:
        head.append(f"Machine: {describe_machine(env)}.")
    if meta.get("command"):
        head.append(f"Command: `{meta['command']}`")
    body = "\n".join(head) + ("\n\n" if head else "") + markdown_table(rows, columns, formats) + "\n"
    if notes:
        body += "\n" + "\n".join(notes) + "\n"
    md.write_text(body)
    keys = _csv_keys(rows, columns)
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({key: "" if row.get(key) is None else row.get(key) for key in keys})
    payload = {**meta, "columns": dict(columns), "rows": [dict(row) for row in rows]}
    if notes:
        payload["notes"] = list(notes)
    json_path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return paths


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


__all__ = ["MODES", "MODE_OPTIONS", "BenchmarkError", "RunSettings", "bool_option", "build_from_config",
           "build_named_model", "compose_named", "cuda_peak", "environment", "images_per_second", "int_list_option",
           "int_option", "list_option", "markdown_table", "model_inputs", "parse_cli", "resolve_devices",
           "resolve_settings", "saved_activation_bytes", "synchronize", "time_steps", "write_results"]
