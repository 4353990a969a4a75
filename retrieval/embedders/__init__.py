"""Deep-feature embedders behind one small interface, and `load_embedder(spec)` to pick one.

The shared work (device, half precision, eval/inference mode, batching, L2 normalisation and the
threaded decode pipeline that streams a library batch by batch) lives once in `Embedder`; the
subclasses only bring a model, its preprocessing and the call that turns a batch into features.

Specs (what a user types after --model):
  None / "auto"                      default CLIP when its weights are local or reachable, else effnet
  "effnet" / "efficientnet-lite0"    the offline ImageNet backbone (image-only)
  "ViT-B-32:laion2b_s34b_b79k"       open_clip model + published pretrained tag (Hub, or HF cache)
  "ViT-B-32:/path/to/ckpt.pt"        open_clip model + local state dict
The canonical `spec` an embedder reports (recorded in the index manifest) is stable across
machines: "open_clip:<model>:<tag>", "open_clip:<model>:<sha256 of the checkpoint>" or
"effnet:efficientnet-lite0:whole224-gem2" (the older "effnet:efficientnet-lite0" named centre-crop,
average-pooled vectors: an index built with it re-embeds on its next build).
"""
from __future__ import annotations

import abc
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ImageError, ModelError, Remedy
from ..images import cap_aspect, flatten_to_rgb, load_image
from .preprocessing import split_transform

log = logging.getLogger(__name__)

DEFAULT_CLIP = "ViT-B-32:laion2b_s34b_b79k"   # why: docs/deep-search.md
BACKBONE_NAMES = frozenset({"effnet", "efficientnet-lite0", "effnet:efficientnet-lite0",
                            "effnet:efficientnet-lite0:whole224-gem2"})

Preprocess = Callable[[Image.Image], torch.Tensor]


