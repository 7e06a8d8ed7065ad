"""Ensembles in paddy.predict and paddy.evaluate: several runs, or a sweep directory's runs, averaged.

The members are tiny trained runs on synthetic data: the shared ``run_dir`` (a ResNet at 32 px), a
DCT-fusion run at 48 px with its own mean/std (another architecture, input size and extra input), and
a sweep directory laid out as Hydra's multirun leaves it (``multirun.yaml``, job folders ``0/``, ``1/``
with ``.hydra/``) holding the two folds of a 2-fold cross-validation and a failed job without a checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import run_module
from omegaconf import OmegaConf

from paddy.data.imageio import read_image
from paddy.data.transforms import build_transform
from paddy.evaluate import EvaluationError, evaluate, format_summary
from paddy.predict import (
    EnsembleError,
    collect_inputs,
    ensemble_shares,
    load_members,
    member_decode_side,
    member_runs,
    predict,
)
from paddy.utils.checkpoints import load_trained_model

TRAIN = ["data=synthetic", "backbone.name=test_resnet", "data.image_size=32", "trainer=debug", "data.num_workers=0",
         "trainer.limit_test_batches=1.0", "logger=csv", "++callbacks.rich_progress_bar=null"]


def _train(out: Path, *overrides: str) -> Path:
    from paddy.config import compose_config
    from paddy.pipeline import train

    train(compose_config([*TRAIN, *overrides, f"paths.output_dir={out}"]))
    return out



@pytest.fixture(scope="module")
def dct_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another architecture (DCT fusion: image + DCT features), image size (48 px) and normalisation."""
    return _train(tmp_path_factory.mktemp("dct") / "run", "model=mnv3s_dct", "backbone.name=test_resnet",
                  "data.image_size=48", "data.mean=[0.5,0.5,0.5]", "data.std=[0.25,0.25,0.25]")


