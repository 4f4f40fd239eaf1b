"""Datasets, spec parsing, transforms and the P x K sampler (diagnostics.data)."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diagnostics.data import (
    DATASET_FORMS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorJitter,
    DatasetError,
    PKSampler,
    RandomHorizontalFlip,
    RandomResizedCrop,
    build_dataset,
    build_transform,
    denormalize,
    normalize,
)

SMALL = (64, 32)  # CPU-demo size: keeps these tests fast


@pytest.fixture(scope="module")
def synth():
    return build_dataset("synthetic:12", img_size=SMALL, seed=0)


# ----------------------------------------------------------------------------------------------
# spec parsing
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["cifar10", "synthetic:many", "market1501", "imagefolder:", ""])
def test_bad_specs_raise_one_line_value_error(spec):
    with pytest.raises(ValueError) as info:
        build_dataset(spec, img_size=SMALL)
    assert "\n" not in str(info.value)


def test_unknown_spec_lists_the_forms():
    with pytest.raises(DatasetError, match="unknown dataset") as info:
        build_dataset("cifar10")
    assert DATASET_FORMS in str(info.value)


def test_missing_folder_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="no such directory"):
        build_dataset(f"market1501:{tmp_path / 'nope'}")
    with pytest.raises(DatasetError, match="folder not found"):
        build_dataset(f"market1501:{tmp_path}")


# ----------------------------------------------------------------------------------------------
# synthetic
# ----------------------------------------------------------------------------------------------

def test_synthetic_items_and_masks(synth):
    assert synth.name == "synthetic" and synth.img_size == SMALL
    img, pid, camid = synth.query[0]
    assert img.shape == (3, *SMALL) and img.dtype == torch.float32
    assert isinstance(pid, int) and isinstance(camid, int)
    raw = synth.query.load(0)
    assert raw.min() >= 0 and raw.max() <= 1
    # query/gallery are not augmented: the item is the normalised raw image
    torch.testing.assert_close(img, normalize(raw))
    mask = synth.query.mask(0)
    assert mask.shape == SMALL and mask.dtype == torch.bool
    assert 0.05 < mask.float().mean() < 0.6  # a person, not the whole frame
    assert synth.query.has_masks and synth.train.identity(0).pid == synth.train.pids[0] + 1


def test_synthetic_is_deterministic_and_seeded(synth):
    again = build_dataset("synthetic:12", img_size=SMALL, seed=0)
    other = build_dataset("synthetic:12", img_size=SMALL, seed=1)
    torch.testing.assert_close(synth.gallery.load(3), again.gallery.load(3))
    torch.testing.assert_close(synth.train[5][0], again.train[5][0])  # same augmentation draw
    assert not torch.equal(synth.gallery.load(3), other.gallery.load(3))
    synth.train.set_epoch(1)
    try:
        assert not torch.equal(synth.train[5][0], again.train[5][0])  # fresh draw next epoch
    finally:
        synth.train.set_epoch(0)


def test_synthetic_split_follows_market_protocol(synth):
    train, query, gallery = synth.train, synth.query, synth.gallery
    # train pids relabelled 0..C-1
    assert synth.num_classes == 6 and sorted(set(train.pids)) == list(range(6))
    # test identities are disjoint from train identities (raw train pids are 1..6)
    assert set(query.pids).isdisjoint(set(train.pids + 1))
    # one query per (identity, camera)
    assert len(set(zip(query.pids, query.camids))) == len(query)
    # distractors (pid 0) only in the gallery
    assert 0 in set(gallery.pids) and 0 not in set(query.pids)
    # every query has a match from another camera in the gallery
    for p, c in zip(query.pids, query.camids):
        assert np.any((gallery.pids == p) & (gallery.camids != c))


def test_synthetic_other_size_and_default_counts():
    data = build_dataset("synthetic", img_size=(32, 16))
    assert data.num_classes == 64 and data.train[0][0].shape == (3, 32, 16)
    assert data.train.num_cameras == 6


def test_synthetic_loader_batches(synth):
    loader = DataLoader(synth.train, batch_sampler=PKSampler(synth.train.pids, P=3, K=2, seed=0))
    imgs, pids, camids = next(iter(loader))
    assert imgs.shape == (6, 3, *SMALL) and pids.shape == (6,) and camids.dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# Market-1501 layout
# ----------------------------------------------------------------------------------------------

def _write_jpeg(path, colour):
    Image.new("RGB", (64, 128), colour).save(path, "JPEG")


@pytest.fixture()
def market_root(tmp_path):
    """A tiny Market-1501: 3 train ids, 2 test ids, junk, distractors, a malformed name."""
    root = tmp_path / "Market-1501-v15.09.15"
    files = {
        "bounding_box_train": ["0002_c1s1_000451_03.jpg", "0002_c2s1_000551_01.jpg",
                               "0007_c1s1_000100_01.jpg", "0007_c3s1_000200_01.jpg",
                               "0010_c6s2_001234_02.jpg", "0000_c1s1_000001_01.jpg",
                               "-1_c1s1_000002_01.jpg", "Thumbs.db"],
        "query": ["0001_c1s1_001051_00.jpg", "0003_c2s1_000301_00.jpg", "notes_readme.jpg"],
        "bounding_box_test": ["0001_c1s1_001052_01.jpg", "0001_c4s1_001060_01.jpg",
                              "0003_c3s1_000310_01.jpg", "0000_c5s1_000011_01.jpg",
                              "0000_c2s1_000012_01.jpg", "-1_c1s1_000013_01.jpg"],
    }
    for sub, names in files.items():
        (root / sub).mkdir(parents=True)
        for k, name in enumerate(names):
            if name.endswith(".jpg"):
                _write_jpeg(root / sub / name, (40 * k % 255, 100, 200))
            else:
                (root / sub / name).write_bytes(b"not an image")
    return root


def test_market1501_layout(market_root):
    with pytest.warns(UserWarning, match="skipped 1 file"):
        data = build_dataset(f"market1501:{market_root}", img_size=SMALL)
    assert data.name == "market1501"
    # train: junk (-1) and distractors (0000) removed, pids 2/7/10 relabelled 0/1/2
    assert len(data.train) == 5 and data.num_classes == 3
    assert list(data.train.pids) == [0, 0, 1, 1, 2]
    assert list(data.train.camids) == [0, 1, 0, 2, 5]  # cameras are 0-based
    # query: malformed name skipped; raw pids kept
    assert list(data.query.pids) == [1, 3]
    # gallery: junk removed, distractors kept with pid 0
    assert sorted(data.gallery.pids.tolist()) == [0, 0, 1, 1, 3]
    img, pid, camid = data.gallery[0]
    assert img.shape == (3, *SMALL) and (pid, camid) == (int(data.gallery.pids[0]), int(data.gallery.camids[0]))
    assert data.query.mask(0) is None and not data.query.has_masks


def test_dukemtmc_same_layout(market_root):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_dataset(f"dukemtmc:{market_root}", img_size=SMALL, augment="none")
    assert data.name == "dukemtmc" and data.num_classes == 3


def test_unreadable_image_is_a_dataset_error(market_root):
    (market_root / "query" / "0004_c1s1_000001_00.jpg").write_bytes(b"truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = build_dataset(f"market1501:{market_root}", img_size=SMALL)
    bad = [i for i, p in enumerate(data.query.paths) if p.name.startswith("0004")][0]
    with pytest.raises(DatasetError, match="cannot read image"):
        data.query[bad]


# ----------------------------------------------------------------------------------------------
# classification datasets
# ----------------------------------------------------------------------------------------------

def test_imagefolder_split(tmp_path):
    for c, name in enumerate(["cat", "dog", "eel"]):
        (tmp_path / name).mkdir()
        for k in range(10):
            Image.new("RGB", (20, 20), (80 * c, 10 * k, 0)).save(tmp_path / name / f"{k}.png")
    data = build_dataset(f"imagefolder:{tmp_path}", img_size=SMALL)
    assert data.num_classes == 3
    assert sorted(set(data.train.pids)) == [0, 1, 2]
    sizes = (len(data.train), len(data.query), len(data.gallery))
    assert sum(sizes) == 30 and sizes == (18, 3, 9)  # 6 / 1 / 3 per class
    assert set(data.query.camids) == {0} and set(data.gallery.camids) == {1}
    assert data.train[0][0].shape == (3, *SMALL)


def test_digits():
    pytest.importorskip("sklearn")
    data = build_dataset("digits", img_size=(32, 32))
    assert data.num_classes == 10 and len(data.train) + len(data.query) + len(data.gallery) == 1797
    img, pid, camid = data.query[0]
    assert img.shape == (3, 32, 32) and 0 <= pid < 10 and camid == 0


# ----------------------------------------------------------------------------------------------
# transforms
# ----------------------------------------------------------------------------------------------

def test_normalize_round_trip():
    img = torch.rand(3, 8, 4)
    out = normalize(img)
    for c in range(3):
        torch.testing.assert_close(out[c], (img[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    torch.testing.assert_close(denormalize(out), img)


def test_random_transforms_are_deterministic_under_generator():
    img = torch.rand(3, *SMALL)
    light = build_transform(SMALL, "light")
    a = light(img, torch.Generator().manual_seed(3))
    b = light(img, torch.Generator().manual_seed(3))
    c = light(img, torch.Generator().manual_seed(4))
    assert a.shape == (3, *SMALL)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)
    torch.testing.assert_close(build_transform(SMALL, "none")(img), normalize(img))
    with pytest.raises(ValueError):
        build_transform(SMALL, "heavy")


def test_flip_crop_and_jitter():
    img = torch.rand(3, 16, 8)
    flips = [torch.equal(RandomHorizontalFlip(0.5)(img, torch.Generator().manual_seed(s)), img.flip(-1))
             for s in range(40)]
    assert 5 < sum(flips) < 35  # both outcomes happen
    crop = RandomResizedCrop((16, 8), scale=(0.8, 1.0))
    for s in range(20):
        top, left, h, w = crop.get_params(16, 8, torch.Generator().manual_seed(s))
        assert 0.8 * 128 * 0.8 <= h * w <= 128 and top + h <= 16 and left + w <= 8
    torch.testing.assert_close(RandomResizedCrop((16, 8), scale=(1.0, 1.0), ratio=(1.0, 1.0))(img), img)
    torch.testing.assert_close(ColorJitter(0, 0, 0, 0)(img, torch.Generator().manual_seed(0)), img)
    jittered = ColorJitter(0.1, 0.1, 0.1, 0.1)(img, torch.Generator().manual_seed(0))
    assert jittered.min() >= 0 and jittered.max() <= 1 and (jittered - img).abs().max() < 0.5


# ----------------------------------------------------------------------------------------------
# P x K sampler
# ----------------------------------------------------------------------------------------------

PIDS = np.array([0] * 7 + [1] * 2 + [2] * 5 + [3] * 4 + [4] * 1 + [5] * 9)  # 28 images, 6 ids


def test_pk_sampler_batches_have_p_ids_times_k():
    sampler = PKSampler(PIDS, P=3, K=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(PIDS) // 12
    for batch in batches:
        counts = Counter(PIDS[batch].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
        for pid in counts:  # distinct images whenever the identity has K or more
            chosen = [i for i in batch if PIDS[i] == pid]
            if (PIDS == pid).sum() >= 4:
                assert len(set(chosen)) == 4


def test_pk_sampler_with_replacement_and_coverage():
    sampler = PKSampler(PIDS, P=6, K=4, seed=1, num_batches=30)
    seen = set()
    for batch in sampler:
        counts = Counter(PIDS[batch].tolist())
        assert counts == Counter({p: 4 for p in range(6)})
        seen.update(batch)
    assert seen == set(range(len(PIDS)))  # every image gets used


def test_pk_sampler_deterministic_and_epochs():
    a, b = PKSampler(PIDS, 2, 2, seed=5), PKSampler(PIDS, 2, 2, seed=5)
    first_a, first_b = list(a), list(b)
    assert first_a == first_b
    assert list(a) != first_a  # the next epoch differs
    a.set_epoch(0)
    assert list(a) == first_a
    assert list(PKSampler(PIDS, 2, 2, seed=6)) != first_a
    with pytest.raises(ValueError):
        PKSampler(PIDS, P=7, K=2)
