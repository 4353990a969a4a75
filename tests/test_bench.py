"""The benchmark scripts run: the suite runner end to end on one tiny benchmark, the vector and GPU
benchmarks at their smallest sizes. Nothing here asserts a timing; the suite itself is
`python -m bench` (README.md, "Benchmarks")."""
from __future__ import annotations

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


def test_gpu_script_runs_on_cpu(tmp_path):
    """bench/gpu.py's pipelines (PIL, PIL draft, torchvision decode_jpeg, decoded cache) on CPU."""
    from bench import gpu

    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=0)
    res = gpu.run(device="cpu", data=str(data), limit=3, batch=2, workers=1, seconds=0.01, batches_model=(1,),
                  threads=1)
    check_result(res, "gpu")
    rates = res["figures"]["pipelines"]
    assert set(rates) == {"pil", "draft", "gpu", "cached"} and all(r > 0 for r in rates.values())
    agreement = [float(r[3]) for r in res["tables"][1]["rows"]]
    assert agreement[0] == pytest.approx(1.0) and min(agreement) > 0.95   # same images, same embeddings
    assert res["checks"][0]["met"] is None                                   # the GPU target is not judged on CPU


def test_decode_benchmark_smallest(tmp_path, monkeypatch):
    """bench/decode.py on a tiny library: both paths run, the big JPEGs are made, vectors agree."""
    from bench import decode

    monkeypatch.setattr(decode, "CACHE", tmp_path / "cache")
    data = make_tiny_library(tmp_path / "data", n_train=2, n_test=0)
    res = decode.run(models=("effnet",), photos=2, big=1, repeats=1, data=str(data))
    check_result(res, "decode")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["big000.jpg"]
    for fig in res["figures"].values():
        assert fig["baseline_ms"] > 0 and fig["ours_ms"] > 0 and fig["cos_mean"] > 0.9


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
    """bench/ is a package: each module imports by its package name (relative imports inside), and
    the suite's entries all name a module that has what the suite calls."""
    import importlib

    from bench.run import SUITE

    names = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "__main__"))
    mods = {name: importlib.import_module(f"bench.{name}") for name in names}
    assert all(callable(getattr(m, "main", None)) for n, m in mods.items() if n not in ("common",))
    for b in SUITE:
        assert callable(getattr(mods[b.module], "main" if b.script_args is not None else "run"))


def test_in_child_and_module_scripts_run_from_the_repository_root():
    """A helper called in a fresh process (`from bench import ...` there), and a script's own entry
    point, `python -m bench.<name>`."""
    res = common.in_child("common", "result", name="x", title="t", config={"a": 1})
    assert res["name"] == "x" and res["config"] == {"a": 1} and res["peak_mb"] > 0 and res["cpu_s"] >= 0
    out = subprocess.run([sys.executable, "-m", "bench.pixel_sizes", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert "--sizes" in out.stdout
