"""Dataset sources: one class per on-disk layout, each turning a folder into a :class:`SourceIndex`.

A source only *indexes*: it lists samples, their labels and any split the layout itself defines,
and reports rows it cannot label. Reading pixels is the job of the index's reader; checking that
every file really decodes is :mod:`paddy.data.validation`'s. Layouts:

- :class:`FashionMNISTSource`: the four IDX files of Fashion-MNIST (Xiao et al., 2017).
- :class:`PaddyDoctorSource`: Kaggle *Paddy Doctor*: ``train.csv`` + ``train_images/<label>/<id>``.
- :class:`MetadataCSVSource`: ``metadata.csv`` + ``label2id.json`` + ``images/``.
- :class:`ImageFolderSource`: ``train/ val/ test/`` class folders, or one folder of class folders.
- :class:`SyntheticSource`: generated, learnable images for tests and throughput runs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from paddy.data.errors import SHOWN_PER_KIND, DataProblem, DataSourceError
from paddy.data.imageio import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}


class FileReader:
    """Reads sample ``i`` from ``paths[i]`` (picklable, for DataLoader workers); ``min_side``: the shorter
    side the transforms need, JPEGs are decoded only that big (:func:`paddy.data.imageio.read_image`)."""

    def __init__(self, paths: list[str], min_side: int | None = None):
        self.paths = paths
        self.min_side = min_side

    def __call__(self, i: int) -> np.ndarray:
        return read_image(self.paths[i], self.min_side)

    def subset(self, indices: np.ndarray) -> FileReader:
        return FileReader([self.paths[i] for i in indices], self.min_side)


class ArrayReader:
    """Reads sample ``i`` from an in-memory ``N x H x W`` (gray) or ``N x H x W x 3`` (RGB) array."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, i: int) -> np.ndarray:
        image = self.images[i]
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB) if image.ndim == 2 else image

    def subset(self, indices: np.ndarray) -> ArrayReader:
        return ArrayReader(self.images[indices])


@dataclass
class SourceIndex:
    """Everything known about a dataset before any pixel is decoded.

    ``items[i]`` names sample ``i`` for messages (a path relative to the root, or ``train[17]``);
    ``files[i]`` is its file when the dataset is made of files (None for in-memory datasets);
    ``splits[i]`` is ``train``/``val``/``test`` where the layout defines splits, else ``splits`` is
    None; ``problems`` are rows that were left out while indexing (unknown labels, ...).
    """

    name: str
    classes: list[str]
    items: list[str]
    labels: np.ndarray
    reader: FileReader | ArrayReader
    files: list[str] | None = None
    splits: np.ndarray | None = None
    problems: list[DataProblem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: np.ndarray) -> SourceIndex:
        """The same dataset restricted to ``indices`` (in that order)."""
        indices = np.asarray(indices, dtype=np.int64)
        return SourceIndex(
            name=self.name,
            classes=self.classes,
            items=[self.items[i] for i in indices],
            labels=self.labels[indices],
            reader=self.reader.subset(indices),
            files=None if self.files is None else [self.files[i] for i in indices],
            splits=None if self.splits is None else self.splits[indices],
            problems=self.problems,
        )


class ImageSource(ABC):
    """A dataset layout. Subclasses implement :meth:`load`; a layout of image files lists them as
    :class:`Sample` s and returns :meth:`index_files` (one sample per image, duplicates reported).

    A layout of your own: subclass this in your package and select it with
    ``data=imagefolder data.source._target_=mypkg.layout.MyLayout`` (and ``PADDY_TRUSTED_TARGETS='mypkg.*'``).
    """

    name: str = "source"

    def __init__(self, root: str | Path | None):
        self.root = Path(root).expanduser() if root is not None else None

    @abstractmethod
    def load(self) -> SourceIndex:
        """Index the dataset; raise :class:`DataSourceError` when it cannot be read at all."""

    def index_files(self, classes: list[str], samples: list[Sample],
                    problems: list[DataProblem] | None = None) -> SourceIndex:
        """The index of image files under the root: ``samples[i].label`` indexes ``classes``; an image
        listed twice is kept once (a warning), with two labels or splits refused (:func:`unique_entries`)."""
        return _file_index(self.name, self.require_root(), classes, list(samples), list(problems or []))

    def require_root(self) -> Path:
        if self.root is None:
            raise DataSourceError(f"data={self.name} needs data.root=<folder of the dataset>")
        if not self.root.is_dir():
            raise DataSourceError(f"data.root={self.root} is not a folder (data={self.name})")
        return self.root

    def require_file(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise DataSourceError(f"{what} not found: {path} (data={self.name}, data.root={self.root})")
        return path


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise DataSourceError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); save the "
                              f"file as UTF-8, e.g. iconv -f latin1 -t utf-8 {path.name} > utf8.csv") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    return columns, rows


