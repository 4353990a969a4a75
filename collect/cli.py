"""The collection stages of build_index.py: crawl, download, clean, split, push, pull, all.

Each stage is a thin wrapper over one function in `collect/`; each is idempotent and resumable, so
`all` simply runs them in order and a re-run picks up where the last one stopped. Working files
live under artifacts/collect/ by default (git-ignored); the library is data/, the index index/.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from retrieval.cli import add_index_build_options, cmd_index
from retrieval.errors import LookalikeError
from retrieval.paths import ARTIFACTS, DEFAULT_DATA, DEFAULT_INDEX
from retrieval.runner import DONE_WITH_SKIPS

log = logging.getLogger(__name__)

WORK = ARTIFACTS / "collect"
PATHS: dict[str, tuple[Path, str]] = {
    "urls": (WORK / "urls.json", "crawled URLs, {category: {term: [urls]}}"),
    "raw": (WORK / "raw", "downloaded images raw/<category>/<term>/ and manifest.json"),
    "clean": (WORK / "clean", "cleaned images clean/<class>/"),
    "quarantine": (WORK / "quarantine", "rejected images and reasons.jsonl"),
    "data": (DEFAULT_DATA, "the library data/{train,test}/<class>/"),
    "index": (DEFAULT_INDEX, "the index folder"),
}
DEFAULT_MAX_IMAGES = 24  # the seed's 19 train + 1 test, plus room for what the cleaner rejects


def _paths(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        default, what = PATHS[name]
        p.add_argument(f"--{name}", type=Path, default=default, metavar="FILE" if default.suffix else "DIR",
                       help=f"{what} (default: {default})")


def _count_or_all(text: str) -> int | None:
    if text.lower() == "all":
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more, or 'all'")
    return value


def _crawl_args(p: argparse.ArgumentParser, workers_flag: str, force_flag: str) -> None:
    from .crawl import FLICKR_SEARCH
    from .provenance import DEFAULT_LICENCES
    g = p.add_argument_group("crawl")
    g.add_argument("--categories", type=Path, default=None,
                   help="JSON {category: [terms]} (default: collect/categories.json, the seed's four categories)")
    g.add_argument("--search-url", default=FLICKR_SEARCH,
                   help="search page URL template with {term} (default: %(default)s)")
    g.add_argument("--licences", "--licenses", default=DEFAULT_LICENCES, metavar="IDS",
                   help="licence ids the search asks for, added as license=IDS (or a {licences} placeholder): "
                        "Flickr's Creative Commons and public-domain ids by default (%(default)s); "
                        "'any' for no filter. Recorded in urls.provenance.json and ATTRIBUTION.json")
    g.add_argument("--max-images", type=int, default=DEFAULT_MAX_IMAGES,
                   help="photo URLs to collect per term (default: %(default)s)")
    g.add_argument(workers_flag, dest="crawl_workers", type=int, default=3, metavar="N",
                   help="terms crawled in parallel, one headless Chromium each (default: %(default)s)")
    g.add_argument("--time-limit", type=float, default=120.0,
                   help="seconds of scrolling/paging per term (default: %(default)s)")
    g.add_argument("--scroll-pause", type=float, default=1.0,
                   help="seconds to wait after each scroll or 'load more' click (default: %(default)s)")
    g.add_argument(force_flag, dest="force_crawl", action="store_true",
                   help="crawl every term again (default: only terms missing from urls.json)")


def _download_args(p: argparse.ArgumentParser) -> None:
    from .download import DownloadConfig
    d = DownloadConfig()
    g = p.add_argument_group("download")
    g.add_argument("--workers", dest="download_workers", type=int, default=d.workers, metavar="N",
                   help="download threads (default: %(default)s)")
    g.add_argument("--delay", type=float, default=d.delay,
                   help="polite delay per host: one request at a time, and this many seconds from one "
                        "response to the next request (default: %(default)s)")
    g.add_argument("--connect-timeout", type=float, default=d.connect_timeout, help="seconds (default: %(default)s)")
    g.add_argument("--read-timeout", type=float, default=d.read_timeout,
                   help="seconds of silence before a download is a timeout (default: %(default)s)")
    g.add_argument("--retries", type=int, default=d.retries,
                   help="extra tries after a 5xx, 429 (Retry-After honoured), truncated body or reset (default: %(default)s)")
    g.add_argument("--max-mb", type=float, default=d.max_bytes / 2 ** 20,
                   help="largest image to download, in MiB (default: %(default)s)")
    g.add_argument("--max-redirects", type=int, default=d.max_redirects,
                   help="redirect hops to follow, each checked for http/https (default: %(default)s)")
    g.add_argument("--retry-failed", action="store_true",
                   help="also retry URLs that failed for good last time (404, not an image, ...)")
    g.add_argument("--allow-host", dest="allow_hosts", action="append", default=[], metavar="HOST[:PORT]",
                   help="download from this host even though it is on a loopback, private or link-local "
                        "address (a local mirror); repeatable. Every other such address is refused")


def _clean_args(p: argparse.ArgumentParser) -> None:
    from .clean import MIN_SIDE
    g = p.add_argument_group("clean")
    g.add_argument("--min-side", type=int, default=MIN_SIDE,
                   help="reject images narrower or shorter than this, in pixels (default: %(default)s)")
    g.add_argument("--near-duplicates", action="store_true",
                   help="also quarantine near-duplicates (resized, recompressed, cropped, brightened copies) "
                        "among the cleaned images, keeping the largest of each group; the group is recorded in "
                        "the reason log. For a folder of your own photos (any layout) use `python -m retrieval "
                        "duplicates --index INDEX --quarantine DIR` instead: it moves them aside in place, undoably")
    g.add_argument("--near-threshold", type=float, default=None,
                   help="perceptual-hash similarity for --near-duplicates (default: the measured one, "
                        "see docs/own-photos.md)")


def _split_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("split")
    g.add_argument("--n-train", type=_count_or_all, default=19,
                   help="training images per class, or 'all' (default: %(default)s)")
    g.add_argument("--n-test", type=_count_or_all, default=1, help="test images per class (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of the split (default: %(default)s)")


def _push_args(p: argparse.ArgumentParser, *, required: bool) -> None:
    g = p.add_argument_group("Hub dataset")
    g.add_argument("--repo-id", required=required, default=None,
                   help="dataset repo, USER/NAME" + ("" if required else " (needed unless --no-hub)"))
    g.add_argument("--private", action="store_true", help="create the dataset repo as private")
    g.add_argument("--license", default=None,
                   help="card licence id, e.g. cc-by-4.0 (default: from data/ATTRIBUTION.json, else 'other')")
    g.add_argument("--push-index", type=Path, default=None, metavar="INDEX",
                   help="also upload this built index folder as index/ (the app on a Space downloads it)")


def _index_args(p: argparse.ArgumentParser) -> None:
    add_index_build_options(p.add_argument_group("index"))   # the index stage's own options


# ---- stages ------------------------------------------------------------------------------------

def cmd_crawl(args: argparse.Namespace) -> int:
    from .crawl import crawl_urls, load_categories
    result = crawl_urls(load_categories(args.categories), url_template=args.search_url,
                        max_images=args.max_images, workers=args.crawl_workers, time_limit=args.time_limit,
                        scroll_pause=args.scroll_pause, out_path=args.urls, force=args.force_crawl,
                        licences=None if args.licences.strip().lower() in ("any", "none", "") else args.licences.strip())
    n_terms = sum(len(t) for t in result.values())
    n_urls = sum(len(u) for t in result.values() for u in t.values())
    print(f"crawl: {n_urls} urls for {n_terms} terms -> {args.urls}"
          + (f"; {len(result.failures)} terms failed (re-run to retry)" if result.failures else ""))
    return 1 if result.failures and not n_urls else 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import DownloadConfig, download_images
    config = DownloadConfig(workers=args.download_workers, delay=args.delay, connect_timeout=args.connect_timeout,
                            read_timeout=args.read_timeout, retries=args.retries,
                            max_bytes=int(args.max_mb * 2 ** 20), max_redirects=args.max_redirects,
                            retry_failed=args.retry_failed, allow_hosts=tuple(args.allow_hosts))
    report = download_images(args.urls, args.raw, config)
    print(f"download: {report.summary()} -> {args.raw}")
    for line in report.failures():
        print(line)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from .clean import clean_images
    report = clean_images(args.raw, args.clean, args.quarantine, min_side=args.min_side,
                          near_duplicates=args.near_duplicates, near_threshold=args.near_threshold)
    print(f"clean: {report.summary()} -> {args.clean} (rejects in {args.quarantine})")
    for line in report.reject_lines(args.quarantine):
        print(line)
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    from .split import split_library
    s = split_library(args.clean, args.data, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    print(f"split: {s['classes']} classes, {s['train']} train + {s['test']} test images "
          f"({s['copied']} copied) -> {args.data}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub import push
    s = push(args.data, args.repo_id, private=args.private, license=args.license,
             index_dir=getattr(args, "push_index", None))
    print(f"push: {s.get('train', 0)} train + {s.get('test', 0)} test images, {s['classes']} classes -> {s['url']}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .hub import pull
    s = pull(args.repo_id, args.data, revision=args.revision)
    print(f"pull: {s.get('train', 0)} train + {s.get('test', 0)} test images, {s['classes']} classes "
          f"({s['written']} written, {s['unchanged']} unchanged) -> {args.data}")
    return 0


def cmd_all(args: argparse.Namespace) -> int:
    """crawl -> download -> clean -> split -> index -> push (unless --no-hub), index included."""
    if not args.no_hub:
        from .hub import resolve_token
        if not args.repo_id:
            raise LookalikeError("`all` pushes the dataset to the Hub: give --repo-id USER/NAME, or --no-hub")
        if not resolve_token():
            raise LookalikeError("no Hugging Face token for the push stage: set HF_TOKEN or run "
                                 "`hf auth login`, or pass --no-hub")
    stages = [("crawl", cmd_crawl), ("download", cmd_download), ("clean", cmd_clean), ("split", cmd_split)]
    stages += [("index", cmd_index)]
    if not args.no_hub:  # last, so the Space can download the built index with the library
        args.push_index = args.index
        stages += [("push", cmd_push)]
    final = 0
    for name, stage in stages:
        log.info("== stage %s ==", name)
        rc = stage(args)
        if name == "index" and rc == DONE_WITH_SKIPS:   # a usable index: push it, report the skips at the end
            final = rc
            continue
        if rc:
            log.error("stage %s failed (exit %d); fix it and re-run: finished stages are not redone", name, rc)
            return rc
    return final


def _stage(sub: "argparse._SubParsersAction", name: str, func, summary: str, description: str,
           paths: tuple[str, ...], *adders) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=description)
    for add in adders:
        add(p)
    _paths(p, *paths)
    p.set_defaults(func=func)
    return p


def _pull_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo-id", required=True, help="dataset repo, USER/NAME")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")


def register(sub: "argparse._SubParsersAction") -> None:
    """Add the collection subcommands to build_index.py."""
    _stage(sub, "crawl", cmd_crawl, "collect photo URLs from a search site into urls.json",
           "Open each term's search page in headless Chromium, scroll and click 'load more', and save the "
           "large-size photo URLs. Resumes: terms already in urls.json are skipped.",
           ("urls",), lambda p: _crawl_args(p, "--workers", "--force"))
    _stage(sub, "download", cmd_download, "download the crawled URLs into raw/, politely and safely",
           "Thread pool with a per-host polite delay, timeouts, retries (5xx, 429), content checks and "
           "atomic writes; raw/manifest.json records each URL's status. Re-runs fetch only what is missing.",
           ("urls", "raw"), _download_args)
    _stage(sub, "clean", cmd_clean, "reject small, corrupt, non-image and duplicate files; RGB into clean/",
           "raw/<category>/<term>/ -> clean/<term>/ (each term is a class, as in the seed). Rejects are copied "
           "to the quarantine with a reason log; raw/ is never changed.",
           ("raw", "clean", "quarantine"), _clean_args)
    _stage(sub, "split", cmd_split, "copy clean/ into data/train and data/test (seeded)",
           "Deterministic, seeded split per class (default 19 train + 1 test, as in the seed); warns about "
           "classes with too few images.", ("clean", "data"), _split_args)
    _stage(sub, "push", cmd_push, "upload data/ as a Hugging Face dataset repo",
           "data/ -> DatasetDict (image, label ClassLabel, file; train/test) as parquet shards plus a dataset "
           "card. Token: HF_TOKEN or `hf auth login`.", ("data",), lambda p: _push_args(p, required=True))
    _stage(sub, "pull", cmd_pull, "restore data/ from a Hugging Face dataset repo",
           "Download a dataset repo pushed by `push` (or by push_to_hub) and write data/<split>/<class>/<file>; "
           "refuses names that would leave data/.", ("data",), _pull_args)
    p = _stage(sub, "all", cmd_all, "crawl -> download -> clean -> split -> index -> push",
               "The whole chain with one command. Every stage is idempotent and resumable, so a re-run "
               "continues where the last one stopped.",
               ("urls", "raw", "clean", "quarantine", "data", "index"),
               lambda p: _crawl_args(p, "--crawl-workers", "--recrawl"), _download_args, _clean_args,
               _split_args, lambda p: _push_args(p, required=False), _index_args)
    p.add_argument("--no-hub", action="store_true", help="skip the push stage")
