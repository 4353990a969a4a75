"""Refining by feedback, measured with simulated users on the k-fold protocol (retrieval.refine_sim).

Every pooled image (train + test) queries the other folds; the first ranking is the unrefined
method's, an oracle marks the top 10 right or wrong by class, the query is refined (Rocchio,
retrieval.refine) and scored on the residual collection (the library minus everything shown so
far) against the same residual ranked by the unrefined method, in the same process. Round 2 shows
the next 10 of the refined ranking and refines with all 20 marks. Rocchio's weights are chosen on
the same folds (a plateau of the beta x gamma grid, kfold.plateau_cell); run another --seed to see
them hold on other folds. The row "Rocchio + classifier" is the measured alternative
(retrieval.refine_sim.Fusion: a logistic regression on the marks fused with Rocchio's scores).

    python -m bench.feedback [--index INDEX] [--seed S] [--rounds 2] [--grid]

Without --index: an effnet index of the sample library in bench.common.SAMPLE_INDEX, built on first
use and brought up to date on later ones.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from retrieval.kfold import build_pool, plateau_cell, stratified_folds
from retrieval.refine import DEFAULT_WEIGHTS, Weights
from retrieval.refine_sim import SHOWN, Fusion, Outcome, Variant, simulate
from retrieval.scoring import SEED, bootstrap_ci
from retrieval.search import LookalikeIndex

from .common import SAMPLE_INDEX, sample_effnet_index

BETAS = (0.25, 0.5, 1.0, 2.0, 4.0)      # alpha is 1: only the ratios matter (the weights are normalised)
GAMMAS = (0.0, 0.25, 0.5, 0.75)


def variants(index: LookalikeIndex, weights: Weights) -> list[Variant]:
    """Deep: Rocchio through plain cosine and through the best method, both after a first ranking
    by the best method, and the best method's Rocchio fused with a classifier on the marks
    (refine_sim.Fusion, the measured alternative); pixels: the best pixel methods with and without Rocchio."""
    best = index.best_method
    deep = index.parse_method(f"{best.source}-cosine")
    out = [Variant(f"{best} -> Rocchio, {deep}", best, deep, weights),
           Variant(f"{best} -> Rocchio, {best}", best, best, weights)]
    if best.reranked:
        out.append(Variant(f"{best} -> Rocchio + classifier, {best}", best, best, weights, Fusion()))
    for name in ("pixel-l1", "pixel-cosine+dba+qe"):
        if name in index.methods:
            m = index.parse_method(name)
            out += [Variant(f"{m}, no Rocchio (next results)", m, m, None), Variant(f"{m} -> Rocchio, {m}", m, m, weights)]
    return out


def _ci(x: np.ndarray) -> str:
    lo, hi = bootstrap_ci(x)
    return f"{x.mean():.3f} ({lo:.3f}-{hi:.3f})"


def table(outcomes: dict[str, Outcome], rounds: int) -> str:
    """Markdown: per variant and round, residual mAP without and with feedback, and the paired gain."""
    lines = ["| variant | round | no feedback mAP (95% CI) | refined mAP (95% CI) | gain (95% CI) | ratio |",
             "|---|---|---|---|---|---|"]
    for name, o in outcomes.items():
        for r in range(rounds):
            gain = o.refined[r] - o.baseline[r]
            ratio = o.refined[r].mean() / max(o.baseline[r].mean(), 1e-12)
            lines.append(f"| {name} | {r + 1} | {_ci(o.baseline[r])} | {_ci(o.refined[r])} | "
                         f"{gain.mean():+.3f} ({bootstrap_ci(gain)[0]:+.3f} to {bootstrap_ci(gain)[1]:+.3f}) | "
                         f"{ratio:.2f}x |")
    return "\n".join(lines)


def grid(index: LookalikeIndex, pool, folds, settings, variant: Variant) -> tuple[Weights, str]:
    """Round-1 gain of `variant` over BETAS x GAMMAS, and the plateau cell's weights."""
    cells = {}
    for b in BETAS:
        for g in GAMMAS:
            v = replace(variant, weights=Weights(1.0, b, g))
            o = simulate(pool, folds, [v], settings, rounds=1)[v.name]
            cells[(b, g)] = float((o.refined[0] - o.baseline[0]).mean())
    (b, g), worst = plateau_cell(cells)
    lines = [f"round-1 mAP gain of {variant.refine} on the residual, alpha = 1:", "",
             "| beta \\ gamma | " + " | ".join(f"{x:g}" for x in GAMMAS) + " |", "|---|" + "---|" * len(GAMMAS)]
    lines += [f"| {x:g} | " + " | ".join(f"{cells[(x, y)]:+.3f}" for y in GAMMAS) + " |" for x in BETAS]
    lines.append(f"\nplateau cell: beta={b:g}, gamma={g:g} (gain {cells[(b, g)]:+.3f}, neighbours >= {worst:+.3f})")
    return Weights(1.0, b, g), "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.feedback", description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, default=None,
                   help=f"a built index (default: an effnet index of the sample library in {SAMPLE_INDEX}, "
                        "built on first use and brought up to date on later ones)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the fold assignment")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--grid", action="store_true", help="also choose Rocchio's weights on a beta x gamma grid")
    args = p.parse_args(argv)
    index_dir = sample_effnet_index(args.index)
    index = LookalikeIndex.open(index_dir)
    pool = build_pool(index)
    folds = stratified_folds(pool.labels, seed=args.seed)
    settings = {src: index.rerank_settings(src) for src in index.sources()}
    weights = DEFAULT_WEIGHTS
    print(f"# {len(pool.labels)} queries, {len(set(pool.labels.tolist()))} classes, 5 folds, seed {args.seed}; "
          f"{SHOWN} results marked per round; first ranking: {index.best_method}; index {index_dir}")
    if args.grid:
        plain = [v for v in variants(index, weights) if v.fusion is None]
        for v in plain[:2] + [v for v in plain[2:] if v.weights][:1]:
            chosen, text = grid(index, pool, folds, settings, v)
            print("\n" + text)
            if v.refine == index.best_method:
                weights = chosen
    print(f"\nRocchio weights: alpha={weights.alpha:g}, beta={weights.beta:g}, gamma={weights.gamma:g} "
          f"(retrieval.refine defaults: {DEFAULT_WEIGHTS.alpha:g}, {DEFAULT_WEIGHTS.beta:g}, {DEFAULT_WEIGHTS.gamma:g})\n")
    outcomes = simulate(pool, folds, variants(index, weights), settings, rounds=args.rounds)
    print(table(outcomes, args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
