"""``python -m paddy.report DIR [DIR ...]``: a leaderboard of finished runs and a report per sweep.

    python -m paddy.report outputs multirun                 # leaderboard.md/.csv + pareto.png in outputs/
    python -m paddy.report multirun/2026-11-23/10-41-07     # + sweep_report.md, sweep_trials.csv, plots there
    python -m paddy.report outputs --out reports --metric test_acc

A run is any folder under the DIRs that holds ``metrics.json`` or a ``.hydra/`` folder (one without a
readable ``metrics.json`` is listed as incomplete, with the reason). A sweep is a folder with
``optuna.db``, ``optimization_results.yaml``, ``multirun.yaml`` or Hydra job folders (``0/``, ``1/``, ...);
its trials come from the Optuna study in ``optuna.db`` when there is one, otherwise from the jobs'
``.hydra/overrides.yaml`` and ``metrics.json``.

Exit status: 0 when the reports were written, 2 when a DIR does not exist or no run or sweep was found.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import shlex
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

from paddy.artifacts import METRICS_FILE, UnreadableArtifact, read_history, read_metrics
from paddy.errors import PaddyError, exit_status

# Leaderboard columns (CSV keys, in order) and their Markdown headers.
COLUMNS = {
    "rank": "#",
    "run": "run",
    "status": "status",
    "model": "model",
    "backbone": "backbone",
    "attention": "attention",
    "lr": "lr",
    "weight_decay": "wd",
    "batch_size": "batch",
    "reduction": "reduction",
    "kernel_size": "kernel",
    "heads": "heads",
    "image_size": "img px",
    "max_epochs": "max ep",
    "valid_acc": "valid acc",
    "valid_f1": "valid f1",
    "test_acc": "test acc",
    "test_f1": "test f1",
    "params_m": "params (M)",
    "fps": "fps",
    "epochs_run": "epochs",
    "duration_s": "duration",
}
# Config keys of the hyperparameter columns.
HPARAMS = {
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "batch_size": "data.batch_size",
    "reduction": "attention.reduction",
    "kernel_size": "attention.kernel_size",
    "heads": "attention.heads",
    "image_size": "data.image_size",
    "max_epochs": "trainer.max_epochs",
}
# Columns that Markdown drops when no run has a value (CSV keeps every column).
OPTIONAL_MD = {"reduction", "kernel_size", "heads", "status"}
# metrics.json keys already shown by a leaderboard column.
METRIC_COLUMNS = {"val_acc_best": "valid_acc", "valid_acc": "valid_acc", "val_f1_best": "valid_f1",
                  "valid_f1": "valid_f1", "test_acc": "test_acc", "test_f1": "test_f1", "fps": "fps",
                  "epochs_run": "epochs_run", "total_time_s": "duration_s"}
# A metric is the same quantity under these other names (the newer one first).
ALIASES = {"val_acc_best": ["valid_acc"], "valid_acc": ["val_acc_best"], "val_f1_best": ["valid_f1"],
           "valid_f1": ["val_f1_best"]}
STATE_ORDER = {"COMPLETE": 0, "RUNNING": 1, "WAITING": 2, "PRUNED": 3, "INCOMPLETE": 4, "FAIL": 5}
SKIP_DIRS = {"checkpoints", "tensorboard", "__pycache__", "lightning_logs", "csv"}


class ReportError(PaddyError):
    """A problem with the command line's inputs: one message, exit status 2."""


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    path: Path
    name: str = ""
    metrics: dict[str, Any] | None = None
    config: DictConfig | None = None
    overrides: list[str] = field(default_factory=list)
    history: dict[str, Any] | None = None
    problem: str | None = None  # why the run is incomplete

    @property
    def complete(self) -> bool:
        return self.problem is None

    def cfg(self, key: str) -> Any:
        """A value of the composed config (``.hydra/config.yaml``), else of the job's overrides."""
        if self.config is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    value = OmegaConf.select(self.config, key, default=None, throw_on_resolution_failure=False)
                except Exception:  # noqa: BLE001 - an odd interpolation is a missing value here
                    value = None
            if value is not None and not isinstance(value, (DictConfig, ListConfig)):
                return value
        return overrides_dict(self.overrides).get(key, (None, None))[1]

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics or {}, name)


