"""Datasets, splits, regimes, augmentation and corruptions, each checked against an independent computation."""
import colorsys
import os

import numpy as np
import pytest
import torch

import data
from helpers import write_cifar_folder

# Cao et al. (LDAM, 2019) CIFAR-10-LT training-set sizes, class 0 the head.
CIFAR10_LT_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_LT_R10 = [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]


def regime_args(**kw):
    """regime_indices' keyword arguments: the standard regime, imbalanced defaults, any given ones."""
    return dict(dict(regime="standard", imbalance_ratio=100.0, imbalance_profile="exp"), **kw)


def test_long_tail_counts_match_published_cifar10_lt():
    assert data.long_tail_counts(5000, 10, 100) == CIFAR10_LT_R100
    assert data.long_tail_counts(5000, 10, 10) == CIFAR10_LT_R10
    assert data.long_tail_counts(5000, 10, 100, "step") == [5000] * 5 + [50] * 5
    assert data.long_tail_counts(5000, 10, 1) == [5000] * 10


@pytest.mark.parametrize("ratio,expected", [(100, CIFAR10_LT_R100), (10, CIFAR10_LT_R10)])
def test_imbalanced_regime_keeps_exact_counts_of_cifar10_sized_labels(ratio, expected):
    labels = torch.arange(10).repeat_interleave(5000)[torch.randperm(50000)]
    idx = data.regime_indices(labels, 10, 3, **regime_args(regime="imbalanced", imbalance_ratio=ratio))
    assert torch.bincount(labels[idx], minlength=10).tolist() == expected
    assert len(set(idx.tolist())) == len(idx)


def test_sparse_subsets_are_stratified_and_nested():
    labels = torch.arange(10).repeat_interleave(500)[torch.randperm(5000, generator=torch.Generator().manual_seed(0))]
    subsets = {}
    for f in (0.01, 0.05, 0.2, 1.0):
        idx = data.regime_indices(labels, 10, 7, **regime_args(regime="sparse", fraction=f))
        assert torch.bincount(labels[idx], minlength=10).tolist() == [round(500 * f)] * 10
        subsets[f] = set(idx.tolist())
    assert subsets[0.01] < subsets[0.05] < subsets[0.2] < subsets[1.0]
    per_class = set(data.regime_indices(labels, 10, 7, **regime_args(regime="sparse", per_class=25)).tolist())
    assert subsets[0.01] < per_class < subsets[0.2]  # 5 < 25 < 100 per class: the same nested order
    other_seed = set(data.regime_indices(labels, 10, 8, **regime_args(regime="sparse", fraction=0.05)).tolist())
    assert other_seed != subsets[0.05]


def test_per_class_larger_than_class_is_rejected():
    labels = torch.arange(3).repeat_interleave(10)
    with pytest.raises(data.DataError, match="--per-class 11 is larger than the smallest class"):
        data.regime_indices(labels, 3, 0, **regime_args(regime="sparse", per_class=11))


def full_args(**kw):
    """build_data's keyword arguments for a small synthetic set, with any given ones."""
    return dict(dict(dataset="synthetic", regime="standard", data_dir="unused", download=False, synthetic_per_class=40,
                     synthetic_size=16, val_fraction=0.1), **kw)


def test_build_data_split_is_stratified_and_val_test_stay_balanced():
    d = data.build_data(**full_args(regime="imbalanced", imbalance_ratio=10.0, imbalance_profile="exp"), seed=0)
    assert d["counts"]["val"] == [4] * 10  # round(0.1 * 40)
    assert d["counts"]["test"] == [8] * 10  # 40 // 5 test images per class
    assert d["counts"]["train"] == data.long_tail_counts(36, 10, 10.0)
    d2 = data.build_data(**full_args(), seed=0)
    assert d2["counts"]["train"] == [36] * 10
    # The validation images are never in the training set.
    train_rows = {bytes(x.numpy()) for x in d2["x_train"]}
    assert not any(bytes(x.numpy()) in train_rows for x in d2["x_val"])


def test_test_subset_is_balanced_and_the_same_for_every_seed():
    a = data.build_data(**full_args(test_per_class=3), seed=0)
    b = data.build_data(**full_args(test_per_class=3), seed=5)
    assert a["counts"]["test"] == [3] * 10 and torch.equal(a["x_test"], b["x_test"])
    assert not torch.equal(a["x_train"], b["x_train"])  # the seed still moves the validation split


