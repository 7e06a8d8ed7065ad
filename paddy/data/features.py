"""Per-sample hand-crafted features that some models take next to the image.

:class:`DCTFeatures` is the frequency branch input of the old "lightweight" DCT-fusion scripts:
grayscale -> square resize -> 2-D DCT-II -> the top-left ``block x block`` low-frequency
coefficients, flattened (1024 values for ``block=32``).

The DCT is OpenCV's ``cv2.dct`` on a float32 image, the orthonormal 2-D DCT-II (the same numbers
as ``scipy.fft.dctn(x, norm="ortho")``)::

    C[u, v] = a(u) a(v) sum_{y, x} I[y, x] cos(pi (2y + 1) u / 2H) cos(pi (2x + 1) v / 2W),
    a(0) = sqrt(1/N), a(k > 0) = sqrt(2/N)  (N = H for u, W for v)

Normalisation (``normalize=True``, the default): the grayscale image is scaled to [0, 1] and the
coefficients are divided by ``sqrt(H * W)``. Then ``C[0, 0]`` is the mean intensity (in [0, 1]),
every coefficient lies in [-2, 2], and a coefficient means the same spatial frequency (in cycles
per image) whatever the image size: values are O(1) for the MLP that reads them. It is linear and
deterministic (no log or per-dataset statistics). ``normalize=False`` gives the old scripts' raw
``cv2.dct`` of the 0-255 grayscale image.

Where the features come from: the *decoded* image (before any augmentation), resized to ``size``,
as the old scripts did. They do not follow the random crops/flips of the training transform, so
they are the same every epoch (and could be cached); computing them after the geometric
augmentation would need the albumentations pipeline split in two.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


class DCTFeatures:
    """``H x W x 3`` uint8 RGB image (or ``H x W`` grayscale) -> ``block * block`` float32 DCT coefficients.

    Args:
        block: side of the kept top-left (low-frequency) coefficient block; the output has
            ``block * block`` values, row-major (``out[0]`` is the DC coefficient).
        size: the grayscale image is resized to ``size x size`` first (``cv2.INTER_AREA`` when
            shrinking, which also keeps aliasing out of the low frequencies; ``INTER_LINEAR`` when
            enlarging). Must be even (OpenCV 4 has no odd-size DCT) and >= ``block``. The default
            64 keeps all of a 32-block's frequencies (up to 15.5 cycles per image, below the
            32-cycle Nyquist limit of 64 px) and is cheap; ``size=224`` reproduces the old scripts,
            which resized to the model's input size. ``None`` uses the image as given; an odd
            height or width then loses its last row or column, and an image smaller than
            ``block`` is a ``ValueError``.
        normalize: scale as described in the module docstring (mean intensity at ``out[0]``,
            values in [-2, 2]); ``False`` returns the raw DCT of the 0-255 grayscale image.

    Instances hold only these three settings, so they pickle (DataLoader workers) and compare equal.
    """

    def __init__(self, block: int = 32, size: int | None = 64, normalize: bool = True):
        if int(block) != block or block < 1:
            raise ValueError(f"DCT block={block} (expected an integer >= 1)")
        if size is not None:
            if int(size) != size or size < block:
                raise ValueError(f"DCT size={size} (expected an integer >= block={block}, or None)")
            if size % 2:
                raise ValueError(f"DCT size={size} must be even (OpenCV computes no odd-size DCT)")
        self.block = int(block)
        self.size = None if size is None else int(size)
        self.normalize = bool(normalize)

    @property
    def dim(self) -> int:
        """Length of the feature vector (``block * block``)."""
        return self.block * self.block

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
            raise ValueError(f"DCT features need a uint8 image, got {kind}")
        if image.ndim == 3 and image.shape[2] == 3:
            gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
            gray = image.reshape(image.shape[:2])
        else:
            raise ValueError(f"DCT features need an H x W x 3 RGB (or H x W gray) image, got shape {image.shape}")
        height, width = gray.shape
        if self.size is not None:
            shrink = height >= self.size and width >= self.size
            gray = cv2.resize(gray, (self.size, self.size),
                              interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        else:
            even_height, even_width = height - height % 2, width - width % 2
            if even_height < self.block or even_width < self.block:
                raise ValueError(f"image of {height}x{width} px is smaller than the DCT block {self.block}x{self.block}"
                                 f" (odd sides lose a row/column; use a larger image, a smaller block or a size)")
            gray = gray[:even_height, :even_width]
        coeffs = cv2.dct(np.ascontiguousarray(gray, dtype=np.float32))[: self.block, : self.block]
        out = coeffs.reshape(-1)  # a copy: the block is not contiguous
        if self.normalize:
            out *= np.float32(1.0 / (255.0 * math.sqrt(gray.shape[0] * gray.shape[1])))
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DCTFeatures) and (self.block, self.size, self.normalize) == (
            other.block, other.size, other.normalize)

    def __hash__(self) -> int:
        return hash((DCTFeatures, self.block, self.size, self.normalize))

    def __repr__(self) -> str:
        return f"DCTFeatures(block={self.block}, size={self.size}, normalize={self.normalize})"


def dct_features(image: np.ndarray, block: int = 32, size: int | None = 64, normalize: bool = True) -> np.ndarray:
    """The :class:`DCTFeatures` of one image (a one-off; build the class once for a dataset)."""
    return DCTFeatures(block=block, size=size, normalize=normalize)(image)


# Names a model's ``input_features`` may list, and the extractor that computes each.
FEATURE_EXTRACTORS: dict[str, type] = {"dct": DCTFeatures}
