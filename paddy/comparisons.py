"""Repeated runs in ``paddy.report``: configurations run with several seeds and/or folds, compared honestly.

Runs whose composed configs are the same except for ``seed`` and ``data.fold`` form one group (one
configuration). :func:`write_statistics` writes, next to the leaderboard:

- ``statistics.md`` / ``statistics.csv``: per group n, mean ± std and the 95% confidence interval of
  the ranking metric; for two groups that share seeds/folds, the paired difference with a paired
  t-test and a Wilcoxon signed-rank p-value; for two single runs with per-image test predictions
  (``eval_test/predictions_test.csv``), McNemar's test; the verdict at 0.05 in words;
- ``repeated_runs.png``: every run's value per group (a box and the points themselves).

:func:`write_folds` writes, in a k-fold sweep folder, ``folds.md`` (each fold and mean ± std) and
``oof_predictions.csv``: every pool image predicted by the fold model that did not train on it (from
each fold's ``eval_val/predictions_val.csv``), with the out-of-fold accuracy and macro F1.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from paddy import report as rp
from paddy import stats

# Config keys that do not make a different configuration (what varies between repeats, where files go).
REPEAT_KEYS = ("seed", "data.fold")
IGNORED_KEYS = ("paths", "ckpt_path", "resume", "trust_checkpoint", "optuna", "save_predictions")
TEST_PREDICTIONS = Path("eval_test") / "predictions_test.csv"
VAL_PREDICTIONS = Path("eval_val") / "predictions_val.csv"


@dataclass
class Group:
    label: str
    runs: list[rp.Run] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    @property
    def summary(self) -> stats.Summary:
        return stats.summarize(self.values)


def repeat_key(run: rp.Run) -> tuple[Any, Any]:
    """What pairs two configurations' runs: the same seed and fold."""
    metrics = run.metrics or {}
    return run.cfg("seed"), metrics.get("fold", run.cfg("data.fold"))


def config_identity(run: rp.Run) -> str:
    """The run's configuration without the repeat keys: equal strings, same configuration."""
    if run.config is not None:
        return json.dumps(_identity_node(run), sort_keys=True, default=str)
    return "\n".join(sorted(o for o in run.overrides if o.partition("=")[0].lstrip("+") not in REPEAT_KEYS))


def _identity_node(run: rp.Run) -> dict[str, Any]:
    """The composed config (uninterpolated) less :data:`REPEAT_KEYS` and :data:`IGNORED_KEYS`; {} without one."""
    if run.config is None:
        return {}
    node = OmegaConf.to_container(run.config, resolve=False)
    for key in (*REPEAT_KEYS, *IGNORED_KEYS):
        parent, _, leaf = key.rpartition(".")
        holder = node.get(parent) if parent else node
        if isinstance(holder, dict):
            holder.pop(leaf, None)
    return node


def group_runs(runs: list[rp.Run], metric: str) -> list[Group]:
    """The complete runs with ``metric``, grouped by configuration and labelled by what tells them apart."""
    grouped: dict[str, list[rp.Run]] = {}
    for run in runs:
        if run.complete and run.metric(metric) is not None:
            grouped.setdefault(config_identity(run), []).append(run)
    members = list(grouped.values())
    labels = _labels(members)
    ordered = [sorted(rs, key=lambda r: str(repeat_key(r))) for rs in members]
    return [Group(label, rs, [r.metric(metric) for r in rs]) for label, rs in zip(labels, ordered)]


def _labels(members: list[list[rp.Run]]) -> list[str]:
    """What tells the groups apart: their differing overrides (``attention=ca``), then any other differing
    config value (``data.scaled_decode=True``, e.g. runs of two paddy versions); else ``config <i>``."""
    overrides = [{k: raw for k, (raw, _) in rp.overrides_dict(runs[0].overrides).items()
                  if k not in REPEAT_KEYS and not k.startswith("hydra")} for runs in members]
    by_override = _differing(overrides)
    covered = tuple({k for o in overrides for k in o if len({str(x.get(k)) for x in overrides}) > 1})
    configs = [{k: v for k, v in _flat(_identity_node(runs[0])).items() if not k.startswith(covered or ("\0",))}
               for runs in members]
    labels = [" ".join(part for part in pair if part) for pair in zip(by_override, _differing(configs))]
    if all(labels) and len(set(labels)) == len(labels):
        return labels
    return [f"config {i + 1}" if len(members) > 1 else "all runs" for i in range(len(members))]


def _differing(options: list[dict[str, Any]], most: int = 4) -> list[str]:
    keys = sorted({k for o in options for k in o})
    differing = [k for k in keys if len({str(o.get(k, "(unset)")) for o in options}) > 1][:most]
    return [" ".join(f"{k}={o.get(k, '(unset)')}" for k in differing) for o in options]


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    found: dict[str, Any] = {}
    for key, value in node.items():
        found.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return found


