"""Split a model's image transform into a per-image PIL part and a batched tensor part.

timm and open_clip both hand us a torchvision Compose that ends in ToTensor + Normalize. Run per
image (as they are written), those two steps cost more than the resize on a 2-vCPU machine; done
once on the stacked uint8 batch (scale and shift per channel) they cost a fraction, and a uint8
batch is a quarter of the bytes to move to a GPU. The PIL part (resize, crop, RGB) is kept as is, so
the pixels the model sees are the ones its authors' transform makes (checked in the tests to 1e-6).

The first Resize's target also gives the JPEG draft size: PIL's decoder can scale by 1/2, 1/4 or
1/8 while decoding (DCT scaling) and still return at least that many pixels per side, so a 12 Mpx
phone photo is never decoded whole just to become 224x224.

Memory is bounded by the output, not by the file: before the PIL steps an image is centre-cropped
to `MAX_ASPECT` (the resize would scale a 1,000,000x1 image's short side to 256, asking for a
256,000,000x256 image; the model's centre crop keeps the middle anyway), and every step's result
is checked against `MAX_RESIZED_PIXELS`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError
from ..images import MAX_RESIZED_PIXELS, cap_aspect

PilStep = Callable[[Image.Image], Image.Image]
_TO_TENSOR = {"ToTensor", "MaybeToTensor"}


@dataclass(frozen=True)
class SplitTransform:
    """pil(img) -> uint8 HWC image; normalise(uint8 NCHW batch) -> float batch, equal to the original."""

    pil_steps: tuple[PilStep, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    draft_size: int | None

    def to_uint8(self, img: Image.Image) -> torch.Tensor:
        """(3, H, W) uint8 after the PIL steps (no float work per image)."""
        img = bounded_steps(img, self.pil_steps)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)

    def normalise(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> (x / 255 - mean) / std in float32, then cast to `dtype`."""
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=batch.device).view(1, -1, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(self.mean, self.std)], device=batch.device).view(1, -1, 1, 1)
        return batch.float().mul_(scale).sub_(shift).to(dtype)


@dataclass(frozen=True)
class WholeImage:
    """The whole image, not its centre: the short side resized to `short` (bicubic), the aspect
    ratio kept within `max_aspect` (a longer side is centre-cropped to it first) and the long side
    rounded to a multiple of `multiple`, so images of similar shape share one size and batch
    together (the rounding stretches an image by at most multiple / 2 pixels on its long side).
    Measured against the centre crop on the sample library: docs/evaluation.md."""

    short: int = 224
    multiple: int = 32
    max_aspect: float = 2.0

    def size_for(self, w: int, h: int) -> tuple[int, int]:
        """(width, height) an image of w x h becomes."""
        ratio = min(max(w, h) / max(min(w, h), 1), self.max_aspect)
        long = max(self.short, int(round(self.short * ratio / self.multiple)) * self.multiple)
        return (long, self.short) if w >= h else (self.short, long)

    def __call__(self, img: Image.Image) -> Image.Image:
        img = cap_aspect(img, self.max_aspect)
        return img.resize(self.size_for(*img.size), Image.Resampling.BICUBIC)


def bounded_steps(img: Image.Image, steps: tuple[PilStep, ...]) -> Image.Image:
    """Run PIL steps on an aspect-capped image, refusing any step whose result is too large."""
    img = cap_aspect(img)
    for step in steps:
        img = step(img)
        if isinstance(img, Image.Image) and img.width * img.height > MAX_RESIZED_PIXELS:
            raise ImageError(f"the image would be resized to {img.width}x{img.height} by "
                             f"{type(step).__name__}, over the {MAX_RESIZED_PIXELS / 1e6:.0f} Mpx limit")
    return img


def split_transform(preprocess: object) -> SplitTransform | None:
    """The split of a Compose([...PIL steps..., ToTensor, Normalize]); None for any other shape
    (the caller then runs the transform whole, per image)."""
    steps = list(getattr(preprocess, "transforms", []))
    names = [type(s).__name__ for s in steps]
    if len(steps) < 2 or names[-1] != "Normalize" or names[-2] not in _TO_TENSOR:
        return None
    norm = steps[-1]
    mean = tuple(float(v) for v in torch.as_tensor(norm.mean).flatten())
    std = tuple(float(v) for v in torch.as_tensor(norm.std).flatten())
    if len(mean) != 3 or len(std) != 3 or getattr(norm, "inplace", False):
        return None
    pil_steps = tuple(steps[:-2])
    return SplitTransform(pil_steps, mean, std, _draft_size(pil_steps))


def _draft_size(steps: tuple[PilStep, ...]) -> int | None:
    """The first Resize's shorter-side target (an int size), when a Resize (or WholeImage) comes first."""
    if steps and isinstance(steps[0], WholeImage):
        return steps[0].short
    if not steps or type(steps[0]).__name__ != "Resize":
        return None
    size = getattr(steps[0], "size", None)
    if isinstance(size, (list, tuple)):   # [side] or (h, w): each side >= the larger is safe
        size = max(size) if size else None
    return int(size) if isinstance(size, int) and size > 0 else None
