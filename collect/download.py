"""Resumable image downloader: urls.json -> raw/<category>/<term>/<sha1>.<ext>, and raw/manifest.json.

Fetching one URL politely and safely (per-host rate limit, redirects checked hop by hop, public
addresses only, size cap, total deadline) is collect.fetch's job; this module runs the jobs and
keeps the files and the manifest. Why each rule is here:
- The body must decode through `retrieval.images.check_image`; only then is it written, atomically.
- File names never come from the URL: `sha1(url)[:16]` plus an extension from a fixed list, under
  sanitised category and term folders whose resolved path is checked to be inside raw/.
- `raw/manifest.json` (written atomically: at the start, within `checkpoint_s` of any finished URL
  even while other downloads hang, on Ctrl-C or SIGTERM before the rest is cut short, and at the end) maps each
  (category, term, url) to its file and status. A re-run skips files already present and failures
  that a retry cannot fix (404, not an image, ...); transient failures (timeouts, 5xx, 429,
  truncated bodies, connection errors) are tried again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from tqdm import tqdm

from retrieval.atomic import remove_leftovers, write_bytes, write_json
from retrieval.errors import ImageError
from retrieval.images import IMAGE_EXTENSIONS, check_image

from .fetch import OK, DownloadConfig, DownloadError, Fetcher, Outcome, is_permanent
from .transport import host_key, terminate_as_interrupt

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
DEFAULT_CONFIG = DownloadConfig()   # frozen: one shared default is safe
CONTENT_TYPE_EXT = {
    "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/pjpeg": ".jpg", "image/png": ".png",
    "image/webp": ".webp", "image/gif": ".gif", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp",
}
__all__ = ["DownloadConfig", "DownloadError", "DownloadReport", "Downloader", "Outcome", "download_images",
           "is_permanent", "safe_component"]


@dataclass
class DownloadReport:
    counts: Counter = field(default_factory=Counter)  # status -> URLs (this run's state of every URL)
    fetched: int = 0                                   # URLs requested from the network this run
    skipped: int = 0                                   # URLs settled by an earlier run
    manifest: Path | None = None

    failed: list[dict[str, str]] = field(default_factory=list)  # {"path": url, "kind": status} not ok

    def note(self, record: dict[str, Any]) -> None:
        """Count one manifest record (this run's view of its URL)."""
        self.counts[record["status"]] += 1
        if record["status"] != OK:
            self.failed.append({"path": record["url"][:200], "kind": record["status"]})

    def failures(self) -> list[str]:
        """Counts by reason and a few examples (retrieval.library.summarize_skips: one bounded line
        however many failed), and where the full list with every reason is."""
        if not self.failed:
            return []
        from retrieval.library import summarize_skips
        return [f"  {summarize_skips(self.failed)}; every url with its status and reason: {self.manifest}"]

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])))
        return f"{sum(self.counts.values())} urls ({self.fetched} fetched, {self.skipped} skipped): {parts}"


def safe_component(name: str, max_len: int = 80) -> str:
    """A folder name that cannot climb, hide or nest: letters, digits, ' ', '_', '-', '.' only,
    no leading or trailing dots/spaces. Empty results fall back to a hash of the original."""
    text = unicodedata.normalize("NFKC", str(name))
    text = re.sub(r"\.{2,}", ".", re.sub(r"[^\w.\- ]+", "_", text))
    text = re.sub(r"\s+", " ", text).strip(" .")[:max_len].strip(" .")
    return text or "_" + hashlib.sha1(str(name).encode("utf-8")).hexdigest()[:8]


def url_stem(url: str) -> str:
    return hashlib.sha1(url.encode("utf-8")).hexdigest()[:16]


def pick_extension(content_type: str, url: str) -> str:
    """From the Content-Type, else the URL's suffix if it is an image one, else .jpg."""
    ext = CONTENT_TYPE_EXT.get(content_type)
    if ext:
        return ext
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if suffix in IMAGE_EXTENSIONS else ".jpg"


def term_dir(raw_dir: Path, category: str, term: str) -> Path:
    """raw/<category>/<term>, refused if it would resolve outside raw/."""
    raw_dir = Path(raw_dir)
    folder = raw_dir / safe_component(category) / safe_component(term)
    if not folder.resolve().is_relative_to(raw_dir.resolve()):
        raise DownloadError(f"refusing folder {folder}: it resolves outside {raw_dir}")
    return folder