def test_train_corruption_replaces_the_requested_share():
    clean = data.build_data(**full_args(), seed=0)
    noisy = full_args(train_corruption="contrast", train_severity=5, train_corruption_fraction=0.25)
    dirty = data.build_data(**noisy, seed=0)
    changed = (clean["x_train"] != dirty["x_train"]).flatten(1).any(1)
    assert changed.sum().item() == round(0.25 * len(clean["x_train"]))
    assert torch.equal(clean["y_train"], dirty["y_train"])


def test_synthetic_is_deterministic_and_classes_differ_by_shape():
    x1, y1 = data.make_synthetic(20, 10, 32, seed=1)
    x2, y2 = data.make_synthetic(20, 10, 32, seed=1)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (200, 3, 32, 32) and x1.dtype == torch.uint8
    assert torch.bincount(y1).tolist() == [20] * 10
    # Foreground is brighter than background, so the bright-pixel area per class is the shape's area:
    # a square (side 1.6 s) covers more than a vertical bar (0.7 x 2 s) at equal scale on average.
    bright = (x1.float().mean(1) > 127).flatten(1).float().mean(1)
    area = [bright[y1 == c].mean().item() for c in range(10)]
    assert area[data.SHAPES.index("square")] > 1.5 * area[data.SHAPES.index("v-bar")]


def test_cifar_loaders_read_generated_pickle_folders(tmp_path):
    x10, y10 = write_cifar_folder(tmp_path, "cifar10", 6, 2)
    x100, y100 = write_cifar_folder(tmp_path, "cifar100", 3, 1, seed=1)
    d10 = data.load_cifar("cifar10", str(tmp_path), download=False)
    d100 = data.load_cifar("cifar100", str(tmp_path), download=False)
    assert d10["x_train"].shape == (60, 3, 32, 32) and d10["x_train"].dtype == torch.uint8
    assert np.array_equal(d10["x_train"].numpy(), x10) and np.array_equal(d10["y_train"].numpy(), y10)
    assert d10["x_test"].shape == (20, 3, 32, 32) and d10["num_classes"] == 10 and d10["class_names"][3] == "c3"
    assert np.array_equal(d100["x_train"].numpy(), x100) and np.array_equal(d100["y_train"].numpy(), y100)
    assert d100["num_classes"] == 100 and d100["x_test"].shape == (100, 3, 32, 32)


def test_missing_and_corrupt_folders_raise_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(data.DataError, match="cifar10 not found: expected the folder"):
        data.load_cifar("cifar10", str(tmp_path), download=False)

    def offline(*a, **k):
        raise OSError("Name or service not known")
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    offline = "download .* failed .* offline, put the extracted 'cifar-100-python' folder"
    with pytest.raises(data.DataError, match=offline):
        data.load_cifar("cifar100", str(tmp_path), download=True)
    write_cifar_folder(tmp_path, "cifar10", 2, 1)
    path = os.path.join(tmp_path, "cifar-10-batches-py", "data_batch_3")
    open(path, "wb").write(open(path, "rb").read()[:100])
    with pytest.raises(data.DataError, match="data_batch_3 is corrupt"):
        data.load_cifar("cifar10", str(tmp_path), download=False)


def test_rank_batches_shard_disjoint_equal_and_match_single_process():
    perm, shifts, flips = data.epoch_plan(103, epoch=2, seed=5, world_size=2)
    assert len(perm) == 102 and sorted(perm.tolist()) != list(range(102))  # tail of 1 dropped, shuffled
    assert set(perm.tolist()) <= set(range(103)) and len(set(perm.tolist())) == 102
    single = data.rank_batches(102, 16)
    shards = [data.rank_batches(102, 16, rank=r, world_size=2) for r in range(2)]
    assert [len(s) for s in shards] == [7, 7] and len(single) == 7
    for one, r0, r1 in zip(single, *shards):
        assert r0.stop - r0.start == r1.stop - r1.start  # equal shares
        # Disjoint, and together the global batch.
        assert r0.stop == r1.start and (r0.start, r1.stop) == (one.start, one.stop)
    # The plan is the same on every rank and differs between epochs.
    again = data.epoch_plan(103, epoch=2, seed=5, world_size=2)
    assert all(torch.equal(a, b) for a, b in zip((perm, shifts, flips), again))
    assert not torch.equal(perm, data.epoch_plan(103, epoch=3, seed=5, world_size=2)[0])
    assert shifts.min() >= 0 and shifts.max() <= 8 and 0.3 < flips.float().mean() < 0.7