def pick_device() -> torch.device:
    """CUDA when present, else CPU (the 2-vCPU Space and this machine)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Embedder(abc.ABC):
    """Turns images (and, for CLIP, texts) into L2-normalised float32 vectors."""

    name: str          # method prefix: "clip" or "effnet"
    spec: str          # canonical spec for the manifest; equal specs mean interchangeable vectors
    source: str        # what to pass back to load_embedder to get this model again on this machine
    dim: int
    has_text: bool = False
    channels_last: bool = False   # convnets run faster on CPU with NHWC tensors
    cpu_batch: int = 32           # most rows per model call on CPU (cache-bound convnets want fewer)

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess,
                 device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else pick_device()
        # Half precision on GPU; on CPU fp32 until set_precision("bf16") (see precision.py): CPU
        # fp16 matmuls are slow or unsupported, bf16 ones are fast only on CPUs with native bf16.
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.precision = "fp16" if self.device.type == "cuda" else "fp32"
        model = model.to(device=self.device, dtype=self.dtype)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        # One model per precision used so far; the first (fp32 on CPU) is the master copy that
        # other precisions are cast from, since casting bf16 back to fp32 would lose bits.
        self._models: dict[str, torch.nn.Module] = {self.precision: self.model}
        self.precision_record: dict[str, object] = {"requested": self.precision, "why": "default"}
        self.preprocess = preprocess
        # Per image only the PIL steps; ToTensor + Normalize run once per batch in embed_batch.
        self.split = split_transform(preprocess)

    def set_precision(self, precision: str) -> None:
        """Run the model in "fp32" or "bf16" (CPU) from now on; the other copy is kept for
        switching back (release_other_precisions frees it)."""
        from .precision import DTYPES, model_in
        if precision not in DTYPES:
            raise ModelError(f"unknown precision {precision!r}; choose fp32 or bf16")
        if precision not in self._models:
            master = next(iter(self._models.values()))
            self._models[precision] = model_in(master, DTYPES[precision], self.channels_last).eval()
        self.model, self.precision, self.dtype = self._models[precision], precision, DTYPES[precision]

    def release_other_precisions(self) -> None:
        """Keep only the model of the current precision (a query server needs one copy)."""
        self._models = {self.precision: self.model}

    def warm(self) -> None:
        """One model call on a test card, so the first real query does not pay for first-call setup
        (oneDNN primitives, allocator growth): the app's warm-up calls it. The text tower too."""
        self.embed_batch(self.probe_batch(1))
        if self.has_text:
            self.encode_text(["a photo"])

    def probe_batch(self, n: int) -> torch.Tensor:
        """n preprocessed copies of a grey test card: a real input shape for timing calls."""
        card = Image.new("RGB", (256, 256), (128, 128, 128))
        return torch.stack([self._prepare(card)] * n)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, dim={self.dim}, device={self.device})"

    # -- what subclasses provide -----------------------------------------------------------
    @abc.abstractmethod
    def _image_features(self, batch: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) features for a preprocessed batch already on device/dtype."""

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        raise ModelError(
            f"this model ({self.spec}) has no text encoder; text search needs a CLIP model, "
            f"e.g. {DEFAULT_CLIP} (online) or ViT-B-32:/path/to/checkpoint.pt", remedy=Remedy.BUILD_WITH_CLIP
        )

    # -- shared behaviour --------------------------------------------------------------------
    def _prepare(self, img: Image.Image) -> torch.Tensor:
        """(3, H, W): uint8 when the transform splits (normalised later, per batch), else float."""
        img = img if img.mode == "RGB" else flatten_to_rgb(img)
        return self.split.to_uint8(img) if self.split else self.preprocess(cap_aspect(img))  # bounded resize

    def embed_batch(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """One model call per input size on a batch (a stacked tensor, or a list of inputs of
        several sizes: the whole-image backbone keeps each image's aspect ratio), uint8 from
        _prepare or float already normalised -> normalised float32 rows on the CPU, in input order."""
        if isinstance(batch, torch.Tensor):
            return self._embed_stacked(batch)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, t in enumerate(batch):
            groups.setdefault(tuple(t.shape), []).append(i)
        out = np.zeros((len(batch), self.dim), dtype=np.float32)
        for rows in groups.values():
            out[rows] = self._embed_stacked(torch.stack([batch[i] for i in rows]))
        return out

    def _embed_stacked(self, batch: torch.Tensor) -> np.ndarray:
        step = len(batch) if self.device.type == "cuda" else self.cpu_batch
        with torch.inference_mode():
            if batch.dtype == torch.uint8:
                assert self.split is not None   # only the split transform yields uint8 inputs
                x = self.split.normalise(batch.to(device=self.device, non_blocking=True), self.dtype)
            else:
                x = batch.to(device=self.device, dtype=self.dtype, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            feats = torch.cat([self._image_features(x[i:i + step]) for i in range(0, len(x), step)])
            return F.normalize(feats.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """(n, dim) float32, unit rows. For a few in-memory images (queries); libraries use encode_files."""
        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            out.append(self.embed_batch(stack_inputs([self._prepare(im) for im in chunk])))
        return np.concatenate(out)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, unit rows; ModelError for image-only models."""
        if not self.has_text:
            self._text_features(texts)   # raises the "no text encoder" ModelError
        with torch.inference_mode():
            feats = self._text_features(list(texts)).float()
            return F.normalize(feats, dim=-1).cpu().numpy()

    def _decode(self, path: Path) -> torch.Tensor:
        return self._prepare(load_image(path, draft=self.split.draft_size if self.split else None))

    def prepare_bytes(self, data: bytes, name: str | None = None) -> torch.Tensor:
        """The model input for an image's bytes: the index build reads a file once and derives
        its hash, pixel row and this from the same bytes (retrieval.reading)."""
        return self._prepare(load_image(data, name=name, draft=self.split.draft_size if self.split else None))

    def encode_files(self, paths: Sequence, *, batch_size: int = 32, workers: int = 2, progress: bool = True,
                     decode: Callable[[Any], torch.Tensor] | None = None,
                     on_skip: Callable[[int, ImageError], None] | None = None
                     ) -> Iterator[tuple[list[int], np.ndarray]]:
        """Stream (indices_ok, vectors) batch by batch over image files.

        Decoding + preprocessing run in `workers` threads (PIL and torch release the GIL) while the
        model works on the previous batch, so at most two batches of pixels are in memory at once:
        a library larger than RAM is never loaded whole. Files that fail to decode are skipped
        (logged, or passed to on_skip(index, error)); their index is missing from indices_ok.
        workers=0 decodes inline. `decode` turns one item of `paths` into a model input (default:
        decode the file at that path); it signals a file to skip by raising ImageError.
        """
        paths = list(paths)
        decode_one = decode or self._decode
        starts = iter(range(0, len(paths), batch_size))
        bar = tqdm(total=len(paths), unit="img", desc=f"embedding ({self.name})", disable=not progress)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="decode") if workers > 0 else None

        def submit(start: int) -> list[tuple[int, Future | Path]]:
            idx = range(start, min(start + batch_size, len(paths)))
            if pool is None:
                return [(i, paths[i]) for i in idx]
            return [(i, pool.submit(decode_one, paths[i])) for i in idx]

        try:
            start = next(starts, None)
            batch = submit(start) if start is not None else None
            while batch is not None:   # the next batch decodes while the model works on this one
                start = next(starts, None)
                upcoming = submit(start) if start is not None else None
                ok: list[int] = []
                tensors: list[torch.Tensor] = []
                for i, job in batch:
                    try:
                        tensors.append(job.result() if isinstance(job, Future) else decode_one(job))
                        ok.append(i)
                    except ImageError as exc:
                        if on_skip is None:
                            log.warning("skipping %s", exc)
                        else:
                            on_skip(i, exc)
                bar.update(len(batch))
                if tensors:
                    batch_in = stack_inputs(tensors)
                    if self.device.type == "cuda":   # page-locked: the copy to the GPU runs asynchronously
                        batch_in = batch_in.pin_memory() if isinstance(batch_in, torch.Tensor) else \
                            [t.pin_memory() for t in batch_in]
                    yield ok, self.embed_batch(batch_in)
                batch = upcoming
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


