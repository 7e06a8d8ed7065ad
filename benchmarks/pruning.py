"""How much wall time pruning saves on a 20-trial TPE search, and whether the best value holds.

    python benchmarks/pruning.py [--trials 20] [--epochs 4] [--out benchmarks/results]

Runs the same search twice in one go (same seed, same data, same model): ``hparams_search.pruner=none``
and ``=median``, each as a real ``python -m paddy.train -m hparams_search=tpe`` sweep on synthetic data
with a tiny timm model on the CPU, so it runs anywhere in a few minutes. Prints a table and writes
JSON (machine, versions, settings, wall times, best values, trial states).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


def run_search(pruner: str, trials: int, epochs: int, workdir: Path) -> dict:
    import optuna

    sweep = workdir / f"sweep_{pruner}"
    command = [
        sys.executable, "-m", "paddy.train", "-m", "hparams_search=tpe", f"hparams_search.pruner={pruner}",
        f"hparams_search.n_trials={trials}", "hparams_search.study_name=bench", f"hydra.sweep.dir={sweep}",
        "hydra.sweeper.pruner.n_startup_trials=3", "hydra.sweeper.sampler.n_startup_trials=5",
        "data=synthetic", "data.source.samples_per_class=48", "backbone.name=test_resnet", "data.image_size=32",
        "data.num_workers=0", f"trainer.max_epochs={epochs}", "trainer.accelerator=cpu", "trainer.devices=1",
        "++callbacks.rich_progress_bar=null", "logger=none", "test=false",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"search with pruner={pruner} failed:\n{result.stderr[-3000:]}")
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = {}
    for trial in study.trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(t.value for t in complete) if complete else None
    return {"pruner": pruner, "wall_s": round(wall, 1), "best_value": best, "states": states,
            "trials": len(study.trials)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    import optuna
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_search(p, args.trials, args.epochs, Path(tmp)) for p in ("none", "median")]
    base, pruned = rows
    saved = 1 - pruned["wall_s"] / base["wall_s"]
    print("| pruner | wall (s) | best val/acc_best | trial states |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['pruner']} | {row['wall_s']} | {row['best_value']} | {row['states']} |")
    print(f"pruning saved {saved:.0%} of the wall time; best value {pruned['best_value']} vs {base['best_value']}")
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "pruning", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
                           "python": platform.python_version()},
               "versions": {"torch": torch.__version__, "optuna": optuna.__version__},
               "settings": {"trials": args.trials, "epochs": args.epochs, "data": "synthetic 4x48 at 32 px",
                            "model": "timm test_resnet", "sampler": "TPE (seeded)"},
               "results": rows, "wall_time_saved": round(saved, 3)}
    path = args.out / "pruning.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
