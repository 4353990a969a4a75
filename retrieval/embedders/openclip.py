"""open_clip: the product's CLIP (image and text towers in one 512-d space for ViT-B-32).

Two ways to give weights, both through open_clip.create_model_and_transforms(pretrained=...):
a published tag (from the Hugging Face cache, or downloaded when online) or a local state dict.
Offline without cached weights we fail at once with a ModelError that says how to supply them,
instead of letting huggingface_hub retry for most of a minute.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image

from ..errors import ModelError
from ..library import file_sha256
from . import Embedder
from .backbone import Box, network_input, unit_rows

log = logging.getLogger(__name__)

HUB_TIMEOUT_S = 2.0
_PREPROCESS_KEYS = {"mean": "image_mean", "std": "image_std",
                    "interpolation": "image_interpolation", "resize_mode": "image_resize_mode"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _open_clip():
    import open_clip  # deferred: importing it costs seconds and pixel-only runs never need it
    return open_clip


def _offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def reachable(url: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Can we open a TCP connection to url's host within `timeout` s (DNS included)?"""
    parts = urlparse(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    # A thread bounds the whole probe: getaddrinfo itself ignores socket timeouts.
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _hub_source(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(repo_id, filename) open_clip would download for a pretrained cfg, if it uses the Hub."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    return repo_id, filename or _open_clip().constants.HF_WEIGHTS_NAME


def cached_weights(cfg: dict[str, Any]) -> Path | None:
    """The local file open_clip would load for a tag, if it is already on disk (no network)."""
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = _hub_source(cfg)
    if hub:
        from huggingface_hub import try_to_load_from_cache
        repo_id, filename = hub
        oc = _open_clip()
        names = [filename] + ([oc.constants.HF_SAFE_WEIGHTS_NAME] if filename == oc.constants.HF_WEIGHTS_NAME
                              else [filename.rsplit(".", 1)[0] + ".safetensors"])
        for name in names:
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.get("url"):
        local = Path("~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if local.is_file():
            return local
    return None


def _download_url(cfg: dict[str, Any]) -> str:
    if _hub_source(cfg):
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return cfg.get("url", "")


def split_spec(spec: str) -> tuple[str, str]:
    """'ViT-B-32:laion2b_s34b_b79k' -> ('ViT-B-32', 'laion2b_s34b_b79k'); paths may contain ':'."""
    if spec.startswith("open_clip:"):
        spec = spec[len("open_clip:"):]
    model, sep, weights = spec.partition(":")
    if not sep or not model or not weights:
        raise ModelError(
            f"model spec {spec!r} is not MODEL:TAG or MODEL:CHECKPOINT, e.g. 'ViT-B-32:laion2b_s34b_b79k' "
            "or 'ViT-B-32:/path/to/checkpoint.pt' (or 'effnet' for the offline backbone)"
        )
    return model.replace("/", "-"), weights


def _looks_like_path(weights: str) -> bool:
    return (os.sep in weights or weights.startswith((".", "~"))
            or weights.lower().endswith(_CHECKPOINT_SUFFIXES) or Path(weights).exists())


def _check_model(model: str) -> None:
    oc = _open_clip()
    if model not in oc.list_models():
        close = [m for m in oc.list_models() if m.lower().startswith(model.lower()[:5])][:8]
        raise ModelError(f"open_clip has no model {model!r}" + (f"; close names: {', '.join(close)}" if close else ""))


def weights_status(spec: str) -> tuple[bool, str]:
    """Can `spec`'s weights be loaded right now, and why (for the 'auto' log line)? No download."""
    model, weights = split_spec(spec)
    if _looks_like_path(weights):
        ok = Path(weights).expanduser().is_file()
        return ok, f"checkpoint {weights} " + ("found" if ok else "not found")
    cfg = _open_clip().get_pretrained_cfg(model, weights)
    if not cfg:
        return False, f"{weights!r} is not a known pretrained tag for {model}"
    if (hit := cached_weights(cfg)) is not None:
        return True, f"weights in the local cache at {hit}"
    url = _download_url(cfg)
    if _offline_env():
        return False, "weights not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
    if url and reachable(url):
        return True, f"{urlparse(url).hostname} is reachable, weights will be downloaded"
    return False, f"weights not in the local cache and {urlparse(url).hostname or url} is unreachable"


def _offline_message(model: str, tag: str, cfg: dict[str, Any], why: str) -> str:
    hub = _hub_source(cfg)
    fetch = (f"`hf download {hub[0]} {hub[1]}` (same HF_HOME, or copy the HF cache here)" if hub
             else f"a download of {cfg.get('url')} into ~/.cache/clip")
    return (
        f"cannot load open_clip {model}:{tag}: {why}. Supply the weights one of these ways: "
        f"(1) a local checkpoint, as the model {model}:/path/to/open_clip_pytorch_model.bin; "
        f"(2) go online once (unset HF_HUB_OFFLINE) so open_clip downloads them, or pre-download with {fetch}; "
        f"(3) use the offline image-only backbone, the model effnet"
    )


class OpenClipEmbedder(Embedder):
    """open_clip model with both towers; weights from a tag or a local state dict."""

    name = "clip"
    has_text = True
    model: Any   # open_clip's CLIP (untyped); torch's Module.__getattr__ would type its methods as Tensor

    def __init__(self, model_name: str, pretrained: str | None, spec: str, source: str,
                 device: torch.device | str | None = None, **preprocess_overrides: Any) -> None:
        oc = _open_clip()
        try:
            model, _, preprocess = oc.create_model_and_transforms(model_name, pretrained=pretrained,
                                                                  **preprocess_overrides)
            self.tokenizer = oc.get_tokenizer(model_name)
        except (RuntimeError, OSError, ValueError, KeyError) as exc:
            raise ModelError(f"open_clip could not load {model_name} with weights {pretrained}: {exc}. "
                             "Is the checkpoint a state dict for this architecture?") from exc
        self.spec, self.source = spec, source
        self.dim = int(oc.get_model_config(model_name)["embed_dim"])
        super().__init__(model, preprocess, device)

    @classmethod
    def random_init(cls, model_name: str, device: torch.device | str | None = None) -> "OpenClipEmbedder":
        """Real architecture, random weights: for speed benchmarks only (never for an index)."""
        return cls(model_name, None, f"open_clip:{model_name}:random-init", f"{model_name}:random-init", device)

    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(batch)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))

    def spatial_features(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """(global, local) from one pass of a ViT image tower: the unit image vector the search
        uses (dim,) and each patch token through the same final norm and projection (h, w, dim),
        so both live in the space the search compares. open_clip's VisionTransformer.forward,
        written out with its public parts; other towers (ResNets, attentional pooling) refuse."""
        v = self.model.visual
        if getattr(v, "attn_pool", None) is not None or getattr(v, "proj", None) is None \
                or getattr(v, "pool_type", None) not in ("tok", "avg") or getattr(v, "final_ln_after_pool", True):
            raise ModelError(f"similarity maps need a CLIP ViT image tower with a token or average pool; "
                             f"this model ({self.spec}) has another kind")
        with torch.inference_mode():
            x = v.conv1(network_input(self, image))               # (1, width, gh, gw)
            gh, gw = x.shape[-2:]
            x = x.flatten(2).permute(0, 2, 1)
            cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
            x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
            x = v.ln_post(v.transformer(v.ln_pre(v.patch_dropout(x))))
            tokens = x[:, 1:]
            pooled = x[:, 0] if v.pool_type == "tok" else tokens.mean(dim=1)
            pooled_vec = unit_rows(pooled @ v.proj)[0]
            local = unit_rows((tokens @ v.proj)[0]).reshape(int(gh), int(gw), -1)
        return pooled_vec, local

    region_kind = "cosine"   # region_map: cosine of each patch with the other image's vector

    @staticmethod
    def region_map(local: np.ndarray, other: np.ndarray) -> np.ndarray:
        """(h, w): the cosine between each patch's projected token and `other`. The class token
        attends to every patch, so no per-patch sum gives the score; this says where they agree."""
        o = np.asarray(other, np.float32)
        norms = np.linalg.norm(local, axis=-1) * (float(np.linalg.norm(o)) or 1.0)
        return ((local @ o) / np.maximum(norms, 1e-12)).astype(np.float32)

    def covered_box(self, size: tuple[int, int]) -> Box:
        """The part of a w x h image the image tower sees: the centre square when its transform
        resizes the short side and crops the centre (ViT-B-32's), else the whole image."""
        steps = self.split.pil_steps if self.split else ()
        names = [type(step).__name__ for step in steps]
        if "Resize" not in names or "CenterCrop" not in names:
            return (0.0, 0.0, 1.0, 1.0)
        size_arg = getattr(steps[names.index("Resize")], "size", None)
        if isinstance(size_arg, (list, tuple)) and len(size_arg) == 1:
            size_arg = size_arg[0]
        if not isinstance(size_arg, int):   # a (h, w) resize squashes: the crop is all of it
            return (0.0, 0.0, 1.0, 1.0)
        short = size_arg
        crop = getattr(steps[names.index("CenterCrop")], "size", (short, short))
        w, h = size
        side_w = min(1.0, crop[-1] / (short * w / min(w, h)))
        side_h = min(1.0, crop[0] / (short * h / min(w, h)))
        return ((1 - side_w) / 2, (1 - side_h) / 2, (1 + side_w) / 2, (1 + side_h) / 2)


def load_open_clip(spec: str, device: torch.device | str | None = None) -> OpenClipEmbedder:
    """MODEL:TAG or MODEL:CHECKPOINT -> OpenClipEmbedder, or a ModelError saying what to do."""
    model, weights = split_spec(spec)
    _check_model(model)
    if _looks_like_path(weights):
        path = Path(weights).expanduser().resolve()
        if not path.is_file():
            raise ModelError(f"checkpoint {weights} does not exist (spec {spec!r}); give the path of an "
                             f"open_clip state dict for {model}")
        return OpenClipEmbedder(model, str(path), f"open_clip:{model}:{file_sha256(path)}",
                                f"{model}:{path}", device)
    oc = _open_clip()
    cfg = oc.get_pretrained_cfg(model, weights)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(model)
        raise ModelError(f"{weights!r} is neither a checkpoint file nor a pretrained tag for {model}; "
                         f"known tags: {', '.join(tags) or 'none (use a local checkpoint)'}")
    canonical = f"open_clip:{model}:{weights}"
    hit = cached_weights(cfg)
    if hit is not None:
        # Load the cached file by path: same weights, same preprocessing, and no network round trip.
        overrides = {kw: cfg[k] for k, kw in _PREPROCESS_KEYS.items() if k in cfg}
        log.info("open_clip %s:%s from the local cache (%s)", model, weights, hit)
        return OpenClipEmbedder(model, str(hit), canonical, f"{model}:{weights}", device, **overrides)
    available, why = weights_status(spec)
    if not available:
        raise ModelError(_offline_message(model, weights, cfg, why))
    log.info("open_clip %s:%s: downloading weights (%s)", model, weights, why)
    return OpenClipEmbedder(model, weights, canonical, f"{model}:{weights}", device)
