"""Reliability and security: the bad-image corpus through every stage, faults, load, attacks.

- Corpus (tests/bad_images.py): load_image, library scan + index build, cleaner, CLI search, app
  upload (gradio_client against a live 127.0.0.1 launch) and the downloader (a local server sending
  each file with an image content type). Every file is either handled (RGB, rotation, first frame,
  transparency on white) or refused with its own message; nothing crashes or escapes.
- Faults: index builds SIGKILLed at random points (first build and rebuild), a build stopped between
  the Chroma sync and the manifest, a download and a crawl killed midway, disk full and read-only
  index folders (simulated by patching the writer, and for real on a tmpfs / read-only bind mount
  when the tests run as root and may mount), and 20 concurrent users for 10 s (bench.load.soak; the
  60 s figures in README.md, "Reliability" come from the same script).
- Security: tokens never logged or written, manifests that name paths outside their folders,
  download schemes, bounded inputs.

No test may hang: an autouse watchdog (faulthandler) dumps every thread and stops the run after
WATCHDOG_S seconds (pytest-timeout is not a dependency); subprocesses have their own timeouts.
"""
from __future__ import annotations

import errno
import faulthandler
import hashlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import bad_images
from app_support import launch
from bad_images import ACCEPTED, CASES, REJECTED
from collect.clean import clean_images
from collect.download import DownloadConfig, Downloader, DownloadError
from conftest import make_tiny_library
from fault_server import FaultServer
from flickr_standin import Reply, make_jpeg
from retrieval import atomic
from retrieval.cli import main as cli_main
from retrieval.errors import ImageError, IndexError_, StorageError
from retrieval.images import load_image
from retrieval.indexing import build_index
from retrieval.manifest import Manifest
from retrieval.paths import MANIFEST
from retrieval.search import LookalikeIndex

import build_index as build_cli
from browser_support import needs_chromedriver

ROOT = Path(__file__).resolve().parents[1]
WATCHDOG_S = 300
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT)}
KILL_SEED = int(os.environ.get("LOOKALIKE_KILL_SEED") or secrets.randbelow(10 ** 6))
KILLS = int(os.environ.get("LOOKALIKE_KILLS", "2"))   # kills per phase of the SIGKILL test


@pytest.fixture(autouse=True)
def watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """{relative path: sha256} of every file under root, hidden ones included."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and not p.relative_to(root).as_posix().startswith(skip)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> SimpleNamespace:
    """A tiny library with the whole corpus in its train/awkward/ class, indexed with the offline
    backbone (pixels, embeddings, Chroma), and a flat copy of the corpus for queries and uploads."""
    root = tmp_path_factory.mktemp("corpus")
    data = make_tiny_library(root / "data", n_train=4, n_test=1)
    bad_images.write_corpus(data / "train" / "awkward")
    files = bad_images.write_corpus(root / "files")
    summary = build_index(data, root / "index", model="effnet")
    return SimpleNamespace(root=root, data=data, index=root / "index", files=files, summary=summary)


# -- the corpus, stage by stage ------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_file_is_handled_or_refused_with_its_reason(corpus, case):
    path = corpus.files[case.name]
    for source in (path, path.read_bytes()):          # a library file, and an upload's bytes
        if case.accepted:
            img = load_image(source)
            case.check(img)
        else:
            with pytest.raises(ImageError, match=case.message):
                load_image(source)


def test_the_bomb_and_the_huge_image_stay_bounded_in_memory_and_time(corpus):
    """Decoded in a fresh process each: peak RSS above the bare interpreter's, with a time bound."""
    probe = ("import resource, sys; from retrieval.images import load_image; from retrieval.errors import ImageError\n"
             "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "try:\n    load_image(sys.argv[1]); verdict = 'ok'\nexcept ImageError as e:\n    verdict = str(e)\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base, verdict)")
    growth = {}
    for name in ("bomb.png", "huge-8000x6000.jpg"):
        out = subprocess.run([sys.executable, "-c", probe, str(corpus.files[name])], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=60)
        kb, verdict = out.stdout.split(" ", 1)
        growth[name] = int(kb) / 1024
        assert ("decompression bomb" in verdict) == (name == "bomb.png"), verdict
    print(f"decode memory growth: {growth}")
    assert growth["bomb.png"] < 20            # refused from its header: 900 Mpx would be ~2.7 GB
    assert growth["huge-8000x6000.jpg"] < 700  # 48 Mpx RGB is 144 MB; a few working copies at most


