"""``python -m paddy.benchmark [mode=models|scaling|throughput|loader] model=a,b,... [option=value] [override]``

    python -m paddy.benchmark model=mnv3s_ca,lite0_ca,effv2s_ca,resnet18_eca image_size=224 batch_size=8 steps=5
    python -m paddy.benchmark model=effv2s_ca,resnet50_cbam device=cuda precision=bf16 batch_size=64
    python -m paddy.benchmark model=mnv3s_ca attention.reduction=16 backbone.drop_path_rate=0.1
    python -m paddy.benchmark mode=scaling device=cpu batch_size=8 steps=3
    python -m paddy.benchmark mode=scaling model=mnv3s_bot,mnv3s_botlinear sizes=224,512 device=cuda batch_size=64

mode=models (default): per model and device, parameters, GFLOPs (one image, forward), size in MB,
inference and training images/s, activation MB (saved for backward by one training forward) and,
on CUDA, peak memory. Options: model, image_size (224), batch_size (32), device (auto = cpu plus
cuda when present; cpu, cuda, cpu,cuda), precision (32 | bf16 | 16: fp16 + GradScaler on CUDA,
bf16 on CPU), steps (20 timed), warmup (3 untimed), num_classes (10), channels_last (auto = on for
CUDA), threads (torch CPU threads), out (benchmarks/results/models -> .md, .csv, .json).

mode=scaling: the same measurements per input size for BoT vs BoT-linear (model=mnv3s_bot,
mnv3s_botlinear; sizes=224,320,384,512; batch_size=16, steps=10, warmup=2), the attention block
alone on its feature map (block=true), and a ratio table of every model against the first one,
next to the old notes' claim for linear attention (-35% memory, +6% speed at 224 px).
Writes <out>.md/.csv/.json and <out>_ratios.md/.csv/.json (out=benchmarks/results/scaling).

mode=throughput: see paddy/benchmark/throughput.py.

mode=loader: images/s of timm's and paddy's data loaders alone (plain, cache cold/warm, raw uint8),
per core and for N workers; see paddy/benchmark/loader.py.

Models are presets (conf/model), backbone configs (conf/backbone) or timm model names. Every
key=value that is not an option of the mode (and +key=, ++key=, ~key) is a Hydra override of each
model's config, as on ``python -m paddy.train``. The Markdown tables are printed on stdout,
progress on stderr. Exit status: 0 when measured; 2 for an unknown mode, model or option, a bad
value or a device that is not there (one line on stderr, no traceback).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence

import paddy  # noqa: F401  (offline environment)
from paddy.benchmark.common import BenchmarkError, parse_cli
from paddy.errors import exit_status


def _runner(mode: str) -> Callable[..., int]:
    if mode == "throughput":
        try:
            from paddy.benchmark.throughput import run
        except ImportError as err:
            raise BenchmarkError(f"mode=throughput is not available: paddy.benchmark.throughput cannot be "
                                 f"imported ({err})") from None
        return lambda options, overrides, argv: run(options, overrides)
    if mode == "loader":
        from paddy.benchmark.loader import run as run_loader

        def loader(options: dict, overrides: list[str], argv: list[str]) -> int:
            if overrides:
                raise BenchmarkError(f"mode=loader takes no Hydra overrides (got: {' '.join(overrides)}; its options: "
                                     "photo_size, n_images, root, image_size, batch_size, workers, out)")
            return run_loader(options)

        return loader
    from paddy.benchmark.models import run_models, run_scaling

    return {"models": run_models, "scaling": run_scaling}[mode]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "help") for arg in argv):
        print(__doc__.strip())
        return 0
    logging.basicConfig(level=logging.WARNING)

    def work() -> int:
        mode, options, overrides = parse_cli(argv)
        return int(_runner(mode)(options, overrides, argv) or 0)

    try:
        return exit_status("paddy.benchmark", work)
    except KeyboardInterrupt:
        print("paddy.benchmark: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