def load_run(path: Path) -> Run:
    """A run folder's config, overrides, history and metrics (or why it is incomplete)."""
    run = Run(path)
    hydra_dir = path / ".hydra"
    if (hydra_dir / "config.yaml").is_file():
        try:
            loaded = OmegaConf.load(hydra_dir / "config.yaml")
            run.config = loaded if isinstance(loaded, DictConfig) else None
        except Exception:  # noqa: BLE001 - a broken config only loses the hparam columns
            run.config = None
    run.overrides = read_overrides(hydra_dir / "overrides.yaml")
    run.history = read_history(path)
    try:
        run.metrics = read_metrics(path)
    except UnreadableArtifact as err:
        run.problem = str(err)
        return run
    if run.metrics is None:
        reason = f"{METRICS_FILE} missing (still running, interrupted or failed)"
        error = last_error(path / "train.log")
        run.problem = f"{reason}; train.log: {error}" if error else reason
    return run


def read_overrides(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(item) for item in data] if isinstance(data, list) else []


def overrides_dict(overrides: list[str]) -> dict[str, tuple[str, Any]]:
    """``key -> (raw value, parsed value)`` of ``key=value`` overrides (``+``/``++`` prefixes dropped)."""
    result: dict[str, tuple[str, Any]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key.startswith("~"):
            continue
        result[key.lstrip("+")] = (raw, parse_value(raw))
    return result


def parse_value(raw: str) -> Any:
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def last_error(log_file: Path) -> str | None:
    """The last ERROR line of a run's ``train.log`` (without Hydra's timestamp prefix)."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "ERROR" in line or "Error" in line.split(":", 1)[0]:
            return re.sub(r"^\[[^\]]*\]\[[^\]]*\]\[ERROR\] - ", "", line).strip()[:300]
    return None


def metric_value(metrics: dict[str, Any], name: str) -> float | None:
    """``metrics[name]`` as a finite float; ``val/acc_best`` style names and aliases are accepted."""
    key = name.replace("/", "_")
    for candidate in [name, key, *ALIASES.get(key, []), key.replace("val_", "valid_", 1)]:
        value = metrics.get(candidate)
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def metric_mode(name: str, mode: str) -> str:
    if mode in ("max", "min"):
        return mode
    return "min" if re.search(r"loss|time|error|_s$", name) else "max"


def find_dirs(root: Path) -> tuple[list[Path], list[Path]]:
    """The run folders and the sweep folders under ``root`` (``root`` included)."""
    runs: list[Path] = []
    sweeps: list[Path] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        if is_sweep_dir(here):
            sweeps.append(here)
        if METRICS_FILE in files or (here / ".hydra").is_dir():
            runs.append(here)
            dirs[:] = []  # nothing to find inside a run (checkpoints, tensorboard, ...)
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
    return sorted(runs), sorted(sweeps)


def is_job_dir(path: Path) -> bool:
    if not (path / ".hydra" / "overrides.yaml").is_file():
        return False
    if path.name.isdigit():
        return True
    try:
        return "mode: MULTIRUN" in (path / ".hydra" / "hydra.yaml").read_text(errors="replace")
    except OSError:
        return False


def is_sweep_dir(path: Path) -> bool:
    if any((path / name).is_file() for name in ("optuna.db", "optimization_results.yaml", "multirun.yaml")):
        return True
    try:
        return any(child.is_dir() and is_job_dir(child) for child in path.iterdir())
    except OSError:
        return False


def display_names(runs: list[Run], roots: list[Path]) -> None:
    """Each run's path relative to its DIR (one DIR) or to the DIRs' common folder (several)."""
    if len(roots) == 1:
        base = roots[0]
    else:
        base = Path(os.path.commonpath([str(r.resolve()) for r in roots]))
    for run in runs:
        try:
            rel = os.path.relpath(run.path.resolve(), base.resolve())
        except ValueError:
            rel = str(run.path)
        run.name = run.path.resolve().name if rel == "." else Path(rel).as_posix()


# --------------------------------------------------------------------------------------- leaderboard


def leaderboard_row(run: Run) -> dict[str, Any]:
    m = run.metrics or {}
    row: dict[str, Any] = {key: None for key in COLUMNS}
    row["run"] = run.name
    row["status"] = "ok" if run.complete else f"incomplete: {run.problem}"
    row["model"] = m.get("model_name") or run.cfg("model.name")
    row["backbone"] = m.get("backbone") or run.cfg("backbone.name")
    row["attention"] = m.get("attention") or run.cfg("attention.name")
    # CBAM with one half switched off (the ablation's variants) is named so in the tables.
    for half, other in (("channel", "spatial"), ("spatial", "channel")):
        if row["attention"] == "cbam" and run.cfg(f"attention.{other}") is False:
            row["attention"] = f"cbam ({half} only)"
    for column, key in HPARAMS.items():
        row[column] = run.cfg(key)
    row["valid_acc"] = metric_value(m, "val_acc_best")
    row["valid_f1"] = metric_value(m, "val_f1_best")
    row["test_acc"] = metric_value(m, "test_acc")
    row["test_f1"] = metric_value(m, "test_f1")
    params = metric_value(m, "num_params")
    row["params_m"] = round(params / 1e6, 3) if params is not None else None
    fps = metric_value(m, "fps")
    row["fps"] = round(fps, 1) if fps is not None else None
    epochs = metric_value(m, "epochs_run")
    if epochs is None and run.history and isinstance(run.history.get("epoch"), list):
        epochs = len(run.history["epoch"]) if run.complete else None
    row["epochs_run"] = int(epochs) if epochs is not None else None
    duration = metric_value(m, "total_time_s")
    row["duration_s"] = round(duration, 1) if duration is not None else None
    return row


def rank_runs(runs: list[Run], metric: str, mode: str) -> list[Run]:
    """Complete runs best first by ``metric`` (those without it after them), then incomplete runs."""
    sign = -1.0 if mode == "max" else 1.0

    def key(run: Run) -> tuple:
        value = run.metric(metric)
        return (not run.complete, value is None, sign * value if value is not None else 0.0, run.name)

    return sorted(runs, key=key)


def write_leaderboard(runs: list[Run], out_dir: Path, metric: str, mode: str, roots: list[Path]) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ranked = rank_runs(runs, metric, mode)
    columns = list(COLUMNS)
    extra = None
    if metric.replace("/", "_") not in METRIC_COLUMNS:
        extra = metric.replace("/", "_")
        columns.append(extra)
    rows = []
    for i, run in enumerate(ranked, 1):
        row = leaderboard_row(run)
        row["rank"] = i if run.complete else None
        if extra:
            row[extra] = run.metric(metric)
        rows.append(row)

    csv_path = out_dir / "leaderboard.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})

    complete = [r for r in rows if r["status"] == "ok"]
    incomplete = [(run, r) for run, r in zip(ranked, rows) if r["status"] != "ok"]
    lines = [
        "# Leaderboard",
        "",
        f"{len(runs)} runs under {', '.join(f'`{r}`' for r in roots)}: {len(complete)} complete, "
        f"{len(incomplete)} incomplete. Ranked by `{metric}` ({'higher' if mode == 'max' else 'lower'} is better; "
        "runs without it last).",
        "",
    ]
    md_columns = [c for c in columns if c not in OPTIONAL_MD or any(r.get(c) is not None for r in complete)]
    md_columns = [c for c in md_columns if c != "status"]
    if complete:
        lines += markdown_table([COLUMNS.get(c, c) for c in md_columns],
                                [[fmt_cell(c, r.get(c)) for c in md_columns] for r in complete])
    else:
        lines.append("No complete run.")
    written = [csv_path]
    note = write_pareto(ranked, out_dir / "pareto.png", metric, mode)
    lines += ["", "## Accuracy vs throughput", ""]
    if note is None:
        lines += ["Pareto front (no other run is both more accurate and faster) in red.", "",
                  "![accuracy vs fps](pareto.png)"]
        written.append(out_dir / "pareto.png")
    else:
        lines.append(f"No plot: {note}.")
    if incomplete:
        lines += ["", "## Incomplete runs", ""]
        lines += [f"- `{run.name}`: {run.problem}" for run, _ in incomplete]
    md_path = out_dir / "leaderboard.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, *written]


def write_pareto(ranked: list[Run], path: Path, metric: str, mode: str) -> str | None:
    """Accuracy vs fps with the Pareto front; a note instead when there is nothing to plot."""
    y_name = metric if mode == "max" else "val_acc_best"
    points = []
    for run in ranked:
        if not run.complete:
            continue
        fps, acc = run.metric("fps"), run.metric(y_name)
        if fps is not None and acc is not None:
            label = (run.metrics or {}).get("model_name") or run.cfg("model.name") or run.name
            points.append((fps, acc, str(label)))
    if not points:
        has_fps = any(r.complete and r.metric("fps") is not None for r in ranked)
        return f"no run has `{y_name}`" if has_fps else "no run has fps (measured on the validation split)"
    front = pareto_front([(p[0], p[1]) for p in points])

    fig, ax = new_figure(7.5, 5.0)
    ax.scatter([p[0] for p in points], [p[1] for p in points], s=36, color="tab:blue", alpha=0.7, label="run")
    fx, fy = zip(*sorted(front))
    ax.plot(fx, fy, "-o", color="tab:red", lw=1.5, ms=7, label="Pareto front")
    for x, y, label in points:
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    finish_plot(fig, ax, path, "inference throughput (images/s)", y_name,
                f"{y_name} vs throughput ({len(points)} runs)")
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no other point beats on both coordinates (both maximized)."""
    front = []
    for x, y in points:
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
        if not dominated and (x, y) not in front:
            front.append((x, y))
    return front


# -------------------------------------------------------------------------------------------- sweeps


@dataclass
class Trial:
    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    duration_s: float | None = None
    job: Run | None = None
    note: str = ""
    distributions: dict[str, Any] = field(default_factory=dict)


def is_hydra_override(item: str) -> bool:
    key = item.lstrip("+~").partition("=")[0]
    return key == "hydra" or key.startswith("hydra.") or key == "hparams_search"


def train_command(overrides: list[str]) -> str:
    kept = [o for o in overrides if not is_hydra_override(o)]
    return " ".join(["python -m paddy.train", *(shlex.quote(o) for o in kept)])


def same_value(raw: Any, value: Any) -> bool:
    if isinstance(raw, str):
        raw = parse_value(raw)
    if isinstance(raw, (int, float)) and isinstance(value, (int, float)) and not isinstance(raw, bool):
        return math.isclose(float(raw), float(value), rel_tol=1e-9, abs_tol=1e-12)
    return str(raw) == str(value)


def params_match(job: Run, params: dict[str, Any]) -> bool:
    given = overrides_dict(job.overrides)
    return all(name in given and same_value(given[name][0], value) for name, value in params.items())


def sweep_settings(sweep_dir: Path) -> DictConfig | None:
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        loaded = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - optional information
        return None
    return loaded if isinstance(loaded, DictConfig) else None


def select(cfg: DictConfig | None, key: str) -> Any:
    if cfg is None:
        return None
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    except Exception:  # noqa: BLE001
        return None


def load_study(db: Path, study_name: str | None, settings: DictConfig | None) -> tuple[Any, list[str]]:
    """The Optuna study in ``db`` (the only one, ``study_name``, or the one multirun.yaml names)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    notes: list[str] = []
    storage = f"sqlite:///{db.resolve()}"
    names = optuna.get_all_study_names(storage=storage)
    if not names:
        raise ValueError(f"{db} holds no study")
    if study_name is None:
        configured = select(settings, "hydra.sweeper.study_name")
        if len(names) == 1:
            study_name = names[0]
        elif configured in names:
            study_name = configured
        else:
            study_name = names[-1]
            notes.append(f"{db.name} holds {len(names)} studies ({', '.join(names)}); reporting the last, "
                         f"`{study_name}` (choose with --study)")
    elif study_name not in names:
        raise ValueError(f"no study {study_name!r} in {db} (it holds: {', '.join(names)})")
    return optuna.load_study(study_name=study_name, storage=storage), notes


def trials_from_study(study: Any, jobs: list[Run]) -> list[Trial]:
    by_name = {job.path.name: job for job in jobs}
    trials = []
    for frozen in study.get_trials(deepcopy=False):
        values = frozen.values
        value = float(values[0]) if values else None
        duration = frozen.duration.total_seconds() if frozen.duration is not None else None
        params = dict(frozen.params)
        job = by_name.get(str(frozen.number))
        if job is not None and params and not params_match(job, params):
            job = None
        if job is None and params:
            job = next((j for j in jobs if params_match(j, params)), None)
        attrs = {**getattr(frozen, "system_attrs", {}), **frozen.user_attrs}
        note = "; ".join(f"{k}: {v}" for k, v in attrs.items() if not str(k).startswith("_")
                         and k not in ("nsga2:generation", "constraints"))
        if not note and job is not None and not job.complete and frozen.state.name != "COMPLETE":
            note = job.problem or ""
        if duration is None and job is not None and job.complete:
            duration = job.metric("total_time_s")
        trials.append(Trial(frozen.number, frozen.state.name, value, params, duration, job, note,
                            dict(frozen.distributions)))
    return trials


def trials_from_jobs(jobs: list[Run], metric: str) -> list[Trial]:
    """One trial per job folder; its params are the overrides that differ between the jobs."""
    per_job = [{k: v for k, v in overrides_dict(j.overrides).items() if not is_hydra_override(k + "=")}
               for j in jobs]
    keys = sorted({k for d in per_job for k in d})
    if len(jobs) > 1:
        keys = [k for k in keys if len({d.get(k, (None,))[0] for d in per_job}) > 1]
    trials = []
    for index, (job, given) in enumerate(zip(jobs, per_job)):
        number = int(job.path.name) if job.path.name.isdigit() else index
        params = {k: given[k][1] for k in keys if k in given}
        m = job.metrics or {}
        value = metric_value(m, "optimized_value") if job.complete else None
        if value is None and job.complete:
            value = job.metric(metric)
        state = "COMPLETE" if job.complete else "INCOMPLETE"
        trials.append(Trial(number, state, value, params, metric_value(m, "total_time_s"), job,
                            "" if job.complete else job.problem or ""))
    return trials


def sort_trials(trials: list[Trial], direction: str) -> list[Trial]:
    sign = -1.0 if direction == "maximize" else 1.0

    def key(t: Trial) -> tuple:
        finished = t.state == "COMPLETE" and t.value is not None
        return (not finished, STATE_ORDER.get(t.state, 9), sign * t.value if finished else 0.0, t.number)

    return sorted(trials, key=key)


@dataclass
class Sweep:
    """A sweep's trials, best first, the direction they are ranked in and where they came from."""

    trials: list[Trial]
    direction: str
    source: str
    study: Any = None  # the Optuna study, when optuna.db could be read
    notes: list[str] = field(default_factory=list)


def load_sweep(sweep_dir: Path, jobs: list[Run], metric: str, mode: str, study_name: str | None,
               settings: DictConfig | None) -> Sweep:
    """The trials of a sweep folder: from the Optuna study in ``optuna.db`` when it can be read, else one
    per job folder (ranked by ``metric`` in ``mode`` unless ``multirun.yaml`` names a direction)."""
    notes: list[str] = []
    study = None
    db = sweep_dir / "optuna.db"
    if db.is_file():
        try:
            study, more = load_study(db, study_name, settings)
            notes += more
        except Exception as err:  # noqa: BLE001 - a broken database: fall back on the job folders
            notes.append(f"could not read the Optuna study in {db.name} ({type(err).__name__}: {err}); "
                         "trials are taken from the job folders")
    if study is not None:
        trials = trials_from_study(study, jobs)
        directions = [d.name.lower() for d in study.directions]
        direction = directions[0]
        if len(directions) > 1:
            notes.append(f"multi-objective study ({', '.join(directions)}): ranked by the first objective")
        source = f"Optuna study `{study.study_name}` in `optuna.db`"
    else:
        trials = trials_from_jobs(jobs, metric)
        configured = select(settings, "hydra.sweeper.direction")
        if isinstance(configured, (list, ListConfig)):
            configured = configured[0] if len(configured) else None
        direction = str(configured).lower() if configured else ("maximize" if mode == "max" else "minimize")
        source = f"the job folders (`.hydra/overrides.yaml` + `{METRICS_FILE}`)"
    return Sweep(sort_trials(trials, direction), direction, source, study, notes)


def sweep_objective(settings: DictConfig | None, trials: list[Trial]) -> str:
    """What the sweep optimized: ``multirun.yaml``'s ``optimized_metric``, else a job's, else ``objective``."""
    return select(settings, "optimized_metric") or next(
        (t.job.metrics.get("optimized_metric") for t in trials if t.job and t.job.metrics
         and t.job.metrics.get("optimized_metric")), None) or "objective"


def trial_cells(trial: Trial, metric: str, param_names: list[str]) -> list[tuple[str, Any]]:
    """A trial's row of the CSV and of the Markdown table, as (kind, value) cells: number, state, value,
    its job's ``metric`` and test accuracy (complete jobs only), duration, parameters, job folder, note."""
    done = trial.job is not None and trial.job.complete
    return [("text", trial.number), ("text", trial.state), ("float", trial.value),
            ("float", trial.job.metric(metric) if done else None),
            ("float", trial.job.metric("test_acc") if done else None), ("duration", trial.duration_s),
            *(("text", trial.params.get(p)) for p in param_names),
            ("text", trial.job.path.name if trial.job else ""), ("text", trial.note)]


def csv_cell(kind: str, value: Any) -> Any:
    """A cell of ``sweep_trials.csv``: the value (durations to 0.1 s), empty for None."""
    if kind == "duration" and value is not None:
        return round(value, 1)
    return blank(value)


def markdown_cell(kind: str, value: Any) -> str:
    """A cell of the report's trials table: 4 decimals, ``1m05s`` durations, ``.4g`` parameters."""
    if kind == "float":
        return fmt_float(value)
    if kind == "duration":
        return fmt_duration(value)
    return fmt_value(value)


def write_sweep_report(sweep_dir: Path, jobs: list[Run], metric: str, mode: str,
                       study_name: str | None = None) -> list[Path]:
    """``sweep_report.md``, ``sweep_trials.csv`` (every trial, best first) and the plots of one sweep
    folder; returns the files written, the report first."""
    settings = sweep_settings(sweep_dir)
    sweep = load_sweep(sweep_dir, jobs, metric, mode, study_name, settings)
    param_names = sorted({p for t in sweep.trials for p in t.params})
    objective = sweep_objective(settings, sweep.trials)
    rows = [trial_cells(t, metric, param_names) for t in sweep.trials]
    csv_path = sweep_dir / "sweep_trials.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["number", "state", "value", metric, "test_acc", "duration_s", *param_names, "job", "note"])
        writer.writerows([csv_cell(kind, value) for kind, value in row] for row in rows)

    lines = sweep_summary(sweep_dir, sweep, objective)
    lines += best_trial_section(sweep.trials, objective, settings, sweep_dir)
    lines += ["", "## Trials", ""]
    lines += markdown_table(["trial", "state", "value", metric, "test acc", "duration", *param_names, "job", "note"],
                            [[markdown_cell(kind, value) for kind, value in row] for row in rows])
    plot_lines, plots = plots_section(sweep_dir, sweep, objective, param_names)
    md_path = sweep_dir / "sweep_report.md"
    md_path.write_text("\n".join(lines + plot_lines).rstrip() + "\n")
    return [md_path, csv_path, *plots]


def sweep_summary(sweep_dir: Path, sweep: Sweep, objective: str) -> list[str]:
    """The report's opening lines: the folder, where the trials came from and their states, the objective, notes."""
    counts: dict[str, int] = {}
    for t in sweep.trials:
        counts[t.state] = counts.get(t.state, 0) + 1
    tally = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items(), key=lambda kv: STATE_ORDER.get(kv[0], 9)))
    lines = ["# Sweep report", "",
             f"Sweep folder: `{sweep_dir}`. Trials from {sweep.source}: {len(sweep.trials)} ({tally}).",
             f"Objective: `{objective}` ({sweep.direction}).", ""]
    lines += [f"Note: {n}." for n in sweep.notes]
    if sweep.notes:
        lines.append("")
    return lines


