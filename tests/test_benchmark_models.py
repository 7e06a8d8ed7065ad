"""``python -m paddy.benchmark``: the model comparison and the BoT vs BoT-linear scaling tables, on tiny sizes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import paddy
from paddy.benchmark.__main__ import main
from paddy.benchmark.common import MODE_OPTIONS, BenchmarkError, markdown_table, parse_cli
from paddy.models.factory import count_parameters

REPO = Path(paddy.__file__).resolve().parents[1]
TINY = ["batch_size=2", "steps=1", "warmup=0", "device=cpu"]
MODEL_KEYS = ("params_m", "gflops", "size_mb", "infer_img_s", "train_img_s", "activation_mb")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paddy.benchmark", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def read_results(stem: Path) -> tuple[str, list[dict[str, str]], dict]:
    for suffix in (".md", ".csv", ".json"):
        assert stem.with_name(stem.name + suffix).is_file(), suffix
    with stem.with_name(stem.name + ".csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    payload = json.loads(stem.with_name(stem.name + ".json").read_text())
    return stem.with_name(stem.name + ".md").read_text(), rows, payload


def test_models_mode_writes_the_three_files_with_measured_numbers(tmp_path: Path):
    out = tmp_path / "m"
    result = run_cli("model=resnet18_base,mnv3s_ca", "image_size=32", *TINY, f"out={out}")
    assert result.returncode == 0, result.stderr
    md, rows, payload = read_results(out)
    assert [row["model"] for row in rows] == ["resnet18_base", "mnv3s_ca"]
    assert {row["device"] for row in rows} == {"cpu"}
    for header in ("params (M)", "GFLOPs", "size (MB)", "inference img/s", "training img/s", "activations (MB)"):
        assert header in md and header in result.stdout
    for row in rows:
        for key in MODEL_KEYS:
            assert float(row[key]) > 0, (row["model"], key, row[key])
    json_rows = {row["model"]: row for row in payload["rows"]}
    for name in ("resnet18_base", "mnv3s_ca"):
        expected = count_parameters(paddy.create_model(name, num_classes=10))
        assert json_rows[name]["params"] == expected
        assert int(next(r for r in rows if r["model"] == name)["params"]) == expected
        assert json_rows[name]["params_m"] == pytest.approx(expected / 1e6, rel=1e-4)
        assert len(json_rows[name]["train_step_s"]) == 1 and json_rows[name]["train_step_s"][0] > 0
    assert json_rows["mnv3s_ca"]["attention"] == "ca" and json_rows["resnet18_base"]["attention"] == "none"
    # The smaller network is the smaller one in every static column.
    assert json_rows["mnv3s_ca"]["params"] < json_rows["resnet18_base"]["params"]
    assert json_rows["mnv3s_ca"]["gflops"] < json_rows["resnet18_base"]["gflops"]
    env = payload["environment"]
    assert env["cpu_usable"] >= 1 and env["torch"] and env["timm"]
    assert payload["settings"]["image_size"] == "32" and payload["settings"]["batch_size"] == "2"


def test_scaling_mode_measures_both_blocks_per_size_and_their_ratios(tmp_path: Path, capsys):
    # 64 and 96 px: MobileNetV3's 2x2 and 3x3 feature maps (BoT refuses the 1x1 map of 32 px inputs).
    # In-process (the subprocess path is the test above): main() is what `python -m` runs after argv.
    out = tmp_path / "s"
    assert main(["mode=scaling", "sizes=64,96", *TINY, f"out={out}"]) == 0
    stdout = capsys.readouterr().out
    _, rows, payload = read_results(out)
    assert {(row["image_size"], row["model"]) for row in rows} == {
        (size, model) for size in ("64", "96") for model in ("mnv3s_bot", "mnv3s_botlinear")}
    assert {row["feature_map"] for row in rows} == {"576x2x2", "576x3x3"}
    for row in rows:
        for key in ("infer_img_s", "train_img_s", "activation_mb", "block_activation_mb", "block_train_ms",
                    "block_infer_ms"):
            assert float(row[key]) > 0, (row["model"], key)
    assert {row["attention"] for row in payload["rows"]} == {"bot", "bot_linear"}
    _, ratios, ratio_payload = read_results(tmp_path / "s_ratios")
    assert [(r["image_size"], r["compared"]) for r in ratios] == [
        ("64", "mnv3s_botlinear vs mnv3s_bot"), ("96", "mnv3s_botlinear vs mnv3s_bot")]
    by_key = {(r["model"], r["image_size"]): r for r in payload["rows"]}
    for ratio in ratio_payload["rows"]:
        bot, linear = by_key[("mnv3s_bot", ratio["image_size"])], by_key[("mnv3s_botlinear", ratio["image_size"])]
        assert ratio["activation_change_pct"] == pytest.approx(
            100 * (linear["activation_mb"] / bot["activation_mb"] - 1), rel=1e-3, abs=1e-3)
        assert ratio["train_speed_change_pct"] == pytest.approx(
            100 * (linear["train_img_s"] / bot["train_img_s"] - 1), rel=1e-3, abs=1e-3)
    assert "Δ activations (%)" in stdout and "old notes" in stdout


def test_unknown_model_is_one_line_and_exit_2():
    result = run_cli("model=mnv3s_ca,no_such_model", *TINY, "image_size=32")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_model" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["model=mnv3s_ca", "batch_size=zero"], "batch_size"),
    (["model=mnv3s_ca", "sizes=64"], "mode=scaling"),
    (["model=mnv3s_ca", "no_such_key=1"], "no_such_key"),
    (["mode=fastest"], "mode="),
    (["model=mnv3s_ca", "image_size"], "key=value"),
    (["model=mnv3s_ca", "precision=8"], "precision"),
])
def test_bad_arguments_exit_2_with_one_line(capsys, args: list[str], needle: str):
    assert main([*args, "device=cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_asking_for_cuda_without_one_is_a_clear_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["model=mnv3s_ca", "device=cuda"]) == 2
    assert "no CUDA" in capsys.readouterr().err


def test_extra_hydra_overrides_reach_the_model(tmp_path: Path, capsys):
    params = {}
    for reduction in (4, 32):
        out = tmp_path / f"r{reduction}"
        assert main(["model=mnv3s_ca", "image_size=32", *TINY, f"attention.reduction={reduction}", f"out={out}"]) == 0
        payload = json.loads(out.with_suffix(".json").read_text())
        assert payload["settings"]["overrides"] == [f"attention.reduction={reduction}"]
        params[reduction] = payload["rows"][0]["params"]
        assert params[reduction] == count_parameters(paddy.create_model("mnv3s_ca", num_classes=10,
                                                                        reduction=reduction))
    assert params[4] > params[32]
    capsys.readouterr()


def test_parse_cli_splits_options_from_overrides():
    mode, options, overrides = parse_cli(["model=a,b", "attention.reduction=16", "+x.y=1", "~z", "batch_size=4"])
    assert mode == "models" and options["model"] == "a,b" and options["batch_size"] == "4"
    assert options["image_size"] == MODE_OPTIONS["models"]["image_size"]  # defaults filled in
    assert overrides == ["attention.reduction=16", "+x.y=1", "~z"]
    mode, options, _ = parse_cli(["mode=scaling"])
    assert mode == "scaling" and options["sizes"] == "224,320,384,512"
    assert options["model"] == "mnv3s_bot,mnv3s_botlinear"
    mode, options, overrides = parse_cli(["mode=throughput", "epochs=2", "backbone.drop_path_rate=0.1"])
    assert mode == "throughput" and options["epochs"] == "2" and overrides == ["backbone.drop_path_rate=0.1"]
    with pytest.raises(BenchmarkError):
        parse_cli(["model="])


def test_throughput_mode_reports_a_missing_module_cleanly(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "paddy.benchmark.throughput", None)  # any import of it fails
    assert main(["mode=throughput", "model=mnv3s_ca"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "throughput" in err[0]


def test_markdown_table_formats_and_blanks():
    table = markdown_table([{"a": 1.23456, "b": None, "c": "x|y"}], {"a": "A", "b": "B", "c": "C"}, {"a": ".1f"})
    assert table.splitlines() == ["| A | B | C |", "|---|---|---|", "| 1.2 |  | x\\|y |"]


def test_ratios_put_the_old_claim_next_to_linear_vs_bot_at_224():
    from paddy.benchmark.models import claim_check, ratio_rows

    def row(model: str, attention: str, size: int, memory: float, speed: float) -> dict:
        return {"model": model, "attention": attention, "device": "cpu", "image_size": size, "activation_mb": memory,
                "train_img_s": speed, "infer_img_s": 2 * speed, "block_activation_mb": memory / 10,
                "block_train_ms": 100 / speed}

    rows = [row("b", "bot", 224, 100.0, 10.0), row("l", "bot_linear", 224, 65.0, 10.6),
            row("b", "bot", 512, 400.0, 2.0), row("l", "bot_linear", 512, 200.0, 3.0)]
    ratios = ratio_rows(rows, "b")
    assert [(r["image_size"], r["compared"]) for r in ratios] == [(224, "l vs b"), (512, "l vs b")]
    assert ratios[0]["activation_change_pct"] == pytest.approx(-35.0)
    assert ratios[0]["train_speed_change_pct"] == pytest.approx(6.0)
    assert ratios[0]["block_train_speed_change_pct"] == pytest.approx(6.0)
    assert ratios[1]["infer_speed_change_pct"] == pytest.approx(50.0)
    assert ratios[0]["old_claim"] and not ratios[1]["old_claim"]
    (line,) = claim_check(ratios)
    assert "-35% memory, +6% speed" in line and "activations -35.0%" in line and "training speed +6.0%" in line
    # Two models that are not linear attention vs BoT get no claim.
    other = ratio_rows([row("x", "ca", 224, 1.0, 1.0), row("y", "eca", 224, 1.0, 1.0)], "x")
    assert other[0]["old_claim"] == "" and claim_check(other) == []