def test_index_build_skips_and_reports_the_bad_files_and_indexes_the_rest(corpus):
    skipped = {s["path"]: s["reason"] for s in corpus.summary["skipped"]}
    expected = {f"train/awkward/{c.name}": c for c in REJECTED if c.library}
    assert set(skipped) == set(expected)
    for rel, reason in skipped.items():
        assert re.search(expected[rel].message, reason), (rel, reason)
    index = LookalikeIndex.open(corpus.index)
    assert index.manifest.skipped == corpus.summary["skipped"]   # the report is kept with the index
    awkward = {r.split("/")[-1] for r in index.rels if r.startswith("train/awkward/")}
    assert awkward == {c.name for c in ACCEPTED}                 # the SVG is not even listed
    for case in ACCEPTED:   # each accepted file was stored as decoded: it finds itself first
        path = corpus.data / "train" / "awkward" / case.name
        for method in ("pixel-l1", "effnet-hnsw-cosine"):
            hits, _ = index.search(path, method, k=1, exclude_self=False)
            assert hits[0].rel == f"train/awkward/{case.name}", (case.name, method)


def test_cleaner_quarantines_each_bad_file_with_its_reason(corpus, tmp_path):
    raw = tmp_path / "raw"
    bad_images.write_corpus(raw / "web" / "awkward")
    report = clean_images(raw, tmp_path / "clean", tmp_path / "quarantine", progress=False)
    log = {Path(r["file"]).name: r for r in map(json.loads, (tmp_path / "quarantine" / "reasons.jsonl").open())}
    verdicts = {name: rec["reason"] for name, rec in log.items()}
    assert verdicts == {c.name: c.clean for c in CASES if c.clean != "ok"}
    assert "49x49 < 50px" in log["49x49.jpg"]["detail"] and "1x1 < 50px" in log["1x1.png"]["detail"]
    assert "decompression bomb" in log["bomb.png"]["detail"] and "empty" in log["zero-bytes.jpg"]["detail"]
    kept = {p.stem: p for p in (tmp_path / "clean" / "awkward").iterdir()}
    assert set(kept) == {Path(c.name).stem for c in CASES if c.clean == "ok"}
    assert report.kept == len(kept)
    for case in CASES:
        if case.clean == "ok":   # what the cleaner wrote is RGB and still right (rotation, alpha, frame)
            case.check(load_image(kept[Path(case.name).stem]))
            with Image.open(kept[Path(case.name).stem]) as img:
                assert img.mode == "RGB" and getattr(img, "n_frames", 1) == 1, case.name