def test_augment_is_a_crop_of_the_padded_image_and_a_flip():
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    shifts = torch.tensor([[0, 0], [4, 4], [1, 3], [2, 0], [0, 4], [3, 1]])
    flips = torch.tensor([False, True, False, True, True, False])
    out = data.augment(x, shifts, flips, pad=2)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(6):
        dy, dx = shifts[i].tolist()
        crop = padded[i, :, dy:dy + 8, dx:dx + 8]
        assert torch.equal(out[i], crop.flip(2) if flips[i] else crop)
    assert (out[0, :, :2, :] == 0).all() and (out[0, :, :, :2] == 0).all()  # shift (0, 0): zero padding top and left
    assert torch.equal(data.augment(x, torch.full((6, 2), 2), torch.zeros(6, dtype=torch.bool), pad=2), x)


def test_channel_stats_match_numpy():
    x = torch.randint(0, 256, (50, 3, 5, 5), dtype=torch.uint8)
    mean, std = data.channel_stats(x, chunk=7)
    ref = x.numpy().astype(np.float64) / 255
    assert np.allclose(mean, ref.mean((0, 2, 3)), atol=1e-6) and np.allclose(std, ref.std((0, 2, 3)), atol=1e-6)


# ----------------------------------------------------------------------------- corruptions

@pytest.fixture(scope="module")
def photos():
    x, _ = data.make_synthetic(8, 10, 32, seed=4)
    return x


@pytest.mark.parametrize("name", list(data.CORRUPTIONS))
def test_corruptions_change_every_severity_and_grow_with_it(photos, name):
    changes = []
    for s in range(1, 6):
        out = data.corrupt(photos, name, s, seed=0)
        assert out.shape == photos.shape and out.dtype == torch.uint8
        assert torch.equal(out, data.corrupt(photos, name, s, seed=0))  # same images for every model
        changes.append((out.float() - photos.float()).abs().mean().item())
    assert min(changes) > 0.5, changes  # no severity is the identity (mean change over half a grey level)
    if name == "saturate":
        # Hendrycks' parameters desaturate at 1-2 (s*0.3, s*0.1) and oversaturate at 3-5: monotonic within each.
        assert changes[0] < changes[1] and changes[2] < changes[3] < changes[4], changes
    else:
        assert all(a < b for a, b in zip(changes, changes[1:])), changes


def test_contrast_against_hand_computation(photos):
    x = photos.double() / 255
    mean = x.mean((2, 3), keepdim=True)
    ref = ((x - mean) * 0.4 + mean).clamp(0, 1) * 255
    assert (data.corrupt(photos, "contrast", 3).double() - ref.floor()).abs().max() <= 1


@pytest.mark.parametrize("name,severity,expected_std", [("gaussian_noise", 2, 0.06), ("speckle_noise", 5, 0.2 * 0.5)])
def test_noise_has_the_published_strength_and_differs_between_corruptions(name, severity, expected_std):
    grey = torch.full((64, 3, 32, 32), 128, dtype=torch.uint8)  # 0.502: no clipping at these strengths
    diff = (data.corrupt(grey, name, severity, seed=3).double() - 128) / 255
    expected_std = expected_std * 128 / 127.5 if name == "speckle_noise" else expected_std
    assert diff.std().item() == pytest.approx(expected_std, rel=0.03)
    assert abs(diff.mean().item()) < 0.01  # floor() quantisation shifts the mean by half a grey level at most
    gaussian, speckle = (data.corrupt(grey, name, 2, seed=3) for name in ("gaussian_noise", "speckle_noise"))
    assert not torch.equal(gaussian, speckle)
    assert not torch.equal(data.corrupt(grey, name, severity, seed=3), data.corrupt(grey, name, severity, seed=4))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_pixelate_equals_pillow_box_resize(photos, severity):
    from PIL import Image  # a torchvision dependency; the reference Hendrycks & Dietterich used
    c = data.CORRUPTIONS["pixelate"][0][severity - 1]
    ref = []
    for im in photos:
        small = Image.fromarray(im.permute(1, 2, 0).numpy()).resize((int(32 * c),) * 2, Image.BOX)
        pil = small.resize((32, 32), Image.BOX)
        ref.append(torch.from_numpy(np.array(pil)).permute(2, 0, 1))
    assert torch.equal(data.corrupt(photos, "pixelate", severity), torch.stack(ref))


