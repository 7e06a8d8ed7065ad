"""A decoded-image cache: every image decoded and shrunk once, then read back as raw ``uint8`` pixels.

Decoding a 640x480 JPEG and resizing it costs milliseconds of CPU per image and epoch; copying the
same image out of a memory-mapped file costs microseconds. The cache stores each image as ``H x W x 3``
``uint8`` RGB with its shorter side shrunk to ``short_side`` (aspect ratio kept; smaller images are
stored as they are, never enlarged), one image after the other in ``pixels.u8``, with the offset,
shape and CRC-32 of each in ``index.npz``. Readers check each image's CRC the first time they read it
in a process and repair a damaged entry from its file (see :class:`CachedReader`). zlib's CRC-32 is the
fastest checksum the standard library has (about 6 GB/s, 40 us for a 256 x 341 image on one core; blake2b
and sha1 take 3-5 times as long): the first, checking pass over a warm cache still reads more than 20
times as many images per core as timm's PIL loader decodes (``benchmarks/cache_check.py``).

The cache is keyed by the dataset's content and the size: the SHA-1 of every file's absolute path,
byte size and modification time (in dataset order) plus ``short_side``. A changed, added or removed
file gives another key, so a stale cache is never read; the superseded cache of the same dataset
is deleted when its replacement is complete. A build that was killed keeps what it stored (the index
is saved every few hundred images) and the next run continues from there.

The pixels are those training would see anyway, minus resolution: ``short_side`` defaults to
``ceil(image_size / 0.875)`` (256 for 224 px), a little above the training size, so random-resized
crops and the eval resize + centre crop work on the same picture at slightly less detail than the
original file. With ``scaled_decode`` (the default) a JPEG is decoded at 1/2, 1/4 or 1/8 of its size
where that still gives at least ``short_side`` (:func:`paddy.data.imageio.jpeg_reduction`), then shrunk
the same way: a 4000x3000 photo is stored several times faster, with pixels about 1 in 255 away from a
full decode (the setting is part of the key, so the two kinds of pixels never share a cache).

Concurrency: processes that open the same cache (DDP ranks, parallel sweep trials) fill it one at a
time (:meth:`DecodedImageCache.exclusive`, a lock file); the later ones find it complete.
:meth:`DecodedImageCache.store` may be called from many threads (the verification
pass decodes every file anyway and hands its pixels over, so a cold cache costs no extra decode);
readers are plain picklable objects that open the memory map lazily in each loader worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from paddy.data.imageio import ImageDecodeError, read_image
from paddy.utils.runtime import available_cores, file_lock

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: per-image CRC-32 checksums in index.npz
EVAL_CROP_RATIO = 0.875  # the usual "resize to 256, crop 224" ratio
CACHE_MODES = ("auto", "memmap", "none")
_SAVE_EVERY = 512


def default_short_side(image_size: int) -> int:
    """The cached images' shorter side for training at ``image_size`` px."""
    return int(math.ceil(image_size / EVAL_CROP_RATIO))


def parse_cache_mode(value: object) -> str:
    """``data.cache`` as one of :data:`CACHE_MODES` (``true``/``false`` are ``memmap``/``none``)."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "memmap"
    text = str(value).lower()
    if text in ("true", "on", "yes"):
        return "memmap"
    if text in ("false", "off", "no", "null"):
        return "none"
    if text not in CACHE_MODES:
        raise ValueError(f"data.cache={value!r} (expected one of: {', '.join(CACHE_MODES)})")
    return text


def shrink(image: np.ndarray, short_side: int) -> np.ndarray:
    """``image`` with its shorter side reduced to ``short_side`` (area interpolation); never enlarged."""
    h, w = image.shape[:2]
    if min(h, w) <= short_side:
        return np.ascontiguousarray(image)
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def decode_shrunk(path: str | Path, short_side: int, scaled_decode: bool = True) -> np.ndarray:
    """File ``path`` as a cache entry: decoded (scaled, where it is a JPEG and ``scaled_decode``) and shrunk."""
    return shrink(read_image(path, short_side if scaled_decode else None), short_side)


def content_key(files: Sequence[str], short_side: int, scaled_decode: bool = False) -> str:
    """The cache key: every file's absolute path, size and mtime, in order, ``short_side`` and whether
    JPEGs were decoded scaled (``False`` keeps the keys of caches built before scaled decoding)."""
    digest = hashlib.sha1(f"v{CACHE_VERSION}:{short_side}:{len(files)}{':scaled' if scaled_decode else ''}".encode())
    for path in files:
        try:
            stat = os.stat(path)
            digest.update(f"\n{os.path.abspath(path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\n{os.path.abspath(path)}\0missing".encode())
    return digest.hexdigest()


def estimated_bytes(files: Sequence[str], short_side: int, probe: int = 8) -> int:
    """A size estimate of the cache for ``files`` from the first few images' aspect ratios."""
    ratios = []
    for path in files[:probe]:
        try:
            h, w = read_image(path, min_side=1).shape[:2]  # the smallest decode has the same aspect ratio
        except ImageDecodeError:
            continue
        ratios.append(max(h, w) / max(1, min(h, w)))
    ratio = max(ratios) if ratios else 1.5
    return int(len(files) * short_side * short_side * ratio * 3)