def test_cli_search_over_the_corpus_exits_2_with_the_message_never_a_traceback(corpus):
    def run(case):
        path = corpus.files[case.name]
        return case, subprocess.run([sys.executable, "-m", "retrieval", "search", str(path), "--index",
                                     str(corpus.index), "-k", "3"], cwd=ROOT, env=ENV, capture_output=True,
                                    text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:
        for case, out in pool.map(run, CASES):
            assert "Traceback" not in out.stderr, (case.name, out.stderr)
            if case.accepted:
                assert out.returncode == 0, (case.name, out.stderr)
                assert len(out.stdout.strip().splitlines()) == 2 + 3, out.stdout
            else:
                assert out.returncode == 2, (case.name, out.returncode)
                line = out.stderr.strip()
                assert "\n" not in line and line.startswith(f"error: {corpus.files[case.name]}: "), line
                assert re.search(case.message, line), line


@pytest.fixture(scope="module")
def app(corpus):
    demo, app = launch(corpus.index)
    yield app
    demo.close()


@pytest.mark.parametrize("api,method", [("/search_pixel", "l1"), ("/search_deep", "effnet-cosine")])
def test_app_upload_over_the_corpus(corpus, app, api, method):
    full = method if api == "/search_deep" else f"pixel-{method}"
    for case in CASES:
        upload = handle_file(str(corpus.files[case.name]))
        if case.accepted:
            _, status, rows = app.client.predict(upload, method, 5, api_name=api)
            hits, _ = app.index.search(corpus.files[case.name], full, 5)
            assert [r["file"] for r in rows] == [h.rel for h in hits], case.name
        else:
            with pytest.raises(AppError) as err:
                app.client.predict(upload, method, 5, api_name=api)
            message = str(err.value)
            assert re.search(case.message, message), (case.name, message)
            # Named by the user's own file name; the server's upload cache path is not revealed.
            assert f"the upload '{case.name}'" in message and "/gradio" not in message, message
    _, _, rows = app.client.predict(handle_file(str(corpus.files["photo.webp"])), method, 3, api_name=api)
    assert len(rows) == 3   # still serving


@pytest.mark.parametrize("k,message", [(0, "k must be"), (-3, "k must be"), (10 ** 12, "k must be"),
                                       ("5; DROP TABLE", "k must be"), (None, "k must be")])
def test_app_refuses_out_of_range_k(corpus, app, k, message):
    with pytest.raises(AppError, match=message):
        app.client.predict(handle_file(str(corpus.files["photo.webp"])), "l1", k, api_name="/search_pixel")


def test_downloader_over_the_corpus_then_the_cleaner(corpus, tmp_path):
    config = DownloadConfig(workers=4, delay=0.0, read_timeout=10.0, retries=0, max_bytes=32 * 2 ** 20)
    with FaultServer() as srv:
        for case in CASES:
            srv.routes[f"/corpus/{case.name}"] = Reply(200, case.make(), case.content_type)
        jobs = [("web", "awkward", srv.url(f"/corpus/{c.name}")) for c in CASES]
        raw = tmp_path / "raw"
        Downloader(raw, config).run(jobs, progress=False)
        records = {r["url"].rsplit("/", 1)[1]: r for r in json.loads((raw / "manifest.json").read_text())["items"]}
    for case in CASES:
        rec = records[case.name]
        if case.accepted:
            assert rec["status"] == "ok", (case.name, rec)
            assert (raw / rec["file"]).read_bytes() == case.make()
        else:
            assert rec["status"] == "not_image" and rec["file"] is None, (case.name, rec)
            assert re.search(case.message, rec["detail"]), (case.name, rec["detail"])
    files = [p for p in raw.rglob("*") if p.is_file()]
    assert len(files) == len(ACCEPTED) + 1 and all(p.resolve().is_relative_to(raw.resolve()) for p in files)
    report = clean_images(raw, tmp_path / "clean", tmp_path / "quarantine", progress=False)
    assert dict(report.rejected) == {"too_small": 2}      # what got past the downloader: 1x1 and 49x49
    assert report.kept == len(ACCEPTED) - 2


# -- faults: killed builds -----------------------------------------------------------------------------

def _index_state(index_dir: Path, query: Path) -> str:
    """'absent', 'ok' (manifest, arrays and Chroma agree; exact and HNSW answer alike) or
    'refused: ...' (a clear error that the next build repairs). Anything else fails the test:
    a half-written index must never be read as valid."""
    if not (index_dir / MANIFEST).exists():
        return "absent"
    # Read Chroma as a fresh process would: a client this process opened earlier keeps its own
    # in-memory HNSW copy, which does not see what a build in another process wrote since.
    from chromadb.api.shared_system_client import SharedSystemClient
    SharedSystemClient.clear_system_cache()
    try:
        index = LookalikeIndex.open(index_dir)       # arrays: rows == manifest items, or it refuses
        store = index.store                          # Chroma: counts match, no interrupted sync
    except IndexError_ as exc:
        return f"refused: {exc}"
    held = store.metadatas()
    assert set(held) == set(index.rels), "Chroma and the manifest list different images"
    assert all(held[it["path"]]["sha256"] == it["sha256"] for it in index.manifest.items)
    assert all((index_dir / name).is_file() for name in (index.manifest.pixels_file, index.manifest.embedder["file"]))
    exact, _ = index.search(query, "effnet-cosine", 5)
    approx, _ = index.search(query, "effnet-hnsw-cosine", 5)
    assert [h.rel for h in approx] == [h.rel for h in exact]
    return "ok"


def _same_index(a: Path, b: Path) -> None:
    ma, mb = Manifest.read(a), Manifest.read(b)
    assert ma.items == mb.items and ma.skipped == mb.skipped
    assert np.array_equal(np.load(a / ma.pixels_file), np.load(b / mb.pixels_file))
    assert np.allclose(np.load(a / ma.embedder["file"]), np.load(b / mb.embedder["file"]), atol=1e-5)


def _progress(index: Path) -> tuple:
    """What a build has written so far: (array files, Chroma files, manifest mtime)."""
    names = tuple(sorted(p.name for p in index.glob("*.npy"))) if index.is_dir() else ()
    chroma = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in (index / "chroma").glob("*")
                          if p.is_file())) if (index / "chroma").is_dir() else ()
    manifest = (index / MANIFEST).stat().st_mtime_ns if (index / MANIFEST).exists() else 0
    return names, chroma, manifest