def stack_inputs(tensors: Sequence[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """One stacked tensor when the inputs share a size, else the list (embed_batch groups it)."""
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(list(tensors))
    return list(tensors)


def load_embedder(spec: str | None = None, device: torch.device | str | None = None,
                  precision: str | None = None) -> Embedder:
    """The embedder a spec names (see the module docstring), in `precision` ("auto", "fp32",
    "bf16"; None keeps fp32 on CPU, fp16 on GPU); ModelError when it cannot be built."""
    embedder = _build_embedder(spec, device)
    if precision is not None:
        from .precision import resolve
        chosen, why = resolve(embedder, precision)
        if chosen != embedder.precision:
            embedder.set_precision(chosen)
        embedder.precision_record = why
    return embedder


def _build_embedder(spec: str | None, device: torch.device | str | None) -> Embedder:
    text = (spec or "auto").strip()
    if text.lower() == "auto":
        from .openclip import weights_status
        available, why = weights_status(DEFAULT_CLIP)
        if available:
            log.info("model: default CLIP %s (%s)", DEFAULT_CLIP, why)
            from .openclip import load_open_clip
            return load_open_clip(DEFAULT_CLIP, device=device)
        log.info("model: offline backbone efficientnet-lite0, because the default CLIP %s is "
                 "unavailable (%s); name a model to choose another", DEFAULT_CLIP, why)
        text = "effnet"
    if text.lower() in BACKBONE_NAMES:
        from .backbone import EffnetEmbedder
        return EffnetEmbedder(device=device)
    from .openclip import load_open_clip
    return load_open_clip(text, device=device)
