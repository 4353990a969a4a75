"""Which floating-point precision the model runs in: fp32, bf16 (CPUs with native bf16) or fp16 (GPU).

Why a choice at all: CPUs with native bf16 units (AVX512-BF16, AMX) run the matrix products of a
model at 2x or more their fp32 speed, while CPUs without them emulate bf16 and run *slower* than
fp32. So `auto` asks two questions before it picks bf16: does the CPU say it has native bf16
(`native_bf16()`, which tests monkeypatch to simulate a CPU without it), and does a short timed
calibration on this very model agree that bf16 is faster? Anything else gets fp32. On a GPU the
precision is fp16, as before.

The calibration costs model calls at every start of a query server that has to decide (about 5
CPU-seconds for efficientnet-lite0 on 2 cores, a third of the app's start-up), and its verdict is a
property of the model, torch and the CPU: `remember` keeps a clear verdict in a small JSON file under
`machine_key`, and `recall` finds it at the next start (the app's warm-up, webui.warmup).
"""
from __future__ import annotations

import copy
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import LookalikeError, ModelError

if TYPE_CHECKING:
    from . import Embedder
    import numpy as np

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CALIBRATION_BATCH = 8
CALIBRATION_MIN_SPEEDUP = 1.15   # below this the gain is within the noise of a busy 2-core machine
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
REMEMBER_MIN_SPEEDUP = 1.3       # a calibration kept for later starts: bf16 at least this much faster, or slower


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none: macOS, Windows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """Does this CPU compute in bf16 natively? oneDNN's own check, and, where /proc/cpuinfo
    exists, one of the bf16 flags in it (oneDNN's check alone is true on some CPUs that only
    emulate bf16). Tests monkeypatch this function to simulate a CPU without native bf16."""
    try:
        mkldnn = bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        mkldnn = False
    flags = cpu_flags()
    return mkldnn and (not flags or any(f in flags for f in CPU_BF16_FLAGS))


def check_precision(precision: str | None) -> str:
    value = (precision or "auto").strip().lower()
    if value not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return value


def _seconds(embedder: "Embedder", batch: torch.Tensor) -> tuple[float, float]:
    """(wall, CPU) seconds of one model call; CPU time covers all of the process's threads."""
    t0, c0 = time.perf_counter(), time.process_time()
    embedder.embed_batch(batch)
    return time.perf_counter() - t0, time.process_time() - c0


def calibrate(embedder: "Embedder", batch: int = CALIBRATION_BATCH, repeats: int = 3) -> dict[str, float]:
    """Time one batch in fp32 and in bf16 on this model: {"fp32_s", "bf16_s", "speedup", ...}.

    One warm-up call per precision, then the best of `repeats` calls each, the two precisions
    alternating. The verdict ("speedup") compares CPU seconds (all threads): on a shared machine
    other jobs stretch wall time at random, which once made bf16 look 2x *slower* than fp32 here
    while its CPU time was 2x lower; CPU time hardly moves with load. Wall figures are kept too.
    It costs a few model calls (about 3 s for ViT-B-32 on 2 cores)."""
    x = embedder.probe_batch(batch)
    before = embedder.precision
    wall = {"fp32": float("inf"), "bf16": float("inf")}
    cpu = dict(wall)
    try:
        for p in wall:
            embedder.set_precision(p)
            embedder.embed_batch(x)
        for _ in range(repeats):
            for p in wall:
                embedder.set_precision(p)
                w, c = _seconds(embedder, x)
                wall[p], cpu[p] = min(wall[p], w), min(cpu[p], c)
    finally:
        embedder.set_precision(before)
    return {"fp32_s": wall["fp32"], "bf16_s": wall["bf16"], "speedup_wall": wall["fp32"] / wall["bf16"],
            "fp32_cpu_s": cpu["fp32"], "bf16_cpu_s": cpu["bf16"], "speedup": cpu["fp32"] / max(cpu["bf16"], 1e-9)}


