"""What paddy refuses, and how: duplicated and conflicting listings, checkpoints that would run code,
copied run directories, ties in the best epoch, and config errors that end in one line with exit 2.

The CLI cases call the real entry points (``@hydra.main`` functions) in this process with a patched
``sys.argv``: the same code path as ``python -m paddy.train ...``, without a new interpreter per case.
"""

from __future__ import annotations

import contextlib
import csv
import fractions
import importlib
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CLASSES, TINY, class_image, write_image

from paddy.data import (
    DataSourceError,
    DataValidationError,
    ImageDataModule,
    ImageFolderSource,
    MetadataCSVSource,
    PaddyDoctorSource,
)
from paddy.errors import SettingError
from paddy.evaluate import evaluate
from paddy.settings import check_settings
from paddy.utils.artifacts import best_epoch_summary
from paddy.utils.checkpoints import CheckpointError, read_checkpoint, resolve_checkpoint

RESIZE_32 = {"train": {"Resize": {"height": 32, "width": 32}}, "eval": {"Resize": {"height": 32, "width": 32}}}

# ------------------------------------------------------------------------------------- helpers


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def datamodule(source, root: Path, **options) -> ImageDataModule:
    dm = ImageDataModule(source, root=root, batch_size=4, num_workers=0, transforms=RESIZE_32, cache_dir=False,
                         image_size=32, **options)
    dm.setup()
    return dm


def run_cli(module: str, argv: list[str], monkeypatch, capfd) -> tuple[int, str]:
    """Run ``python -m <module> <argv>`` in this process; return (exit code, stderr + stdout)."""
    main = importlib.import_module(module).main
    monkeypatch.setattr(sys, "argv", [module, *argv])
    code = 0
    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else 1
    out, err = capfd.readouterr()
    return code, err + out


