"""The benchmark suite: run every benchmark and write bench/RESULTS.md.

    python -m bench                      # every default benchmark at full size (see docs/benchmarks.md)
    python -m bench --quick              # small sizes, a few minutes: proves everything runs
    python -m bench --only pixel_query vectors --set vectors.sizes=[10000,100000]
    python -m bench --only vectors_1m    # the 1M-vector Chroma build (about an hour on 2 cores; opt-in)
    python -m bench --list
    python -m bench --render             # run nothing: re-render RESULTS.md from bench/results/

The load tests (`python -m bench.load ...`) are in bench/load/.

Each benchmark runs in its own child process (so peak-memory figures and thread settings of one
cannot leak into the next), calls its module's `run(**config)` and hands back a result dict. Results
are kept one JSON file per benchmark under bench/results/, and RESULTS.md is re-rendered atomically
from all of them after every benchmark: a partial run (--only) updates its own sections and keeps
the others, each section saying when and in which mode it ran. Children's logs go to a temp folder.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval import atomic

from .common import BENCH, ROOT, machine, mark, now, render, result, stop_process

RESULTS_DIR = BENCH / "results"
RESULTS_MD = BENCH / "RESULTS.md"


@dataclass(frozen=True)
class Bench:
    """One suite entry: a module with run(**config), its full and quick configs."""

    name: str
    module: str
    full: dict[str, Any] = field(default_factory=dict)
    quick: dict[str, Any] = field(default_factory=dict)
    default: bool = True          # part of a plain `python -m bench`
    script: bool = False          # a script without run(), left out of quick runs: its printout is the result
    args: tuple[str, ...] = ()    # a script's command-line arguments


SUITE: tuple[Bench, ...] = (
    Bench("pixel_query", "pixel_query", full={"queries": 30, "seed_queries": 3},
          quick={"queries": 10, "seed_queries": 1}),
    Bench("clip_query", "clip_query", full={"seed_queries": 2, "queries": 20},
          quick={"seed_queries": 1, "queries": 5, "library_limit": 30}),
    Bench("build_vs_seed", "build_vs_seed", full={"limit": 128, "repeats": 3},
          quick={"limit": 16, "repeats": 1, "models": ("effnet",)}),
    Bench("fashion_mnist", "fashion", full={"test": 500},
          quick={"train": 3000, "test": 100, "backbone_train": 200, "throughput_images": 64, "latency_queries": 20}),
    Bench("vectors", "vectors", full={"sizes": (10_000, 100_000), "server_n": 100_000,
                                      "exact_sizes": (10_000, 100_000, 1_000_000)},
          quick={"sizes": (2_000, 10_000), "server_n": 5_000, "exact_sizes": (10_000, 100_000), "queries": 50,
                 "ef_sweep": (100, 400)}),
    Bench("vectors_1m", "vectors", full={"sizes": (10_000, 100_000, 1_000_000), "server_n": 100_000,
                                         "exact_sizes": (10_000, 100_000, 1_000_000), "name": "vectors_1m",
                                         "ef_sweep": (50, 100, 200, 400, 800), "dataset": "embedding-like"},
          default=False),
    Bench("rerank_speed", "rerank_speed", full={"queries": 30}, quick={"queries": 5, "fashion_train": 5000}),
    Bench("duplicates", "duplicates", full={"photos": 100}, quick={"photos": 20}),
    # The app engineer's script (no run()): its printout is kept as is. It builds an effnet index of
    # the sample library first (minutes on 2 cores), so quick runs leave it out.
    Bench("app_latency", "load.app_latency", script=True),
    # The explanation and refinement studies' scripts (docs/explain.md), on the effnet index of the
    # sample library that bench.common.sample_effnet_index keeps up to date (built once, then reused).
    Bench("explain_mass", "explain_mass", script=True),
    Bench("feedback", "feedback", script=True, args=("--rounds", "2")),
    # 10,000 Fashion-MNIST images keep a suite run to minutes; the 60,000-image figures in
    # docs/explain.md come from `python -m bench.map_cost --n 60000` (about 25 minutes on 2 cores).
    Bench("map_cost", "map_cost", script=True, args=("--n", "10000")),
    # The app under prlimit --as with hostile uploads at its configured concurrency.
    Bench("hostile_memory", "load.hostile_memory", full={"seconds": 60}, quick={"seconds": 10}),
)
# One-off studies whose conclusions are now constants in the code (batch sizes, precision policy,
# draft decoding, HNSW settings, the default pixel size...). Their modules were removed after
# STUDIES_COMMIT; their last results stay in bench/results/ and RESULTS.md. To run one again:
#     git checkout STUDIES_COMMIT && python -m bench --only NAME
STUDIES_COMMIT = "605ac014295c54a3db557ce2e1b02b75ae39ff13"
RETIRED: tuple[str, ...] = ("pixel_sizes", "inference", "precision", "decode", "hnsw_settings", "hnsw_1m",
                            "hnsw_1m_256d", "streaming", "gpu")
BY_NAME = {b.name: b for b in SUITE}


# -- child side --------------------------------------------------------------------------------
def failed(name: str, config: dict[str, Any], mode: str, error: str) -> dict[str, Any]:
    """The result of a benchmark that did not hand one back: its error instead of figures."""
    return {**result(name, name, config), "mode": mode, "error": error}


def run_child(name: str, mode: str, out: Path, overrides: dict[str, Any]) -> int:
    """Run one benchmark in this process and write its result (or its failure) to `out`."""
    import logging
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    b = BY_NAME[name]
    config = {**(b.quick if mode == "quick" else b.full), **overrides}
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(f".{b.module}", __package__)
        res = mod.run(**config)
        code = 0
    except Exception:
        res = failed(name, config, mode, traceback.format_exc())
        code = 1
    res.setdefault("seconds", round(time.perf_counter() - t0, 1))
    res["name"], res["mode"], res["machine"] = name, mode, machine()
    atomic.write_json(out, res)
    return code


def run_script(b: Bench, mode: str, log: Path, env: dict[str, str]) -> dict[str, Any]:
    """A benchmark without run(): run the script and keep its printout as the result."""
    t0 = time.perf_counter()
    command = " ".join(["python -m", f"bench.{b.module}", *b.args])
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", f"bench.{b.module}", *b.args], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    res = {**result(b.name, f"{b.module}.py (its own printout)", {"args": list(b.args)}),
           "command": command, "notes": [f"Command: `{command}`."],
           "seconds": round(time.perf_counter() - t0, 1), "transcript": proc.stdout, "mode": mode,
           "machine": {**machine(), "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY")}}
    if proc.returncode != 0:
        res["error"] = f"exit status {proc.returncode}; see {log}\n" + log.read_text()[-3000:]
    return res


def run_in_child(b: Bench, mode: str, log: Path, out: Path, overrides: dict[str, Any],
                 env: dict[str, str]) -> dict[str, Any]:
    """Run one benchmark as `python -m bench --child NAME` and read back its result: a process of its
    own keeps one benchmark's peak memory and thread settings out of the next. A child killed before
    it wrote anything (out of memory?) still yields a result, with its log's tail as the error."""
    cmd = [sys.executable, "-m", "bench", "--child", b.name, "--json", str(out),
           "--overrides", json.dumps(overrides)] + (["--quick"] if mode == "quick" else [])
    with open(log, "w") as fh:
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            code = child.wait()
        finally:   # interrupted (Ctrl-C, SIGTERM): do not leave the benchmark running
            if child.poll() is None:
                stop_process(child)
    if out.is_file():
        return json.loads(out.read_text("utf-8"))
    return failed(b.name, overrides, mode, f"the child exited with status {code} and wrote no result; "
                                           f"log {log}:\n" + log.read_text()[-3000:])