def test_index_build_killed_at_random_points_opens_consistently_or_is_repaired(tmp_path, capsys):
    """`build_index.py index --model effnet` SIGKILLed at random points of a first build and of a
    rebuild after the library changed. A kill lands a random 0-0.6 s after a randomly chosen step
    shows on disk (new arrays, a Chroma write, the manifest), so each one hits the build while it
    writes rather than during start-up. After every kill the index is absent, consistent, or
    refuses with a clear error; the next complete run gives what an uninterrupted build gives."""
    data = make_tiny_library(tmp_path / "data", n_train=4, n_test=1)
    query = next((data / "test").rglob("*.jpg"))
    rng = random.Random(KILL_SEED)
    index = tmp_path / "index"
    cmd = [sys.executable, "build_index.py", "index", "--data", str(data), "--index", str(index), "--model", "effnet"]
    states = []

    def killed_run() -> None:
        step = rng.randrange(3)          # 0: new arrays, 1: a Chroma write, 2: the manifest
        before = _progress(index)
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and _progress(index)[step] == before[step]:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        states.append((("arrays", "chroma", "manifest")[step], "finished" if proc.returncode == 0 else "killed",
                       _index_state(index, query)))

    def complete_run(ref: Path) -> None:
        # The next run, in this process (the same build_index the CLI calls; the kills above are
        # the real CLI). Chroma's client cache is dropped first: a client opened here earlier
        # would not see what the killed processes wrote.
        from chromadb.api.shared_system_client import SharedSystemClient
        SharedSystemClient.clear_system_cache()
        build_index(data, index, model="effnet")
        assert _index_state(index, query) == "ok"
        build_index(data, ref, model="effnet", evaluate=False)     # an uninterrupted build, for comparison
        _same_index(index, ref)

    killed_run()                                                    # a first build
    complete_run(tmp_path / "ref")
    for p in sorted((data / "train" / "red").glob("*.jpg"))[:2]:    # the library changes: a rebuild
        p.unlink()
    for i in range(2):
        Image.new("RGB", (90, 70), (230, 20 + 40 * i, 20)).save(data / "train" / "red" / f"new{i}.jpg")
    Image.new("RGB", (90, 70), (10, 10, 10)).save(data / "train" / "blue" / "train_0.jpg")
    for _ in range(KILLS):
        killed_run()
    complete_run(tmp_path / "ref2")
    from retrieval.rerank import record_files
    final = Manifest.read(index)
    live = {final.pixels_file, final.embedder["file"], *record_files(final.rerank)}
    assert len(live) == 4                                            # pixels, embeddings, two DBA arrays
    assert not [p.name for p in index.iterdir() if p.name.startswith(".") or (p.suffix == ".npy" and p.name not in live)]
    with capsys.disabled():
        print(f"\n[reliability] SIGKILL seed {KILL_SEED} (LOOKALIKE_KILL_SEED): (kill after, run, state) {states}")
    assert all(s in ("absent", "ok") or s.startswith("refused: ") for *_, s in states), (KILL_SEED, states)


@pytest.fixture
def effnet_tiny(tmp_path) -> SimpleNamespace:
    data = make_tiny_library(tmp_path / "data", n_train=4, n_test=1)
    index = tmp_path / "index"
    build_index(data, index, model="effnet", evaluate=True)
    return SimpleNamespace(data=data, index=index, query=next((data / "test").rglob("*.jpg")))


def _change_library(data: Path) -> None:
    (data / "train" / "red" / "train_0.jpg").unlink()
    Image.new("RGB", (80, 60), (250, 40, 40)).save(data / "train" / "red" / "added.jpg")


def test_build_stopped_between_chroma_and_manifest_refuses_hnsw_until_repaired(effnet_tiny, monkeypatch, capsys):
    """The window where Chroma already holds the new rows but the manifest is still the old one.
    Before this was guarded, HNSW answered from collections that no longer matched the manifest
    (dropping some results silently); now the old manifest is marked first and HNSW refuses."""
    _change_library(effnet_tiny.data)
    write = Manifest.write

    def stop_at_final_write(self, index_dir):
        if not (self.chroma or {}).get("syncing"):
            raise KeyboardInterrupt     # as if killed right after the Chroma sync
        write(self, index_dir)

    monkeypatch.setattr(Manifest, "write", stop_at_final_write)
    with pytest.raises(KeyboardInterrupt):
        build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    monkeypatch.undo()
    state = _index_state(effnet_tiny.index, effnet_tiny.query)
    assert state.startswith("refused: ") and "rerun build_index.py index to repair" in state
    index = LookalikeIndex.open(effnet_tiny.index)             # the exact methods still answer
    assert len(index.search(effnet_tiny.query, "effnet-cosine", 5)[0]) == 5
    capsys.readouterr()
    assert cli_main(["search", str(effnet_tiny.query), "--index", str(effnet_tiny.index),
                     "--method", "effnet-hnsw-l2"]) == 2
    assert "stopped while it was updating the Chroma collections" in capsys.readouterr().err
    build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    assert _index_state(effnet_tiny.index, effnet_tiny.query) == "ok"
    assert "train/red/added.jpg" in LookalikeIndex.open(effnet_tiny.index).rels


# -- faults: disk full and read-only ------------------------------------------------------------------

def _index_files(index: Path) -> dict[str, str]:
    return _tree(index, skip=("chroma/",))


def _intact(fixture: SimpleNamespace, before: dict[str, str], items: list) -> None:
    assert _index_files(fixture.index) == before          # same manifest, arrays, evaluation; no temp files
    assert _index_state(fixture.index, fixture.query) == "ok"
    assert Manifest.read(fixture.index).items == items


