"""Command line: `python -m retrieval search|evaluate|methods` and `build_index.py index`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import LookalikeError, Remedy
from .methods import PIXEL_DEFAULT
from .paths import DEFAULT_DATA, DEFAULT_INDEX
from .runner import run


def plural(n: int, word: str, many: str | None = None) -> str:
    """"1 image", "2 images", "1,204 images": a count with its noun in the right number."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX, help=f"index folder (default: {DEFAULT_INDEX})")
    p.add_argument("--data", type=Path, default=None,
                   help="library root, if it moved since the index was built (default: as recorded)")
    p.add_argument("--pixel-size", type=int, default=None, help="refuse an index built at another size")
    p.add_argument("--model", default=None, help="refuse an index built with another model")
    p.add_argument("--chroma-url", default=None, help="Chroma server http://HOST:PORT (default: as recorded)")


_MODELS = "--model effnet (offline) or --model ViT-B-32:laion2b_s34b_b79k (CLIP, online)"
_CLIP = "--model ViT-B-32:laion2b_s34b_b79k (online) or --model ViT-B-32:/path/to/checkpoint.pt"


def remedy_hint(exc: LookalikeError, args: argparse.Namespace) -> str | None:
    """An error's remedy (retrieval.errors.Remedy) as a command of this command line, or None when
    no command helps. The core says what to do in plain words; only here are flags named."""
    if exc.remedy is None:
        return None
    index = getattr(args, "index", None) or DEFAULT_INDEX
    data = getattr(args, "data", None)
    build = f"python build_index.py index{f' --data {data}' if data else ''} --index {index}"
    model, size = getattr(args, "model", None), getattr(args, "pixel_size", None)
    commands = {
        Remedy.BUILD_INDEX: build, Remedy.REBUILD_INDEX: build, Remedy.REPAIR_INDEX: build,
        Remedy.BUILD_WITH_MODEL: f"{build} {_MODELS}",
        Remedy.BUILD_WITH_CLIP: f"{build} {_CLIP}",
        Remedy.MATCH_PIXEL_SIZE: f"{build} --pixel-size {size}" if size else build,
        Remedy.MATCH_MODEL: f"{build} --model {model}" if model else build,
        Remedy.BUILD_SAMPLE: f"python build_index.py sample --out {getattr(args, 'data', None) or DEFAULT_DATA}",
        Remedy.WAIT_FOR_BUILD: "add --lock-wait SECONDS to wait for the other build",
        Remedy.START_CHROMA: "chroma run --path DIR --host HOST --port PORT, or leave out --chroma-url",
    }
    return commands.get(exc.remedy)


def open_index(args: argparse.Namespace):
    from .search import LookalikeIndex
    return LookalikeIndex.open(args.index, pixel_size=args.pixel_size, model=args.model,
                               data_dir=args.data, chroma_url=args.chroma_url,
                               precision=getattr(args, "precision", None))


def _composed_terms(args: argparse.Namespace) -> list | None:
    """The terms of a composed query (--query/--minus), or None for a plain image or text query.
    The positional IMAGE and --text join in as weight-1 terms."""
    if not (args.query or args.minus):
        return None
    from .compose import Term, parse_terms
    plain = ([Term(1.0, image=str(args.image), name=str(args.image))] if args.image is not None else []) + \
            ([Term(1.0, text=args.text)] if args.text is not None else [])
    return plain + parse_terms(args.query, args.minus)


def _print_hits(hits, method: str, order, secs: float, loaded: set, load_secs: float) -> None:
    """Tab-separated hits for scripts: the scores in one format (same decimals, no thousands
    separators so that they parse as numbers)."""
    from .compare import score_column
    if loaded:
        print(f"# loaded the {' and '.join(sorted(loaded))} in {load_secs:.2f} s")
    print(f"# {method} ({'higher' if order.higher_is_better else 'lower'} is more similar), "
          f"query {secs * 1000:.1f} ms")
    print("rank\tclass\tscore\tpath")
    for h, score in zip(hits, score_column(order, [h.score for h in hits], thousands=False)):
        print(f"{h.rank}\t{h.label or '-'}\t{score}\t{h.path}")