def best_trial_section(trials: list[Trial], objective: str, settings: DictConfig | None,
                       sweep_dir: Path) -> list[str]:
    """The best complete trial, its parameters and the command that re-runs it, and the sweeper's own
    summary (``optimization_results.yaml``) when there is one."""
    best = next((t for t in trials if t.state == "COMPLETE" and t.value is not None), None)
    lines = ["## Best trial", ""]
    if best is None:
        lines.append("No trial completed.")
    else:
        lines.append(f"Trial {best.number}: {objective} = {best.value:.6g}" +
                     (f", job folder `{best.job.path.name}/`" if best.job else "") + ".")
        if best.params:
            lines.append("Parameters: " + ", ".join(f"`{k}={fmt_value(v)}`" for k, v in best.params.items()) + ".")
        lines += ["", "Re-run it:", "", "```bash", best_command(best, settings), "```"]
    results = read_results(sweep_dir / "optimization_results.yaml")
    if results:
        lines += ["", f"`optimization_results.yaml` (the sweeper's own summary): {results}"]
    return lines


def plots_section(sweep_dir: Path, sweep: Sweep, objective: str,
                  param_names: list[str]) -> tuple[list[str], list[Path]]:
    """The plots of a study with at least 2 complete trials (optimization history, parameter importances,
    a slice plot per parameter), written into ``sweep_dir``: the report's lines and the files."""
    lines = ["", "## Plots", ""]
    complete = [t for t in sweep.trials if t.state == "COMPLETE" and t.value is not None]
    if sweep.study is None:
        return [*lines, "No plots: they need an Optuna study (`optuna.db`)."], []
    if len(complete) < 2:
        return [*lines, f"No plots: they need at least 2 complete trials ({len(complete)} so far)."], []
    written = [sweep_dir / "optimization_history.png"]
    plot_history(sweep.trials, sweep.direction, objective, written[0])
    lines += ["### Optimization history", "", f"![optimization history]({written[0].name})", ""]
    lines += ["### Parameter importances", ""]
    path = sweep_dir / "param_importances.png"
    note = plot_importances(sweep.study, complete, objective, path)
    if note is None:
        written.append(path)
        lines += [f"![parameter importances]({path.name})", ""]
    else:
        lines += [f"No plot: {note}.", ""]
    lines += ["### Slice plots", ""]
    for name in param_names:
        path = sweep_dir / f"slice_{safe_name(name)}.png"
        if plot_slice(complete, name, objective, path):
            written.append(path)
            lines += [f"![{name}]({path.name})", ""]
    return lines, written


