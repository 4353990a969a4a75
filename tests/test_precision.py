"""bf16 on CPU: the auto choice (native bf16 + calibration), the fallback, vectors, the build's guard."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.embedders import precision as prec
from retrieval.errors import ModelError


@pytest.fixture(scope="module")
def effnet():
    from retrieval.embedders.backbone import EffnetEmbedder
    return EffnetEmbedder(device="cpu")


def test_auto_picks_fp32_without_native_bf16(effnet, monkeypatch):
    """The fallback: a CPU without native bf16 (the check forced off) gets fp32, and no calibration runs."""
    monkeypatch.setattr(prec, "native_bf16", lambda: False)
    monkeypatch.setattr(prec, "calibrate", lambda *a, **k: pytest.fail("calibrated without native bf16"))
    chosen, why = prec.resolve(effnet, "auto")
    assert chosen == "fp32" and why["native_bf16"] is False
    assert "no native bf16" in why["why"]


@pytest.mark.parametrize("speedup, expected", [(0.8, "fp32"), (1.05, "fp32"), (2.0, "bf16")])
def test_auto_follows_the_calibration(effnet, monkeypatch, speedup, expected):
    """With native bf16, auto still picks bf16 only when the timed calibration finds it faster."""
    monkeypatch.setattr(prec, "native_bf16", lambda: True)
    monkeypatch.setattr(prec, "calibrate", lambda *a, **k: {"fp32_s": speedup, "bf16_s": 1.0, "speedup_wall": speedup,
                                                           "speedup": speedup})
    chosen, why = prec.resolve(effnet, "auto")
    assert chosen == expected
    assert why["calibration"]["speedup"] == speedup


def test_explicit_choices_and_bad_names(effnet, monkeypatch):
    monkeypatch.setattr(prec, "native_bf16", lambda: False)
    assert prec.resolve(effnet, "fp32")[0] == "fp32"
    assert prec.resolve(effnet, "bf16")[0] == "bf16"    # asked for: honoured, with a warning
    with pytest.raises(ModelError, match="precision must be one of"):
        prec.resolve(effnet, "fp16")


def test_native_check_needs_the_cpu_flag(monkeypatch):
    """oneDNN's own check alone is not enough where /proc/cpuinfo lists no bf16 flag."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert prec.native_bf16() is False
    monkeypatch.setattr(prec, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert prec.native_bf16() is True


def test_query_precision_follows_the_index():
    assert prec.query_precision(None, "bf16") is None
    assert prec.query_precision("auto", "fp32") == "fp32"     # an fp32 index never gets bf16 queries by itself
    assert prec.query_precision("auto", None) == "fp32"
    assert prec.query_precision("auto", "bf16") == "auto"
    assert prec.query_precision("bf16", "fp32") == "bf16"


def test_bf16_vectors_agree_with_fp32(effnet):
    """Switching precision keeps the fp32 master: back in fp32 the vectors are bit-identical."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)) for _ in range(4)]
    ref = effnet.encode_images(images)
    effnet.set_precision("bf16")
    try:
        low = effnet.encode_images(images)
        assert effnet.model.conv_stem.weight.dtype == torch.bfloat16
    finally:
        effnet.set_precision("fp32")
    assert low.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    assert np.min(np.sum(ref * low, axis=1)) > 0.98
    np.testing.assert_array_equal(effnet.encode_images(images), ref)


def test_neighbour_overlap():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 8)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    assert prec.neighbour_overlap(a, a) == 1.0
    shuffled = a[rng.permutation(30)]
    assert prec.neighbour_overlap(a, shuffled) < 0.6


def test_build_records_precision_and_guards_quality(tiny_library, tmp_path, monkeypatch, caplog):
    """A bf16 build records its precision and the guard's figures; an unmeetable bound warns."""
    from retrieval.indexing import build_index
    monkeypatch.setattr(prec, "GUARD_MIN_OVERLAP", 1.01)
    with caplog.at_level(logging.WARNING, logger="retrieval.embedders.precision"):
        build_index(tiny_library, tmp_path / "idx", model="effnet", precision="bf16", evaluate=False)
    emb = json.loads((tmp_path / "idx" / "manifest.json").read_text())["embedder"]
    assert emb["precision"] == "bf16"
    check = emb["precision_check"]
    assert check["sample"] == 18 and check["ok"] is False and 0 < check["top10_overlap"] <= 1
    assert check["mean_cosine"] > 0.98
    assert "bf16 vectors differ from fp32" in caplog.text


def test_fp32_build_has_no_guard(tiny_library, tmp_path):
    from retrieval.indexing import build_index
    build_index(tiny_library, tmp_path / "idx", model="effnet", precision="fp32", evaluate=False)
    emb = json.loads((tmp_path / "idx" / "manifest.json").read_text())["embedder"]
    assert emb["precision"] == "fp32" and "precision_check" not in emb


def test_cli_has_precision_everywhere():
    from retrieval.cli import make_parser
    args = make_parser().parse_args(["search", "q.jpg", "--precision", "bf16"])
    assert args.precision == "bf16"
    import argparse
    from retrieval.cli import add_index_build_options
    p = argparse.ArgumentParser()
    add_index_build_options(p)
    assert p.parse_args([]).precision == "auto"
    with pytest.raises(SystemExit):
        p.parse_args(["--precision", "fp16"])


def test_rows_are_reused_only_in_the_same_precision(tiny_library, tmp_path, monkeypatch):
    """An fp32 rebuild of a bf16 index re-embeds every row (exactly the fp32 vectors), and `auto` on
    an update keeps the index's precision (its rows reused, no calibration)."""
    from retrieval.indexing import build_index
    monkeypatch.setattr(prec, "native_bf16", lambda: True)
    idx = tmp_path / "idx"
    assert build_index(tiny_library, idx, model="effnet", precision="bf16", evaluate=False)["embedded"] == 18
    monkeypatch.setattr(prec, "calibrate", lambda *a, **k: pytest.fail("auto calibrated on an update"))
    s = build_index(tiny_library, idx, model="effnet", precision="auto", evaluate=False)
    emb = json.loads((idx / "manifest.json").read_text())["embedder"]
    assert s["embedded"] == 0 and emb["precision"] == "bf16" and "kept" in emb["precision_choice"]["why"]
    assert build_index(tiny_library, idx, model="effnet", precision="fp32", evaluate=False)["embedded"] == 18
    ref = tmp_path / "ref"
    build_index(tiny_library, ref, model="effnet", precision="fp32", evaluate=False)
    a, b = (json.loads((d / "manifest.json").read_text())["embedder"]["file"] for d in (idx, ref))
    np.testing.assert_array_equal(np.load(idx / a), np.load(ref / b))
