"""Fetch the default dataset: ``python -m paddy.data.download fashion_mnist [--dest data/fashion-mnist]``.

Order of attempts, first success wins:
1. already present in one of the places :class:`~paddy.data.sources.FashionMNISTSource` looks;
2. the Debian package ``dataset-fashion-mnist``: ``apt-get download`` + ``dpkg-deb -x`` (no root
   needed; as root with empty package lists, ``apt-get update`` is run once first);
3. the upstream download URLs (for machines with internet but without Debian's archive).
Every file is checked (IDX header and sizes) before it is put in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from paddy.data.errors import DataSourceError
from paddy.data.sources import FASHION_MNIST_FILES, fashion_mnist_search_path, find_idx_file, read_idx

log = logging.getLogger("paddy.download")

DEBIAN_PACKAGE = "dataset-fashion-mnist"
DEBIAN_PATH = Path("usr/share/datasets/fashion-mnist")
UPSTREAM_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
EXPECTED_COUNTS = {"train_images": 60000, "train_labels": 60000, "test_images": 10000, "test_labels": 10000}


def _complete(folder: Path) -> bool:
    return all(find_idx_file(folder, stem) for stem in FASHION_MNIST_FILES.values())


def _check_files(folder: Path) -> None:
    for key, stem in FASHION_MNIST_FILES.items():
        path = find_idx_file(folder, stem)
        if path is None:
            raise DataSourceError(f"{folder}: {stem}.gz missing")
        array = read_idx(path)
        if len(array) != EXPECTED_COUNTS[key]:
            raise DataSourceError(f"{path}: {len(array)} records, expected {EXPECTED_COUNTS[key]}")


def _from_debian(workdir: Path) -> Path:
    def download() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", DEBIAN_PACKAGE], cwd=workdir, capture_output=True, text=True)

    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("apt-get/dpkg-deb not available")
    result = download()
    if result.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        log.info("apt-get download failed (%s); running apt-get update once", result.stderr.strip()[-200:])
        subprocess.run(["apt-get", "update"], capture_output=True, text=True)
        result = download()
    if result.returncode != 0:
        raise RuntimeError(f"apt-get download {DEBIAN_PACKAGE} failed: {result.stderr.strip()[-300:]}")
    debs = sorted(workdir.glob(f"{DEBIAN_PACKAGE}_*.deb"))
    if not debs:
        raise RuntimeError("apt-get download produced no .deb")
    extracted = workdir / "extracted"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(extracted)], check=True, capture_output=True)
    return extracted / DEBIAN_PATH


def _from_upstream(workdir: Path) -> Path:
    folder = workdir / "upstream"
    folder.mkdir()
    for stem in FASHION_MNIST_FILES.values():
        url = f"{UPSTREAM_URL}{stem}.gz"
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=30) as response, open(folder / f"{stem}.gz", "wb") as out:
            shutil.copyfileobj(response, out)
    return folder


def fetch_fashion_mnist(dest: Path) -> Path:
    """Make Fashion-MNIST available; return the folder that holds it."""
    for folder in [dest, *fashion_mnist_search_path()]:
        if _complete(folder):
            _check_files(folder)
            log.info("Fashion-MNIST already present in %s", folder)
            return folder
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, method in (("Debian package", _from_debian), ("upstream download", _from_upstream)):
            workdir = Path(tmp) / name.replace(" ", "_")
            workdir.mkdir()
            try:
                found = method(workdir)
                _check_files(found)
            except Exception as err:  # try the next way; report all of them if none works
                errors.append(f"{name}: {err}")
                log.info("%s did not work: %s", name, err)
                continue
            dest.mkdir(parents=True, exist_ok=True)
            for stem in FASHION_MNIST_FILES.values():
                shutil.copy2(find_idx_file(found, stem), dest / find_idx_file(found, stem).name)
            log.info("Fashion-MNIST (%s) -> %s", name, dest)
            return dest
    raise DataSourceError("could not fetch Fashion-MNIST:\n  " + "\n  ".join(errors) +
                          "\nDownload the four .gz files from https://github.com/zalandoresearch/fashion-mnist "
                          f"into {dest} by hand.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=["fashion_mnist"])
    parser.add_argument("--dest", type=Path, default=Path("data/fashion-mnist"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folder = fetch_fashion_mnist(args.dest)
    except DataSourceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Fashion-MNIST ready in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