def best_command(best: Trial, settings: DictConfig | None) -> str:
    """The best trial as a ``python -m paddy.train`` command: its job's overrides, else the sweep's
    fixed overrides (``multirun.yaml``) plus the trial's parameters."""
    if best.job is not None and best.job.overrides:
        return train_command(best.job.overrides)
    task = select(settings, "hydra.overrides.task") or []
    fixed = [str(o) for o in task if str(o).partition("=")[0].lstrip("+") not in best.params
             and not re.search(r"=(.*,.*|(choice|range|interval|tag|glob)\(.*)$", str(o))]
    return train_command([*fixed, *(f"{k}={fmt_value(v)}" for k, v in best.params.items())])


def read_results(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return f"unreadable ({err})"
    if not isinstance(data, dict):
        return None
    parts = []
    if "best_value" in data:
        parts.append(f"best value {data['best_value']}")
    if isinstance(data.get("best_params"), dict):
        parts.append("best params " + ", ".join(f"`{k}={v}`" for k, v in data["best_params"].items()))
    return "; ".join(parts) or None


# --------------------------------------------------------------------------------------------- plots


def new_figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def finish_plot(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Axis labels, title, grid and legend of a line/scatter plot, then :func:`save`."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    save(fig, path)


def save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_history(trials: list[Trial], direction: str, objective: str, path: Path) -> None:
    ordered = sorted(trials, key=lambda t: t.number)
    complete = [t for t in ordered if t.state == "COMPLETE" and t.value is not None]
    fig, ax = new_figure(7.5, 4.5)
    ax.scatter([t.number for t in complete], [t.value for t in complete], color="tab:blue", s=30,
               label="complete trial", zorder=3)
    best_x, best_y, best = [], [], None
    for t in complete:
        if best is None or (t.value > best if direction == "maximize" else t.value < best):
            best = t.value
        best_x.append(t.number)
        best_y.append(best)
    ax.step(best_x, best_y, where="post", color="tab:red", label="best so far")
    others = [t for t in ordered if t.state != "COMPLETE"]
    if others:
        bottom = min(t.value for t in complete)
        for state, marker in (("PRUNED", "x"), ("FAIL", "v"), ("RUNNING", ".")):
            xs = [t.number for t in others if t.state == state]
            if xs:
                ax.scatter(xs, [bottom] * len(xs), marker=marker, color="grey", label=state.lower())
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    finish_plot(fig, ax, path, "trial", objective, f"Optimization history ({direction})")


def plot_importances(study: Any, complete: list[Trial], objective: str, path: Path) -> str | None:
    varying = [p for p in sorted({p for t in complete for p in t.params})
               if len({repr(t.params.get(p)) for t in complete}) > 1]
    if len(varying) < 2:
        return f"parameter importances need at least 2 parameters that vary over the complete trials ({len(varying)})"
    if len(complete) < 3:
        return f"parameter importances need at least 3 complete trials ({len(complete)})"
    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, params=varying)
    except Exception as err:  # noqa: BLE001 - e.g. too few distinct trials for the evaluator
        return f"optuna could not compute importances ({type(err).__name__}: {err})"
    if not importances:
        return "optuna returned no importances"
    names = list(importances)[::-1]
    fig, ax = new_figure(7.0, 1.2 + 0.5 * len(names))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    for y, name in enumerate(names):
        ax.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=8)
    ax.set_xlabel(f"importance for {objective} (fANOVA)")
    ax.set_xlim(0, max(1.0, max(importances.values()) * 1.15))
    ax.set_title("Hyperparameter importances")
    save(fig, path)
    return None