class CachedReader:
    """Reads sample ``i`` of a complete cache (picklable; the memory map opens on first use).

    The first read of each image in a process checks its CRC-32 against the one :meth:`DecodedImageCache.store`
    saved: a disk or a stray write can change the pixels without changing the file's size, and training
    would then run on noise without a word. A mismatching image is decoded again from its file (the pixels
    the clean cache holds, bit for bit), written back over the damaged entry, and returned.
    """

    def __init__(self, directory: str | Path, slots: np.ndarray, offsets: np.ndarray, shapes: np.ndarray,
                 checksums: np.ndarray, files: Sequence[str], short_side: int, scaled_decode: bool = False):
        self.directory = str(directory)
        self.slots = np.asarray(slots, dtype=np.int64)
        self.offsets, self.shapes, self.checksums = offsets, shapes, checksums
        self.files, self.short_side, self.scaled_decode = files, int(short_side), bool(scaled_decode)
        self._pixels: np.memmap | None = None
        self._verified: np.ndarray | None = None  # per cache slot: checked in process self._pid
        self._pid = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None, "_verified": None, "_pid": 0}

    def __call__(self, i: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(Path(self.directory) / "pixels.u8", dtype=np.uint8, mode="r")
        if self._pid != os.getpid():  # a forked loader worker inherits the parent's bitmap but checks anew
            self._verified, self._pid = np.zeros(len(self.offsets), dtype=bool), os.getpid()
        slot = int(self.slots[i])
        h, w = (int(v) for v in self.shapes[slot])
        start = int(self.offsets[slot])
        image = np.array(self._pixels[start:start + h * w * 3]).reshape(h, w, 3)
        if self._verified[slot]:
            return image
        if zlib.crc32(image) == int(self.checksums[slot]):
            self._verified[slot] = True
            return image
        image, repaired = self._repair(slot, image.shape)
        # An entry that could not be rewritten stays unverified: the next read decodes the file again.
        self._verified[slot] = repaired
        return image

    def _repair(self, slot: int, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
        """Image ``slot`` decoded again exactly as :meth:`DecodedImageCache.store` did, and whether it was
        written back over the damaged entry (only where the shape is the same; best effort, so a read-only
        cache still trains on the right pixels)."""
        path = self.files[slot]
        try:
            image = np.ascontiguousarray(decode_shrunk(path, self.short_side, self.scaled_decode))
        except ImageDecodeError as err:
            raise ImageDecodeError(f"decoded-image cache {self.directory}: image {path} did not match its "
                                   f"checksum (corrupted on disk?) and its file cannot be decoded: {err}") from err
        if image.shape != shape:
            written, outcome = False, f"did not write it back (the file now decodes to {image.shape[1]}x" \
                                      f"{image.shape[0]} px)"
        else:
            error = _write_at(Path(self.directory) / "pixels.u8", int(self.offsets[slot]), image)
            written = error is None
            outcome = "repaired the cache entry" if written else f"could not write it back ({error})"
        if zlib.crc32(image) != int(self.checksums[slot]):
            outcome += "; the file's pixels differ from those cached too (was the file or the decoder changed?)"
        _report_mismatch(self.directory, path, outcome)
        return image, written

    def subset(self, indices: np.ndarray) -> CachedReader:
        return CachedReader(self.directory, self.slots[np.asarray(indices, dtype=np.int64)], self.offsets,
                            self.shapes, self.checksums, self.files, self.short_side, self.scaled_decode)


def _write_at(file: Path, offset: int, image: np.ndarray) -> str | None:
    """Overwrite ``image``'s bytes at ``offset`` in ``file``; None, or why it could not (e.g. read-only)."""
    data = memoryview(image).cast("B")
    try:
        fd = os.open(file, os.O_WRONLY)
        try:
            while data:
                data = data[os.pwrite(fd, data, offset + image.nbytes - len(data)):]
        finally:
            os.close(fd)
    except OSError as err:
        return err.strerror or str(err)
    return None


_mismatches = {"pid": 0, "count": 0}


def _report_mismatch(directory: str, path: str, outcome: str) -> None:
    """One warning per process (a damaged cache is usually damaged in many places); the rest at debug level."""
    if _mismatches["pid"] != os.getpid():
        _mismatches.update(pid=os.getpid(), count=0)
    _mismatches["count"] += 1
    if _mismatches["count"] == 1:
        log.warning("decoded-image cache %s: image %s did not match its checksum (corrupted on disk?); re-decoded "
                    "it from the file and %s. Further mismatches in this process are logged at debug level.",
                    directory, path, outcome)
    else:
        log.debug("decoded-image cache %s: image %s did not match its checksum (mismatch %d in this process); "
                  "re-decoded it and %s", directory, path, _mismatches["count"], outcome)


class DecodedImageCache:
    """The cache of one dataset (``files``) at one ``short_side``, under ``root/images/<key>/``;
    ``scaled_decode``: JPEGs are decoded only as big as ``short_side`` needs (see the module docstring)."""

    def __init__(self, root: str | Path, files: Sequence[str], short_side: int, dataset_id: str = "",
                 scaled_decode: bool = True):
        self.files = list(files)
        self.short_side = int(short_side)
        self.scaled_decode = bool(scaled_decode)
        self.key = content_key(self.files, self.short_side, self.scaled_decode)
        self.root = Path(root).expanduser() / "images"
        self.directory = self.root / self.key[:20]
        # Which cache this dataset (by its id, e.g. source name + root) used last: replaced when it changes.
        self._pointer = self.root / f"latest-{hashlib.sha1(dataset_id.encode()).hexdigest()[:16]}.txt" \
            if dataset_id else None
        n = len(self.files)
        self.offsets = np.full(n, -1, dtype=np.int64)
        self.shapes = np.zeros((n, 2), dtype=np.int32)
        self.checksums = np.zeros(n, dtype=np.uint32)
        self._end = 0
        self._lock = threading.Lock()
        self._handle = None
        self._since_save = 0
        self._load()

    # ------------------------------------------------------------------ state

    @property
    def complete(self) -> bool:
        return self.has(None)

    def has(self, slots: Sequence[int] | None) -> bool:
        """Whether every image of ``slots`` (default: all) is stored."""
        offsets = self.offsets if slots is None else self.offsets[np.asarray(slots, dtype=np.int64)]
        return bool((offsets >= 0).all())

    @property
    def stored_bytes(self) -> int:
        """Bytes of pixels stored so far."""
        return self._end

    def missing(self) -> list[int]:
        return np.flatnonzero(self.offsets < 0).tolist()

    def _load(self) -> None:
        meta_file, index_file = self.directory / "meta.json", self.directory / "index.npz"
        try:
            meta = json.loads(meta_file.read_text())
            with np.load(index_file) as saved:
                offsets, shapes, checksums = saved["offsets"], saved["shapes"], saved["checksums"]
        # A damaged index is no cache yet: start again (np.load raises all of these on a broken .npz).
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
            return
        if meta.get("version") != CACHE_VERSION or meta.get("key") != self.key:
            return
        if not len(offsets) == len(shapes) == len(checksums) == len(self.files):
            return
        ends = offsets + shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3
        pixels = self.directory / "pixels.u8"
        size = pixels.stat().st_size if pixels.exists() else 0
        stored = offsets >= 0
        # Entries whose bytes did not reach the disk before a kill are decoded again.
        stored &= ends <= size
        self.offsets = np.where(stored, offsets, -1)
        self.shapes = np.where(stored[:, None], shapes, 0).astype(np.int32)
        self.checksums = np.where(stored, checksums, 0).astype(np.uint32)
        self._end = int(ends[stored].max()) if stored.any() else 0

    def _save_index(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "index.tmp.npz"
        np.savez(tmp, offsets=self.offsets, shapes=self.shapes, checksums=self.checksums)
        os.replace(tmp, self.directory / "index.npz")
        meta = {"version": CACHE_VERSION, "key": self.key, "short_side": self.short_side, "images": len(self.files),
                "stored": int((self.offsets >= 0).sum()), "bytes": self._end}
        (self.directory / "meta.json").write_text(json.dumps(meta))

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the cache's lock file (other processes filling the same cache wait: DDP ranks,
        parallel sweep trials), then re-read what they stored meanwhile."""
        with file_lock(self.root / f"{self.directory.name}.lock"):
            self._load()
            yield

    # ------------------------------------------------------------------ writing

    def store(self, i: int, image: np.ndarray) -> None:
        """Shrink and append decoded image ``i`` (``H x W x 3`` uint8 RGB); thread-safe, idempotent."""
        if self.offsets[i] >= 0:
            return
        small = np.ascontiguousarray(shrink(image, self.short_side))
        checksum = zlib.crc32(small)  # outside the lock: zlib releases the GIL, so threads checksum in parallel
        with self._lock:
            if self.offsets[i] >= 0:
                return
            if self._handle is None:
                self.directory.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.directory / "pixels.u8", "r+b" if self._end else "wb")  # noqa: SIM115
                self._handle.seek(self._end)
                self._handle.truncate()
            self._handle.write(small.data)  # the very buffer the checksum was computed from
            self.offsets[i] = self._end
            self.shapes[i] = small.shape[:2]
            self.checksums[i] = checksum
            self._end += small.nbytes
            self._since_save += 1
            if self._since_save >= _SAVE_EVERY:
                self._handle.flush()
                self._save_index()
                self._since_save = 0

    def fill(self, indices: Sequence[int] | None = None, workers: int | None = None,
             on_error: Callable[[int, str], None] | None = None) -> int:
        """Decode and store ``indices`` (default: every missing image) in a thread pool; return how many.

        OpenCV releases the GIL while decoding and resizing, so threads use every core. A file that
        cannot be decoded is passed to ``on_error`` (or raises) and stays missing.
        """
        todo = self.missing() if indices is None else [i for i in indices if self.offsets[i] < 0]
        if not todo:
            return 0

        def work(i: int) -> tuple[int, np.ndarray | None, str | None]:
            try:
                return i, decode_shrunk(self.files[i], self.short_side, self.scaled_decode), None
            except ImageDecodeError as err:
                return i, None, str(err)

        workers = workers or min(32, available_cores())
        done = 0
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(todo), 256):  # bounded memory: 256 decoded images in flight
                for i, image, error in pool.map(work, todo[start:start + 256]):
                    if image is None:
                        if on_error is None:
                            raise ImageDecodeError(error)
                        on_error(i, error)
                        continue
                    self.store(i, image)
                    done += 1
        return done

    def finish(self, slots: Sequence[int] | None = None) -> None:
        """Flush the pixels and the index; once ``slots`` (default: all) are stored, drop the dataset's
        previous cache."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            if self.offsets.size and (self.offsets >= 0).any():
                self._save_index()
        if self.has(slots) and self._pointer is not None:
            try:
                previous = self._pointer.read_text().strip() if self._pointer.exists() else ""
                if previous and previous != self.directory.name and (self.root / previous).is_dir():
                    shutil.rmtree(self.root / previous, ignore_errors=True)
                self._pointer.write_text(self.directory.name)
            except OSError as err:
                log.warning("decoded-image cache: could not tidy %s (%s)", self.root, err)

    def reader(self) -> CachedReader:
        """A reader over all ``files`` (sample ``i`` = file ``i``); read only samples that are stored
        (:meth:`has`), e.g. after dropping undecodable files with ``subset``."""
        return CachedReader(self.directory, np.arange(len(self.files)), self.offsets, self.shapes, self.checksums,
                            self.files, self.short_side, self.scaled_decode)

    @property
    def decode_side(self) -> int | None:
        """The ``min_side`` to decode this cache's images with (:func:`paddy.data.imageio.read_image`)."""
        return self.short_side if self.scaled_decode else None


__all__ = ["CACHE_MODES", "CachedReader", "DecodedImageCache", "content_key", "decode_shrunk", "default_short_side",
           "estimated_bytes", "parse_cache_mode", "shrink"]
