"""Training augmentation on whole batches on the training device (``data.gpu_augment``).

The loader workers then only copy ``uint8`` pixels (from the decoded-image cache, or decoded from
the files) into batches; cropping, resizing, flipping, colour jitter and normalisation run as a few
batched tensor operations after the batch reached the GPU. That moves the per-image CPU work that
limits a fast GPU to where it costs almost nothing, and ships 1 byte per pixel to the GPU instead of
4.

The same albumentations pipeline spec (``data.transforms.train``) drives both paths, and each step
draws its random parameters from the same distributions as albumentations 2.x does:

- ``RandomResizedCrop(size, scale, ratio)``: area fraction ~ U(scale), log aspect ratio ~ U(log ratio),
  10 tries for a crop that fits, then the centre crop with the ratio clamped; bilinear resampling at
  pixel centres like OpenCV's ``INTER_LINEAR`` (one ``torchvision.ops.roi_align`` call for the batch).
- ``Resize(height, width)``: the whole image, resampled the same way.
- ``HorizontalFlip(p)``, ``VerticalFlip(p)``.
- ``ColorJitter(brightness, contrast, saturation, hue, p)``: factors ~ U(max(0, 1 - v), 1 + v), hue
  shift ~ U(-hue, hue) of a full turn, on 0-255 values clipped after each step like albumentations'
  uint8 path. The four are applied in a random order drawn per batch (albumentations draws it
  per image).

Normalisation (``data.mean`` / ``data.std``) is the same as the CPU path's. A pipeline with any other
transform cannot run here: ``gpu_augment=auto`` then keeps the CPU path, ``gpu_augment=true`` stops
with the names of the transforms it cannot run.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

import torch

SUPPORTED = ("RandomResizedCrop", "Resize", "HorizontalFlip", "VerticalFlip", "ColorJitter")
GPU_AUGMENT_MODES = ("auto", "true", "false")
_TRIES = 10


def parse_gpu_augment(value: object) -> str:
    """``data.gpu_augment`` as ``auto`` / ``true`` / ``false``."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).lower()
    text = {"on": "true", "yes": "true", "off": "false", "no": "false"}.get(text, text)
    if text not in GPU_AUGMENT_MODES:
        raise ValueError(f"data.gpu_augment={value!r} (expected one of: {', '.join(GPU_AUGMENT_MODES)})")
    return text


def unsupported_steps(spec: Mapping[str, Mapping | None] | None) -> list[str]:
    """The transforms of ``spec`` that :class:`BatchAugment` cannot run (empty: it runs them all)."""
    steps = _active_steps(spec)
    missing = [name for name, _ in steps if name not in SUPPORTED]
    if not missing and not any(name in ("RandomResizedCrop", "Resize") for name, _ in steps):
        missing.append("(no RandomResizedCrop or Resize to give every image the training size)")
    return missing


def _active_steps(spec: Mapping[str, Mapping | None] | None) -> list[tuple[str, dict]]:
    steps = []
    for key, kwargs in (spec or {}).items():
        if kwargs is None or kwargs is False:
            continue
        steps.append((str(key).split("#", 1)[0], dict(kwargs) if isinstance(kwargs, Mapping) else {}))
    return steps


def _pair(value: object, name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = value  # type: ignore[misc]
    return float(low), float(high)


def _jitter_range(value: object, center: float = 1.0) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return max(0.0, center - float(value)), center + float(value)
    return _pair(value, "jitter")


class BatchAugment:
    """Runs a supported ``data.transforms.train`` spec on ``uint8`` batches on their device.

    Call it with ``images`` (``B x H x W x 3`` uint8, images padded at the bottom/right to a common
    size), ``sizes`` (``B x 2``: each image's real height and width), a ``torch.Generator`` on the
    images' device and a host ``random.Random`` (for choices made per batch, such as the colour
    jitter order, so nothing is read back from the device); it returns ``B x 3 x h x w`` float32,
    normalised.
    """

    def __init__(self, spec: Mapping[str, Mapping | None], mean: Sequence[float], std: Sequence[float]):
        missing = unsupported_steps(spec)
        if missing:
            raise ValueError(f"data.gpu_augment cannot run these training transforms on the device: "
                             f"{', '.join(missing)} (it runs {', '.join(SUPPORTED)}; use data.gpu_augment=auto "
                             f"or false to augment on the CPU)")
        self.steps = _active_steps(spec)
        self.mean = torch.tensor([float(m) * 255.0 for m in mean]).view(1, 3, 1, 1)
        self.std = torch.tensor([float(s) * 255.0 for s in std]).view(1, 3, 1, 1)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}  # copied once per device

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator,
                 rng: random.Random) -> torch.Tensor:
        device = images.device
        x = images.permute(0, 3, 1, 2).float()
        sizes = sizes.to(device=device, dtype=torch.float32)
        for name, kw in self.steps:
            if name == "RandomResizedCrop":
                boxes = _random_resized_boxes(sizes, _pair(kw.get("scale", (0.08, 1.0)), "scale"),
                                              _pair(kw.get("ratio", (0.75, 4 / 3)), "ratio"), generator)
                x, sizes = _crop_resize(x, boxes, _output_size(kw)), None
            elif name == "Resize":
                full = torch.stack([torch.zeros_like(sizes[:, 0]), torch.zeros_like(sizes[:, 0]),
                                    sizes[:, 1], sizes[:, 0]], dim=1)
                x, sizes = _crop_resize(x, full, (int(kw["height"]), int(kw["width"]))), None
            elif name in ("HorizontalFlip", "VerticalFlip"):
                flip = _coin(len(x), float(kw.get("p", 0.5)), generator, device)
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1 if name == "HorizontalFlip" else -2), x)
            elif name == "ColorJitter":
                x = _color_jitter(x, kw, generator, rng)
        if device not in self._on_device:
            self._on_device[device] = (self.mean.to(device), self.std.to(device))
        mean, std = self._on_device[device]
        return ((x - mean) / std).contiguous()