def cmd_search(args: argparse.Namespace) -> int:
    terms = _composed_terms(args)
    if terms is None and (args.image is None) == (args.text is None):
        raise LookalikeError("give exactly one query: an IMAGE path or --text 'a prompt' "
                             "(or a composed query: --query TERM ... --minus TERM)")
    if (args.more_like or args.less_like) and (terms is not None or args.text is not None):
        raise LookalikeError("--more-like and --less-like refine an IMAGE query, not --text or a composed query")
    index = open_index(args)
    if terms is not None:   # refused with a clear message on a pixel-only index or text terms without CLIP
        method = args.method or (str(index.default_method) if index.manifest.embedder else None)
        # The model loads before the timed query (pixel-only: search_composed refuses at once).
        loaded, load_secs = index.prepare(method) if method else (set(), 0.0)
        hits, secs = index.search_composed(terms, method, args.k)
        assert method is not None   # search_composed refuses a pixel-only index, the one case without a method
        print("# composed query: " + " ".join(f"{t.weight:+g}*{t.text!r}" if t.is_text else f"{t.weight:+g}*{t.name}"
                                              for t in terms))
        _print_hits(hits, method, index.parse_method(method), secs, loaded, load_secs)
        return 0
    if args.text is not None and not index.has_text:   # the helpful refusal, whatever --method names
        index.search_text(args.text, None, args.k)
    method = args.method or str(PIXEL_DEFAULT if args.text is None else index.default_method)
    order = index.parse_method(method)
    # Loading the model (and Chroma) is reported apart from the query; a text query on an index
    # without a text tower is refused by search_text before anything loads.
    loaded, load_secs = index.prepare(method) if args.text is None or index.has_text else (set(), 0.0)
    marks = None
    if args.more_like or args.less_like:
        from .refine import refine_cli
        hits, secs, marks = refine_cli(index, args.image, args.more_like, args.less_like, method, args.k)
    elif args.text is not None:
        hits, secs = index.search_text(args.text, method, args.k)
    else:
        hits, secs = index.search(args.image, method, args.k)
    _print_hits(hits, method, order, secs, loaded, load_secs)
    if marks:
        print(f"# refined with {plural(marks[0], 'image')} marked right and {plural(marks[1], 'image')} marked wrong")
    if args.plot:
        if args.image is None:
            raise LookalikeError("--plot needs an image query")
        from .plot import plot_results
        print(f"saved {plot_results(args.image, hits, method, args.plot)}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """`evaluate`: the protocol asked for, decided by retrieval.evaluate.run; with --save both
    protocols, written to evaluation.json as the build writes it."""
    from . import evaluation_file
    from .evaluate import format_table, run as evaluate
    from .kfold import format_tune
    index = open_index(args)
    result = evaluate(index, "both" if args.save else args.protocol, methods=args.methods or None,
                      folds=args.folds, seed=args.seed, tune=args.tune and not args.save)
    notes = sys.stderr if args.json else sys.stdout   # with --json, stdout holds the JSON alone
    if result.note:   # no test split (or nothing readable in it)
        print(f"# {result.note}; k-fold instead (--protocol kfold)", file=notes)
    report = result.report
    if report is None:   # unlabelled, or a single class: nothing wrong, nothing to score
        print(f"# {result.skipped}", file=notes)
        return 0
    if args.save:
        evaluation_file.write(index.index_dir, report)
    if report["protocol"] == "kfold":   # k-fold alone, and with --tune the k x alpha grid per re-ranked source
        if args.json:
            print(json.dumps(report if args.save else {**report, "tune": result.tuning}, indent=1))
        else:
            print("\n".join([format_table(report), *map(format_tune, result.tuning)]))
    elif args.json:
        print(json.dumps(report, indent=1))
    elif args.protocol == "test":
        print(format_table(report))
    else:
        print("## test split as queries\n\n" + format_table(report))
        kfold = report.get("kfold")
        if kfold is not None and "methods" in kfold:
            print("\n## k-fold\n\n" + format_table(kfold))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """`compare IMAGE`: every method's top k side by side, hits marked where the class is known."""
    from .compare import compare, format_rows
    index = open_index(args)
    for method in args.methods or index.methods:   # load the model and Chroma before timing
        index.prepare(method)
    result = compare(index, args.image, args.methods or None, args.k, label=args.label)
    print(format_rows(index, result))
    if args.plot:
        from .plot import plot_comparison
        print(f"saved {plot_comparison(args.image, result, index, args.plot)}")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .metrics import METRICS
    index = open_index(args)
    for name in index.methods:
        m = index.parse_method(name)
        line = f"{name}\t{METRICS[m.metric].order}\t{'HNSW (Chroma)' if m.hnsw else 'exact'}"
        if m.reranked:   # what the re-ranking adds, and its recorded k / alpha / space
            from .rerank import describe
            line += "\tre-ranked: " + " + ".join(x for x, on in (("DBA", m.dba), ("alpha-QE", m.qe), ("k-reciprocal", m.kr)) if on) \
                + f", {describe(index.rerank_settings(m.source))}"
        print(line)
    for source, why in (index.manifest.rerank.skipped if index.manifest.rerank else {}).items():
        print(f"# no re-ranked methods for {source}: {why}")
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    """Groups of near-duplicates from the index's stored vectors (or pHash of its pixels); with
    --quarantine, move all but one of each group aside; with --undo, move them back."""
    if args.undo is not None:
        return _undo_quarantine(args.undo)
    if args.dry_run and args.quarantine is None:
        raise LookalikeError("--dry-run goes with --quarantine DIR: it shows what would move")
    from .duplicates import find_duplicates
    index = open_index(args)
    report = find_duplicates(index, args.threshold, args.features)
    if args.json and args.quarantine is None and args.export is None:
        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
        return 0
    what = "perceptual hash of the pixels" if report.kind == "phash" else f"{report.kind} embeddings"
    print(f"# {plural(len(report.groups), 'group')} of near-duplicates among {plural(len(report.rels), 'image')} "
          f"({what}, similarity >= {report.threshold:.3f})")
    if args.quarantine is not None or args.export is not None:
        return _act_on_duplicates(args, index, report)
    for n, g in enumerate(report.groups, 1):
        sim = (f"{g.min_similarity:.3f}" if g.min_similarity == g.max_similarity
               else f"{g.min_similarity:.3f}-{g.max_similarity:.3f}")
        print(f"group {n}: {plural(len(g.rows), 'image')}, " + ("exact copies (same bytes)" if g.all_exact else f"similarity {sim}"))
        for row in g.rows:
            print(f"  {index.paths[row]}")
    return 0


def _act_on_duplicates(args: argparse.Namespace, index, report) -> int:
    """--export and --quarantine: each group's kept image and the kind of each other one (its
    members are read), then the export file and the moves (or, with --dry-run, what would move)."""
    from .duplicate_groups import analyse, write_export
    from .quarantine import MOVED, REFUSED, move_aside, plan
    from .runner import DONE_WITH_SKIPS
    analysis = analyse(index, report)
    if args.export is not None:
        print(f"groups with each image's kind written to {write_export(analysis, args.export)}")
    if args.quarantine is None:
        return 0
    record = plan(analysis, index.data_dir, args.quarantine, index.index_dir)
    path = move_aside(record, args.quarantine) if record.moves and not args.dry_run else None
    print("\n".join(record.lines(args.quarantine, done=path is not None)))
    if path is None:
        return 0
    print(f"record: {path}; to undo: python -m retrieval duplicates --undo {path}")
    if record.of(MOVED):
        print(f"the index is out of date ({plural(len(record.of(MOVED)), 'file')} moved): rebuild it with "
              f"{_rebuild(index.data_dir, args.index, index.manifest)}")
    return DONE_WITH_SKIPS if record.of(REFUSED) else 0


def _rebuild(data: Path, index_dir: Path, manifest) -> str:
    """The command that rebuilds an index as it was built (its model and pixel size)."""
    from .indexing import DEFAULT_PIXEL_SIZE
    emb, size = manifest.embedder, manifest.pixel_size
    return (f"python build_index.py index --data {data} --index {index_dir} --model {emb.source if emb else 'none'}"
            + (f" --pixel-size {size}" if size != DEFAULT_PIXEL_SIZE else ""))


def _undo_quarantine(record_file: Path) -> int:
    """--undo RECORD: move the quarantined files back, each where it came from; then whether the
    index the groups came from still lists them (it was not rebuilt in between)."""
    from .quarantine import undo
    from .runner import DONE_WITH_SKIPS
    result = undo(record_file)
    print("\n".join(result.lines()))
    manifest = result.index_manifest()
    if result.restored and manifest is not None and result.index_lists_restored(manifest):
        print(f"the index {result.record.index} still lists the restored files: nothing to rebuild")
    elif result.restored:
        library, index_dir = result.record.library, result.record.index or "INDEX"
        print("the index may be out of date: rebuild it with "
              + (_rebuild(Path(library), Path(index_dir), manifest) if manifest else
                 f"python build_index.py index --data {library} --index {index_dir}"))
    return DONE_WITH_SKIPS if result.refused else 0


def cmd_index(args: argparse.Namespace) -> int:
    """The `index` stage, for both `build_index.py index` and `build_index.py all`."""
    from .indexing import build_index
    summary = build_index(args.data, args.index, pixel_size=args.pixel_size, model=args.model,
                          chroma_url=args.chroma_url, evaluate=not args.no_eval, batch_size=args.batch_size,
                          labels=getattr(args, "labels", "auto"), lock_wait=getattr(args, "lock_wait", 0.0),
                          precision=getattr(args, "precision", "auto"), rerank=getattr(args, "rerank", "auto"))
    print(f"indexed {plural(summary['images'], 'image')} at {summary['pixel_size']}px "
          f"({summary['embedded']:,} embedded, {len(summary['skipped']):,} skipped) -> {args.index}")
    rc = report_skips(summary, args.index)
    for source, why in summary.get("rerank_skipped", {}).items():
        print(f"no re-ranked methods for {source}: {why}")
    if "evaluation_note" in summary:
        print(f"evaluation: {summary['evaluation_note']}")
    if "evaluation" in summary:
        from .evaluate import format_table
        print(format_table(summary["evaluation"]))
    elif "evaluation_skipped" in summary:
        print(f"evaluation skipped: {summary['evaluation_skipped']}")
    return rc


def report_skips(summary: dict, index: Path) -> int:
    """A bounded report of the skipped files (counts by reason, a few examples; the full list is
    in the manifest) and the exit code: DONE_WITH_SKIPS when some could not be read."""
    from .library import summarize_skips
    from .paths import MANIFEST
    from .runner import DONE_WITH_SKIPS
    changed = summary.get("changed_during_build") or []
    if changed:
        print(f"{plural(len(changed), 'file')} changed while the build read {'it' if len(changed) == 1 else 'them'} "
              f"(e.g. {', '.join(changed[:3])}): each is indexed as one version, the one read; a later change is "
              "picked up by the next build")
    if not summary["skipped"]:
        return 0
    print(f"{summarize_skips(summary['skipped'])}; the full list is under \"skipped\" in {Path(index) / MANIFEST}")
    if not summary.get("unread"):
        return 0
    one = summary["unread"] == 1
    print(f"{summary['unread']:,} of the skipped files could not be read ({'it' if one else 'they'} disappeared or "
          "changed during the build, or access was denied): the index holds the rest; rerun the build, after "
          f"fixing access, to index {'it' if one else 'them'} (exit code {DONE_WITH_SKIPS})")
    return DONE_WITH_SKIPS


def add_precision_option(p: "argparse.ArgumentParser | argparse._ArgumentGroup", what: str) -> None:
    """--precision {auto,fp32,bf16}, shared by the index build, search and the app."""
    from .embedders.precision import PRECISIONS
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help=f"{what}: 'auto' (bf16 where the CPU has native bf16 and a short timed "
                        "calibration finds it faster, else fp32; fp16 on a GPU), 'fp32' or 'bf16'")