def _normalize_split(value: str, where: str) -> str:
    split = _SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise DataSourceError(
            f"{where}: unknown split value {value!r} (expected one of: {', '.join(sorted(_SPLIT_ALIASES))})"
        )
    return split


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST


FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def fashion_mnist_search_path() -> list[Path]:
    """Where Fashion-MNIST is looked for when ``data.root`` is not given, in order."""
    candidates = [Path.cwd() / "data" / "fashion-mnist", PACKAGE_ROOT / "data" / "fashion-mnist",
                  Path("/usr/share/datasets/fashion-mnist")]
    unique: list[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format: big-endian header, then raw uint8 data), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise DataSourceError(f"{path}: cannot read IDX file ({err})") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataSourceError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape)) if shape else 0
    if len(data) - header != expected:
        raise DataSourceError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes: truncated or corrupt, fetch it again with `make data`"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class FashionMNISTSource(ImageSource):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): 60k train + 10k test 28x28 grayscale, 10 classes.

    The official test split is the test set; the validation set is carved from the training set.
    """

    name = "fashion_mnist"

    def find_root(self) -> Path:
        candidates = [self.root] if self.root is not None else fashion_mnist_search_path()
        for folder in candidates:
            if all(find_idx_file(folder, stem) for stem in FASHION_MNIST_FILES.values()):
                return folder
        looked = ", ".join(str(c) for c in candidates)
        raise DataSourceError(
            f"Fashion-MNIST not found (looked in: {looked}). Fetch it with `make data` "
            f"(or `python -m paddy.data.download fashion_mnist`), or point data.root at a folder "
            f"holding {', '.join(s + '.gz' for s in FASHION_MNIST_FILES.values())}"
        )

    def load(self) -> SourceIndex:
        folder = self.find_root()
        arrays = {key: read_idx(find_idx_file(folder, stem)) for key, stem in FASHION_MNIST_FILES.items()}
        for split in ("train", "test"):
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataSourceError(
                    f"{folder}: {split} images {images.shape} and labels {labels.shape} do not match"
                )
            if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
                raise DataSourceError(f"{folder}: {split} labels go up to {labels.max()}, expected 0..9")
        images = np.concatenate([arrays["train_images"], arrays["test_images"]])
        labels = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
        n_train = len(arrays["train_labels"])
        items = [f"train[{i}]" for i in range(n_train)]
        items += [f"test[{i}]" for i in range(len(labels) - n_train)]
        splits = np.array(["train"] * n_train + ["test"] * (len(labels) - n_train))
        log.info("Fashion-MNIST from %s: %d train + %d test images", folder, n_train, len(labels) - n_train)
        return SourceIndex(self.name, list(FASHION_MNIST_CLASSES), items, labels, ArrayReader(images),
                           splits=splits)


# --------------------------------------------------------------------------------------------
# File-based layouts


class PaddyDoctorSource(ImageSource):
    """Kaggle *Paddy Doctor* (Petchiammal et al., 2023): ``train.csv`` (image_id,label,variety,age)
    and ``train_images/<label>/<image_id>``; ``test_images/`` is unlabeled (for prediction)."""

    name = "paddy"

    def __init__(self, root: str | Path | None, csv_file: str = "train.csv", images_dir: str = "train_images",
                 image_column: str = "image_id", label_column: str = "label"):
        super().__init__(root)
        self.csv_file, self.images_dir = csv_file, images_dir
        self.image_column, self.label_column = image_column, label_column

    def load(self) -> SourceIndex:
        root = self.require_root()
        csv_path = self.require_file(root / self.csv_file, "label file")
        if not (root / self.images_dir).is_dir():
            raise DataSourceError(f"image folder not found: {root / self.images_dir} (data={self.name})")
        columns, rows = _read_csv(csv_path)
        missing = [c for c in (self.image_column, self.label_column) if c not in columns]
        if missing:
            raise DataSourceError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; it has: {', '.join(columns) or 'none'} "
                f"(expected image_id,label,variety,age; or set data.source.image_column/label_column)"
            )
        if not rows:
            raise DataSourceError(f"{csv_path}: no rows")
        problems = []
        kept = []
        for line, row in enumerate(rows, start=2):
            image_id, label = row[self.image_column], row[self.label_column]
            if not image_id or not label:
                problems.append(DataProblem("unknown_label", f"{csv_path.name} line {line}",
                                            "empty image_id or label"))
                continue
            kept.append((image_id, label, line))
        classes = sorted({label for _, label, _ in kept})
        class_ids = {name: i for i, name in enumerate(classes)}
        # Sorting by path makes the index (and so the seeded split) independent of CSV row order.
        # An image is one image_id (its label is part of its path): listed twice, it is one sample.
        entries = sorted(Sample(f"{self.images_dir}/{label}/{image_id}", class_ids[label],
                                f"{csv_path.name} line {line}", key=image_id, label_name=label)
                         for image_id, label, line in kept)
        return _file_index(self.name, root, classes, entries, problems)


class MetadataCSVSource(ImageSource):
    """The old per-model scripts' layout: ``metadata.csv`` + ``label2id.json`` + ``images/``.

    The CSV has an image path column and a label column, and optionally a split column; their names
    are detected from common spellings unless given. Labels may be class names (keys of
    ``label2id.json``) or class ids (its values). Paths may be relative to ``images/``, to the root,
    or absolute. With ``label_map=None`` the classes are the sorted distinct labels of the CSV.
    """

    name = "metadata_csv"
    IMAGE_COLUMNS = ("image_path", "image", "path", "filepath", "file_path", "filename", "file", "image_id",
                     "img_path", "img")
    LABEL_COLUMNS = ("label", "class", "class_name", "label_name", "category", "target", "disease")
    SPLIT_COLUMNS = ("split", "subset", "set", "partition")

    def __init__(self, root: str | Path | None, csv_file: str = "metadata.csv",
                 label_map: str | None = "label2id.json", images_dir: str = "images",
                 image_column: str | None = None, label_column: str | None = None,
                 split_column: str | None = None):
        super().__init__(root)
        self.csv_file, self.label_map, self.images_dir = csv_file, label_map, images_dir
        self.image_column, self.label_column, self.split_column = image_column, label_column, split_column

    def _pick_column(self, columns: list[str], given: str | None, candidates: tuple[str, ...],
                     what: str, csv_path: Path, required: bool = True) -> str | None:
        if given is not None:
            if given not in columns:
                raise DataSourceError(f"{csv_path}: no column {given!r} (data.source.{what}_column); "
                                      f"it has: {', '.join(columns) or 'none'}")
            return given
        lowered = {c.lower(): c for c in columns}
        for candidate in candidates:
            if candidate in lowered:
                return lowered[candidate]
        if required:
            raise DataSourceError(
                f"{csv_path}: cannot find the {what} column; it has: {', '.join(columns) or 'none'}. "
                f"Name it one of {', '.join(candidates)} or set data.source.{what}_column=<name>"
            )
        return None

    def _load_label_map(self, root: Path) -> dict[str, int] | None:
        if self.label_map is None:
            return None
        path = self.require_file(root / self.label_map, "label map")
        try:
            mapping = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataSourceError(f"{path}: not valid JSON ({err})") from err
        if not isinstance(mapping, dict) or not mapping:
            raise DataSourceError(f"{path}: expected a JSON object {{label: id}}")
        try:
            mapping = {str(k): int(v) for k, v in mapping.items()}
        except (TypeError, ValueError) as err:
            raise DataSourceError(f"{path}: ids must be integers ({err})") from err
        if sorted(mapping.values()) != list(range(len(mapping))):
            raise DataSourceError(f"{path}: ids must be 0..{len(mapping) - 1}, each once; got "
                                  f"{sorted(mapping.values())}")
        return mapping

    def _resolve_path(self, root: Path, value: str) -> Path:
        path = Path(value)
        if path.is_absolute():
            return path
        in_images = root / self.images_dir / path
        if in_images.exists() or not (root / path).exists():
            return in_images
        return root / path

    def load(self) -> SourceIndex:
        root = self.require_root()
        csv_path = self.require_file(root / self.csv_file, "metadata CSV")
        columns, rows = _read_csv(csv_path)
        image_col = self._pick_column(columns, self.image_column, self.IMAGE_COLUMNS, "image", csv_path)
        label_col = self._pick_column(columns, self.label_column, self.LABEL_COLUMNS, "label", csv_path)
        split_col = self._pick_column(columns, self.split_column, self.SPLIT_COLUMNS, "split", csv_path,
                                      required=False)
        if not rows:
            raise DataSourceError(f"{csv_path}: no rows")
        mapping = self._load_label_map(root)
        if mapping is None:
            mapping = {name: i for i, name in enumerate(sorted({r[label_col] for r in rows if r[label_col]}))}
        ids = {str(v): v for v in mapping.values()}
        classes = [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
        problems, entries = [], []
        for line, row in enumerate(rows, start=2):
            where = f"{csv_path.name} line {line}"
            label = row[label_col]
            class_id = mapping.get(label, ids.get(label))
            if class_id is None:
                problems.append(DataProblem("unknown_label", where,
                                            f"label {label!r} is not in {self.label_map or 'the CSV labels'}"))
                continue
            if not row[image_col]:
                problems.append(DataProblem("missing_file", where, f"empty {image_col}"))
                continue
            path = self._resolve_path(root, row[image_col])
            split = _normalize_split(row[split_col], f"{where} ({split_col})") if split_col is not None else None
            entries.append(Sample(_relative(path, root), class_id, where, file=str(path), split=split,
                                  label_name=label))
        return _file_index(self.name, root, classes, sorted(entries), problems)


class ImageFolderSource(ImageSource):
    """Class sub-folders: ``root/{train,val,test}/<class>/*.jpg`` (splits given by the layout), or
    ``root/<class>/*.jpg`` (split by ``data.val_fraction`` / ``data.test_fraction``).

    Classes are the sub-folders of ``train/`` (or of the root). A class folder in ``val/``/``test/``
    that ``train/`` lacks is an unknown label; a class folder without images is an empty class.
    """

    name = "imagefolder"
    SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"),
                  "test": ("test", "testing")}

    @staticmethod
    def _images_in(folder: Path) -> list[Path]:
        # A dangling symlink is listed too: verification reports it as a missing file instead of
        # the class silently losing an image.
        return sorted(p for p in folder.rglob("*")
                      if (p.is_file() or p.is_symlink()) and p.suffix.lower() in IMAGE_SUFFIXES)

    @staticmethod
    def _class_dirs(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def load(self) -> SourceIndex:
        root = self.require_root()
        split_dirs = {}
        for split, names in self.SPLIT_DIRS.items():
            found = [root / n for n in names if (root / n).is_dir()]
            if found:
                split_dirs[split] = found[0]
        if split_dirs and "train" not in split_dirs:
            raise DataSourceError(f"{root}: has {', '.join(d.name for d in split_dirs.values())}/ but no train/")
        top = split_dirs.get("train", root)
        classes = [d.name for d in self._class_dirs(top)]
        if not classes:
            raise DataSourceError(f"{top}: no class sub-folders (expected {top}/<class>/<image files>)")
        class_ids = {name: i for i, name in enumerate(classes)}
        problems: list[DataProblem] = []
        entries = []
        for split, folder in (split_dirs.items() if split_dirs else [(None, root)]):
            for class_dir in self._class_dirs(folder):
                where = _relative(class_dir, root)
                if class_dir.name not in class_ids:
                    problems.append(DataProblem("unknown_label", where,
                                                f"class {class_dir.name!r} is not a class of {_relative(top, root)}"))
                    continue
                images = self._images_in(class_dir)
                if not images and split in (None, "train"):
                    problems.append(DataProblem("empty_class", where, "no image files"))
                for path in images:
                    item = _relative(path, root)
                    entries.append(Sample(item, class_ids[class_dir.name], item, split=split,
                                          label_name=class_dir.name))
        return _file_index(self.name, root, classes, entries, problems)


class Sample(NamedTuple):
    """One listed sample: ``item`` (path relative to the root), class id, ``where`` it was listed (a
    CSV line, a folder; for messages), its file (default: root / item), its split (``train``, ``val``,
    ``test``; layouts that define splits), and ``key``: what makes two listings the same image
    (default: the file's real path)."""

    item: str
    label: int
    where: str
    file: str | None = None
    split: str | None = None
    key: str | None = None
    label_name: str = ""


def _file_index(name: str, root: Path, classes: list[str], entries: list[Sample],
                problems: list[DataProblem]) -> SourceIndex:
    """Build the index of a file-backed dataset: one sample per unique image (see :func:`unique_entries`)."""
    entries = unique_entries(entries, root, name)
    files = [entry.file or str(root / entry.item) for entry in entries]
    labels = np.array([entry.label for entry in entries], dtype=np.int64)
    index = SourceIndex(name, classes, [e.item for e in entries], labels, FileReader(files), files=files,
                        problems=problems)
    if any(entry.split is not None for entry in entries):
        index.splits = np.array([entry.split or "train" for entry in entries])
    return index


def unique_entries(entries: list[Sample], root: Path, source: str) -> list[Sample]:
    """Each image once: splits work on unique files, so no image can land in two splits.

    An image listed more than once with the same label (and split) is kept once, with one warning
    naming it; listed with different labels or splits, the dataset is refused naming the lines.
    """
    groups: dict[str, list[Sample]] = {}
    for entry in entries:
        key = entry.key or os.path.realpath(entry.file or root / entry.item)
        groups.setdefault(key, []).append(entry)
    repeated = [group for group in groups.values() if len(group) > 1]
    if not repeated:
        return entries
    conflicts = [g for g in repeated if len({(e.label, e.split) for e in g}) > 1]
    if conflicts:
        shown = "; ".join(_listings(g, with_label=True) for g in conflicts[:SHOWN_PER_KIND])
        more = f"; and {len(conflicts) - SHOWN_PER_KIND} more" if len(conflicts) > SHOWN_PER_KIND else ""
        raise DataSourceError(f"data={source}: {len(conflicts)} image(s) listed more than once with different "
                              f"labels or splits: {shown}{more}. Keep one listing of each (data.root={root})")
    shown = "; ".join(_listings(g) for g in repeated[:SHOWN_PER_KIND])
    more = f"; and {len(repeated) - SHOWN_PER_KIND} more" if len(repeated) > SHOWN_PER_KIND else ""
    log.warning("data=%s: %d image(s) listed more than once with the same label, each kept once: %s%s",
                source, len(repeated), shown, more)
    first = {id(group[0]) for group in groups.values()}
    return [entry for entry in entries if id(entry) in first]


def _listings(group: list[Sample], with_label: bool = False) -> str:
    def listing(entry: Sample) -> str:
        extra = [repr(entry.label_name or entry.label)] if with_label else []
        extra += [entry.split] if with_label and entry.split else []
        return entry.where + (f" ({', '.join(extra)})" if extra else "")

    return f"{group[0].item} at " + ", ".join(listing(e) for e in group)


# --------------------------------------------------------------------------------------------
# Synthetic


class SyntheticSource(ImageSource):
    """Generated RGB images whose class is visible (a class-specific colour and stripe orientation
    under noise), so a tiny model learns them in a few steps. Deterministic for a given seed."""

    name = "synthetic"

    def __init__(self, root: str | Path | None = None, num_classes: int = 4, samples_per_class: int = 32,
                 image_size: int = 48, seed: int = 0):
        super().__init__(root)
        if num_classes < 2 or samples_per_class < 1 or image_size < 8:
            raise DataSourceError("data=synthetic needs num_classes >= 2, samples_per_class >= 1, image_size >= 8")
        self.num_classes, self.samples_per_class = num_classes, samples_per_class
        self.image_size, self.seed = image_size, seed

    def load(self) -> SourceIndex:
        rng = np.random.default_rng(self.seed)
        size = self.image_size
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        images, labels = [], []
        for c in range(self.num_classes):
            angle = np.pi * c / self.num_classes
            stripes = 0.5 + 0.5 * np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * (2 * np.pi / 8))
            colour = np.array([(c * 97) % 256, (c * 57 + 80) % 256, (c * 151 + 40) % 256], dtype=np.float32)
            for _ in range(self.samples_per_class):
                noise = rng.normal(0, 25, size=(size, size, 3))
                image = stripes[..., None] * colour + (1 - stripes[..., None]) * 30 + noise
                images.append(np.clip(image, 0, 255).astype(np.uint8))
                labels.append(c)
        items = [f"synthetic[{i}]" for i in range(len(labels))]
        classes = [f"class_{c}" for c in range(self.num_classes)]
        return SourceIndex(self.name, classes, items, np.array(labels, dtype=np.int64),
                           ArrayReader(np.stack(images)))
