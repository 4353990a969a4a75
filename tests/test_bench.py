"""The benchmark scripts run: the suite runner end to end on one tiny benchmark, the vector
benchmark at its smallest size, the load tests' entry points, the retired studies' record. Nothing
here asserts a timing; the suite itself is `python -m bench` (docs/benchmarks.md)."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import common
from tests.conftest import make_tiny_library

ROOT = Path(__file__).resolve().parents[1]


def check_result(res: dict, name: str) -> str:
    """Structure every benchmark's result shares, and that it renders."""
    assert res["name"] == name and not res.get("error"), res.get("error")
    assert res["tables"] and all(t["rows"] for t in res["tables"])
    for t in res["tables"]:
        assert all(len(r) == len(t["columns"]) for r in t["rows"])
    md = common.render(res)
    assert md.startswith("## ") and "|---|" in md
    json.dumps(res)   # what the suite stores must be plain JSON
    return md


def test_suite_runs_a_benchmark_in_a_child_and_writes_results(tmp_path):
    """`python -m bench --quick --only pixel_query` with tiny overrides: child process, JSON result,
    RESULTS.md with the targets table, rendered atomically into the folder given."""
    from bench.run import main

    data = make_tiny_library(tmp_path / "data", n_train=4, n_test=1)
    out, results = tmp_path / "RESULTS.md", tmp_path / "results"
    code = main(["--quick", "--only", "pixel_query", "--results", str(results), "--out", str(out),
                 "--set", f"pixel_query.data={json.dumps(str(data))}", "pixel_query.seed_size=24",
                 "pixel_query.sizes=[24]", "pixel_query.queries=2"])
    assert code == 0
    res = json.loads((results / "pixel_query.json").read_text())
    md = check_result(res, "pixel_query")
    assert res["mode"] == "quick" and res["config"]["seed_size"] == 24
    assert {"seed_ms", "ours_ms"} <= set(res["figures"]) and res["figures"]["seed_ms"] > 0
    assert [c["met"] for c in res["checks"]] == [None]          # 100x applies to 448 px only
    report = out.read_text()
    assert "## Targets" in report and "## Machine" in report and md.splitlines()[0] in report


def test_suite_rejects_unknown_names():
    from bench.run import main, parse_sets

    with pytest.raises(SystemExit):
        main(["--only", "no_such_benchmark"])
    with pytest.raises(SystemExit):
        parse_sets(["nosuch.key=1"])
    assert parse_sets(["vectors.sizes=[1,2]", "vectors.name=x"]) == {"vectors": {"sizes": [1, 2], "name": "x"}}


def test_a_script_entry_gets_its_arguments_and_records_the_command(tmp_path):
    """run_script passes a Bench's args to `python -m bench.<module>` and keeps them in the result; the
    scripts that need an index name the shared sample index as their default."""
    import os

    from bench.run import BY_NAME, Bench, run_script

    assert BY_NAME["feedback"].args == ("--rounds", "2") and BY_NAME["map_cost"].args == ("--n", "10000")
    assert all(BY_NAME[n].script for n in ("explain_mass", "feedback", "map_cost"))
    for module in ("explain_mass", "feedback", "map_cost"):
        res = run_script(Bench(module, module, script=True, args=("--help",)), "full", tmp_path / "log",
                         dict(os.environ))
        assert not res.get("error"), res.get("error")
        assert res["config"] == {"args": ["--help"]} and res["command"] == f"python -m bench.{module} --help"
        assert "--index" in res["transcript"] and str(common.SAMPLE_INDEX) in "".join(res["transcript"].split())
    assert common.sample_effnet_index(tmp_path / "given") == tmp_path / "given"   # given: used, nothing built
    assert not (tmp_path / "given").exists()


def test_vectors_benchmark_smallest(tmp_path):
    """Embedded Chroma filled in two steps, the ef sweep, a `chroma run` server on 127.0.0.1 (started
    and stopped by the benchmark) and exact search, at a few hundred vectors."""
    from bench import vectors

    res = vectors.run(sizes=(200, 400), server_n=150, exact_sizes=(200, 400), queries=5, dim=16, k=5,
                      ef_sweep=(20, 80), workdir=str(tmp_path))
    check_result(res, "vectors")
    f = res["figures"]
    assert set(f["hnsw"]) == {200, 400} and f["hnsw"][400]["build_s"] >= f["hnsw"][200]["build_s"]
    assert 0 <= f["sweep"][80]["recall"] <= 1 and f["server"]["n"] == 150 and f["server"]["recall"] > 0.5
    assert set(f["exact"]) == {200, 400}
    assert not list(tmp_path.iterdir())      # the temporary databases are gone