# ------------------------------------------------------------------------------------------- comparisons


@dataclass
class Comparison:
    a: Group
    b: Group
    paired: stats.Paired | None = None
    mcnemar: stats.McNemar | None = None

    def sentence(self, metric: str) -> str:
        """The comparison in words, with the verdict at 0.05."""
        name = f"**{self.a.label}** vs **{self.b.label}**"
        if self.paired is not None:
            p = self.paired
            ci = "" if p.ci_low is None else f" (95% CI {p.ci_low:+.4f} to {p.ci_high:+.4f})"
            text = (f"{name}: {metric} differs by {p.mean_diff:+.4f}{ci} over {p.n} paired runs; "
                    f"paired t-test p = {_p(p.t_p)}, {stats.verdict(p.t_p)}; Wilcoxon signed-rank "
                    f"p = {_p(p.wilcoxon_p)}, {stats.verdict(p.wilcoxon_p)}.")
            if p.wilcoxon_min_p >= stats.ALPHA:
                text += (f" With {p.n} pairs the exact Wilcoxon test cannot go below p = {p.wilcoxon_min_p:.4g}:"
                         " run more seeds for it to be able to detect a difference.")
            return text
        m = self.mcnemar
        return (f"{name} on the same {m.n} test images: {m.only_a} right only by the first, {m.only_b} only by the "
                f"second; McNemar's exact test p = {_p(m.p)}, {stats.verdict(m.p)}.")


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def compare(groups: list[Group]) -> list[Comparison]:
    """Every two groups that share at least two seeds/folds (paired tests), and every two single runs
    that both saved per-image test predictions of the same images (McNemar)."""
    found = []
    # Each single run's per-image test predictions, read once.
    tests = {id(g): read_predictions(g.runs[0].path / TEST_PREDICTIONS) for g in groups if len(g.runs) == 1}
    for a, b in itertools.combinations(groups, 2):
        pairs = _pairs(a, b)
        if len(pairs) >= 2:
            found.append(Comparison(a, b, paired=stats.paired_test([x for x, _ in pairs], [y for _, y in pairs])))
        elif len(a.runs) == 1 and len(b.runs) == 1:
            result = _mcnemar(tests[id(a)], tests[id(b)])
            if result is not None:
                found.append(Comparison(a, b, mcnemar=result))
    return found


def _pairs(a: Group, b: Group) -> list[tuple[float, float]]:
    by_key = {repeat_key(run): value for run, value in zip(b.runs, b.values)}
    return [(value, by_key[repeat_key(run)]) for run, value in zip(a.runs, a.values) if repeat_key(run) in by_key]


def _mcnemar(first: list[dict[str, str]], second: list[dict[str, str]]) -> stats.McNemar | None:
    """McNemar's test of two runs' per-image test predictions; None unless both list the same images."""
    if not first or not second or [r["item"] for r in first] != [r["item"] for r in second]:
        return None
    return stats.mcnemar([r["correct"] == "1" for r in first], [r["correct"] == "1" for r in second])