# -- the report --------------------------------------------------------------------------------
def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """--set NAME.key=JSON -> {NAME: {key: value}} (a bare word that is not JSON is a string)."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.partition(".")
        if not sep or not dot or name not in BY_NAME:
            raise SystemExit(f"--set {item!r}: expected NAME.key=VALUE with NAME one of {', '.join(BY_NAME)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(name, {})[key] = parsed
    return out


def load_results(results_dir: Path) -> dict[str, dict[str, Any]]:
    """Every stored result, the suite's and the retired studies' (kept as the record of what they found)."""
    out = {}
    for name in [*BY_NAME, *RETIRED]:
        path = results_dir / f"{name}.json"
        if path.is_file():
            try:
                out[name] = json.loads(path.read_text("utf-8"))
            except ValueError:
                pass
    return out


def section(r: dict[str, Any], level: int) -> list[str]:
    """One result's Markdown, with a footer of how it ran."""
    m = r.get("machine") or {}
    return [render(r, level=level).rstrip(), "",
            f"<sub>{r.get('mode', '?')} mode; load average at start {m.get('load_average')}; torch threads "
            f"{m.get('torch_threads')}; config `{json.dumps(r.get('config'), default=str)}`</sub>", ""]


def render_all(results: dict[str, dict[str, Any]], command: str) -> str:
    """The whole RESULTS.md: machine, versions, a table of every target, then each section."""
    lines = ["# Lookalike benchmark results", "",
             "Written by `python -m bench` (bench/run.py); do not edit by hand. Every figure is a median over "
             "repeated runs unless its table says otherwise, and every ratio is against a baseline measured in "
             "the same run on the same machine. How to run and read these: docs/benchmarks.md.", "",
             f"Last command: `{command}` ({now()}).", ""]
    latest = max(results.values(), key=lambda r: r.get("started", ""), default=None)
    if latest and latest.get("machine"):
        m = latest["machine"]
        versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
        lines += ["## Machine", "",
                  f"- {m.get('cpu')}, {m.get('cpus')} CPUs, {m.get('memory_gb')} GB RAM, "
                  f"GPU: {m.get('gpu') or 'none'}; {m.get('platform')}",
                  f"- {versions}",
                  f"- Benchmark processes ran with OMP_WAIT_POLICY={m.get('OMP_WAIT_POLICY')} (why: "
                  "docs/benchmarks.md, \"Threads on a shared computer\").",
                  "- Load average when each section started is in its footer: this machine is shared, and "
                  "other jobs running at the same time slow every figure (the ratios less so, since both "
                  "sides of a ratio are measured back to back).", ""]
    checks = [(name if name in BY_NAME else f"{name} (retired)", c)
              for name, r in results.items() for c in r.get("checks", [])]
    if checks:
        lines += ["## Targets", "", "| benchmark | target | required | this run | |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {c['what']} | {c['target']} | {c['value']} | {mark(c['met'])} |" for name, c in checks]
        lines.append("")
    for b in SUITE:
        if b.name in results:
            lines += section(results[b.name], level=2)
    retired = [name for name in RETIRED if name in results]
    if retired:
        lines += ["## Retired studies", "",
                  "One-off studies whose conclusions are now constants in the code; their modules left the suite "
                  f"after commit {STUDIES_COMMIT[:12]}. Their last results follow. To run one again: "
                  f"`git checkout {STUDIES_COMMIT[:12]} && python -m bench --only NAME`.", ""]
        for name in retired:
            lines += section(results[name], level=3)
    return "\n".join(lines) + "\n"