def assert_one_line_error(output: str, *expected: str) -> str:
    """The output holds no traceback and the error is one line, which contains all of ``expected``."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if expected[0] in line]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], errors[0]
    return errors[0]


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` really unwritable: the immutable attribute as root (who ignores modes), else chmod."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root and chattr +i is not available here: cannot make a folder read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)


def duplicate_rows(csv_path: Path) -> int:
    """Append every data row of ``csv_path`` again; return the number of unique rows."""
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(lines + lines[1:]) + "\n")
    return len(lines) - 1


def split_files(dm) -> dict[str, set[str]]:
    return {split: {os.path.realpath(f) for f in index.files} for split, index in dm.split_indices.items()}


def assert_disjoint(splits: dict[str, set[str]]) -> None:
    names = sorted(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not (splits[a] & splits[b]), f"{len(splits[a] & splits[b])} image(s) in both {a} and {b}"


# ------------------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("layout", ["paddy", "metadata_csv"])
def test_duplicated_rows_are_kept_once_and_never_leak_across_splits(layout: str, paddy_root: Path,
                                                                     metadata_root: Path, caplog):
    root, source, csv_name = {"paddy": (paddy_root, PaddyDoctorSource, "train.csv"),
                              "metadata_csv": (metadata_root, MetadataCSVSource, "metadata.csv")}[layout]
    unique = duplicate_rows(root / csv_name)
    with caplog.at_level(logging.WARNING):
        dm = datamodule(source, root, val_fraction=0.25, test_fraction=0.25)
    assert sum(len(index) for index in dm.split_indices.values()) == unique
    assert_disjoint(split_files(dm))
    warning = next(r.getMessage() for r in caplog.records if "listed more than once" in r.getMessage())
    assert f"{unique} image(s) listed more than once with the same label" in warning
    assert f"{csv_name} line 2" in warning and f"{csv_name} line {unique + 2}" in warning


def test_no_image_is_in_two_splits_on_any_layout(paddy_root, metadata_root, imagefolder_root, flat_imagefolder_root):
    # Every image listed twice where the layout allows it: CSV rows repeated, a symlink to a file
    # of the same class folder.
    duplicate_rows(paddy_root / "train.csv")
    duplicate_rows(metadata_root / "metadata.csv")
    for path in sorted((flat_imagefolder_root / CLASSES[0]).glob("*.png")):
        (path.parent / f"link-{path.name}").symlink_to(path)
    layouts = [(PaddyDoctorSource, paddy_root), (MetadataCSVSource, metadata_root),
               (ImageFolderSource, imagefolder_root), (ImageFolderSource, flat_imagefolder_root)]
    for source, root in layouts:
        dm = datamodule(source, root, val_fraction=0.25, test_fraction=0.25)
        files = split_files(dm)
        assert len(files) == 3, root
        assert_disjoint(files)


def test_one_image_with_two_labels_is_refused_naming_both_lines(metadata_root: Path):
    path = metadata_root / "metadata.csv"
    rows = list(csv.DictReader(path.open()))
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerow([rows[0]["image_path"], "normal"])  # listed once as its class, once as normal
    with pytest.raises(DataSourceError) as info:
        datamodule(MetadataCSVSource, metadata_root)
    message = str(info.value)
    assert "different labels" in message and rows[0]["image_path"] in message
    assert f"metadata.csv line 2 ('{CLASSES[0]}')" in message and f"line {len(rows) + 2} ('normal')" in message


def test_paddy_image_id_with_two_labels_is_refused(paddy_root: Path):
    path = paddy_root / "train.csv"
    first = list(csv.DictReader(path.open()))[0]
    write_image(paddy_root / "train_images" / "normal" / first["image_id"], class_image(2, _rng()))
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerow([first["image_id"], "normal", "ADT45", 50])
    with pytest.raises(DataSourceError, match=r"different labels.*train.csv line 2 .*'normal'"):
        datamodule(PaddyDoctorSource, paddy_root)


def test_one_image_in_two_given_splits_is_refused(tmp_path: Path, rng):
    from conftest import write_metadata_layout

    root = write_metadata_layout(tmp_path / "m", rng, with_split=True)
    path = root / "metadata.csv"
    rows = list(csv.DictReader(path.open()))
    train_row = next(r for r in rows if r["split"] == "train")
    with path.open("a", newline="") as handle:
        csv.writer(handle).writerow([train_row["image_path"], train_row["label"], "test"])
    with pytest.raises(DataSourceError, match=r"different labels or splits.*train\).*test\)"):
        datamodule(MetadataCSVSource, root)


def test_dangling_symlink_is_a_missing_file(flat_imagefolder_root: Path):
    link = flat_imagefolder_root / CLASSES[1] / "gone.jpg"
    link.symlink_to(flat_imagefolder_root / "nowhere.jpg")
    with pytest.raises(DataValidationError, match=r"missing file: .*gone.jpg: file not found"):
        datamodule(ImageFolderSource, flat_imagefolder_root)


def test_csv_that_is_not_utf8_names_the_file_and_line(metadata_root: Path):
    path = metadata_root / "metadata.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3] + "é"
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataSourceError, match=r"metadata.csv: line 4 is not UTF-8 text \(byte 0xe9\)"):
        datamodule(MetadataCSVSource, metadata_root)


# ------------------------------------------------------------------------------------- checkpoints


class Payload:
    """Unpickling this runs ``touch <marker>``: what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def crafted_checkpoint(tmp_path: Path, run_dir: Path) -> tuple[Path, Path]:
    """A real run's checkpoint with a code-running object added; and the file its payload would create."""
    marker = tmp_path / "PAYLOAD_RAN"
    checkpoint = torch.load(resolve_checkpoint(run_dir), map_location="cpu", weights_only=True)
    checkpoint["extra"] = Payload(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(checkpoint, path)
    return path, marker


@pytest.mark.parametrize("command", ["evaluate", "predict", "export", "train"])
def test_crafted_checkpoint_is_refused_without_running(command: str, crafted_checkpoint, tmp_path: Path,
                                                        monkeypatch, capfd):
    path, marker = crafted_checkpoint
    argv = {"evaluate": [f"ckpt_path={path}", f"output_dir={tmp_path / 'eval'}"],
            "predict": [f"ckpt_path={path}", f"input={write_image(tmp_path / 'x.png', class_image(0, _rng()))}",
                        f"output={tmp_path / 'p.csv'}"],
            "export": [f"ckpt_path={path}", f"output_dir={tmp_path / 'export'}"],
            "train": ["data=synthetic", *TINY, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}"]}[command]
    code, output = run_cli(f"paddy.{command}", argv, monkeypatch, capfd)
    assert code == 2
    assert_one_line_error(output, "refused", "posix.system", "trust_checkpoint=true")
    assert not marker.exists()


def test_trust_option_reads_what_weights_only_refuses(run_dir: Path, tmp_path: Path):
    checkpoint = torch.load(resolve_checkpoint(run_dir), map_location="cpu", weights_only=True)
    checkpoint["note"] = fractions.Fraction(1, 3)  # harmless, but not a plain tensor/container
    path = tmp_path / "custom.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="refused.*fractions.Fraction"):
        read_checkpoint(path)
    assert read_checkpoint(path, trusted=True)["note"] == fractions.Fraction(1, 3)


def test_copied_run_directory_is_evaluated_itself(run_dir: Path, tmp_path: Path):
    copy = tmp_path / "copied-run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("eval_*"))
    original_eval = run_dir / "eval_test"
    before = sorted(original_eval.rglob("*")) if original_eval.exists() else None
    result = evaluate(copy, latency_runs=0, throughput_runs=0, num_workers=0)
    assert Path(result["checkpoint"]).parent == copy / "checkpoints"
    assert Path(result["output_dir"]) == copy / "eval_test" and (copy / "eval_test" / "metrics_test.json").is_file()
    assert (sorted(original_eval.rglob("*")) if original_eval.exists() else None) == before


# ------------------------------------------------------------------------------------- best epoch


def test_best_epoch_is_the_first_of_equal_values():
    history = {"epoch": [0, 1, 2, 3], "valid_acc": [0.5, 0.75, 0.75, 0.75], "valid_loss": [1.0, 0.6, 0.5, 0.4]}
    assert best_epoch_summary(history)["best_epoch"] == 1
    assert best_epoch_summary(history)["valid_loss"] == 0.6
    assert best_epoch_summary({"epoch": [0, 1, 2], "valid_loss": [0.3, 0.3, 0.4]}, "valid_loss", "min")[
        "best_epoch"] == 0


def test_metrics_name_the_epoch_of_the_best_checkpoint_under_ties(tmp_path: Path):
    from paddy.config import compose_config
    from paddy.pipeline import train

    # 4 validation images: accuracy can only be 0, .25, .5, .75 or 1, so epochs tie.
    cfg = compose_config(["data=synthetic", *TINY, "trainer.max_epochs=4", "data.valid_limit=4", "logger=none",
                          "callbacks.early_stopping=null", f"paths.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    best = max(history["valid_acc"])
    assert history["valid_acc"].count(best) > 1, f"no tie to test: {history['valid_acc']}"
    checkpoint_epoch = torch.load(metrics["ckpt_path"], map_location="cpu", weights_only=True)["epoch"]
    assert metrics["best_epoch"] == checkpoint_epoch == history["valid_acc"].index(best)
    assert metrics["valid_loss"] == history["valid_loss"][checkpoint_epoch]


# ------------------------------------------------------------------------------------- settings

BAD_SETTINGS = [
    ("data.batch_size=0", "data.batch_size=0: expected a positive integer"),
    ("data.batch_size=-1", "data.batch_size=-1: expected a positive integer"),
    ("data.batch_size=abc", "data.batch_size='abc': expected a positive integer"),
    ("data.image_size=0", "data.image_size=0: expected a positive integer up to 4096"),
    ("data.image_size=100000", "data.image_size=100000: expected a positive integer up to 4096"),
    ("optimizer.lr=-1", "optimizer.lr=-1: expected a number > 0"),
    ("data.val_fraction=1.5", "data.val_fraction=1.5: expected a number with 0 <= value < 1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0: expected a positive integer (or -1: no limit)"),
    ("data=imagefolder", "data.root is required"),
]


@pytest.mark.parametrize(("override", "message"), BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_bad_setting_is_one_line_and_exit_2_before_anything_runs(override: str, message: str, tmp_path: Path,
                                                                  monkeypatch, capfd):
    run = tmp_path / "run"
    code, output = run_cli("paddy.train", ["data=synthetic", *TINY, override, f"hydra.run.dir={run}"], monkeypatch,
                           capfd)
    assert code == 2
    assert_one_line_error(output, message)
    assert not run.exists()  # refused before Hydra made the run directory


def test_every_shipped_config_passes_the_settings_check():
    from paddy.config import compose_config, config_dir

    groups = {"data": ["data.root=/x"], "experiment": ["data.root=/x"], "model": [], "trainer": [],
              "optimizer": [], "hparams_search": []}
    for group, extra in groups.items():
        for option in sorted(p.stem for p in (config_dir() / group).glob("[!_]*.yaml")):  # _base: not an option
            cfg = compose_config([f"{group}={option}", *extra])
            check_settings(cfg)


def test_settings_check_names_key_value_and_what_is_allowed():
    from paddy.config import compose_config

    with pytest.raises(SettingError, match=r"^data.test_fraction='x': expected a number with 0 <= value < 1$"):
        check_settings(compose_config(["data.test_fraction=x"]))
    with pytest.raises(SettingError, match="leaves no training data"):
        check_settings(compose_config(["data.val_fraction=0.5", "data.test_fraction=0.5"]))


@pytest.mark.parametrize("bad", ["jpeg", "truncated", "other_classes", "other_model"])
def test_bad_resume_checkpoint_is_refused_before_training(bad: str, run_dir: Path, tmp_path: Path, monkeypatch,
                                                          capfd):
    good = resolve_checkpoint(run_dir)
    extra: list[str] = []
    if bad == "jpeg":
        path = write_image(tmp_path / "photo.jpg", class_image(0, _rng()))
        expected = "cannot read it as a PyTorch checkpoint"
    elif bad == "truncated":
        path = tmp_path / "cut.ckpt"
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        expected = "cannot read it as a PyTorch checkpoint"
    else:
        path = good
        extra = ["data.source.num_classes=3"] if bad == "other_classes" else ["attention=eca"]
        expected = "do not fit the network" if bad == "other_model" else "shape mismatches"
    run = tmp_path / "run"
    code, output = run_cli("paddy.train", ["data=synthetic", *TINY, *extra, f"ckpt_path={path}",
                                           f"hydra.run.dir={run}", "data.image_size=32"], monkeypatch, capfd)
    assert code == 2
    assert_one_line_error(output, expected)
    assert not (run / "history.json").exists()  # no epoch was trained


@pytest.mark.parametrize("where", ["run", "checkpoints"])
def test_unwritable_run_or_checkpoint_folder_is_refused_before_training(where: str, tmp_path: Path, monkeypatch,
                                                                        capfd):
    run = tmp_path / "run"
    folder = run if where == "run" else run / "checkpoints"
    with read_only(folder):
        code, output = run_cli("paddy.train", ["data=synthetic", *TINY, f"hydra.run.dir={run}"], monkeypatch, capfd)
    assert code == 2
    assert_one_line_error(output, f"{folder} is not writable")
    assert not (run / "history.json").exists()


def test_damaged_study_database_is_one_line(tmp_path: Path, monkeypatch, capfd):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "optuna.db").write_bytes(os.urandom(4096))
    code, output = run_cli("paddy.train", ["-m", "hparams_search=tpe", "data=synthetic", *TINY,
                                           f"hydra.sweep.dir={sweep}", "hparams_search.n_trials=1"], monkeypatch, capfd)
    assert code == 2
    line = assert_one_line_error(output, f"sqlite:///{sweep / 'optuna.db'}", "file is not a database")
    assert "SELECT" not in line and "sqlalche.me" not in line


def test_an_attention_knob_the_block_lacks_is_refused_before_anything_is_built():
    from paddy.config import compose_config

    with pytest.raises(ValueError,
                       match=r"attention 'ca' \(paddy.models.attention.CoordinateAttention\) has no knob 'heads' "
                             r"\(its knobs: reduction\)"):
        check_settings(compose_config(["attention=ca", "+attention.heads=4", "data.root=/nowhere"]))
    with pytest.raises(ValueError, match=r"cannot use _target_ 'os.system'.*PADDY_TRUSTED_TARGETS"):
        check_settings(compose_config(["attention=ca", "attention._target_=os.system", "data.root=/nowhere"]))