class _DiskFullAt:
    """os for retrieval.atomic whose fsync on the n-th atomic write finds the disk full: the temp
    file is cut to half its size first, as a real ENOSPC leaves it."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0
        self.__dict__.update({k: v for k, v in vars(os).items() if not k.startswith("__")})
        self.fsync = self._fsync

    def _fsync(self, fd: int) -> None:
        self.calls += 1
        if self.calls == self.n:
            os.ftruncate(fd, os.fstat(fd).st_size // 2)
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)


@pytest.mark.parametrize("nth", [1, 2, 3])
def test_disk_full_mid_build_is_a_clear_error_and_the_index_is_intact(effnet_tiny, monkeypatch, capsys, nth):
    """Simulated: the n-th atomic write of a rebuild (1 pixels, 2 embeddings, 3 the manifest's
    syncing mark) hits ENOSPC. The rebuild stops with a message; the old index is untouched."""
    before, items = _index_files(effnet_tiny.index), Manifest.read(effnet_tiny.index).items
    _change_library(effnet_tiny.data)
    monkeypatch.setattr(atomic, "os", _DiskFullAt(nth))
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(effnet_tiny.index), "--model", "effnet"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2 and "Traceback" not in err
    assert re.search(r"error: could not write .*: the disk is full .* the previous version of the file, if any, "
                     r"is unchanged", err), err
    _intact(effnet_tiny, before, items)


def test_disk_full_at_the_final_manifest_leaves_exact_search_and_a_repairable_hnsw(effnet_tiny, monkeypatch):
    """ENOSPC on the new manifest itself, after Chroma was synced: the old manifest, arrays and
    evaluation stay (exact methods answer as before), the new arrays are removed, and HNSW refuses
    until the next build repairs it."""
    before = _index_files(effnet_tiny.index)
    _change_library(effnet_tiny.data)
    monkeypatch.setattr(atomic, "os", _DiskFullAt(4))
    with pytest.raises(StorageError, match="the disk is full"):
        build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    monkeypatch.undo()
    after = _index_files(effnet_tiny.index)   # only the manifest changed: it is marked `syncing`
    assert {k: v for k, v in after.items() if k != MANIFEST} == {k: v for k, v in before.items() if k != MANIFEST}
    assert Manifest.read(effnet_tiny.index).chroma["syncing"] is True
    state = _index_state(effnet_tiny.index, effnet_tiny.query)
    assert state.startswith("refused: ") and "repair" in state
    build_index(effnet_tiny.data, effnet_tiny.index, model="effnet", evaluate=False)
    assert _index_state(effnet_tiny.index, effnet_tiny.query) == "ok"


@pytest.mark.parametrize("how", ["access", "EROFS", "EACCES"])
def test_read_only_index_folder_is_a_clear_error_and_the_index_is_intact(effnet_tiny, monkeypatch, capsys, how):
    """Simulated (root ignores chmod): os.access says no, or creating the temp file fails with
    EROFS / EACCES, as a read-only mount or a folder without write permission does."""
    before, items = _index_files(effnet_tiny.index), Manifest.read(effnet_tiny.index).items
    _change_library(effnet_tiny.data)
    if how == "access":
        monkeypatch.setattr("retrieval.indexing.os.access", lambda path, mode: False)
        want = "cannot write to the index folder"
    else:
        code = getattr(errno, how)

        def refuse(*a, **k):
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(atomic.tempfile, "mkstemp", refuse)
        want = "read-only" if how == "EROFS" else "permission denied"
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(effnet_tiny.index), "--model", "none"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert rc == 2 and want in err and "Traceback" not in err, err
    _intact(effnet_tiny, before, items)


def _can_mount() -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path("/tmp") / f"lookalike-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                            capture_output=True, timeout=10).returncode == 0
        if ok:
            subprocess.run(["umount", str(probe)], capture_output=True, timeout=10)
        return ok
    finally:
        probe.rmdir()


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and permission to mount (tmpfs, bind)")


@pytest.fixture
def mount_point(tmp_path):
    """A folder to mount on; whatever is mounted there is unmounted afterwards (lazily if busy)."""
    point = tmp_path / "mnt"
    point.mkdir()
    yield point
    for _ in range(3):
        if subprocess.run(["mountpoint", "-q", str(point)]).returncode != 0:
            break
        if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@needs_mount
def test_real_disk_full_on_a_tmpfs(mount_point, capsys):
    """A real 12 MB tmpfs: build an index on it, fill the disk, rebuild after a library change."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount_point)], check=True, timeout=10)
    data = make_tiny_library(mount_point / "data", n_train=4, n_test=1)
    index = mount_point / "index"
    fixture = SimpleNamespace(data=data, index=index, query=next((data / "test").rglob("*.jpg")))
    build_index(data, index, model="effnet", evaluate=False)
    before, items = _index_files(index), Manifest.read(index).items
    _change_library(data)
    with open(mount_point / "filler", "wb") as fh:   # fill every last block
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(mount_point).free < 65536
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet"])
    err = capsys.readouterr().err
    assert rc == 2 and "the disk is full" in err and "Traceback" not in err, err
    assert _index_files(index) == before and Manifest.read(index).items == items
    exact = LookalikeIndex.open(index).search(fixture.query, "effnet-cosine", 5)[0]
    assert len(exact) == 5
    (mount_point / "filler").unlink()
    assert build_cli.main(["index", "--data", str(data), "--index", str(index), "--model", "effnet"]) == 0
    assert _index_state(index, fixture.query) == "ok" and "train/red/added.jpg" in LookalikeIndex.open(index).rels