def add_index_build_options(p: "argparse.ArgumentParser | argparse._ArgumentGroup") -> None:
    """The index stage's options (all but --data/--index), shared by `index` and `all`."""
    from .indexing import DEFAULT_PIXEL_SIZE
    p.add_argument("--pixel-size", type=int, default=DEFAULT_PIXEL_SIZE,
                   help=f"side of the resized pixel vectors (default: {DEFAULT_PIXEL_SIZE})")
    p.add_argument("--model", default="auto",
                   help="embedder: 'auto' (CLIP if its weights are available, else the offline "
                        "efficientnet-lite0 backbone), 'effnet', an open_clip spec such as "
                        "ViT-B-32:laion2b_s34b_b79k or ViT-B-32:/path/ckpt.pt, or 'none' (pixels only)")
    p.add_argument("--chroma-url", default=None, help="use a Chroma server http://HOST:PORT instead of the embedded store")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default: 32)")
    p.add_argument("--no-eval", action="store_true", help="skip writing evaluation.json")
    from .rerank import DBA_AUTO_MAX_BYTES, MODES
    p.add_argument("--rerank", choices=MODES, default="auto",
                   help="re-ranked methods (DBA, alpha-QE): 'auto' for each source whose re-ranking rows fit "
                        f"{DBA_AUTO_MAX_BYTES >> 20} MiB (large libraries and big pixel sizes go without), "
                        "'on' always, 'off' never")
    add_precision_option(p, "the model's precision while embedding")
    p.add_argument("--lock-wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another build of the same index folder is running, wait up to SECONDS for "
                        "it to finish (default: 0, refuse at once with a message naming the lock)")
    p.add_argument("--labels", choices=("auto", "folders", "none"), default="auto",
                   help="classes: 'auto' (train/<class>, or two or more top-level folders and no loose "
                        "images), 'folders' (the top-level folder is the class) or 'none' (unlabelled)")


