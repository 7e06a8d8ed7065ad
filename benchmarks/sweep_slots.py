"""How much slot-time a parallel sweep leaves idle: Hydra's batch schedule vs paddy's workers, in one run.

    python benchmarks/sweep_slots.py [--slots 4] [--trials 24] [--epoch-s 1.0] [--out benchmarks/results]

Runs the same sweep twice, one after the other, through paddy's sweeper and Hydra's submitit_local
launcher with ``--slots`` trials in flight: ``hydra.sweeper.schedule=batch`` (Hydra's Optuna sweeper:
ask ``slots`` trials, launch them, wait for the slowest, ask again) and ``schedule=workers`` (paddy:
``slots`` worker jobs that each take the next trial as soon as theirs ends). The trials
(``benchmarks/slot_trial.py``) differ in length: 2, 4 or 8 epochs of ``--epoch-s`` seconds, and the
median pruner stops the low ones after their second epoch or later. Each records when it really ran.

For each schedule: ``idle_fraction = 1 - (sum of the trials' running time) / (slots x wall time of the
sweep command)``, counting everything that is not a trial running (job start-up, waiting behind the
slowest trial of a batch) as idle; ``idle_fraction_trials_span`` counts only from the first trial's
start to the last trial's end (without the fixed start-up and shut-down of the processes). Same
seed, so both schedules see the same trial parameters. Prints a table, writes ``sweep_slots.json``
and a figure of the slots over time (``sweep_slots.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCHEDULES = {"batch": "batch", "paddy": "workers"}


def run_sweep(schedule: str, slots: int, trials: int, epoch_s: float, sweep_dir: Path) -> dict:
    import optuna

    command = [sys.executable, str(HERE / "slot_trial.py"), "-m", f"hydra.sweep.dir={sweep_dir}",
               f"hydra.sweeper.schedule={schedule}", f"hydra.sweeper.n_jobs={slots}",
               f"hydra.sweeper.n_trials={trials}", f"epoch_s={epoch_s}"]
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    ended = time.time()
    if result.returncode != 0:
        raise SystemExit(f"schedule={schedule} failed:\n{result.stderr[-3000:]}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="slots", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    ran = [(t.user_attrs["ran_from"] - started, t.user_attrs["ran_to"] - started, t.state.name)
           for t in study.trials if "ran_to" in t.user_attrs]
    wall = ended - started
    busy = sum(end - start for start, end, _ in ran)
    span = max(end for _, end, _ in ran) - min(start for start, _, _ in ran)
    states = {s: sum(state == s for *_, state in ran) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {"schedule": schedule, "wall_s": round(wall, 2), "busy_s": round(busy, 2),
            "idle_fraction": round(1 - busy / (slots * wall), 4),
            "idle_fraction_trials_span": round(1 - busy / (slots * span), 4), "trials": len(ran), "states": states,
            "intervals": [[round(a, 2), round(b, 2), s] for a, b, s in sorted(ran)]}


def lanes(intervals: list[list]) -> list[int]:
    """Draw each trial on the first slot free when it started (for the figure only)."""
    free_at: list[float] = []
    lane = []
    for start, end, _ in intervals:
        slot = next((i for i, t in enumerate(free_at) if t <= start + 1e-6), None)
        if slot is None:
            free_at.append(end)
            slot = len(free_at) - 1
        free_at[slot] = end
        lane.append(slot)
    return lane


def draw(results: dict, slots: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"COMPLETE": "tab:green", "PRUNED": "tab:orange", "FAIL": "tab:red"}
    fig, axes = plt.subplots(len(results), 1, figsize=(9, 1.1 + 0.55 * slots * len(results)), sharex=True)
    for ax, (name, run) in zip(axes, results.items()):
        for (start, end, state), slot in zip(run["intervals"], lanes(run["intervals"])):
            ax.barh(slot, end - start, left=start, color=colours[state], edgecolor="black", linewidth=0.5)
        ax.axvline(run["wall_s"], color="black", linestyle="--", linewidth=1)
        ax.set_yticks(range(slots), [f"slot {i}" for i in range(slots)])
        ax.set_title(f"{name} (schedule={run['schedule']}): wall {run['wall_s']:.0f} s, "
                     f"idle {100 * run['idle_fraction']:.0f}% of slot-time", fontsize=10)
    axes[-1].set_xlabel("seconds since the sweep command started (green: complete, orange: pruned)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    import optuna

    with tempfile.TemporaryDirectory() as tmp:
        results = {name: run_sweep(schedule, args.slots, args.trials, args.epoch_s, Path(tmp) / name)
                   for name, schedule in SCHEDULES.items()}
    print(f"{'schedule':<8} {'wall s':>7} {'busy s':>7} {'idle':>6} {'idle in span':>13}  trials")
    for name, run in results.items():
        print(f"{name:<8} {run['wall_s']:>7.1f} {run['busy_s']:>7.1f} {run['idle_fraction']:>6.1%} "
              f"{run['idle_fraction_trials_span']:>13.1%}  {run['states']}")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "sweep_slots", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "versions": {"optuna": optuna.__version__},
              "settings": {"slots": args.slots, "n_trials": args.trials, "epoch_s": args.epoch_s,
                           "epochs": [2, 4, 8], "pruner": "median (4 startup trials, warm-up 1 epoch)",
                           "launcher": "submitit_local"},
              **results}
    (args.out / "sweep_slots.json").write_text(json.dumps(report, indent=2) + "\n")
    draw(results, args.slots, args.out / "sweep_slots.png")
    print(f"wrote {args.out / 'sweep_slots.json'} and {args.out / 'sweep_slots.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