def plot_slice(complete: list[Trial], name: str, objective: str, path: Path) -> bool:
    points = [(t.params[name], t.value, t.number) for t in complete if name in t.params]
    if not points:
        return False
    fig, ax = new_figure(6.0, 4.2)
    xs = [p[0] for p in points]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    if numeric:
        x_values = xs
    else:
        labels = sorted({str(x) for x in xs})
        x_values = [labels.index(str(x)) for x in xs]
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30 if len(labels) > 4 else 0)
    sc = ax.scatter(x_values, [p[1] for p in points], c=[p[2] for p in points], cmap="viridis", s=40,
                    edgecolors="black", linewidths=0.5)
    fig.colorbar(sc, ax=ax, label="trial")
    distribution = next((t.distributions.get(name) for t in complete if t.distributions.get(name) is not None), None)
    if numeric and (getattr(distribution, "log", False) or (min(xs) > 0 and max(xs) / min(xs) >= 100)):
        ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(objective)
    ax.set_title(f"Slice: {name}")
    ax.grid(True, alpha=0.3)
    save(fig, path)
    return True


# ------------------------------------------------------------------------------------------ formatting


def blank(value: Any) -> Any:
    return "" if value is None else value


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def cells(values: list[str]) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in values) + " |"

    return [cells(header), "|" + "|".join("---" for _ in header) + "|", *(cells(r) for r in rows)]