@pytest.fixture(scope="module")
def fold_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``experiment=kfold``'s layout with 2 folds: ``<sweep>/{0,1}/`` (+ ``.hydra/``), and a job ``2/`` that failed."""
    sweep = tmp_path_factory.mktemp("multirun") / "kfold"
    for fold in (0, 1):
        job = _train(sweep / str(fold), "data.n_folds=2", f"data.fold={fold}", "seed=3", "save_predictions=false")
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"data.fold={fold}"]))
    (sweep / "2" / ".hydra").mkdir(parents=True)
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["data.fold=2"]))
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"mode": "MULTIRUN"}}))
    return sweep


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Kaggle's ``test_images/`` layout: five photos of several sizes, and one unreadable file."""
    folder = tmp_path_factory.mktemp("kaggle") / "test_images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for k, (h, w) in enumerate([(64, 64), (80, 120), (50, 40), (200, 150), (33, 90)]):
        assert cv2.imwrite(str(folder / f"20000{k}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (folder / "200009.jpg").write_bytes(b"not an image")
    return folder


def _probs(results: list[dict]) -> np.ndarray:
    """Each readable image's full probability vector (class order) from predict's top-k (k = all classes)."""
    names = sorted({e["label"] for r in results for e in r["topk"]})
    return np.array([[next(e["prob"] for e in r["topk"] if e["label"] == n) for n in names]
                     for r in results if r["error"] is None])


def test_ensemble_probabilities_are_the_weighted_mean_of_the_members(run_dir: Path, dct_run: Path,
                                                                     images: Path) -> None:
    paths = collect_inputs(images)
    for tta in (False, True):
        alone = [_probs(predict(run, paths, topk=4, tta=tta)) for run in (run_dir, dct_run)]
        both = predict([run_dir, dct_run], paths, topk=4, tta=tta, ensemble_weights=[1, 3])
        assert [r["error"] is None for r in both] == [True] * 5 + [False]  # 200009.jpg: skipped, not fatal
        np.testing.assert_allclose(_probs(both), 0.25 * alone[0] + 0.75 * alone[1], atol=1e-5)
        equal = predict([str(run_dir), str(dct_run)], paths, topk=4, tta=tta)
        np.testing.assert_allclose(_probs(equal), (alone[0] + alone[1]) / 2, atol=1e-5)
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # two different models, so the test can fail


def test_one_member_predicts_as_the_model_alone(run_dir: Path, images: Path) -> None:
    """The run's own network and eval transform, applied by hand, give predict's probabilities. The photos
    are decoded as paddy decodes them: JPEGs at the smallest scale that still has the run's 32 px (the
    200 x 150 photo at 1/4), within a small difference of the full decode."""
    paths = collect_inputs(images)[:5]
    model, _, config = load_trained_model(run_dir)
    data = config["data"]
    transform = build_transform(data["transforms"]["eval"], data["mean"], data["std"])
    assert member_decode_side(config, {}) == 32

    def by_hand(side: int | None) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.stack([transform(image=read_image(p, side))["image"] for p in paths])
            return model(batch).softmax(dim=1).numpy()

    for ckpt_path, weights in ((run_dir, None), ([str(run_dir)], [2.0])):
        predicted = _probs(predict(ckpt_path, paths, topk=4, ensemble_weights=weights))
        np.testing.assert_allclose(predicted, by_hand(32), atol=1e-6)
        np.testing.assert_allclose(predicted, by_hand(None), atol=0.05)
        assert np.abs(predicted - by_hand(None)).max() > 0  # the 200 x 150 photo was decoded smaller


def test_a_sweep_directory_is_all_its_runs(fold_sweep: Path, images: Path, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    assert member_runs(fold_sweep) == [(fold_sweep / "0", fold_sweep), (fold_sweep / "1", fold_sweep)]
    assert "2: no checkpoint (a failed or unfinished job): left out of the ensemble" in caplog.text
    assert member_runs([fold_sweep / "1", fold_sweep]) == [(fold_sweep / "1", None), (fold_sweep / "0", fold_sweep),
                                                           (fold_sweep / "1", fold_sweep)]
    paths = collect_inputs(images)
    swept = predict(fold_sweep, paths, topk=4)
    listed = predict([fold_sweep / "0", fold_sweep / "1" / "checkpoints" / "last.ckpt"], paths, topk=4)
    np.testing.assert_allclose(_probs(swept), _probs(listed), atol=1e-6)
    (tmp_path / "failed" / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "failed" / "0" / ".hydra" / "overrides.yaml").write_text("[]")
    with pytest.raises(EnsembleError, match=r"ckpt_path=.*failed: a sweep directory without a run that holds a check"):
        member_runs(tmp_path / "failed")


def _split_probabilities(run: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A run's softmax outputs and labels on a split of its own data, computed here from its config."""
    from paddy.config import instantiate

    model, _, config = load_trained_model(run)
    datamodule = instantiate(OmegaConf.create(config["data"]), _convert_="all")
    datamodule.setup("test")
    inputs, labels = next(iter(torch.utils.data.DataLoader(datamodule.dataset(split), batch_size=1000)))
    with torch.inference_mode():
        return model(inputs).softmax(dim=1), labels


def test_evaluate_reports_the_ensemble_next_to_each_member(fold_sweep: Path) -> None:
    result = evaluate(fold_sweep, latency_runs=1, throughput_runs=1, ensemble_weights=[3, 1])
    out = fold_sweep / "eval_test_ensemble"
    assert result["output_dir"] == str(out) and result["ensemble_weights"] == [0.75, 0.25]
    for name in ("ensemble.md", "ensemble.json", "metrics_test.json", "classification_report.txt",
                 "confusion_matrix.png", "confusion_matrix_normalized.png", "roc_curves.png", "predictions_test.csv"):
        assert (out / name).is_file(), name
    (p0, labels), (p1, labels1) = (_split_probabilities(fold_sweep / str(f), "test") for f in (0, 1))
    assert torch.equal(labels, labels1)
    expected = ((0.75 * p0 + 0.25 * p1).argmax(dim=1) == labels).float().mean().item()
    assert result["accuracy"] == pytest.approx(expected, abs=1e-6) and result["num_samples"] == len(labels)
    members = {m["name"]: m for m in result["members"]}
    assert list(members) == [str(fold_sweep / "0"), str(fold_sweep / "1")]
    for name, probs in zip(members, (p0, p1)):
        assert members[name]["accuracy"] == pytest.approx((probs.argmax(1) == labels).float().mean().item(), abs=1e-6)
    stored = json.loads((out / "ensemble.json").read_text())
    assert [m["name"] for m in stored["members"]] == list(members)
    assert stored["ensemble"]["accuracy"] == result["accuracy"] and "f1_macro" in stored["ensemble"]
    table = (out / "ensemble.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| run | model | img px | weight | accuracy | F1 macro")
    assert [row.split(" | ")[0][2:] for row in rows[1:]] == [*members, "**ensemble**"]
    assert f"{result['accuracy']:.4f}" in rows[-1] and table.split("\n\n", 2)[-1] in format_summary(result)
    with (out / "predictions_test.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == len(labels)


def test_one_member_evaluates_as_before(run_dir: Path, tmp_path: Path) -> None:
    alone = evaluate(run_dir, output_dir=tmp_path / "alone", latency_runs=0, throughput_runs=0)
    listed = evaluate([run_dir], output_dir=tmp_path / "listed", latency_runs=0, throughput_runs=0)
    timing = {"output_dir", "eval_time_s", "end_to_end_img_s"}
    assert {k: v for k, v in alone.items() if k not in timing} == {k: v for k, v in listed.items() if k not in timing}
    assert "members" not in alone and not (tmp_path / "alone" / "ensemble.md").exists()
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert alone["accuracy"] == pytest.approx(run_metrics["test_acc"], abs=1e-6)


def test_submission_from_a_fold_ensemble_is_one_command(fold_sweep: Path, images: Path, tmp_path: Path) -> None:
    result = run_module("paddy.predict", f"ckpt_path={fold_sweep}", f"input={images}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Ensemble of 2 runs" in result.stdout
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "image_id,label" and [line.split(",")[0] for line in lines[1:]] == [
        Path(r["path"]).name for r in rows] == [f"20000{k}.jpg" for k in range(5)]
    expected = predict(fold_sweep, collect_inputs(images), topk=3)
    assert [line.split(",")[1] for line in lines[1:]] == [r["label"] for r in expected if r["error"] is None]


def _relabelled(run_dir: Path, path: Path, names: list[str]) -> Path:
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["hyper_parameters"]["class_names"] = names
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def test_runs_of_different_class_lists_are_refused_in_one_line(run_dir: Path, images: Path, tmp_path: Path) -> None:
    other = _relabelled(run_dir, tmp_path / "other" / "checkpoints" / "last.ckpt",
                        ["class_0", "class_1", "class_2", "blast"])
    result = run_module("paddy.predict", f"ckpt_path=[{run_dir},{other}]", f"input={images}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "class lists" in line]
    assert len(lines) == 1 and str(run_dir) in lines[0] and str(other) in lines[0], result.stdout + result.stderr
    assert "lacks 'class_3'" in lines[0] and "has 'blast'" in lines[0]
    assert not (tmp_path / "predictions.csv").exists()
    reordered = _relabelled(run_dir, tmp_path / "reordered.ckpt", ["class_1", "class_0", "class_2", "class_3"])
    with pytest.raises(EnsembleError, match=r"the same 4 classes in another order \(class 0 is 'class_1' vs 'class_0'"):
        load_members([run_dir, reordered])


def test_weights_that_do_not_fit_the_runs_are_refused(run_dir: Path, dct_run: Path, images: Path) -> None:
    members = load_members([run_dir, dct_run])
    assert ensemble_shares([1, 3], members) == [0.25, 0.75] and ensemble_shares(None, members) == [0.5, 0.5]
    with pytest.raises(EnsembleError, match=r"ensemble_weights=\[1\]: 1 value\(s\) for 2 run\(s\) "
                                            r"\(\S+run0, \S+dct0/run\): give one weight per run"):
        predict([run_dir, dct_run], collect_inputs(images), ensemble_weights=[1])
    for weights, reason in (([1, -1], "-1 is not a finite number >= 0"), ([0, 0], "at least one must be > 0"),
                            ([1, "x"], "every weight must be a number"), (2, "not a list for 2 run")):
        with pytest.raises(EnsembleError, match=reason):
            ensemble_shares(weights, members)


def test_fold_ensembles_are_refused_on_their_val_split(fold_sweep: Path, run_dir: Path) -> None:
    with pytest.raises(EvaluationError, match=r"split=val: .*0 \(data.fold=0 of n_folds=2\) and .*1 \(data.fold=1 "
                                              r"of n_folds=2\) are different k-fold folds.*on split=test"):
        evaluate(fold_sweep, split="val")
    with pytest.raises(EvaluationError, match=r"split=val: .* are different k-fold folds"):
        evaluate(fold_sweep, split="val", data_config={"fold": 0})  # what the runs trained on decides
    assert not (fold_sweep / "eval_val_ensemble").exists()
    with pytest.raises(EvaluationError, match=r"different test splits .*data.n_folds=2 vs None"):
        evaluate([run_dir, fold_sweep / "0"], latency_runs=0, throughput_runs=0)