def write_report(results_dir: Path, out: Path, command: str) -> None:
    atomic.write_bytes(out, render_all(load_results(results_dir), command).encode("utf-8"))


# -- command line ------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: the whole suite in a few minutes")
    ap.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks")
    ap.add_argument("--skip", nargs="+", default=[], metavar="NAME", help="leave these out")
    ap.add_argument("--set", nargs="+", default=[], metavar="NAME.key=VALUE", help="override a config value")
    ap.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of per-benchmark JSON results")
    ap.add_argument("--out", type=Path, default=RESULTS_MD, help="the Markdown report (default bench/RESULTS.md)")
    ap.add_argument("--omp-wait-policy", default="PASSIVE",
                    help="OMP_WAIT_POLICY for the benchmark processes (default PASSIVE; '' leaves it unset). "
                         "On a shared machine the default spinning policy makes every torch parallel region "
                         "wait for descheduled threads (docs/benchmarks.md, 'Threads on a shared computer')")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and their configs")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: re-render the report from the stored results (e.g. after a retirement)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    return ap


def chosen(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[Bench]:
    """The entries to run: --only's (or the default ones) less --skip's; a retired name says how to run it."""
    unknown = [n for n in (args.only or []) + args.skip if n not in BY_NAME]
    retired = [n for n in unknown if n in RETIRED]
    if retired:
        ap.error(f"{', '.join(retired)}: retired studies (their results stay in bench/RESULTS.md); to run one "
                 f"again: git checkout {STUDIES_COMMIT[:12]} && python -m bench --only {retired[0]}")
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BY_NAME)}")
    picked = [b for b in SUITE if (b.name in args.only if args.only else b.default) and b.name not in args.skip]
    return [b for b in picked if not (b.script and args.quick)]


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # run `finally:` blocks on kill
    if args.child:
        return run_child(args.child, mode, args.json, json.loads(args.overrides))
    if args.list:
        for b in SUITE:
            print(f"{b.name:14} {'default' if b.default else 'opt-in ':8} full={b.full} quick={b.quick}")
        return 0
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.render:
        write_report(args.results, args.out, command)
        print(f"wrote {args.out}")
        return 0
    benches, sets = chosen(ap, args), parse_sets(args.set)
    logs = Path(tempfile.mkdtemp(prefix="lookalike-bench-logs-"))
    env = dict(os.environ)
    if args.omp_wait_policy and "OMP_WAIT_POLICY" not in os.environ:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    args.results.mkdir(parents=True, exist_ok=True)
    print(f"{len(benches)} benchmarks ({mode}); logs in {logs}", flush=True)
    failures = []
    t_suite = time.perf_counter()
    for b in benches:
        t0 = time.perf_counter()
        print(f"-> {b.name} ...", end=" ", flush=True)
        log = logs / f"{b.name}.log"
        if b.script:
            res = run_script(b, mode, log, env)
        else:
            res = run_in_child(b, mode, log, logs / f"{b.name}.json", sets.get(b.name, {}), env)
        if res.get("error"):
            failures.append(b.name)
        atomic.write_json(args.results / f"{b.name}.json", res)
        write_report(args.results, args.out, command)
        print(f"{'FAILED' if res.get('error') else 'ok'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"suite took {time.perf_counter() - t_suite:.0f} s; wrote {args.out}"
          + (f"; failed: {', '.join(failures)} (see {logs})" if failures else ""))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