def test_vector_helpers_are_exact():
    from bench import vectors

    x = vectors.unit_vectors(50, 8, seed=3, block=7)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    assert x.dtype == np.float32
    truth = vectors.exact_top(x, x[:3], 1, step=2)
    assert truth == [{0}, {1}, {2}]


def test_peak_memory_sees_an_allocation():
    """In a fresh process (here, freed memory kept by the allocator could hide a new block)."""
    code = ("import numpy as np; from bench import common\n"
            "with common.PeakMemory() as pm:\n"
            "    block = np.ones(64 * 2**20, np.uint8)\n"
            "    del block\n"
            "print(pm.start_mb, pm.peak_mb)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    start, peak = map(float, out.stdout.split())
    assert peak >= start + 50                      # the block was freed before the end: only a peak sees it
    assert common.percentile_ms([0.001 * i for i in range(1, 101)], 99) == pytest.approx(99)


def test_every_module_imports_from_the_package():
    """bench/ is a package with a load/ subpackage: each module imports by its package name (relative
    imports inside), and the suite's entries all name a module that has what the suite calls."""
    import importlib

    from bench.run import SUITE

    paths = [p for p in sorted((ROOT / "bench").rglob("*.py")) if p.stem not in ("__init__", "__main__")]
    mods = {".".join(p.relative_to(ROOT / "bench").with_suffix("").parts): p for p in paths}
    mods = {name: importlib.import_module(f"bench.{name}") for name in mods}
    assert {"load.soak", "load.crowd", "load.hostile_memory", "load.app_latency"} <= set(mods)
    for b in SUITE:
        assert callable(getattr(mods[b.module], "main" if b.script else "run"))


def test_in_child_and_module_scripts_run_from_the_repository_root():
    """A helper called in a fresh process (`from bench import ...` there), and the scripts' own entry
    points: `python -m bench.<name>` (options made from run()'s parameters) and the load tests'
    `python -m bench.load[.<name>]`. Fails before round 4: there was no bench.load package."""
    res = common.in_child("common", "result", name="x", title="t", config={"a": 1})
    assert res["name"] == "x" and res["config"] == {"a": 1} and res["peak_mb"] > 0 and res["cpu_s"] >= 0
    for module, flag in [("bench.duplicates", "--photos"), ("bench.rerank_speed", "--no-fashion"),
                         ("bench.load", "--clients"), ("bench.load.soak", "--max-requests"),
                         ("bench.load.hostile_memory", "--cap-mb"), ("bench.load.app_latency", "--queries")]:
        out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 0 and flag in out.stdout, (module, out.stderr[-500:])
        assert out.stdout.startswith(f"usage: python -m {module}") or "bench.load" in module


def test_app_latency_alternates_the_codes_and_compares_medians(tmp_path):
    """The start-up comparison (bench.load.app_latency): each code starts once per load and round,
    in an order reversed every other round; the table holds each code's medians, how many of its
    starts calibrated, and each "after" over "before"; the older code is a folder as given, or a git
    commit unpacked beside the checkout."""
    import shutil

    from bench.load import app_latency as al
    order = list(al.start_order(2))
    assert len(order) == 2 * len(al.LOADS) * len(al.CODES) and len(set(order)) == len(al.LOADS) * len(al.CODES)
    assert [c for _, c in order[:3]] == list(al.CODES) and [c for _, c in order[6:9]] == list(al.CODES[::-1])
    base = dict(zip(al.CODES, (10.0, 8.0, 5.0)))
    starts = [al.Start(code, load, http_s=base[code] + i // 6, ready_s=2 * base[code], first_query_s=0.2,
                       cpu_s=base[code], calibrated="" if code == al.CODES[2] else "bf16 2.00x fp32", loadavg=1.0)
              for i, (load, code) in enumerate(order)]
    table = "\n".join(al.startup_table(starts, "abc123"))
    assert "median of 2 starts each" in table and "before = abc123" in table
    assert "| quiet | before | 10.50 s | 20.00 s | 0.20 s | 10.0 | 2 of 2 | 1.00 |" in table
    assert "| loaded | after, next starts | 5.50 s | 10.00 s | 0.20 s | 5.0 | 0 of 2 | 1.00 |" in table
    assert "| quiet | after, next starts / before | 0.52x | 0.50x | 1.00x | 0.50x | | |" in table
    assert al.baseline_tree(str(ROOT), tmp_path / "x") == ROOT and not (tmp_path / "x").exists()
    if shutil.which("git") and (ROOT / ".git").exists():
        assert (al.baseline_tree("HEAD", tmp_path / "old") / "app.py").is_file()


def _run_for_cli(data: str | None = None, sizes: tuple[int, ...] = (1, 2), rate: float = 0.5,
                 fashion: bool = True, only: tuple[int, ...] | None = None) -> dict:
    """A stand-in benchmark for common.cli: it hands back what it was called with."""
    return common.result("cli", "cli", {"data": data, "sizes": sizes, "rate": rate, "fashion": fashion,
                                        "only": only})


def test_cli_options_are_run_parameters(monkeypatch, capsys):
    """`python -m bench.NAME --key VALUE`: one option per run() parameter, typed from its annotation
    (tuples as lists of values, booleans as --x / --no-x). Fails before round 4: no common.cli."""
    seen = {}
    monkeypatch.setattr(common, "print_result", lambda res: seen.update(res["config"]))
    common.cli(_run_for_cli, ["--sizes", "3", "4", "5", "--rate", "2", "--no-fashion", "--only", "7", "8"])
    assert seen == {"data": None, "sizes": (3, 4, 5), "rate": 2.0, "fashion": False, "only": (7, 8)}
    common.cli(_run_for_cli, ["--data", "x"])
    assert seen == {"data": "x", "sizes": (1, 2), "rate": 0.5, "fashion": True, "only": None}
    with pytest.raises(SystemExit):
        common.cli(_run_for_cli, ["--sizes", "a"])


def test_retired_studies_keep_their_results_and_name_the_commit(tmp_path, capsys):
    """The one-off studies left the suite; RESULTS.md still shows their last results under "Retired
    studies" with the command that runs one again, and `--only` a retired name says the same.
    Fails before round 4: the studies were suite entries (run, not refused; no such section)."""
    from bench.run import BY_NAME, RETIRED, STUDIES_COMMIT, load_results, main, render_all

    assert not set(RETIRED) & set(BY_NAME) and len(STUDIES_COMMIT) == 40
    for name in RETIRED:
        assert not (ROOT / "bench" / f"{name}.py").exists()
    res = common.result("precision", "bf16 against fp32", {})
    common.add_table(res, "t", ["a"], [["1"]])
    common.add_check(res, "bf16 / fp32", ">= 2.5x", "1.98x", False)
    (tmp_path / "precision.json").write_text(json.dumps(res))
    md = render_all(load_results(tmp_path), "python -m bench")
    retired = md.split("## Retired studies", 1)[1]
    assert "### bf16 against fp32" in retired and f"git checkout {STUDIES_COMMIT[:12]}" in retired
    assert "| precision (retired) | bf16 / fp32 |" in md
    with pytest.raises(SystemExit):
        main(["--only", "precision"])
    assert f"git checkout {STUDIES_COMMIT[:12]} && python -m bench --only precision" in capsys.readouterr().err


def _private_uses(tree: ast.AST) -> list[str]:
    """`obj._name` with obj not self/cls, and `from x import _name`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_benchmark_reads_a_private_name_of_another_object():
    """Benchmarks measure the product through its public API (issue 20). Fails before round 4:
    bench/ called emb._image_features, emb._embed and emb._decode, and imported common._status_kb."""
    assert sorted(_private_uses(ast.parse("emb._embed(x)\nself._x = 1\nfrom m import _y"))) == [
        "line 1: ._embed", "line 3: import _y"]
    hits = {str(p.relative_to(ROOT)): _private_uses(ast.parse(p.read_text("utf-8")))
            for p in sorted((ROOT / "bench").rglob("*.py"))}
    assert not {f: found for f, found in hits.items() if found}
