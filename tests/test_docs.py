"""The documentation stays true: every command in it composes, README stays short, the site builds.

- Every ``python -m paddy.train ...`` command in ``README.md`` and ``docs/*.md`` (fenced code blocks
  and inline code spans) is composed in-process with :func:`paddy.config.compose_config`, as ``--cfg job``
  would compose it (``-m``/``--multirun`` and the other flags of a Hydra app are dropped, environment
  variables before ``python`` are ignored, each value of a sweep such as ``optimizer.lr=1e-3,3e-4``
  is composed in turn). The ``paddy.evaluate``, ``paddy.predict`` and ``paddy.export`` commands are
  composed with their own configs, ``paddy.benchmark``'s arguments are parsed by its CLI and each
  model's config composed. A command that cannot be composed fails, unless it is in ``NOT_COMPOSED``.
- ``docs/extending.md``'s files (the code blocks whose first line is ``# ~/myproj/<path>``) are
  written to a temporary home; that page's commands compose against them (``hydra.searchpath``,
  ``attention=gc``, ``callbacks=mine``, ``data=mine``) and its Python examples are imported and run.
- ``README.md`` has at most ``README_MAX_LINES`` lines and its links to ``docs/`` resolve.
- ``mkdocs build --strict`` (every link and anchor check on, see ``mkdocs.yml``) succeeds.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_FILES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 260

# Commands that this test does not compose, each with the test that runs it instead. A key is a
# substring of the command (after `-m paddy.<entry>`); every key must match a command in the docs,
# so the list cannot go stale. Keep it empty where possible: a command here is one that docs may
# let rot unless the named test catches it.
NOT_COMPOSED: dict[str, str] = {
    # docs/development.md, "SLURM tests": `srun ... python -m paddy.train data=synthetic trainer=ddp_cpu ...`
    # abbreviates the test's own overrides ("..."); that test runs the full command under a real SLURM.
    "data=synthetic trainer=ddp_cpu ...": "tests/test_slurm.py::test_srun_two_tasks_train_one_ddp_run",
}

# The entry points whose commands are checked, and the config each composes (None: not Hydra).
ENTRY_CONFIGS = {"train": "train", "evaluate": "evaluate", "predict": "predict", "export": "export",
                 "explain": "explain", "benchmark": None}
ENTRY = re.compile(r"(?<![\w.-])-m\s+paddy\.(" + "|".join(ENTRY_CONFIGS) + r")(?=\s|$)")
FENCE = re.compile(r"^\s*(```+|~~~+)(.*)$")
# Flags of a Hydra app: dropped (with their value where they take one); any other flag is an error.
HYDRA_FLAGS = {"-m", "--multirun", "-h", "--help", "--hydra-help", "--resolve", "-r", "--run",
               "--experimental-rerun"}
HYDRA_FLAGS_WITH_VALUE = {"-c", "--cfg", "-p", "--package", "-i", "--info", "-sc", "--shell-completion"}
MYPROJ_FILE = re.compile(r"^# ~/myproj/(\S+)\s*$")


# ---------------------------------------------------------------------------------------------- extraction


def code_blocks(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number of the opening fence, lines)`` of every fenced code block of a Markdown file."""
    blocks: list[tuple[int, list[str]]] = []
    fence: str | None = None
    start, lines = 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        match = FENCE.match(line)
        if fence is None:
            if match:
                fence, start, lines = match.group(1), number, []
        elif match and match.group(1).startswith(fence) and not match.group(2).strip():
            blocks.append((start, lines))
            fence = None
        else:
            lines.append(line)
    return blocks


def logical_lines(lines: list[str], first: int) -> list[tuple[int, str]]:
    """Shell lines with backslash continuations joined, numbered from the block's first line."""
    out: list[tuple[int, str]] = []
    pending, at = "", 0
    for offset, line in enumerate(lines, start=1):
        if not pending:
            at = first + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append((at, pending + line))
        pending = ""
    if pending:
        out.append((at, pending))
    return out


def shell_words(text: str) -> list[str]:
    """The words of a shell command up to its end (``;``, ``&``, ``|``, a redirection, ``#``)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = []
    for word in lexer:
        if set(word) <= set("();<>|&"):
            break
        words.append(word)
    return words


def inline_code(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every inline code span outside the fenced blocks (a span may wrap)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for first, block in code_blocks(path):
        for i in range(first - 1, first + len(block) + 1):
            lines[i] = ""
    text = "\n".join(lines)
    return [(text.count("\n", 0, m.start()) + 1, " ".join(m.group(2).split()))
            for m in re.finditer(r"(`+)(.+?)\1", text, flags=re.DOTALL)]


def doc_commands() -> list[tuple[str, str, str]]:
    """``(where, entry, arguments)`` of every ``-m paddy.<entry>`` command in the docs: in code blocks
    (continuation lines joined, comment lines skipped) and in inline code spans."""
    found = []
    for path in DOC_FILES:
        spans = [line for first, lines in code_blocks(path) for line in logical_lines(lines, first)]
        for number, line in spans + inline_code(path):
            match = ENTRY.search(line)
            if match and not line.lstrip().startswith("#"):
                where = f"{path.relative_to(ROOT)}:{number}"
                found.append((where, match.group(1), line[match.end():].strip()))
    return sorted(set(found), key=lambda c: (c[0].split(":")[0], int(c[0].split(":")[1]), c[2]))


COMMANDS = doc_commands()


def myproj_files() -> dict[str, str]:
    """``docs/extending.md``'s files: path under ``~/myproj`` -> text."""
    files = {}
    for _, lines in code_blocks(ROOT / "docs" / "extending.md"):
        match = MYPROJ_FILE.match(lines[0]) if lines else None
        if match:
            files[match.group(1)] = "\n".join(lines) + "\n"
    return files