def test_gaussian_blur_against_numpy_with_edge_padding(photos):
    sigma = data.CORRUPTIONS["gaussian_blur"][0][4]
    radius = int(4 * sigma + 0.5)
    k = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    pad = ((0, 0), (0, 0), (radius, radius), (radius, radius))
    x = np.pad(photos[:2].numpy().astype(np.float64) / 255, pad, mode="edge")
    rows = sum(k[i] * x[:, :, i:i + 32, :] for i in range(len(k)))
    ref = sum(k[j] * rows[:, :, :, j:j + 32] for j in range(len(k)))
    ours = data.corrupt(photos[:2], "gaussian_blur", 5).numpy().astype(np.float64)
    assert np.abs(ours - np.floor(np.clip(ref, 0, 1) * 255)).max() <= 1


def test_empty_batches_pass_through():
    empty = torch.zeros(0, 3, 32, 32, dtype=torch.uint8)
    for name in data.CORRUPTIONS:
        assert data.corrupt(empty, name, 3).shape == (0, 3, 32, 32)


@pytest.mark.parametrize("name,severity", [("brightness", 4), ("saturate", 2), ("saturate", 5)])
def test_hsv_corruptions_against_colorsys(photos, name, severity):
    rgb = photos[:2].permute(0, 2, 3, 1).reshape(-1, 3).double() / 255
    out = data.corrupt(photos[:2], name, severity).permute(0, 2, 3, 1).reshape(-1, 3).double()
    c = data.CORRUPTIONS[name][0][severity - 1]
    for i in range(0, len(rgb), 37):
        h, s, v = colorsys.rgb_to_hsv(*rgb[i].tolist())
        if name == "brightness":
            v = min(max(v + c, 0), 1)
        else:
            s = min(max(s * c[0] + c[1], 0), 1)
        ref = torch.tensor(colorsys.hsv_to_rgb(h, s, v)) * 255
        assert (out[i] - ref.round()).abs().max() <= 1, (i, out[i], ref)


def test_blur_kernels_are_normalised_and_preserve_flat_images():
    flat = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    for name in ("gaussian_blur", "defocus_blur", "pixelate"):
        assert torch.equal(data.corrupt(flat, name, 5), flat)


def test_unknown_corruption_and_severity_are_rejected(photos):
    with pytest.raises(data.DataError, match="unknown corruption 'fog'; choose from gaussian_noise"):
        data.corrupt(photos, "fog", 1)
    with pytest.raises(data.DataError, match="severity must be 1..5, got 6"):
        data.corrupt(photos, "contrast", 6)


def test_max_per_class_caps_the_pool_and_regimes_nest_inside_it():
    labels = torch.arange(10).repeat_interleave(500)
    capped = lambda **kw: data.regime_indices(labels, 10, 1, **regime_args(max_per_class=50, **kw))
    pool = set(capped().tolist())
    assert torch.bincount(labels[capped()], minlength=10).tolist() == [50] * 10
    sparse = set(capped(regime="sparse", fraction=0.2).tolist())
    assert len(sparse) == 100 and sparse < pool
    assert sparse < set(data.regime_indices(labels, 10, 1, **regime_args(regime="sparse", fraction=0.2)).tolist())
    long_tail = capped(regime="imbalanced", imbalance_ratio=10.0)
    assert torch.bincount(labels[long_tail], minlength=10).tolist() == data.long_tail_counts(50, 10, 10.0)


