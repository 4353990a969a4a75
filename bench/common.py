"""Shared benchmark helpers: timing with medians, peak memory per phase, machine info, results.

Every benchmark module exposes `run(...) -> dict` (a *result*, see `result()`), used both by its own
command line (`cli()`) and by the suite (`python -m bench`). A result holds preformatted tables, the
targets it checks and the raw figures; `render()` turns it into the Markdown of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import inspect
import itertools
import json
import logging
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import typing
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = Path(tempfile.gettempdir()) / "lookalike-bench"   # kept between runs: libraries and indexes
SAMPLE_INDEX = CACHE / "data-effnet-index"                 # sample_effnet_index's folder


# -- timing -----------------------------------------------------------------------------------
def timed(fn: Callable[..., object], repeat: int, warmup: int = 1, args: Iterable[Any] | None = None) -> list[float]:
    """Wall-clock seconds of `repeat` calls after `warmup` untimed calls. With `args`, each call
    gets the next of them (from the start again when they run out): one query after another."""
    items = itertools.cycle(args) if args is not None else None
    out = []
    for i in range(warmup + repeat):
        t0 = time.perf_counter()
        if items is None:
            fn()
        else:
            fn(next(items))
        if i >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def median_ms(samples: Sequence[float]) -> float:
    return 1000 * statistics.median(samples)


def percentile_ms(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) in ms, nearest rank: with 100 samples p99 is the 99th smallest."""
    s = sorted(samples)
    return 1000 * s[min(len(s) - 1, max(0, int(round(q / 100 * len(s))) - 1))]


def p95_ms(samples: Sequence[float]) -> float:
    return percentile_ms(samples, 95)


# -- processes and memory ---------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU time of this process so far, all threads (native ones included)."""
    t = os.times()
    return t.user + t.system


def peak_rss_mb() -> float:
    """Peak resident memory of this process over its lifetime (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_field(path: str, key: str) -> str | None:
    """The value after `key:` in a /proc file (status, meminfo, cpuinfo), or None where it cannot be read."""
    try:
        with open(path) as fh:
            for line in fh:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def status_kb(field: str, pid: int | str = "self") -> int | None:
    """A field of /proc/PID/status in kB (VmRSS, VmHWM, VmPeak...), or None where it cannot be read."""
    value = proc_field(f"/proc/{pid}/status", field)
    return None if value is None else int(value.split()[0])


def rss_mb(pid: int | str = "self") -> float | None:
    kb = status_kb("VmRSS", pid)
    return None if kb is None else kb / 1024


def hwm_mb(pid: int | str = "self") -> float | None:
    """Peak resident memory (VmHWM) of a process since start or since its last reset (MB)."""
    kb = status_kb("VmHWM", pid)
    return None if kb is None else kb / 1024


class PeakMemory:
    """Peak resident memory of this process during a `with` block, in MB (`.peak_mb`).

    Linux lets a process reset its own high-water mark (write 5 to /proc/self/clear_refs), so the
    figure is exact for the block even after bigger earlier phases. Where it cannot, the figure is
    the process's lifetime peak: an upper bound.
    """

    def __enter__(self) -> PeakMemory:
        self.start_mb = rss_mb() or 0.0
        self.peak_mb = 0.0
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
        except OSError:
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_mb = hwm_mb() or peak_rss_mb()


def in_child(module: str, func: str, **kwargs: Any) -> dict[str, Any]:
    """Call bench/<module>.py's func(**kwargs) in a fresh Python process and return its JSON-able
    dict, plus "peak_mb": the child's lifetime peak resident memory (imports and model included), and
    "cpu_s": the CPU seconds it used (all threads), a figure that other jobs on the machine hardly move.
    A fresh process gives a clean memory figure: nothing left over from earlier phases. It runs in the
    repository root, which `python -c` puts first on sys.path, so it imports the package as `bench`.
    """
    code = (f"import json, sys; from bench import common, {module} as m; "
            f"r = m.{func}(**json.loads(sys.argv[1])); r['peak_mb'] = common.hwm_mb() or common.peak_rss_mb(); "
            "r['cpu_s'] = common.cpu_seconds(); "
            "print(); print(json.dumps(r))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{module}.{func} failed in a child process (status {proc.returncode}):\n"
                           + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a child we started, and kill it if it does not exit within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A free TCP port on 127.0.0.1, for a server a benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(proc: subprocess.Popen, url: str, timeout_s: float, what: str) -> None:
    """Return once `url` answers HTTP 200. A server a benchmark started takes a while to listen;
    RuntimeError if it exits first, or does not answer within timeout_s (then it is killed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not answer within {timeout_s} s")


# -- machine ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, load at the time, GPU, package versions."""
    from retrieval.manifest import package_versions
    mem_kb = proc_field("/proc/meminfo", "MemTotal")
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU",
        "cpus": os.cpu_count(), "memory_gb": round(int(mem_kb.split()[0]) / 2**20 if mem_kb else 0, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": package_versions(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
    }
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def machine_info() -> str:
    import numpy
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"numpy {numpy.__version__}")


def sample_library(path: str | os.PathLike | None = None) -> Path:
    """The sample library (built on first use) used by the benchmarks."""
    data = Path(path) if path else ROOT / "data"
    if not (data / "train").is_dir():
        from collect.sample import build_sample_library
        build_sample_library(data)
    return data