@needs_mount
def test_real_read_only_bind_mount(effnet_tiny, mount_point, capsys):
    """The index folder bind-mounted read-only: the build refuses, exact search works, and HNSW
    (Chroma writes to its folder even to read it) fails with a message that says so."""
    before = _index_files(effnet_tiny.index)
    subprocess.run(["mount", "--bind", str(effnet_tiny.index), str(mount_point)], check=True, timeout=10)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(mount_point)], check=True, timeout=10)
    _change_library(effnet_tiny.data)
    capsys.readouterr()
    rc = build_cli.main(["index", "--data", str(effnet_tiny.data), "--index", str(mount_point), "--model", "effnet"])
    assert rc == 2 and "cannot write to the index folder" in capsys.readouterr().err
    index = LookalikeIndex.open(mount_point, data_dir=effnet_tiny.data)
    assert len(index.search(effnet_tiny.query, "effnet-cosine", 5)[0]) == 5
    with pytest.raises(IndexError_, match="Chroma writes to its folder even to read it"):
        index.search(effnet_tiny.query, "effnet-hnsw-cosine", 5)
    assert _index_files(effnet_tiny.index) == before


# -- faults: killed download and crawl ------------------------------------------------------------

def _download_result(raw: Path) -> tuple[dict[str, str], dict[str, tuple]]:
    files = _tree(raw, skip=("manifest.json",))
    records = json.loads((raw / "manifest.json").read_text())["items"]
    return files, {r["url"]: (r["status"], r["file"], r["bytes"]) for r in records}


def test_download_killed_midway_resumes_to_the_same_result(tmp_path):
    """`build_index.py download` SIGKILLed twice, each time once a random number of images is on
    disk, then resumed: the same files and manifest (status, file, size per URL) as a run that was
    never interrupted, and no temporary files left behind."""
    rng = random.Random(KILL_SEED)
    with FaultServer() as srv:
        for i in range(40):
            srv.routes[f"/slow/{i}.jpg"] = Reply(200, make_jpeg(f"slow{i}", (320, 240)), delay=0.05)
        urls = {"animal": {"cat": [srv.url(f"/slow/{i}.jpg") for i in range(20)] + [srv.url("/404.jpg")],
                           "dog": [srv.url(f"/slow/{i}.jpg") for i in range(20, 40)] + [srv.url("/page.jpg"),
                                                                                         srv.url("/garbage.jpg")]}}
        (tmp_path / "urls.json").write_text(json.dumps(urls))

        def cmd(raw: Path) -> list[str]:
            return [sys.executable, "build_index.py", "download", "--urls", str(tmp_path / "urls.json"),
                    "--raw", str(raw), "--delay", "0.01", "--workers", "4"]

        raw = tmp_path / "raw"
        kills = sorted(rng.sample(range(3, 38), 2))       # images on disk when each run is killed
        for n in kills:
            proc = subprocess.Popen(cmd(raw), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline and len(list(raw.rglob("*.jpg"))) < n:
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        partial = len(list(raw.rglob("*.jpg")))
        # What a kill inside a write leaves: a hidden temporary file. The next run clears it.
        leftover = raw / "animal" / "cat" / ".0123456789abcdef.jpg.k2j3h4g5.tmp"
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(b"half a jpeg")
        out = subprocess.run(cmd(raw), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        ref = subprocess.run(cmd(tmp_path / "ref"), cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert ref.returncode == 0, ref.stderr[-2000:]
    print(f"download killed with {kills} images on disk (seed {KILL_SEED}); {partial} of 40 before the resume")
    assert partial < 40 and not leftover.exists()
    assert _download_result(raw) == _download_result(tmp_path / "ref")



@needs_chromedriver
def test_crawl_killed_midway_resumes_to_the_same_result(tmp_path):
    from flickr_standin import serve_standin
    cats = tmp_path / "cats.json"
    cats.write_text(json.dumps({"animal": ["cat", "dog"], "plant": ["rose"]}))
    rng = random.Random(KILL_SEED)
    with serve_standin(default_total=12, per_page=4, scroll_pages=1) as site:
        cmd = [sys.executable, "build_index.py", "crawl", "--search-url", site.url_template, "--categories", str(cats),
               "--max-images", "6", "--workers", "1", "--scroll-pause", "0.2", "--time-limit", "30",
               "--urls", str(tmp_path / "urls.json")]
        # Its own process group, so the kill takes chromedriver and Chromium with it.
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while not (tmp_path / "urls.json").exists() and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.5))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        partial = json.loads((tmp_path / "urls.json").read_text())
        done = [t for terms in partial.values() for t in terms]
        assert done, "killed before the first term was saved"
        out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads((tmp_path / "urls.json").read_text()) == {
            "animal": {"cat": site.expected_urls("cat", 6), "dog": site.expected_urls("dog", 6)},
            "plant": {"rose": site.expected_urls("rose", 6)}}
        for term in done:       # terms saved before the kill were not crawled again
            assert site.hits("/search", text=term) == 1, term


# -- concurrency --------------------------------------------------------------------------------------

def test_twenty_concurrent_users_for_ten_seconds(corpus, tmp_path, capsys):
    """bench.load.soak, shortened: 20 gradio_client users mixing every endpoint against app.py for 10 s
    (the 60 s run for the README uses the same script). Zero errors, every answer correct."""
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, "-m", "bench.load.soak", "--index", str(corpus.index), "--clients", "20",
                          "--seconds", "10", "--json", str(out)], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=240)
    assert out.is_file(), run.stdout[-3000:] + run.stderr[-3000:]
    res = json.loads(out.read_text())
    with capsys.disabled():
        print(f"\n[soak 10 s] {run.stdout.strip().splitlines()[-1]}")
    assert res["errors"] == 0, res["error_examples"]
    assert res["wrong"] == 0, res["wrong_examples"]
    assert res["requests"] >= 20 and {"pixel", "deep", "bad", "file"} <= set(res["per_kind"])
    assert run.returncode == 0