def register_index(sub: "argparse._SubParsersAction") -> None:
    """The `index` stage of build_index.py."""
    p = sub.add_parser("index", help="build or update the search index of a library folder",
                       description="Resize every library image once (pixel index), embed new or changed "
                                   "images (--model), sync the Chroma collections and write evaluation.json "
                                   "(where the library has classes and a test split). The library is any "
                                   "folder of images: flat, nested, or train/<class> + test/<class>.")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"library folder: any folder of images, or train/ + test/ (default: {DEFAULT_DATA})")
    p.add_argument("--index", type=Path, default=DEFAULT_INDEX, help=f"index folder (default: {DEFAULT_INDEX})")
    add_index_build_options(p)
    p.set_defaults(func=cmd_index)


def _duplicates_parser(sub: "argparse._SubParsersAction") -> None:
    d = sub.add_parser("duplicates", help="groups of near-duplicate images; move all but one of each aside, or back",
                       description="Near-duplicates (resized, recompressed, lightly cropped or brightened copies) "
                                   "from the stored embeddings, or a perceptual hash of the stored pixels for a "
                                   "pixel-only index. Listing decodes nothing; --export and --quarantine read "
                                   "each group's images to keep the largest and tell the kind of each copy.")
    d.add_argument("--threshold", type=float, default=None,
                   help="similarity from 0 to 1 (default: measured per feature kind, see docs/own-photos.md)")
    d.add_argument("--features", choices=("auto", "embeddings", "phash"), default="auto",
                   help="auto: embeddings when the index has them, else the perceptual hash")
    d.add_argument("--json", action="store_true", help="print the groups as JSON instead of text")
    d.add_argument("--export", type=Path, default=None, metavar="FILE",
                   help="write the groups, with the kept image and the kind of each copy, to FILE (.json or .csv)")
    act = d.add_mutually_exclusive_group()
    act.add_argument("--quarantine", type=Path, default=None, metavar="DIR",
                     help="move all but the kept image (the largest, then the first by name) of each group into "
                          "DIR, under their library paths, and write a record there that --undo reads")
    act.add_argument("--undo", type=Path, default=None, metavar="RECORD",
                     help="move the files a --quarantine record lists back where they were (needs no index)")
    d.add_argument("--dry-run", action="store_true", help="with --quarantine: print what would move, move nothing")
    index_args(d)
    d.set_defaults(func=cmd_duplicates)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m retrieval", description="Search and evaluate a Lookalike index.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("search", help="rank the library for an image (or --text) query")
    s.add_argument("image", nargs="?", type=Path, help="query image path")
    s.add_argument("--text", default=None, help="text query (CLIP indexes only)")
    s.add_argument("--query", "--add", "-q", action="append", default=[], metavar="TERM",
                   help="composed query term, repeatable: a text or an image path, optionally weighted "
                        "as W:TERM, e.g. --query '2:red car' --query photo.jpg (rclip's --add)")
    s.add_argument("--minus", "--subtract", action="append", default=[], metavar="TERM",
                   help="term to push results away from, e.g. --minus night (rclip's --subtract)")
    s.add_argument("--method", default=None, help="e.g. pixel-l1, pixel-corr, effnet-cosine, clip-hnsw-cosine")
    s.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--plot", type=Path, default=None, help="save the query and results as a PNG")
    s.add_argument("--more-like", action="append", default=[], metavar="PATH",
                   help="refine: a library image (path or path in the library) marked right, repeatable")
    s.add_argument("--less-like", action="append", default=[], metavar="PATH", help="refine: one marked wrong")
    add_precision_option(s, "the model's precision for the query")
    index_args(s)
    s.set_defaults(func=cmd_search)
    e = sub.add_parser("evaluate", help="P@1/5/10 and mAP per method, test split as queries")
    e.add_argument("--json", action="store_true", help="print JSON instead of a table")
    e.add_argument("--methods", nargs="*", default=None, help="only these methods")
    e.add_argument("--save", action="store_true",
                   help="also write INDEX/evaluation.json (read by the app; it holds both protocols)")
    e.add_argument("--protocol", choices=("test", "kfold", "both"), default="test",
                   help="test: the test split queries the train library (default); kfold: train+test pooled "
                        "into seeded class-stratified folds, each image queries the other folds; both")
    e.add_argument("--folds", type=int, default=5, help="k of k-fold (default 5)")
    e.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    e.add_argument("--tune", action="store_true",
                   help="with --protocol kfold: also print the re-ranking k x alpha table per vector source")
    index_args(e)
    e.set_defaults(func=cmd_evaluate)
    c = sub.add_parser("compare", help="one query through every method, side by side",
                       description="Rank the library for IMAGE by every method (pixels, deep exact, HNSW, "
                                   "re-ranked): top k per method, hits marked + / - where the query's class is "
                                   "known (a library or test-split image, or --label), P@k and this query's AP.")
    c.add_argument("image", type=Path, help="query image path")
    c.add_argument("-k", type=int, default=5, help="results per method (default 5)")
    c.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    c.add_argument("--label", default=None, help="the query's class, when it is not a library or test image")
    c.add_argument("--plot", type=Path, default=None, help="save one row per method as a PNG")
    index_args(c)
    c.set_defaults(func=cmd_compare)
    _duplicates_parser(sub)
    m = sub.add_parser("methods", help="list the methods this index offers and their sort order")
    index_args(m)
    m.set_defaults(func=cmd_methods)
    from . import cli_explain, cli_map   # explain a result, draw the library's maps
    cli_explain.register(sub)
    cli_map.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(make_parser(), argv)