def sample_effnet_index(index: Path | None, data: str | os.PathLike | None = None) -> Path:
    """`index` when given; else an effnet index of the sample library (`data`, default data/) in
    SAMPLE_INDEX (another library: a folder of its own beside it), brought up to date first. One fixed
    folder, so the benchmarks that need an index share it: the build is incremental (only new or
    changed images are embedded) and takes the folder's build lock, so a later run costs seconds
    instead of the minutes of a first build on 2 cores. It is evaluated, as `build_index.py index`
    does: the best method (bench.feedback's first ranking) and the app's Evaluation tab come from that."""
    if index is not None:
        return index
    from retrieval.indexing import build_index
    library = sample_library(data)
    folder = SAMPLE_INDEX
    if library.resolve() != (ROOT / "data").resolve():   # another library gets its own folder, never this one
        folder = CACHE / f"effnet-index-{hashlib.sha1(str(library.resolve()).encode()).hexdigest()[:10]}"
    print(f"# building or updating an effnet index of {library} in {folder} ...", file=sys.stderr, flush=True)
    build_index(library, folder, model="effnet", evaluate=True, lock_wait=3600)
    return folder


# -- results ----------------------------------------------------------------------------------
def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def result(name: str, title: str, config: dict[str, Any]) -> dict[str, Any]:
    """An empty result that a benchmark fills with tables, checks, notes and raw figures."""
    return {"name": name, "title": title, "config": config, "started": now(), "tables": [],
            "checks": [], "notes": [], "figures": {}}


def add_table(res: dict[str, Any], caption: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    res["tables"].append({"caption": caption, "columns": list(columns), "rows": [[str(c) for c in r] for r in rows]})


def add_check(res: dict[str, Any], what: str, target: str, value: str, met: bool | None) -> None:
    """A target from the issue and how this run did against it (met=None: not measurable here)."""
    res["checks"].append({"what": what, "target": target, "value": value, "met": met})


def fmt_ms(ms: float) -> str:
    if ms != ms:  # nan
        return "n/a"
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def fmt_ratio(x: float) -> str:
    return "n/a" if x != x else f"{x:.0f}x" if x >= 10 else f"{x:.2f}x"


def mark(met: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "reported"}[met]


def render(res: dict[str, Any], level: int = 2) -> str:
    """Markdown for one result: title, run facts, tables, targets, notes."""
    h = "#" * level
    lines = [f"{h} {res['title']}", ""]
    facts = [f"`{res['name']}`", f"run {res.get('started', '?')}"]
    if "seconds" in res:
        facts.append(f"took {res['seconds']:.0f} s")
    if res.get("mode"):
        facts.append(f"mode {res['mode']}")
    lines += [", ".join(facts) + ".", ""]
    if res.get("error"):
        lines += ["**This benchmark failed:**", "", "```", res["error"].strip()[-3000:], "```", ""]
    for t in res.get("tables", []):
        if t.get("caption"):
            lines += [t["caption"], ""]
        lines.append("| " + " | ".join(t["columns"]) + " |")
        lines.append("|" + "---|" * len(t["columns"]))
        lines += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        lines.append("")
    if res.get("checks"):
        lines += ["| target | required | this run | |", "|---|---|---|---|"]
        lines += [f"| {c['what']} | {c['target']} | {c['value']} | {mark(c['met'])} |" for c in res["checks"]]
        lines.append("")
    for note in res.get("notes", []):
        lines.append(f"- {note}")
    if res.get("notes"):
        lines.append("")
    if res.get("transcript"):
        lines += ["```", res["transcript"].rstrip(), "```", ""]
    return "\n".join(lines)


def print_result(res: dict[str, Any]) -> None:
    print(render(res, level=1))


# -- command line -----------------------------------------------------------------------------
def _is_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple or any(typing.get_origin(a) is tuple for a in typing.get_args(hint))


def _arg_type(hint: Any) -> Any:
    """int for `int`, `int | None` and `tuple[int, ...]`; likewise float, str and Path."""
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis] or [hint]
    inner = typing.get_args(args[0]) or args
    return inner[0] if inner[0] in (int, float, str, Path) else str


def cli(run: Callable[..., dict[str, Any]], argv: list[str] | None = None,
        summary: Callable[[dict[str, Any]], int] | None = None) -> int:
    """`python -m bench.NAME [--key VALUE ...] [--json OUT]`: one option per parameter of `run`
    (underscores as dashes, the same defaults), so the suite's config keys and the command line
    cannot drift apart. The result is printed as Markdown, or by `summary` (the load tests), which
    also gives the exit status; --json writes it to a file too."""
    module = sys.modules[run.__module__]
    prog = module.__spec__.name if module.__spec__ else run.__module__     # bench.NAME, also under -m
    ap = argparse.ArgumentParser(prog=f"python -m {prog}", description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(run)
    for name, param in inspect.signature(run).parameters.items():
        flag, default, hint = "--" + name.replace("_", "-"), param.default, hints.get(name)
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            many = isinstance(default, tuple) or _is_tuple(hint)
            ap.add_argument(flag, nargs="+" if many else None, type=_arg_type(hint), default=default,
                            metavar=name.upper())
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the result to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="log progress")
    args = vars(ap.parse_args(argv))
    out = args.pop("json")
    logging.basicConfig(level=logging.INFO if args.pop("verbose") else logging.WARNING)
    if summary is None:
        print(machine_info())
    t0 = time.perf_counter()
    res = run(**{k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
    if summary is None:
        res.setdefault("seconds", round(time.perf_counter() - t0, 1))
        print_result(res)
    if out:
        out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return summary(res) if summary else 0
