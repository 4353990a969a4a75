"""Probe: which of the offline backbone's feature changes pays, one at a time, on the k-fold protocol.

For every image of the sample library (train and test pooled) the backbone's feature map is taken
once per input (timm's centre crop, and the whole image) and pooled two ways (average, GeM p=2);
each of the four vector sets is scored by 5-fold mAP of plain cosine and of cosine+DBA+alpha-QE
(the recorded k, alpha). `python -m bench.feature_probe --data data` (a few minutes on 2 cores).
With `--cost N`, instead: the CPU seconds (all threads; wall time on a shared machine is noise) of
embedding N library images through `Embedder.encode_files` with each input, decoding included.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from retrieval.embedders.backbone import EffnetEmbedder, gem
from retrieval.images import load_image
from retrieval.kfold import Pool, kfold_method_aps, stratified_folds
from retrieval.library import file_sha256, scan_split
from retrieval.methods import Method
from retrieval.rerank import settings_for


def _vectors(emb: EffnetEmbedder, images: list, preprocess) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {"avg": [], "gem": []}
    with torch.inference_mode():
        for img in images:
            x = preprocess(img.convert("RGB")).unsqueeze(0)
            fmap = emb.model.forward_features(x.contiguous(memory_format=torch.channels_last))
            for name, v in (("avg", fmap.float().mean(dim=(2, 3))), ("gem", gem(fmap))):
                out[name].append(torch.nn.functional.normalize(v, dim=-1).numpy()[0])
    return {k: np.stack(v) for k, v in out.items()}


def cost(emb: EffnetEmbedder, paths: list[Path], crops: dict) -> None:
    """CPU seconds per 100 images of encode_files with each input (the same pooling code)."""
    from retrieval.embedders.preprocessing import split_transform
    print("| input | CPU s per 100 images |\n|---|---|")
    for crop, pre in crops.items():
        emb.preprocess, emb.split = pre, split_transform(pre)
        list(emb.encode_files(paths[:8], progress=False))   # warm-up
        c0 = time.process_time()
        for _ in emb.encode_files(paths, progress=False):
            pass
        print(f"| {crop} | {100 * (time.process_time() - c0) / len(paths):.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cost", type=int, default=0, help="time embedding this many images instead")
    args = ap.parse_args()
    from timm.data import create_transform, resolve_model_data_config
    emb = EffnetEmbedder(device="cpu")
    items = [it for split in ("train", "test") for it in scan_split(args.data, split) if it.label]
    labels = np.array([it.label for it in items])
    crops = {"centre crop": create_transform(**resolve_model_data_config(emb.model)), "whole image": emb.preprocess}
    if args.cost:
        return cost(emb, [it.path(args.data) for it in items[:args.cost]], crops)
    images = [load_image(it.path(args.data)) for it in items]
    shas = [file_sha256(it.path(args.data)) for it in items]
    folds = stratified_folds(labels, 5, args.seed)
    plain, reranked = Method("effnet", "cosine"), Method("effnet", "cosine", dba=True, qe=True)
    print("| input | pooling | plain cosine | +dba+qe |\n|---|---|---|---|")
    for crop, pre in crops.items():
        for pooling, vecs in _vectors(emb, images, pre).items():
            pool = Pool(labels, [it.rel for it in items], shas, {"effnet": vecs}, 32)
            a = kfold_method_aps(pool, plain, folds, None)[0].mean()
            b = kfold_method_aps(pool, reranked, folds, settings_for("clip"))[0].mean()
            print(f"| {crop} | {pooling} | {a:.3f} | {b:.3f} |", flush=True)


if __name__ == "__main__":
    main()