def resolve(embedder: "Embedder", requested: str | None) -> tuple[str, dict[str, object]]:
    """The precision to run `embedder` in, and why (a record for the manifest and the logs)."""
    requested = check_precision(requested)
    if embedder.device.type == "cuda":
        return "fp16", {"requested": requested, "why": "GPU: half precision"}
    if requested == "fp32":
        return "fp32", {"requested": requested, "why": "asked for"}
    native = native_bf16()
    if requested == "bf16":
        if not native:
            log.warning("this CPU has no native bf16: bf16 will run emulated, usually slower than fp32")
        return "bf16", {"requested": requested, "why": "asked for", "native_bf16": native}
    if not native:
        log.info("precision auto: this CPU has no native bf16 -> fp32")
        return "fp32", {"requested": requested, "why": "this CPU has no native bf16", "native_bf16": False}
    cal = calibrate(embedder)
    chosen = "bf16" if cal["speedup"] >= CALIBRATION_MIN_SPEEDUP else "fp32"
    log.info("precision auto: bf16 is %.2fx fp32 (CPU time) on this model here -> %s", cal["speedup"], chosen)
    return chosen, {"requested": requested, "native_bf16": True,
                    "why": f"calibration: bf16 {cal['speedup']:.2f}x fp32 per CPU-second "
                           f"({'>=' if chosen == 'bf16' else '<'} {CALIBRATION_MIN_SPEEDUP}x; wall clock "
                           f"{cal['speedup_wall']:.2f}x)",
                    "calibration": {k: round(v, 4) for k, v in cal.items()}}


# -- the calibration, measured once per machine --------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name in /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return ""


def machine_key(spec: str) -> str:
    """What a calibration's verdict depends on: the model, torch, the CPU (model, bf16 flags, cores)
    and the threads torch uses. A remembered verdict applies only where all of them are the same."""
    return json.dumps({"spec": spec, "torch": torch.__version__, "cpu": cpu_model(), "cpus": os.cpu_count(),
                       "bf16_flags": sorted(f for f in cpu_flags() if f in CPU_BF16_FLAGS),
                       "threads": torch.get_num_threads()}, sort_keys=True)


def recall(cache: Path, spec: str) -> dict[str, Any] | None:
    """The calibration remembered in `cache` for model `spec` on this machine ({"precision", "why",
    "calibration", "measured"}), or None: none yet, another machine, or an unreadable file."""
    try:
        entry = json.loads(cache.read_text("utf-8")).get(machine_key(spec))
    except (OSError, ValueError, AttributeError):
        return None
    return entry if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16") else None


def remember(cache: Path, spec: str, precision: str, record: dict[str, Any]) -> bool:
    """Keep the verdict of the calibration that `record` (an embedder's precision_record) holds, for
    the next start on this machine. Only a clear one (REMEMBER_MIN_SPEEDUP): other jobs on the CPUs
    pull the measured ratio toward 1 (a busy 2-core machine once measured 0.95x where it usually
    measures 1.6x to 2.8x), so a close call is measured again next time. False where nothing was kept."""
    speedup = (record.get("calibration") or {}).get("speedup")
    clear = isinstance(speedup, (int, float)) and not 1 / REMEMBER_MIN_SPEEDUP < speedup < REMEMBER_MIN_SPEEDUP
    if precision not in ("fp32", "bf16") or not clear:
        return False
    from .. import atomic
    try:
        kept = json.loads(cache.read_text("utf-8"))
    except (OSError, ValueError):
        kept = {}
    kept = kept if isinstance(kept, dict) else {}
    kept[machine_key(spec)] = {"precision": precision, "why": record.get("why"), "calibration": record["calibration"],
                               "measured": time.strftime("%Y-%m-%d %H:%M", time.localtime())}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(cache, kept)
    except (OSError, LookalikeError) as exc:
        log.debug("could not keep the calibration in %s: %s", cache, exc)
        return False
    return True


