"""Model presets extend conf/model/classifier.yaml and data configs extend conf/data/_base.yaml
through their ``defaults:`` lists: each states only what differs. These tests prove that what
``python -m paddy.train model=<preset>`` / ``data=<config>`` composes is unchanged, value for value,
against the snapshot tests/data/composed_configs.json.

``_target_`` / ``_partial_`` keys are left out of the comparison (they name classes, not settings).
After an intended change of a composed value, rewrite the snapshot and review its diff::

    .venv/bin/python tests/test_config_inheritance.py
"""

from __future__ import annotations

import difflib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from paddy.config import compose_config, config_dir  # noqa: E402

SNAPSHOT = Path(__file__).resolve().parent / "data" / "composed_configs.json"
IGNORED_KEYS = ("_target_", "_partial_")
# The parts of the composed config that a model preset sets (it is a `# @package _global_` file that
# overrides /backbone and /attention) and that a data config sets.
MODEL_PARTS = ("model", "backbone", "attention")
DATA_PARTS = ("data",)
# Group files that are bases for the others, not options to pick.
BASES = {"model": set(), "data": {"_base"}}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml") if p.stem not in BASES[group])


def strip(node: Any) -> Any:
    """``node`` without ``_target_`` / ``_partial_`` keys at any depth."""
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in IGNORED_KEYS}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def composed(override: str) -> dict[str, Any]:
    """The whole config that ``python -m paddy.train <override> --cfg job`` prints, unresolved."""
    return strip(OmegaConf.to_container(compose_config([override]), resolve=False))


def snapshot_entry(override: str) -> dict[str, Any]:
    group = override.split("=", 1)[0]
    cfg = composed(override)
    return {part: cfg[part] for part in (MODEL_PARTS if group == "model" else DATA_PARTS)}


def all_overrides() -> list[str]:
    return [f"model={name}" for name in options("model")] + [f"data={name}" for name in options("data")]


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, indent=1)


def write_snapshot() -> None:
    SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
    SNAPSHOT.write_text(dump({o: snapshot_entry(o) for o in all_overrides()}) + "\n")


def load_snapshot() -> dict[str, Any]:
    return json.loads(SNAPSHOT.read_text())


def test_snapshot_covers_every_preset_and_data_config():
    assert sorted(load_snapshot()) == sorted(all_overrides())


@pytest.mark.parametrize("override", all_overrides())
def test_composes_to_the_snapshot(override: str):
    expected = load_snapshot().get(override)
    assert expected is not None, f"{override} is not in {SNAPSHOT.name}: rewrite it (see this module's docstring)"
    actual = snapshot_entry(override)
    if actual != expected:
        diff = "\n".join(difflib.unified_diff(dump(expected).splitlines(), dump(actual).splitlines(),
                                              f"snapshot[{override!r}]", f"composed {override}", lineterm=""))
        pytest.fail(f"{override} composes differently from {SNAPSHOT.name}:\n{diff}")


@pytest.mark.parametrize("override", all_overrides())
def test_nothing_else_changes(override: str):
    """A preset touches only model/backbone/attention, a data config only data."""
    group = override.split("=", 1)[0]
    parts = MODEL_PARTS if group == "model" else DATA_PARTS
    default, actual = composed("model=classifier"), composed(override)
    assert {k: v for k, v in actual.items() if k not in parts} == {k: v for k, v in default.items() if k not in parts}


if __name__ == "__main__":
    write_snapshot()
    print(f"wrote {SNAPSHOT} ({len(all_overrides())} configs)")
