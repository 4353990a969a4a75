"""The speed benchmarks of issue 15 run at their smallest sizes (no timing is asserted)."""
from __future__ import annotations

from tests.test_bench import check_result


def test_precision_benchmark_smallest(tiny_library):
    from bench import precision
    res = precision.run(models=("effnet",), batch_sizes=(2,), seconds=0.0, e2e_images=4, data=str(tiny_library))
    check_result(res, "precision")
    q = res["figures"]["quality"]
    assert 0.9 < q["mean_cosine"] <= 1.0 and 0 < q["top10_overlap_library"] <= 1
    assert set(q["map"]) == {"fp32/fp32", "bf16/bf16", "bf16/fp32", "fp32/bf16"}
    assert any(c["what"].startswith("auto with native bf16 forced off") and c["met"] for c in res["checks"])


def test_hnsw_settings_benchmark_smallest(tmp_path):
    from bench import hnsw_settings
    res = hnsw_settings.run(sizes=(200, 400), settings=((8, 40), (16, 100)), ef_sweep=(20, 80), queries=5,
                            dim=16, workdir=str(tmp_path))
    check_result(res, "hnsw_settings")
    assert set(res["figures"]) == {"8/40", "16/100"}
    sweep = res["figures"]["16/100"]["400"]["sweep"]
    assert set(sweep) == {20, 80} and all(0 <= r["recall"] <= 1 for r in sweep.values())
    assert not list(tmp_path.iterdir())