def existing_file(folder: Path, stem: str) -> Path | None:
    """A finished download of this URL (any image extension), ignoring temporary files."""
    for ext in sorted(set(CONTENT_TYPE_EXT.values()) | IMAGE_EXTENSIONS):
        path = folder / (stem + ext)
        if path.is_file():
            return path
    return None


def load_urls(path: Path) -> dict[str, dict[str, list[str]]]:
    """Read and check urls.json ({category: {term: [urls]}}), as the crawler writes it."""
    path = Path(path)
    if not path.is_file():
        raise DownloadError(f"no {path}: run `python build_index.py crawl` first (or pass --urls FILE)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DownloadError(f"{path} is not readable JSON ({exc}); crawl again with --force") from None
    ok = isinstance(data, dict) and all(
        isinstance(terms, dict) and all(isinstance(urls, list) for urls in terms.values())
        for terms in data.values())
    if not ok:
        raise DownloadError(f"{path} is not shaped {{category: {{term: [urls]}}}}; crawl again with --force")
    return data


Key = tuple[str, str, str]  # (category, term, url)


def load_manifest(path: Path) -> dict[Key, dict[str, Any]]:
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8")).get("items", [])
        return {(r["category"], r["term"], r["url"]): r for r in records}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring unreadable %s (%s); files on disk still count as done", path, exc)
        return {}


def save_manifest(path: Path, records: dict[Key, dict[str, Any]]) -> None:
    write_json(path, {"version": 1, "items": [records[k] for k in sorted(records)]})


def _interleave_by_host(jobs: list[Key]) -> list[Key]:
    """Round-robin across hosts so the pool's threads are not all queued behind one host."""
    by_host: dict[str, list[Key]] = defaultdict(list)
    for job in jobs:
        by_host[host_key(job[2])].append(job)
    return [job for batch in zip_longest(*by_host.values()) for job in batch if job is not None]


class Downloader:
    """Downloads jobs (category, term, url) into raw_dir and keeps raw/manifest.json; the HTTP side
    (politeness, redirects, address checks, deadlines) is collect.fetch's `Fetcher`."""

    def __init__(self, raw_dir: Path, config: DownloadConfig = DEFAULT_CONFIG) -> None:
        self.raw_dir = Path(raw_dir)
        self.config = config
        self.fetcher = Fetcher(config)

    def close(self) -> None:
        self.fetcher.close()

    # ---- one job
    def download(self, category: str, term: str, url: str) -> Outcome:
        """Fetch, check and store one URL; never raises for a bad URL or server."""
        try:
            folder = term_dir(self.raw_dir, category, term)
        except DownloadError as exc:
            return Outcome("unsafe_path", str(exc))
        outcome, body, ctype = self.fetcher.fetch(url)
        if outcome.status != OK or body is None:
            return outcome
        try:
            check_image(body, name=url)   # decodes fully, without the RGB copy load_image makes
        except ImageError as exc:
            return Outcome("not_image", str(exc)[:200], attempts=outcome.attempts)
        target = folder / (url_stem(url) + pick_extension(ctype, url))
        if not target.resolve().is_relative_to(self.raw_dir.resolve()):  # belt and braces
            return Outcome("unsafe_path", f"{target} is outside {self.raw_dir}", attempts=outcome.attempts)
        write_bytes(target, body)
        outcome.file = target.relative_to(self.raw_dir).as_posix()
        return outcome

    # ---- a whole run
    def run(self, jobs: Iterable[Key], *, progress: bool = True) -> DownloadReport:
        """Download every job not already settled. The manifest is written at the start, within
        `checkpoint_s` of any finished URL (even while other downloads hang), and on an interruption
        (Ctrl-C, SIGTERM) before the downloads in flight are cut short: a re-run resumes."""
        manifest_path = self.raw_dir / MANIFEST_NAME
        if remove_leftovers(self.raw_dir, recursive=True):  # temporaries of a run that was killed
            log.info("removed temporary files left in %s by an interrupted run", self.raw_dir)
        records = load_manifest(manifest_path)
        report = DownloadReport(manifest=manifest_path)
        todo: list[Key] = []
        for key in dict.fromkeys(jobs):
            settled = self._settled(key, records.get(key))
            if settled is None:
                todo.append(key)
            else:
                records[key] = settled
                report.skipped += 1
                report.note(settled)
        log.info("download: %d urls to fetch, %d settled by earlier runs", len(todo), report.skipped)
        save_manifest(manifest_path, records)
        if todo:
            self._run_pool(todo, records, report, manifest_path, progress)
        log.info("download: %s; manifest %s", report.summary(), manifest_path)
        return report

    def _run_pool(self, todo: list[Key], records: dict[Key, dict[str, Any]], report: DownloadReport,
                  manifest_path: Path, progress: bool) -> None:
        """run()'s thread pool: collects outcomes, checkpoints the manifest, handles interruptions."""
        executor = ThreadPoolExecutor(max_workers=max(1, self.config.workers), thread_name_prefix="download")
        bar = tqdm(total=len(todo), desc="downloading", unit="img", disable=not progress)
        self.fetcher.start()
        try:
            with terminate_as_interrupt():
                futures = {executor.submit(self.download, *key): key for key in _interleave_by_host(todo)}
                self._collect(futures, records, report, manifest_path, bar)
        except BaseException:
            save_manifest(manifest_path, records)   # first what is done, then stop what is not
            log.warning("download interrupted: %d finished urls saved in %s; run again to resume",
                        len(records), manifest_path)
            self._abort(executor)
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            bar.close()
            self.close()
            save_manifest(manifest_path, records)

    def _collect(self, futures: dict[Future[Outcome], Key], records: dict[Key, dict[str, Any]],
                 report: DownloadReport, manifest_path: Path, bar: tqdm) -> None:
        """Record each finished job and save the manifest within `checkpoint_s` of any of them."""
        checkpoint_s = self.config.checkpoint_s
        last_save, dirty = time.monotonic(), False
        pending = set(futures)
        while pending:   # wakes every checkpoint_s, so a hung download cannot delay a save
            done, pending = wait(pending, timeout=checkpoint_s, return_when=FIRST_COMPLETED)
            for future in done:
                key = futures[future]
                records[key] = self._record(key, self._outcome(future, key))
                report.fetched += 1
                report.note(records[key])
                bar.update()
                dirty = True
            if dirty and time.monotonic() - last_save >= checkpoint_s:
                save_manifest(manifest_path, records)
                last_save, dirty = time.monotonic(), False

    @staticmethod
    def _outcome(future: Future[Outcome], key: Key) -> Outcome:
        try:
            return future.result()
        except Exception as exc:  # a bug or disk error: record it, keep the others going
            log.exception("%s failed unexpectedly", key[2])
            return Outcome("error", f"{type(exc).__name__}: {exc}"[:200])

    def _abort(self, executor: ThreadPoolExecutor) -> None:
        """Cancel queued jobs and cut the attempts in flight short (their deadline fires now)."""
        executor.shutdown(wait=False, cancel_futures=True)
        self.fetcher.stop()

    def _settled(self, key: Key, record: dict[str, Any] | None) -> dict[str, Any] | None:
        """The record to keep without fetching, or None when the URL must be fetched (again)."""
        category, term, url = key
        try:
            folder = term_dir(self.raw_dir, category, term)
        except DownloadError:
            return None
        found = existing_file(folder, url_stem(url))
        if found is not None:
            if record is not None and record.get("status") == OK:
                return record
            # The manifest was lost or is stale: the atomically written file is proof of success.
            rel = found.relative_to(self.raw_dir).as_posix()
            return self._record(key, Outcome(OK, "found on disk", rel, found.stat().st_size))
        if record and not self.config.retry_failed and is_permanent(record.get("status", "")):
            return record
        return None

    @staticmethod
    def _record(key: Key, outcome: Outcome) -> dict[str, Any]:
        category, term, url = key
        return {"category": category, "term": term, "url": url, "file": outcome.file,
                "status": outcome.status, "detail": outcome.detail, "bytes": outcome.bytes,
                "attempts": outcome.attempts, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def jobs_from_urls(data: dict[str, dict[str, list[str]]]) -> list[Key]:
    """Flatten urls.json into (category, term, url) jobs, in file order, without repeats."""
    jobs: list[Key] = []
    for category, terms in data.items():
        for term, urls in terms.items():
            jobs.extend((str(category), str(term), u) for u in urls if isinstance(u, str) and u.strip())
    return list(dict.fromkeys(jobs))


def download_images(urls_path: Path, raw_dir: Path, config: DownloadConfig = DEFAULT_CONFIG,
                    *, progress: bool = True) -> DownloadReport:
    """The `download` stage: every URL in urls.json into raw_dir, resumable."""
    jobs = jobs_from_urls(load_urls(urls_path))
    report = Downloader(raw_dir, config).run(jobs, progress=progress)
    from .provenance import write_raw_attribution
    write_raw_attribution(raw_dir, urls_path)   # each stored image's URL, photo page, term, licence filter
    return report