def _output_size(kw: Mapping) -> tuple[int, int]:
    size = kw.get("size")
    if size is None:
        return int(kw["height"]), int(kw["width"])
    if isinstance(size, int):
        return size, size
    return int(size[0]), int(size[1])


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator, device=device)


def _coin(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def _random_resized_boxes(sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                          generator: torch.Generator) -> torch.Tensor:
    """``B x 4`` crop boxes (x1, y1, x2, y2) drawn like albumentations' RandomResizedCrop."""
    device, n = sizes.device, len(sizes)
    height, width = sizes[:, 0:1], sizes[:, 1:2]
    area = height * width
    target = area * _uniform((n, _TRIES), scale[0], scale[1], generator, device)
    aspect = torch.exp(_uniform((n, _TRIES), math.log(ratio[0]), math.log(ratio[1]), generator, device))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)
    found = fits.any(dim=1)
    w, h = w.gather(1, first).squeeze(1), h.gather(1, first).squeeze(1)
    # Where no try fits: the whole image with its aspect ratio clamped to ``ratio``, centred.
    in_ratio = (width / height).squeeze(1)
    fw = torch.where(in_ratio < ratio[0], width.squeeze(1),
                     torch.where(in_ratio > ratio[1], torch.round(height.squeeze(1) * ratio[1]), width.squeeze(1)))
    fh = torch.where(in_ratio < ratio[0], torch.round(width.squeeze(1) / ratio[0]),
                     torch.where(in_ratio > ratio[1], height.squeeze(1), height.squeeze(1)))
    w, h = torch.where(found, w, fw), torch.where(found, h, fh)
    # Top-left corner: uniform over the integer positions that keep the crop inside the image.
    top = torch.floor(torch.rand(n, generator=generator, device=device) * (height.squeeze(1) - h + 1))
    left = torch.floor(torch.rand(n, generator=generator, device=device) * (width.squeeze(1) - w + 1))
    top = torch.where(found, top, torch.div(height.squeeze(1) - h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width.squeeze(1) - w, 2, rounding_mode="floor"))
    return torch.stack([left, top, left + w, top + h], dim=1)


def _crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resampled to ``size``: bilinear at pixel centres (OpenCV's INTER_LINEAR)."""
    from torchvision.ops import roi_align

    index = torch.arange(len(x), device=x.device, dtype=x.dtype).unsqueeze(1)
    return roi_align(x, torch.cat([index, boxes.to(x.dtype)], dim=1), output_size=size, spatial_scale=1.0,
                     sampling_ratio=1, aligned=True)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _color_jitter(x: torch.Tensor, kw: Mapping, generator: torch.Generator, rng: random.Random) -> torch.Tensor:
    device, n = x.device, len(x)
    apply = _coin(n, float(kw.get("p", 1.0)), generator, device).view(-1, 1, 1, 1)
    ranges = {
        "brightness": _jitter_range(kw.get("brightness", (0.8, 1.0))),
        "contrast": _jitter_range(kw.get("contrast", (0.8, 1.0))),
        "saturation": _jitter_range(kw.get("saturation", (0.8, 1.0))),
        "hue": _jitter_range(kw.get("hue", (-0.2, 0.2)), center=0.0),
    }
    order = ["brightness", "contrast", "saturation", "hue"]
    rng.shuffle(order)  # per batch, on the host
    out = x
    for name in order:
        low, high = ranges[name]
        factor = _uniform((n, 1, 1, 1), low, high, generator, device)
        if name == "brightness":
            out = out * factor
        elif name == "contrast":
            mean = _gray(out).mean(dim=(2, 3), keepdim=True)
            out = out * factor + mean * (1 - factor)
        elif name == "saturation":
            out = out * factor + _gray(out) * (1 - factor)
        else:
            out = _shift_hue(out, factor)
        out = out.clamp(0.0, 255.0)
    return torch.where(apply, out, x)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of 0-255 RGB images by ``shift`` turns (``B x 1 x 1 x 1``), via HSV."""
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    high, _ = x.max(dim=1)
    low, _ = x.min(dim=1)
    delta = high - low
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(high == r, ((g - b) / safe) % 6,
                      torch.where(high == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue))
    hue = (hue / 6 + shift.view(-1, 1, 1)) % 1.0
    saturation = torch.where(high > 0, delta / torch.where(high > 0, high, torch.ones_like(high)),
                             torch.zeros_like(high))
    # HSV -> RGB with the branch-free formula f(n) = V - V S max(0, min(k, 4 - k, 1)), k = (n + 6H) mod 6.
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = (offset + hue * 6) % 6
        channels.append(high - high * saturation * torch.clamp(torch.minimum(k, 4 - k), 0.0, 1.0))
    return torch.stack(channels, dim=1)


__all__ = ["GPU_AUGMENT_MODES", "SUPPORTED", "BatchAugment", "parse_gpu_augment", "unsupported_steps"]