def fmt_float(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def fmt_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fmt_cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in ("valid_acc", "valid_f1", "test_acc", "test_f1"):
        return fmt_float(value)
    if column == "params_m":
        return f"{value:.2f}"
    if column == "fps":
        return f"{value:.0f}"
    if column == "duration_s":
        return fmt_duration(value)
    if column == "run":
        return f"`{value}`"
    return fmt_value(value)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "param"


# ------------------------------------------------------------------------------------------------ CLI


def report(dirs: list[Path], out: Path | None = None, metric: str = "val_acc_best", mode: str = "auto",
           study: str | None = None) -> list[Path]:
    """Write the leaderboard (into ``out``, default the first DIR) and a report per sweep folder."""
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise ReportError("no such directory: " + ", ".join(str(d) for d in missing))
    mode = metric_mode(metric, mode)
    run_paths: list[Path] = []
    sweep_paths: list[Path] = []
    for root in dirs:
        found_runs, found_sweeps = find_dirs(root)
        run_paths += [p for p in found_runs if p.resolve() not in {q.resolve() for q in run_paths}]
        sweep_paths += [p for p in found_sweeps if p.resolve() not in {q.resolve() for q in sweep_paths}]
    if not run_paths and not sweep_paths:
        raise ReportError("no runs found (no folder with metrics.json or .hydra/) under "
                          + ", ".join(str(d) for d in dirs))
    runs = [load_run(p) for p in run_paths]
    display_names(runs, dirs)
    from paddy.comparisons import write_folds, write_statistics

    written: list[Path] = []
    if runs:
        written += write_leaderboard(runs, out or dirs[0], metric, mode, dirs)
        written += write_statistics(runs, out or dirs[0], metric)
    for sweep_dir in sweep_paths:
        jobs = [r for r in runs if r.path.parent.resolve() == sweep_dir.resolve()]
        written += write_sweep_report(sweep_dir, jobs, metric, mode, study)
        written += write_folds(sweep_dir, jobs, metric)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m paddy.report",
        description="Leaderboard (leaderboard.md/.csv, pareto.png) of the runs under DIRs, and a report "
                    "(sweep_report.md, sweep_trials.csv, plots) in every sweep folder among them.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                        help="run, sweep or parent folders (outputs/, multirun/, multirun/<date>/<time>/)")
    parser.add_argument("--out", type=Path, default=None, help="where the leaderboard goes (default: the first DIR)")
    parser.add_argument("--metric", default="val_acc_best",
                        help="metrics.json key that ranks the runs (default: val_acc_best; val/acc_best works too)")
    parser.add_argument("--mode", choices=("auto", "max", "min"), default="auto",
                        help="higher or lower is better (auto: min for losses and times, else max)")
    parser.add_argument("--study", default=None, help="the Optuna study in optuna.db (default: the only one)")
    args = parser.parse_args(argv)

    def work() -> int:
        for path in report(args.dirs, args.out, args.metric, args.mode, args.study):
            print(f"wrote {path}")
        return 0

    return exit_status("paddy.report", work)


if __name__ == "__main__":
    sys.exit(main())