# -- security -------------------------------------------------------------------------------------------

TOKEN = "hf_reliabilityTestToken0123456789abcdefXYZ"

_FAKE_PUSH = """
import hashlib, pathlib, shutil, sys
import collect.hub as hub
class FakeHfApi:
    def __init__(self, token=None, **kw):
        pathlib.Path(sys.argv[1], "token.sha256").write_text(hashlib.sha256((token or "").encode()).hexdigest())
    def create_repo(self, repo_id, **kw):
        return repo_id
    def upload_folder(self, folder_path, **kw):
        shutil.copytree(folder_path, pathlib.Path(sys.argv[1], "uploaded"))
hub.HfApi = FakeHfApi
import build_index
sys.exit(build_index.main(sys.argv[2:]))
"""


def test_hub_token_is_never_logged_or_written(tmp_path):
    """An index build with --model auto (which asks the Hub for CLIP weights, offline here) and a
    push of the library and index (the Hub faked at HfApi), with HF_TOKEN set and debug logging on:
    the token reaches HfApi, and appears in no output and in no file either of them wrote."""
    work = tmp_path / "work"
    work.mkdir()
    data = make_tiny_library(work / "data", n_train=3, n_test=1)
    env = {**ENV, "HF_TOKEN": TOKEN, "HF_HOME": str(work / "hf-home")}
    runs = [
        [sys.executable, "build_index.py", "-v", "index", "--data", str(data), "--index", str(work / "index"),
         "--model", "auto"],
        [sys.executable, "-c", _FAKE_PUSH, str(work), "-v", "push", "--repo-id", "someone/lib", "--data", str(data),
         "--push-index", str(work / "index")],
    ]
    outputs = []
    for cmd in runs:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout + out.stderr)
    assert (work / "token.sha256").read_text() == hashlib.sha256(TOKEN.encode()).hexdigest()  # it was used
    assert (work / "uploaded" / "index" / MANIFEST).is_file() and "DEBUG" in outputs[0]
    for text in outputs:
        assert TOKEN not in text
    written = [p for p in work.rglob("*") if p.is_file()]
    assert len(written) > 20
    assert not [p for p in written if TOKEN.encode() in p.read_bytes()]
    print(f"token found in 0 of {len(outputs)} outputs ({sum(map(len, outputs))} characters) "
          f"and 0 of {len(written)} files written")


