"""Extending paddy from outside the checkout, with no edit of paddy: a user's attention block, data
layout and callback in their own package, selected by YAML in their own config folder
(``hydra.searchpath``) and trusted with ``PADDY_TRUSTED_TARGETS``; the block trains in the head and in
every block, and a sweep searches its knob.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TINY

optuna = pytest.importorskip("optuna")

GC_BLOCK = '''
import torch
from torch import nn


class GlobalContext(nn.Module):
    """Global context block (Cao et al., GCNet 2019): attention-pooled context, a bottleneck, added back."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.context = nn.Conv2d(channels, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.LayerNorm([hidden, 1, 1]), nn.ReLU(),
                                       nn.Conv2d(hidden, channels, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        weights = self.context(x).view(b, 1, h * w).softmax(-1)
        pooled = torch.bmm(x.view(b, c, h * w), weights.transpose(1, 2)).view(b, c, 1, 1)
        return x + self.transform(pooled)
'''

LAYOUT = '''
from paddy.data import ImageSource, Sample


class FlatLayout(ImageSource):
    """All images in one folder, the class in the file name: <root>/<class>__<anything>.png"""

    name = "flat"

    def load(self):
        root = self.require_root()
        files = sorted(root.glob("*.png"))
        classes = sorted({f.name.split("__")[0] for f in files})
        samples = [Sample(f.name, classes.index(f.name.split("__")[0]), f.name) for f in files]
        return self.index_files(classes, samples)
'''

CALLBACK = '''
from pathlib import Path

from lightning import Callback


class EpochMarks(Callback):
    """Writes one line per finished training epoch to <output_dir>/marks.txt."""

    def __init__(self, output_dir: str):
        self.path = Path(output_dir) / "marks.txt"

    def on_train_epoch_end(self, trainer, pl_module):
        with self.path.open("a") as out:
            out.write(f"epoch {trainer.current_epoch}\\n")
'''


@pytest.fixture(scope="module")
def myproj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~/myproj: a package ``mypkg`` and a config folder, outside paddy's checkout."""
    root = tmp_path_factory.mktemp("myproj")
    package = root / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "gc.py").write_text(GC_BLOCK)
    (package / "layout.py").write_text(LAYOUT)
    (package / "marks.py").write_text(CALLBACK)
    (root / "conf" / "attention").mkdir(parents=True)
    (root / "conf" / "attention" / "gc.yaml").write_text(textwrap.dedent("""\
        _target_: mypkg.gc.GlobalContext   # a module class: channels first, then its knobs
        name: gc
        placement: head
        reduction: 4
        """))
    (root / "conf" / "callbacks").mkdir()
    (root / "conf" / "callbacks" / "marks.yaml").write_text(textwrap.dedent("""\
        defaults:
          - default
        marks:
          _target_: mypkg.marks.EpochMarks
          output_dir: ${paths.output_dir}
        """))
    return root


def paddy_train(myproj: Path, cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(myproj), "PADDY_TRUSTED_TARGETS": "mypkg.*"}
    command = [sys.executable, "-m", "paddy.train", *TINY, "test=false", "logger=none",
               f"hydra.searchpath=[file://{myproj / 'conf'}]", *overrides]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def flat_images(folder: Path) -> Path:
    """24 PNGs in one folder, named <class>__<n>.png (FlatLayout's layout)."""
    import cv2
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        label = ("healthy", "blast")[i % 2]
        cv2.imwrite(str(folder / f"{label}__{i:03d}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return folder


def test_a_block_and_a_callback_of_your_own(myproj: Path, tmp_path: Path):
    """attention=gc on the final feature map; callbacks=marks adds the user's callback to paddy's."""
    run = tmp_path / "run"
    paddy_train(myproj, tmp_path, "data=synthetic", "attention=gc", f"hydra.run.dir={run}", "trainer.max_epochs=1",
                "callbacks=marks")
    assert [k for k in weights(run) if k.endswith("context.weight")] == ["model.attention.context.weight"]
    assert (run / "marks.txt").read_text() == "epoch 0\n"  # the callback of mypkg ran
    assert (run / "checkpoints" / "last.ckpt").is_file()  # and paddy's own callbacks too


def test_a_block_in_every_block_on_a_data_layout_of_your_own(myproj: Path, tmp_path: Path):
    """attention.placement=blocks puts the user's block in every residual block; data.source._target_
    reads images in the user's layout (a subclass of paddy.data.ImageSource)."""
    run = tmp_path / "run"
    images = flat_images(tmp_path / "flat")
    paddy_train(myproj, tmp_path, "attention=gc", "attention.placement=blocks", "data=imagefolder",
                f"data.root={images}", "data.source._target_=mypkg.layout.FlatLayout", "data.cache=none",
                f"hydra.run.dir={run}", "trainer.max_epochs=1")
    keys = [k for k in weights(run) if k.endswith("context.weight")]
    assert len(keys) == 4 and all(k.startswith("model.backbone.layer") for k in keys), keys  # test_resnet: 4 blocks
    assert "data=flat: 2 classes" in (run / "train.log").read_text()  # the layout named in the data summary
    assert json.loads((run / "metrics.json").read_text())["num_classes"] == 2
    assert weights(run)["model.head.mlp.1.weight"].shape[0] == 2


def test_a_sweep_searches_the_knob_of_your_block(myproj: Path, tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = paddy_train(myproj, tmp_path, "-m", "data=synthetic", "hparams_search=tpe", "attention=gc",
                         "hparams_search.n_trials=2",
                         f"hydra.sweep.dir={sweep}", "trainer.max_epochs=1")
    assert "attention 'gc' has no knob 'kernel_size': dropped from the search space" in result.stdout + result.stderr
    trials = optuna.load_study(study_name="tpe", storage=f"sqlite:///{sweep / 'optuna.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert all("attention.reduction" in t.params and "attention.kernel_size" not in t.params for t in trials)
    for trial in trials:
        config = (sweep / str(trial.number) / ".hydra" / "config.yaml").read_text()
        assert f"reduction: {trial.params['attention.reduction']}" in config and "mypkg.gc.GlobalContext" in config
