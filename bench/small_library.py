"""Small libraries and the library-side transform: k-fold mAP of `effnet-cosine+dba+qe` on class-
stratified subsets of an index's library (train + test pooled), without the transform, with
centring only, with the rule's transform (retrieval.rerank.transform.basis_size: centring alone below
2 x 128 images) and with a basis of min(128, rows - 1) forced. (The table in docs/evaluation.md also has
a column of N/2 directions, an earlier rule.) `python -m bench.small_library --index INDEX`.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.kfold import Pool, build_pool, kfold_method_aps, stratified_folds
from retrieval.methods import Method
from retrieval.rerank import settings_for
from retrieval.rerank import transform as tf
from retrieval.search import LookalikeIndex


def subset(pool: Pool, per_class: int, seed: int = 0) -> Pool:
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(pool.labels == c))[:per_class]
                                   for c in sorted(set(pool.labels.tolist()))]))
    return Pool(pool.labels[keep], [pool.rels[i] for i in keep], [pool.shas[i] for i in keep],
                {k: v[keep] for k, v in pool.vectors.items()}, pool.pixel_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--index", type=Path, required=True)
    args = ap.parse_args()
    pool = build_pool(LookalikeIndex.open(args.index), sources=["effnet"])
    m = Method("effnet", "cosine", dba=True, qe=True)
    s = settings_for("effnet")
    print("| images per class | library per fold | none | centre | rule (basis) | PCA forced |\n|---|---|---|---|---|---|")
    for per_class in (3, 5, 8, 12, 20, 30):
        sub = subset(pool, per_class)
        folds = stratified_folds(sub.labels, 5, 0)
        lib = int(round(len(sub.labels) * 4 / 5))
        row = []
        for settings in (replace(s, centre=False, pca=0), replace(s, pca=0), s):
            row.append(kfold_method_aps(sub, m, folds, settings)[0].mean())
        saved = (tf.PCA_MIN_ROWS, tf.PCA_MIN_PER_DIM)
        tf.PCA_MIN_ROWS, tf.PCA_MIN_PER_DIM = 2, 1
        try:
            forced = kfold_method_aps(sub, m, folds, replace(s, pca=min(s.pca, lib - 1)))[0].mean()
        finally:
            tf.PCA_MIN_ROWS, tf.PCA_MIN_PER_DIM = saved
        print(f"| {per_class} | {lib} | {row[0]:.3f} | {row[1]:.3f} | {row[2]:.3f} ({tf.basis_size(lib, s.pca, 1280)}) | "
              f"{forced:.3f} |", flush=True)


if __name__ == "__main__":
    main()
