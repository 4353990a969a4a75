"""Embedders: the open_clip path through a checkpoint written here, the real ImageNet backbone,
the offline failure, the 'auto' choice and the streaming decode pipeline."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.embedders import Embedder, load_embedder
from retrieval.embedders.backbone import EffnetEmbedder
from retrieval.embedders.openclip import OpenClipEmbedder
from retrieval.library import file_sha256
from retrieval.errors import ModelError
from retrieval.images import load_image

STAMPS = Path("/usr/share/tuxpaint/stamps")
# Tux Paint photo cut-outs (GPL-2, Debian tuxpaint-stamps-default) and their ImageNet-1k classes.
PHOTOS = {
    "animals/mammals/equines/zebra.png": (340, "zebra"),
    "animals/mammals/cats/tiger.png": (292, "tiger"),
    "animals/marsupials/koala.png": (105, "koala"),
    "animals/mammals/rodents/beaver.png": (337, "beaver"),
}
needs_stamps = pytest.mark.skipif(not STAMPS.is_dir(), reason="apt-get install tuxpaint-stamps-default")


def _unit_rows(v: np.ndarray) -> bool:
    return v.dtype == np.float32 and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def _pictures(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 60, 3), dtype=np.uint8)) for i in range(n)]


# -- open_clip through a checkpoint file ------------------------------------------------------
@pytest.fixture(scope="module")
def clip(clip_checkpoint) -> OpenClipEmbedder:
    return load_embedder(f"ViT-B-32:{clip_checkpoint}")


def test_checkpoint_loads_through_the_user_spec(clip, clip_checkpoint):
    assert isinstance(clip, OpenClipEmbedder)
    assert (clip.name, clip.dim, clip.has_text) == ("clip", 512, True)
    assert clip.spec == f"open_clip:ViT-B-32:{file_sha256(clip_checkpoint)}"
    assert clip.source == f"ViT-B-32:{clip_checkpoint.resolve()}"
    saved = torch.load(clip_checkpoint, weights_only=True)
    loaded = clip.model.state_dict()
    for key in ("visual.conv1.weight", "token_embedding.weight", "visual.proj"):
        assert torch.equal(loaded[key].cpu().float(), saved[key]), key   # the file's weights, not a re-init
    assert not clip.model.training


def test_clip_image_and_text_vectors(clip):
    imgs = _pictures(3)
    v = clip.encode_images(imgs)
    assert v.shape == (3, 512) and _unit_rows(v)
    np.testing.assert_allclose(clip.encode_images(imgs[1:2]), v[1:2], atol=1e-5)   # batch-independent
    t = clip.encode_text(["a red apple", "a zebra", "a photo of a car"])
    assert t.shape == (3, 512) and _unit_rows(t)
    assert not np.allclose(t[0], t[1])


def test_spec_is_the_content_hash(clip, clip_checkpoint, tmp_path):
    """The same weights give the same spec on any path/machine; other bytes give another hash."""
    copy = tmp_path / "elsewhere" / "renamed.bin"
    copy.parent.mkdir()
    shutil.copyfile(clip_checkpoint, copy)
    assert load_embedder(f"open_clip:ViT-B-32:{copy}").spec == clip.spec   # also the manifest's form
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights" * 1000)
    b.write_bytes(b"weights" * 999 + b"Weights")
    assert file_sha256(a) != file_sha256(b) and len(file_sha256(a)) == 64


def test_checkpoint_of_another_architecture_is_a_model_error(tmp_path):
    bad = tmp_path / "not-vit.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, bad)
    with pytest.raises(ModelError, match="state dict for this architecture"):
        load_embedder(f"ViT-B-32:{bad}")


@pytest.mark.parametrize("spec, message", [
    ("ViT-B-32:/no/such/checkpoint.pt", "does not exist"),
    ("ViT-B-32:no_such_tag", "known tags: .*laion2b_s34b_b79k"),
    ("No-Such-Model:laion2b_s34b_b79k", "no model"),
    ("ViT-B-32", "MODEL:TAG or MODEL:CHECKPOINT"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ModelError, match=message):
        load_embedder(spec)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """No cached weights, whatever this machine's real HF cache holds."""
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_offline_without_weights_fails_with_instructions(empty_hf_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_embedder("ViT-B-32:laion2b_s34b_b79k")
    msg = str(err.value)
    assert "HF_HUB_OFFLINE" in msg and "ViT-B-32:/path/to/" in msg and "backbone, the model effnet" in msg and "--" not in msg


def test_unreachable_hub_fails_without_retrying(empty_hf_cache, monkeypatch):
    """Not flagged offline, but the Hub does not answer (a closed local port stands in for it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelError, match="unreachable"):
        load_embedder("ViT-B-32:laion2b_s34b_b79k")


# -- the ImageNet backbone -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def effnet() -> EffnetEmbedder:
    return load_embedder("effnet")


def test_auto_offline_picks_the_backbone_and_says_why(empty_hf_cache, monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="retrieval.embedders"):
        emb = load_embedder(None)
    assert isinstance(emb, EffnetEmbedder)
    assert "offline backbone" in caplog.text and "HF_HUB_OFFLINE" in caplog.text
    assert isinstance(load_embedder("efficientnet-lite0"), EffnetEmbedder)
    assert isinstance(load_embedder(emb.spec), EffnetEmbedder)   # the manifest's form loads too


@needs_stamps
def test_backbone_weights_are_real_imagenet_weights(effnet):
    from timm.data import ImageNetInfo
    info = ImageNetInfo()
    with torch.inference_mode():
        for rel, (cls, word) in PHOTOS.items():
            assert word in info.index_to_description(cls)
            x = effnet.preprocess(load_image(STAMPS / rel))[None].to(effnet.device, effnet.dtype)
            top5 = effnet.model(x).topk(5).indices[0].tolist()
            assert cls in top5, (rel, [info.index_to_description(i) for i in top5])


def test_backbone_vectors_and_no_text(effnet):
    assert (effnet.name, effnet.dim, effnet.has_text, effnet.spec) == \
        ("effnet", 1280, False, "effnet:efficientnet-lite0:whole224-gem2")
    rgba = Image.new("RGBA", (50, 30), (255, 0, 0, 0))   # transparent: flattened onto white
    v = effnet.encode_images(_pictures(2) + [rgba, Image.new("RGB", (50, 30), "white")])
    assert v.shape == (4, 1280) and _unit_rows(v)
    np.testing.assert_allclose(v[2], v[3], atol=1e-5)
    with pytest.raises(ModelError, match="has no text encoder"):
        effnet.encode_text(["a red apple"])


# -- the streaming decode pipeline ----------------------------------------------------------------------
@pytest.fixture
def folder(tmp_path) -> tuple[list[Path], set[int]]:
    """Seven JPEG/PNG files with a corrupt one and an empty one among them."""
    paths = []
    for i, img in enumerate(_pictures(7)):
        p = tmp_path / f"{i}.{'jpg' if i % 2 else 'png'}"
        img.save(p)
        paths.append(p)
    paths[2].write_bytes(b"this is not an image")
    paths[5].write_bytes(b"")
    return paths, {2, 5}


@pytest.mark.parametrize("workers", [2, 0])
def test_encode_files_streams_and_skips_bad_files(effnet, folder, workers, caplog):
    paths, bad = folder
    batches = list(effnet.encode_files(paths, batch_size=2, workers=workers, progress=False))
    assert all(len(ok) == len(v) <= 2 for ok, v in batches)
    ok = [i for b, _ in batches for i in b]
    assert ok == [i for i in range(len(paths)) if i not in bad]
    vecs = np.concatenate([v for _, v in batches])
    assert _unit_rows(vecs)
    np.testing.assert_allclose(vecs, effnet.encode_images([load_image(paths[i]) for i in ok]), atol=1e-5)
    assert "2.png" in caplog.text and "5.jpg" in caplog.text


def test_encode_files_never_holds_the_whole_library(effnet, tmp_path, monkeypatch):
    """When the first batch comes out, at most two batches have been decoded."""
    paths = []
    for i, img in enumerate(_pictures(10)):
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    decoded: list[Path] = []
    real = Embedder._decode
    monkeypatch.setattr(effnet, "_decode", lambda p: (decoded.append(p), real(effnet, p))[1])
    stream = effnet.encode_files(paths, batch_size=2, workers=2, progress=False)
    first, _ = next(stream)
    assert first == [0, 1] and len(decoded) <= 4
    assert sum(len(ok) for ok, _ in stream) == 8
    assert len(decoded) == 10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_half_precision_matches_cpu(effnet):
    gpu = EffnetEmbedder(device="cuda")
    assert gpu.dtype == torch.float16
    imgs = _pictures(4)
    a, b = gpu.encode_images(imgs), effnet.encode_images(imgs)
    assert _unit_rows(a) and np.min(np.sum(a * b, axis=1)) > 0.99