def read_predictions(path: Path) -> list[dict[str, str]]:
    """The rows of a ``paddy.evaluate`` predictions CSV (``item,label,predicted,confidence,correct``); [] if none."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------ files


def write_statistics(runs: list[rp.Run], out_dir: Path, metric: str) -> list[Path]:
    """``statistics.md``/``.csv`` and ``repeated_runs.png`` when some configuration has repeats or two runs
    can be compared; nothing otherwise."""
    groups = group_runs(runs, metric)
    comparisons = compare(groups)
    if not comparisons and all(len(g.runs) < 2 for g in groups):
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "statistics.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["configuration", "n", "mean", "std", "ci95_low", "ci95_high", "values", "runs"])
        for g in groups:
            s = g.summary
            writer.writerow([g.label, s.n, s.mean, rp.blank(s.std), rp.blank(s.ci_low), rp.blank(s.ci_high),
                             " ".join(f"{v:.6g}" for v in g.values), " ".join(r.name for r in g.runs)])
    plot = out_dir / "repeated_runs.png"
    plot_groups(groups, metric, plot)
    md_path = out_dir / "statistics.md"
    md_path.write_text("\n".join(statistics_lines(groups, comparisons, metric)) + "\n")
    return [md_path, csv_path, plot]


def statistics_lines(groups: list[Group], comparisons: list[Comparison], metric: str) -> list[str]:
    lines = ["# Repeated runs", "",
             f"`{metric}` per configuration (runs that differ only by `seed` and/or `data.fold`): "
             "mean ± sample standard deviation and the 95% confidence interval of the mean (Student's t).", ""]
    rows = []
    for g in groups:
        s = g.summary
        spread = "" if s.std is None else f" ± {s.std:.4f}"
        ci = "" if s.ci_low is None else f"{s.ci_low:.4f} – {s.ci_high:.4f}"
        rows.append([g.label, str(s.n), f"{s.mean:.4f}{spread}", ci, ", ".join(f"{v:.4f}" for v in g.values)])
    lines += rp.markdown_table(["configuration", "n", "mean ± std", "95% CI", "values"], rows)
    lines += ["", "![per-run values](repeated_runs.png)", "", "## Comparisons", ""]
    if not comparisons:
        lines.append("No two configurations share two or more seeds/folds, and no two single runs have per-image "
                     f"test predictions (`{TEST_PREDICTIONS.as_posix()}`, from `save_predictions=true` or "
                     "`paddy.evaluate`) to compare.")
    lines += [f"- {c.sentence(metric)}" for c in comparisons]
    if len(comparisons) > 1:
        lines += ["", f"{len(comparisons)} comparisons: the p-values are not corrected for multiple comparisons."]
    return lines


def plot_groups(groups: list[Group], metric: str, path: Path) -> None:
    """A box per configuration with every run's value drawn over it (jittered), so a reader sees the spread."""
    fig, ax = rp.new_figure(max(5.0, 1.4 * len(groups) + 2), 4.5)
    ax.boxplot([g.values for g in groups], showfliers=False)
    rng = np.random.default_rng(0)
    for i, g in enumerate(groups, 1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(g.values)), g.values, s=22, color="tab:blue", zorder=3)
    ax.set_xticks(range(1, len(groups) + 1), [g.label for g in groups], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: every run per configuration")
    ax.grid(True, axis="y", alpha=0.3)
    rp.save(fig, path)


# ------------------------------------------------------------------------------------------------ folds


def write_folds(sweep_dir: Path, jobs: list[rp.Run], metric: str) -> list[Path]:
    """``folds.md`` and ``oof_predictions.csv`` in a k-fold sweep folder (jobs whose metrics.json has ``n_folds``)."""
    folds = sorted((j for j in jobs if j.complete and (j.metrics or {}).get("n_folds")),
                   key=lambda j: j.metrics["fold"])
    if not folds:
        return []
    n_folds = int(folds[0].metrics["n_folds"])
    rows, values = [], []
    for job in folds:
        values.append(job.metric(metric))
        rows.append([str(job.metrics["fold"]), f"`{job.name}`", rp.fmt_float(job.metric(metric)),
                     rp.fmt_float(job.metric("val_f1_best")), rp.fmt_float(job.metric("test_acc"))])
    shown = [v for v in values if v is not None]
    summary = stats.summarize(shown) if shown else None
    if summary is not None:
        rows.append(["mean ± std", "", f"{summary.mean:.4f} ± {rp.fmt_float(summary.std) or 'n/a'}", "", ""])
    lines = ["# Cross-validation", "", f"{len(folds)} of {n_folds} folds finished "
             f"(missing: {_missing(folds, n_folds) or 'none'})."]
    lines += ["", *rp.markdown_table(["fold", "run", metric, "val f1", "test acc"], rows), ""]
    written = []
    oof = out_of_fold(folds)
    if oof:
        path = sweep_dir / "oof_predictions.csv"
        _write_rows(path, oof)
        written.append(path)
        accuracy = float(np.mean([r["correct"] == "1" for r in oof]))
        f1 = stats.macro_f1([r["label"] for r in oof], [r["predicted"] for r in oof])
        lines.append(f"Out of fold (`oof_predictions.csv`, {len(oof)} images, each predicted by the fold that did not "
                     f"train on it): accuracy {accuracy:.4f}, macro F1 {f1:.4f}.")
    else:
        lines.append(f"No out-of-fold predictions: the folds have no `{VAL_PREDICTIONS.as_posix()}` "
                     "(written by a k-fold run, `save_predictions=auto`).")
    md_path = sweep_dir / "folds.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, *written]


def _missing(folds: list[rp.Run], n_folds: int) -> str:
    done = {int(j.metrics["fold"]) for j in folds}
    return ", ".join(str(k) for k in range(n_folds) if k not in done)


def out_of_fold(folds: list[rp.Run]) -> list[dict[str, str]]:
    """Each fold's validation predictions, tagged with the fold; [] unless every fold has them."""
    rows = []
    for job in folds:
        found = read_predictions(job.path / VAL_PREDICTIONS)
        if not found:
            return []
        rows += [{"fold": str(job.metrics["fold"]), **row} for row in found]
    return rows


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