@pytest.fixture(scope="module")
def fake_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home directory holding ``~/myproj`` as ``docs/extending.md`` describes it."""
    home = tmp_path_factory.mktemp("home")
    files = myproj_files()
    assert files, "docs/extending.md: no code block starts with '# ~/myproj/<path>'"
    for relative, text in files.items():
        target = home / "myproj" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (home / "myproj" / "mypkg" / "__init__.py").touch()
    return home


def hydra_overrides(words: list[str], where: str) -> list[str]:
    overrides, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in HYDRA_FLAGS:
            pass
        elif word in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif word.startswith("-") and not word.startswith("--cfg="):
            raise AssertionError(f"{where}: flag {word!r} is not one this test knows how to compose")
        elif not word.startswith("--cfg="):
            overrides.append(word)
    return overrides


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each sweep (the other sweeps at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices: list[list[str]] = []
    for text, override in zip(overrides, parsed):
        if override.is_sweep_override():
            assert not override.is_interval_sweep(), f"an interval sweep cannot be composed: {text}"
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([text])
    variants = [[options[0] for options in choices]]
    for i, options in enumerate(choices):
        for value in options[1:]:
            variants.append([value if j == i else other[0] for j, other in enumerate(choices)])
    return variants


# ---------------------------------------------------------------------------------------------- tests


def test_docs_have_commands() -> None:
    entries = {entry for _, entry, _ in COMMANDS}
    assert len(COMMANDS) >= 40 and entries == set(ENTRY_CONFIGS), (len(COMMANDS), entries)


def test_allow_list_is_current() -> None:
    for key, test in NOT_COMPOSED.items():
        assert any(key in arguments for _, _, arguments in COMMANDS), f"NOT_COMPOSED[{key!r}] matches no command"
        name = test.split("::")[0]
        assert (ROOT / name).is_file(), f"NOT_COMPOSED[{key!r}] names {test}, which does not exist"


COMPOSED = [c for c in COMMANDS if not any(key in c[2] for key in NOT_COMPOSED)]  # the rest: run by the named tests


@pytest.mark.parametrize(("where", "entry", "arguments"), COMPOSED, ids=[c[0] for c in COMPOSED])
def test_command_composes(where: str, entry: str, arguments: str, fake_home: Path) -> None:
    from paddy.config import compose_config

    home = str(fake_home)
    words = [re.sub(r"^~(?=/)", home, w).replace("${HOME}", home).replace("$HOME", home)
             for w in shell_words(arguments)]
    if entry == "benchmark":
        from paddy.benchmark.common import compose_named, parse_cli

        mode, options, overrides = parse_cli([w for w in words if w != "--help"])
        for name in (options.get("model") or "").split(","):
            if name:
                compose_named(name, overrides)
        return
    overrides = hydra_overrides(words, where)
    for variant in expand_sweeps(overrides):
        try:
            compose_config(variant, config_name=ENTRY_CONFIGS[entry])
        except Exception as err:
            raise AssertionError(f"{where}: python -m paddy.{entry} {' '.join(variant)}: {err}") from err


def test_readme_is_short_and_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    lines = text.count("\n") + (not text.endswith("\n"))
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://|mailto:|#", link)]
    assert any(link.startswith("docs/") for link in local), "README.md links to no docs page"
    for link in local:
        assert (ROOT / link.split("#")[0]).exists(), f"README.md links to {link}, which does not exist"


def test_extending_examples_run(fake_home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The Python of docs/extending.md: the block keeps the shape, the callback logs, the layout indexes."""
    import inspect

    import cv2
    import lightning as L
    import numpy as np
    import torch

    from paddy.data import ImageSource

    sys.path.insert(0, str(fake_home / "myproj"))
    try:
        gc = importlib.import_module("mypkg.gc")
        cb = importlib.import_module("mypkg.cb")
        layout = importlib.import_module("mypkg.layout")

        block = gc.GlobalContext(64)
        assert list(inspect.signature(gc.GlobalContext).parameters) == ["channels", "reduction"]
        x = torch.randn(2, 64, 7, 5)
        assert block(x).shape == x.shape
        assert block(x.contiguous(memory_format=torch.channels_last)).shape == x.shape

        callback = cb.MyCallback(every_n_epochs=2)
        assert isinstance(callback, L.Callback)
        trainer = types.SimpleNamespace(sanity_checking=False, is_global_zero=True, current_epoch=2,
                                        callback_metrics={"val/acc": torch.tensor(0.75)})
        with caplog.at_level(logging.INFO, logger="mypkg.cb"):
            callback.on_validation_epoch_end(trainer, None)
        assert "val/acc 0.7500" in caplog.text

        root = tmp_path / "mine"
        for i, label in enumerate(["leaf", "leaf", "rice", "rice"]):
            (root / label).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / label / f"{i}.png"), np.full((8, 8, 3), 40 * i, np.uint8))
        (root / "labels.txt").write_text("leaf/0.png leaf\nleaf/1.png leaf\n\nrice/2.png rice\nrice/3.png rice\n")
        assert issubclass(layout.MyLayout, ImageSource)
        index = layout.MyLayout(root).load()
        assert index.classes == ["leaf", "rice"] and list(index.labels) == [0, 0, 1, 1] and len(index) == 4
    finally:
        sys.path.remove(str(fake_home / "myproj"))
        for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
            del sys.modules[name]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or shutil.which("mkdocs")
    if mkdocs is None:
        pytest.skip("mkdocs is not installed (it is in the dev extras: make install)")
    result = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