def test_data_config_fills_regime_defaults_and_keeps_only_what_applies():
    assert data.data_config(dict(regime="sparse", fraction=None)) == dict(dataset="cifar10", regime="sparse",
                                                                          val_fraction=0.1, fraction=0.1)
    assert data.data_config(dict(regime="sparse", per_class=7)) == dict(dataset="cifar10", regime="sparse",
                                                                        val_fraction=0.1, per_class=7)
    assert data.data_config(dict(regime="imbalanced", dataset="synthetic")) == dict(
        dataset="synthetic", regime="imbalanced", val_fraction=0.1, imbalance_ratio=100.0, imbalance_profile="exp",
        synthetic_per_class=500, synthetic_size=32)
    assert data.data_config(dict(regime="many-classes"))["dataset"] == "cifar100"
    assert data.data_config(dict(regime="corrupted"))["corruptions"] == list(data.CORRUPTIONS)
    assert data.data_config(dict(regime="corrupted", corruptions="contrast,pixelate"))["corruptions"] == [
        "contrast", "pixelate"]
    noisy = data.data_config(dict(train_corruption="contrast"))
    assert (noisy["train_severity"], noisy["train_corruption_fraction"]) == (3, 0.5)
    for given, message in ((dict(imbalance_ratio=10.0), "--imbalance-ratio only applies to --regime imbalanced"),
                           (dict(regime="corrupted", corruptions="fog"), "unknown corruption 'fog'"),
                           (dict(synthetic_size=24), "--synthetic-size only applies to --dataset synthetic"),
                           (dict(train_severity=2), "--train-severity only applies to --train-corruption")):
        with pytest.raises(data.DataError, match=message):
            data.data_config(given)
    # The data a config describes is what build_data makes of it.
    d = data.build_data(**data.data_config(dict(dataset="synthetic", synthetic_per_class=20, synthetic_size=16,
                                                regime="sparse", per_class=3)), seed=0, download=False)
    assert d["counts"]["train"] == [3] * 10 and d["counts"]["val"] == [2] * 10 and d["corruptions"] == []


def test_classes_keep_a_subset_relabelled_in_order(tmp_path):
    x, y = write_cifar_folder(tmp_path, "cifar10", 6, 3)
    assert data.parse_classes("5-9", 10) == [5, 6, 7, 8, 9] and data.parse_classes("0,2,4", 10) == [0, 2, 4]
    assert data.parse_classes("0-2,7", 10) == [0, 1, 2, 7] and data.class_list_text([0, 1, 2, 7, 9]) == "0-2,7,9"
    for text, message in (("3-12", "names a class outside the dataset's 0-9"), ("5-3", "is not a list of classes"),
                          ("a,1", "is not a list of classes"), ("4", "keeps one class; a classifier needs at least 2")):
        with pytest.raises(data.DataError, match=message):
            data.parse_classes(text, 10)
    d = data.build_data(dataset="cifar10", regime="standard", seed=0, val_fraction=0.0, data_dir=str(tmp_path),
                        download=False, classes=[2, 5, 7])
    keep = np.isin(y, [2, 5, 7])
    assert torch.equal(d["x_train"].sort(0).values, torch.from_numpy(x[keep]).sort(0).values)
    relabel = {2: 0, 5: 1, 7: 2}
    expected = torch.tensor([relabel[c] for c in y[keep]])
    order = torch.from_numpy(np.nonzero(keep)[0])  # build_data keeps the training set in its file order
    assert torch.equal(d["y_train"], expected) and torch.equal(d["x_train"], torch.from_numpy(x)[order])
    assert d["num_classes"] == 3 and d["class_names"] == ["c2", "c5", "c7"]
    assert d["counts"]["train"] == [6, 6, 6] and d["counts"]["test"] == [3, 3, 3]
    assert data.dataset_shape("cifar10", classes=[2, 5, 7]) == (3, 32)
    assert data.data_config(dict(classes="7,2-3"))["classes"] == [2, 3, 7]


def test_repeated_augmentation_repeats_a_prefix_of_the_epochs_order():
    perm, _, _ = data.epoch_plan(10, 3, 7)
    repeated, shifts, flips = data.epoch_plan(10, 3, 7, repeats=3)
    # ceil(10 / 3) = 4 images, each 3 times in a row, cut to the epoch's 10 positions.
    assert repeated.tolist() == [i for i in perm[:4].tolist() for _ in range(3)][:10]
    draws = [(tuple(shifts[j].tolist()), bool(flips[j])) for j in range(9)]
    assert all(len(set(draws[j:j + 3])) > 1 for j in (0, 3, 6))  # each copy has its own crop and flip
    assert data.epoch_plan(10, 3, 7, world_size=4, repeats=3)[0].tolist() == repeated[:8].tolist()