def model_in(model: torch.nn.Module, dtype: torch.dtype, channels_last: bool) -> torch.nn.Module:
    """A copy of `model` in `dtype` (the fp32 original stays untouched: bf16 -> fp32 is lossy)."""
    out = copy.deepcopy(model).to(dtype=dtype)
    return out.to(memory_format=torch.channels_last) if channels_last else out


def neighbour_overlap(a: "np.ndarray", b: "np.ndarray", k: int = 10) -> float:
    """Mean share of each row's k nearest rows (cosine, itself left out) that two sets of unit
    vectors of the same images agree on."""
    import numpy as np
    k = min(k, len(a) - 1)
    if k < 1:
        return 1.0

    def nearest(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1, kind="stable")[:, :k]

    na, nb = nearest(a), nearest(b)
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(na, nb)]))


GUARD_SAMPLE = 64          # images re-embedded in fp32 after a bf16 build (a few seconds on 2 cores)
GUARD_MIN_OVERLAP = 0.85   # top-10 overlap within the sample; see docs/benchmarks.md, "bf16"


def quality_check(embedder: "Embedder", paths: list, vectors: "np.ndarray", batch_size: int = 32,
                  sample: int | None = None, bound: float | None = None, decode=None) -> dict[str, object]:
    """The build's quality guard: re-embed an evenly spaced sample of the images just embedded in
    fp32 and compare it with their bf16 vectors (mean cosine; top-10 neighbour overlap within
    the sample). Logs a warning when the overlap is below `bound`; returns the figures.
    `paths` are files, or (with `decode`, see Embedder.encode_files) the very model inputs the
    vectors came from: the index build passes those, so nothing is read twice."""
    import numpy as np
    sample = GUARD_SAMPLE if sample is None else sample
    bound = GUARD_MIN_OVERLAP if bound is None else bound
    picks = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int))
    before = embedder.precision
    t0 = time.perf_counter()
    embedder.set_precision("fp32")
    try:
        ok: list[int] = []
        ref: list[np.ndarray] = []
        for got, vecs in embedder.encode_files([paths[i] for i in picks], batch_size=batch_size, progress=False,
                                              decode=decode):
            ok += [int(picks[j]) for j in got]
            ref.append(vecs)
    finally:
        embedder.set_precision(before)
    fp32 = np.concatenate(ref) if ref else np.zeros((0, embedder.dim), np.float32)
    low = np.asarray(vectors)[ok]
    overlap = neighbour_overlap(fp32, low, 10)
    cosine = float(np.mean(np.sum(fp32 * low, axis=1))) if ok else 1.0
    out: dict[str, object] = {"sample": len(ok), "top10_overlap": round(overlap, 4),
                              "mean_cosine": round(cosine, 5), "bound": bound, "ok": overlap >= bound,
                              "seconds": round(time.perf_counter() - t0, 2)}
    if overlap < bound:
        log.warning("bf16 vectors differ from fp32 more than expected: top-10 overlap %.3f on %d images "
                    "(bound %.2f, mean cosine %.4f); rebuild in fp32 precision if results look off",
                    overlap, len(ok), bound, cosine)
    else:
        log.info("bf16 check: top-10 overlap with fp32 %.3f on %d images, mean cosine %.4f",
                 overlap, len(ok), cosine)
    return out


def query_precision(requested: str | None, built: str | None) -> str | None:
    """What to ask load_embedder for at query time, given what the index was built in.

    "auto" follows the index: bf16 (where this CPU runs it natively and faster) only for an index
    built in bf16, fp32 for anything else, so an fp32 index never gets bf16 queries unless a user
    asks. A bf16 index on a CPU without native bf16 gets fp32 queries: mixing the two was measured
    harmless (docs/benchmarks.md, "bf16": mAP within 0.01). None keeps the embedder's default."""
    if requested is None:
        return None
    requested = check_precision(requested)
    if requested != "auto":
        return requested
    return "auto" if built == "bf16" else "fp32"