@pytest.mark.parametrize("field,value", [
    ("pixels_file", "../../../etc/passwd"), ("pixels_file", "/etc/passwd"), ("pixels_file", ".hidden.npy"),
    ("embedder", {"file": "../outside.npy"}), ("chroma", {"path": "/tmp/lookalike-evil-chroma"}),
    ("chroma", {"path": "../../chroma"}), ("items", [{"path": "../../etc/passwd", "label": "x", "sha256": "0"}]),
    ("items", [{"path": "/etc/passwd", "label": "x", "sha256": "0"}]),
])
def test_a_manifest_naming_paths_outside_its_folders_is_refused(effnet_tiny, field, value):
    """An index can come from a Hub dataset repo: its manifest must not lead reads or Chroma's
    writes outside the index and library folders."""
    raw = json.loads((effnet_tiny.index / MANIFEST).read_text())
    raw[field] = {**raw[field], **value} if isinstance(value, dict) else value
    (effnet_tiny.index / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(IndexError_, match="refusing it"):
        LookalikeIndex.open(effnet_tiny.index)
    assert not Path("/tmp/lookalike-evil-chroma").exists()


@pytest.mark.parametrize("content", ['["not", "a", "manifest"]', '{"format": 1, "pixel_size": 32}', "{"])
def test_a_malformed_manifest_is_a_clear_error(tmp_path, content):
    (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(IndexError_, match="rebuild the index"):
        Manifest.read(tmp_path)


def test_only_http_and_https_are_fetched_even_after_redirects(tmp_path):
    with FaultServer() as srv, FaultServer("127.0.0.2") as other:
        srv.routes["/to-data.jpg"] = Reply(302, b"", "text/plain", {"Location": "data:image/png;base64,iVBORw0KGgo="})
        srv.routes["/to-js.jpg"] = Reply(302, b"", "text/plain", {"Location": "javascript:alert(1)"})
        srv.routes["/to-other-host.jpg"] = Reply(302, b"", "text/plain", {"Location": other.url("/img/x.jpg")})
        cases = {"data:image/png;base64,iVBORw0KGgo=": "bad_scheme", "javascript:alert(1)": "bad_scheme",
                 "FILE:///etc/passwd": "bad_scheme", "gopher://127.0.0.1/x": "bad_scheme",
                 "//127.0.0.1/x.jpg": "bad_scheme", "http:///x.jpg": "bad_url",
                 srv.url("/to-data.jpg"): "bad_scheme", srv.url("/to-js.jpg"): "bad_scheme",
                 srv.url("/to-other-host.jpg"): "ok", srv.url("/img/y.jpg").replace("http://", "HTTP://"): "ok"}
        raw = tmp_path / "raw"
        Downloader(raw, DownloadConfig(delay=0.0, retries=0)).run([("c", "t", u) for u in cases], progress=False)
        got = {r["url"]: r["status"] for r in json.loads((raw / "manifest.json").read_text())["items"]}
    assert got == cases
    assert all(p.resolve().is_relative_to(raw.resolve()) for p in raw.rglob("*"))


@pytest.mark.parametrize("argv,message", [
    (["search", "{q}", "--index", "{i}", "-k", "0"], "k must be a whole number from 1 to 100"),
    (["search", "{q}", "--index", "{i}", "-k", "101"], "k must be a whole number from 1 to 100"),
    (["search", "--text", "x" * 301, "--index", "{i}"], "the limit is 300"),
    (["search", "--text", "   ", "--index", "{i}"], "the text prompt is empty"),
    (["search", "{q}", "--index", "{i}", "--pixel-size", "16"], "was built at 32x32 pixels, not 16x16"),
    (["search", "{q}", "--index", "{i}", "--method", "pixel-l3"], "unknown method"),
    (["search", "{q}", "{q}", "--index", "{i}"], None),   # argparse: exit 2 with usage
])
def test_cli_search_inputs_are_bounded(corpus, capsys, argv, message):
    argv = [a.replace("{q}", str(corpus.files["photo.webp"])).replace("{i}", str(corpus.index)) for a in argv]
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 2
        return
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize("argv,message", [
    (["index", "--pixel-size", "0"], "pixel size must be a whole number from 4 to 1024"),
    (["index", "--pixel-size", "5000"], "pixel size must be a whole number from 4 to 1024"),
    (["index", "--batch-size", "0"], "batch size must be a whole number of at least 1"),
    (["download", "--retries", "-1"], "retries=-1 (must be 0 or more)"),
    (["download", "--max-mb", "0"], "max_bytes=0 (must be at least 1)"),
    (["download", "--workers", "0"], "workers=0 (must be at least 1)"),
])
def test_build_inputs_are_bounded(tmp_path, capsys, argv, message):
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=1)
    (tmp_path / "urls.json").write_text(json.dumps({"c": {"t": ["http://127.0.0.1:9/x.jpg"]}}))
    paths = {"index": ["--data", str(data), "--index", str(tmp_path / "index"), "--model", "none"],
             "download": ["--urls", str(tmp_path / "urls.json"), "--raw", str(tmp_path / "raw")]}[argv[0]]
    assert build_cli.main(argv + paths) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not (tmp_path / "index" / MANIFEST).exists() and not (tmp_path / "raw").exists()


def test_download_settings_are_checked_in_code_too():
    with pytest.raises(DownloadError, match="retries=-1"):
        DownloadConfig(retries=-1)
    with pytest.raises(DownloadError, match="read_timeout=0"):
        DownloadConfig(read_timeout=0)
