"""Check every image of a dataset before training, and remember which files were already checked.

Verification decodes each file fully (see :func:`paddy.data.imageio.check_image_file`), in a thread
pool (OpenCV releases the GIL while decoding). Results are cached per file, keyed by the file's
absolute path, size and modification time, in a JSON file under ``cache_dir``; a 10k-image dataset
is therefore verified once, and afterwards only new or changed files are decoded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from paddy.data.errors import DataProblem
from paddy.data.imageio import check_and_decode
from paddy.utils.runtime import available_cores, file_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$PADDY_CACHE_DIR``, else ``~/.cache/paddy``."""
    return Path(os.environ.get("PADDY_CACHE_DIR", Path.home() / ".cache" / "paddy")).expanduser()


def _cache_file(cache_dir: Path, key: str) -> Path:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / "validation" / f"{digest}.json"


def _load_cache(path: Path) -> dict[str, list]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    if payload.get("version") != CACHE_VERSION:
        return {}
    return payload.get("files", {})


def _save_cache(path: Path, files: dict[str, list]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
            json.dump({"version": CACHE_VERSION, "files": files}, handle)
        os.replace(handle.name, path)
    except OSError as err:  # a read-only home must not stop training
        log.warning("could not write the validation cache %s (%s)", path, err)


def validate_image_files(files: list[str], items: list[str] | None = None, cache_dir: str | Path | None = None,
                         cache_key: str = "", workers: int | None = None,
                         on_image: Callable[[int, np.ndarray], None] | None = None,
                         min_side: int | None = None) -> list[DataProblem]:
    """Return one :class:`DataProblem` per missing or undecodable file (``items`` name them).

    With ``cache_dir`` set, files whose size and mtime match a previous good or bad verdict are not
    decoded again. ``on_image(i, pixels)`` receives every good file this call decodes (from the
    pool's threads), so a decoded-image cache can be filled by the same pass; ``min_side``: the
    shorter side it needs (JPEGs are then decoded scaled, checked as strictly, see
    :func:`paddy.data.imageio.decode_image`).
    """
    items = items if items is not None else files
    cache_path = _cache_file(Path(cache_dir), cache_key or files[0] if files else "") if cache_dir else None
    # Processes verifying the same dataset at once (DDP ranks, parallel trials) take turns: the first
    # decodes, the others find its verdicts stored.
    lock = file_lock(cache_path.with_suffix(".lock"), required=False) if cache_path else contextlib.nullcontext()
    with lock:
        return _validate(files, items, cache_path, workers, on_image, min_side)


def _validate(files: list[str], items: list[str], cache_path: Path | None, workers: int | None,
              on_image: Callable[[int, np.ndarray], None] | None, min_side: int | None = None) -> list[DataProblem]:
    cached = _load_cache(cache_path) if cache_path else {}
    verdicts: dict[str, list] = {}
    to_check: list[int] = []
    problems_at: dict[int, DataProblem] = {}
    for i, path in enumerate(files):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            problems_at[i] = DataProblem("missing_file", items[i], "file not found")
            continue
        except OSError as err:
            problems_at[i] = DataProblem("unreadable_image", items[i], f"cannot stat ({err.strerror})")
            continue
        key = os.path.abspath(path)
        entry = cached.get(key)
        if entry is not None and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            verdicts[key] = entry
            if entry[2] is not None:
                problems_at[i] = DataProblem("unreadable_image", items[i], entry[2])
        else:
            verdicts[key] = [stat.st_size, stat.st_mtime_ns, None]
            to_check.append(i)
    if to_check:
        if len(to_check) > 1000:
            log.info("verifying %d images (decoded once; cached for later runs)...", len(to_check))
        workers = workers or min(32, available_cores())

        def check(i: int) -> str | None:
            reason, image = check_and_decode(files[i], min_side)
            if image is not None and on_image is not None:
                on_image(i, image)
            return reason

        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(check, to_check, chunksize=64))
        for i, reason in zip(to_check, reasons):
            verdicts[os.path.abspath(files[i])][2] = reason
            if reason is not None:
                kind = "missing_file" if reason == "file not found" else "unreadable_image"
                problems_at[i] = DataProblem(kind, items[i], reason)
    if cache_path is not None and to_check:
        _save_cache(cache_path, {**cached, **verdicts})
    return [problems_at[i] for i in sorted(problems_at)]
