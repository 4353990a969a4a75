"""The split transform (PIL steps per image, ToTensor + Normalize per batch) and JPEG draft decoding:
the model must see the pixels its authors' transform makes, and a big JPEG must not cost a full decode."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.embedders import Embedder
from retrieval.embedders.backbone import EffnetEmbedder
from retrieval.embedders.openclip import OpenClipEmbedder
from retrieval.embedders.preprocessing import split_transform
from retrieval.images import load_image


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth photo-like picture (gradients plus blobs), so JPEG and resizing behave as on photos."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    chans = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    return Image.fromarray(((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8))


def _jpeg(tmp_path, w: int, h: int, name: str = "big.jpg"):
    path = tmp_path / name
    _photo(w, h).save(path, quality=92)
    return path


@pytest.fixture(scope="module")
def effnet() -> EffnetEmbedder:
    return EffnetEmbedder(device="cpu")


@pytest.fixture(scope="module")
def clip() -> OpenClipEmbedder:
    return OpenClipEmbedder.random_init("ViT-B-32", device="cpu")


@pytest.mark.parametrize("which", ["effnet", "clip"])
def test_split_equals_the_models_own_transform(which, effnet, clip):
    emb = {"effnet": effnet, "clip": clip}[which]
    assert emb.split is not None
    imgs = [_photo(300 + 37 * i, 200 + 53 * i, seed=i) for i in range(3)]
    for im in imgs:   # the whole-image backbone keeps each image's shape: compared one by one
        theirs = emb.preprocess(im)[None]
        batch = emb._prepare(im)[None]
        assert batch.dtype == torch.uint8
        ours = emb.split.normalise(batch, torch.float32)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


def test_draft_sizes_come_from_the_first_resize(effnet, clip):
    assert effnet.split.draft_size == 224 and clip.split.draft_size == 224


def test_whole_image_keeps_the_aspect_ratio_in_size_buckets():
    """Short side 224, long side rounded to 32 px and capped at 2:1: images of similar shape share
    a size (and a batch); a panorama keeps its centre."""
    from retrieval.embedders.preprocessing import WholeImage
    step = WholeImage(224)
    assert step(_photo(640, 480)).size == (288, 224) and step(_photo(480, 640)).size == (224, 288)
    assert step(_photo(630, 480)).size == step(_photo(650, 480)).size
    assert step(_photo(3000, 500)).size == (448, 224) and step(_photo(300, 300)).size == (224, 224)


def test_a_batch_of_several_sizes_equals_each_image_alone(effnet):
    """embed_batch groups inputs by size and keeps their order; each row equals the image embedded alone."""
    imgs = [_photo(300, 200, seed=1), _photo(200, 300, seed=2), _photo(310, 205, seed=3), _photo(250, 250, seed=4)]
    together = effnet.encode_images(imgs)
    alone = np.concatenate([effnet.encode_images([im]) for im in imgs])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_other_transforms_run_whole_per_image(effnet):
    """A transform that is not [PIL steps, ToTensor, Normalize] is not split, and still works."""
    def custom(im):
        return torch.from_numpy(np.asarray(im.resize((224, 224)), np.float32) / 255).permute(2, 0, 1)
    assert split_transform(custom) is None
    emb = object.__new__(EffnetEmbedder)
    Embedder.__init__(emb, effnet.model, custom, "cpu")
    assert emb.split is None
    x = emb._prepare(_photo(90, 60))
    assert x.dtype == torch.float32 and x.shape == (3, 224, 224)
    assert emb.encode_images([_photo(90, 60)]).shape == (1, 1280)


def test_draft_decodes_a_big_jpeg_at_reduced_size(tmp_path):
    path = _jpeg(tmp_path, 2000, 1200)
    full = load_image(path)
    small = load_image(path, draft=224)
    assert full.size == (2000, 1200)
    assert small.size == (500, 300) and small.mode == "RGB"        # 1/4: the smallest scale with both sides >= 224
    assert load_image(path, draft=700).size == (2000, 1200)        # no scale keeps 1200 >= 2*700: full decode


def test_draft_leaves_other_formats_and_small_jpegs_alone(tmp_path):
    png = tmp_path / "big.png"
    _photo(1000, 800).save(png)
    assert load_image(png, draft=224).size == (1000, 800)
    small = _jpeg(tmp_path, 400, 300, "small.jpg")
    assert load_image(small, draft=224).size == (400, 300)


def test_draft_keeps_exif_rotation(tmp_path):
    img = _photo(1600, 900)
    exif = Image.Exif()
    exif[0x0112] = 6          # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert load_image(buf.getvalue(), draft=224).size == (225, 400)


@pytest.mark.parametrize("which", ["effnet", "clip"])
def test_library_vectors_with_draft_find_the_full_decodes(which, effnet, clip, tmp_path):
    """encode_files decodes big JPEGs in draft mode. The vectors move about as much as a JPEG
    re-save moves them (the draft is a different downscale of the same photo), and each drafted
    vector's nearest full-decode vector is its own photo's."""
    emb = {"effnet": effnet, "clip": clip}[which]
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"{i}.jpg")
        _photo(1800 + 100 * i, 1300, seed=i).save(paths[-1], quality=92)
    drafted = np.concatenate([v for _, v in emb.encode_files(paths, batch_size=4, workers=0, progress=False)])
    full = emb.encode_images([load_image(p) for p in paths])
    sims = drafted @ full.T
    assert (sims.argmax(axis=1) == np.arange(len(paths))).all(), sims
    assert np.diag(sims).min() > 0.9, np.diag(sims)
