"""Datasets and data regimes, all as uint8 tensors (N, 3, H, W) plus int64 labels.

A batch starts here: `build_data` loads the dataset (`load_dataset`), holds out a stratified validation
split and keeps the regime's training indices (`regime_indices`); train.py then draws each epoch's order and
crops (`epoch_plan`), takes its slice of every global batch (`rank_batches`), crops and flips it on the device
(`augment`) and `normalize`s it.
"""
import os
import pickle
import warnings

import numpy as np
import torch
import torch.nn.functional as F

# The names and defaults that the command line offers are in options.py, which imports no torch: train.py builds
# its command line from them before torch loads. REGIMES is not used here; it stays importable from data.
from options import (DATA_DEFAULTS, DATASETS, REGIME_OPTIONS, REGIMES, SPARSE_FRACTION,  # noqa: F401
                     SYNTHETIC_OPTIONS, TRAIN_CORRUPTION_OPTIONS)

CIFAR = {  # folder inside --data-dir, official archive, its md5, pickle files, label key
    "cifar10": dict(folder="cifar-10-batches-py",
                    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                    md5="c58f30108f718f92721af3b95e74349a",
                    train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label_key=b"labels", meta="batches.meta", names_key=b"label_names", classes=10),
    "cifar100": dict(folder="cifar-100-python",
                     url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                     md5="eb9058c3a382ffc7106e4002c42a8d85",
                     train=["train"], test=["test"],
                     label_key=b"fine_labels", meta="meta", names_key=b"fine_label_names", classes=100),
}


class DataError(ValueError):
    """A dataset or regime request that cannot be met; the message is shown to the user as is."""


# ----------------------------------------------------------------------------- CIFAR

def _read_pickle_batches(folder, files, label_key):
    """Concatenate official CIFAR pickle batches into (uint8 images N x 3 x 32 x 32, int64 labels)."""
    images, labels = [], []
    for name in files:
        path = os.path.join(folder, name)
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8)
            lab = np.asarray(entry[label_key], dtype=np.int64)
        except FileNotFoundError:
            raise DataError(f"dataset folder {folder} is incomplete: {name} is missing")
        except Exception as e:  # truncated file, wrong format, missing key
            raise DataError(f"dataset file {path} is corrupt ({type(e).__name__}: {e}); "
                            "delete the folder and fetch it again")
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
            raise DataError(f"dataset file {path} is corrupt: data shape {data.shape}, {len(lab)} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(name, data_dir, download=True):
    """Load CIFAR-10/100 from its official python pickle folder, downloading the archive if it is missing."""
    spec = CIFAR[name]
    folder = os.path.join(data_dir, spec["folder"])
    if not os.path.isdir(folder):
        if not download:
            raise DataError(f"{name} not found: expected the folder {folder} (drop --no-download to fetch it)")
        from torchvision.datasets.utils import download_and_extract_archive
        try:
            download_and_extract_archive(spec["url"], data_dir, md5=spec["md5"])
        except Exception as e:
            raise DataError(f"{name} not found at {folder} and the download from {spec['url']} failed "
                            f"({type(e).__name__}); offline, put the extracted '{spec['folder']}' folder "
                            f"in {data_dir} (see README: 'CIFAR data offline')")
    x_train, y_train = _read_pickle_batches(folder, spec["train"], spec["label_key"])
    x_test, y_test = _read_pickle_batches(folder, spec["test"], spec["label_key"])
    for y in (y_train, y_test):
        if y.min() < 0 or y.max() >= spec["classes"]:
            raise DataError(f"dataset folder {folder} is corrupt: labels outside 0..{spec['classes'] - 1}")
    try:
        with open(os.path.join(folder, spec["meta"]), "rb") as f:
            names = [n.decode() for n in pickle.load(f, encoding="bytes")[spec["names_key"]]]
    except Exception:
        names = [str(i) for i in range(spec["classes"])]
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                num_classes=spec["classes"], class_names=names)


# ----------------------------------------------------------------------------- synthetic

SHAPES = ["disk", "square", "triangle-up", "diamond", "plus", "x-cross", "ring", "h-bar", "v-bar", "triangle-down"]


def _shape_masks(shape_ids, u, v):
    """Boolean masks (N, H, W) of each image's shape, from centred, scaled coordinates u (right) and v (down)."""
    r2 = u * u + v * v
    au, av = np.abs(u), np.abs(v)
    inside = np.abs(v) <= 0.8
    masks = np.stack([
        r2 <= 1.0,
        np.maximum(au, av) <= 0.8,
        inside & (au <= (v + 0.8) * 0.6),
        au + av <= 1.0,
        ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0)),
        (np.abs(au - av) <= 0.3) & (np.maximum(au, av) <= 0.9),
        (r2 >= 0.5 ** 2) & (r2 <= 1.0),
        (au <= 1.0) & (av <= 0.35),
        (av <= 1.0) & (au <= 0.35),
        inside & (au <= (0.8 - v) * 0.6),
    ])
    return masks[shape_ids, np.arange(len(shape_ids))]


def make_synthetic(per_class, num_classes=10, size=32, seed=0):
    """Generate images whose class is a shape, with random position, scale, colour and background noise."""
    rng = np.random.RandomState(seed)
    n = per_class * num_classes
    labels = np.repeat(np.arange(num_classes), per_class)
    rng.shuffle(labels)
    scale = rng.uniform(0.2, 0.38, n) * size
    cx = rng.uniform(-0.15, 0.15, n) * size + size / 2
    cy = rng.uniform(-0.15, 0.15, n) * size + size / 2
    grid = np.arange(size) + 0.5
    u = (grid[None, None, :] - cx[:, None, None]) / scale[:, None, None]
    v = (grid[None, :, None] - cy[:, None, None]) / scale[:, None, None]
    mask = _shape_masks(labels, u, v)[:, None]  # N, 1, H, W
    # Random dark background and bright foreground colours: the shape, not the colour, carries the class,
    # and a fixed sign of contrast keeps it learnable in seconds by a small ViT as well as a CNN.
    background = rng.uniform(0.0, 0.45, (n, 3, 1, 1))
    foreground = rng.uniform(0.55, 1.0, (n, 3, 1, 1))
    img = np.where(mask, foreground, background) + rng.normal(0, 0.04, (n, 3, size, size))
    img = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return torch.from_numpy(img), torch.from_numpy(labels.astype(np.int64))


def load_synthetic(per_class=500, num_classes=10, size=32):
    """The offline dataset: per_class training and per_class // 5 test images per class, fixed seeds."""
    if not 2 <= num_classes <= len(SHAPES):
        raise DataError(f"synthetic classes must be in 2..{len(SHAPES)}, got {num_classes}")
    x_train, y_train = make_synthetic(per_class, num_classes, size, seed=1)
    x_test, y_test = make_synthetic(max(per_class // 5, 2), num_classes, size, seed=2)
    return dict(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                num_classes=num_classes, class_names=SHAPES[:num_classes])


def dataset_shape(dataset, synthetic_size=None, classes=None):
    """(classes, image side) of a dataset, or of the `classes` kept of it, known before it is loaded: the model
    can be built, and refuse its settings, before any download."""
    if dataset == "synthetic":
        return len(classes or SHAPES), synthetic_size or SYNTHETIC_OPTIONS["synthetic_size"]
    return len(classes or range(CIFAR[dataset]["classes"])), 32


def parse_classes(text, num_classes):
    """'0-4', '5-9' or '0,2,4' (or a list of indices) -> the sorted class indices; DataError naming a bad value."""
    text = text if isinstance(text, str) else ",".join(map(str, text))
    wanted = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        if not (low.isdigit() and (high.isdigit() or not high)) or int(high or low) < int(low):
            raise DataError(f"--classes '{text}' is not a list of classes such as 0-4, 5-9 or 0,2,4")
        wanted.update(range(int(low), int(high or low) + 1))
    if max(wanted) >= num_classes:
        raise DataError(f"--classes {text} names a class outside the dataset's 0-{num_classes - 1}")
    if len(wanted) < 2:
        raise DataError(f"--classes {text} keeps one class; a classifier needs at least 2")
    return sorted(wanted)


def class_list_text(classes):
    """[0, 1, 2, 3, 4, 7, 9] -> '0-4,7,9': a class list as --classes writes it."""
    runs = []
    for c in classes:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def keep_classes(raw, classes):
    """The raw dataset with only `classes`, relabelled 0..k-1 in their order (their names kept with them)."""
    new_label = torch.full((raw["num_classes"],), -1, dtype=torch.long)
    new_label[torch.tensor(classes)] = torch.arange(len(classes))
    out = dict(raw, num_classes=len(classes), class_names=[raw["class_names"][c] for c in classes])
    for split in ("train", "test"):
        y = new_label[raw[f"y_{split}"]]
        out[f"x_{split}"], out[f"y_{split}"] = raw[f"x_{split}"][y >= 0], y[y >= 0]
    return out


def load_dataset(name, data_dir, download=True, synthetic_per_class=500, synthetic_size=32):
    """Load a dataset by name into uint8 tensors; raises DataError with a user-facing message."""
    if name == "synthetic":
        return load_synthetic(synthetic_per_class, size=synthetic_size)
    if name not in CIFAR:
        raise DataError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    return load_cifar(name, data_dir, download)


# ----------------------------------------------------------------------------- splits and regimes

def class_permutations(labels, num_classes, seed):
    """For each class, its sample indices in a seeded random order: every subset is a prefix, so subsets nest."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=g)])
    return out


def stratified_split(labels, num_classes, val_fraction, seed):
    """Split indices into (train, val) with round(val_fraction * class size) of every class in val."""
    train, val = [], []
    for idx in class_permutations(labels, num_classes, seed):
        k = int(round(val_fraction * len(idx)))
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def long_tail_counts(n_max, num_classes, ratio, profile="exp"):
    """Per-class sizes of a long-tailed set: exp n_i = n_max * ratio^(-i/(C-1)); step: half the classes n_max/ratio."""
    if profile == "exp":
        return [int(n_max * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]
    return [n_max if i < num_classes // 2 else int(n_max / ratio) for i in range(num_classes)]


def regime_indices(labels, num_classes, seed, regime="standard", fraction=None, per_class=None,
                   imbalance_ratio=None, imbalance_profile=None, max_per_class=None):
    """Indices (into labels) of the training samples the regime keeps; identical for every architecture."""
    perms = class_permutations(labels, num_classes, seed + 1)  # independent of the validation split's order
    if max_per_class:
        perms = [p[:max_per_class] for p in perms]  # a smaller pool, still a prefix: subsets keep nesting
    sizes = [len(p) for p in perms]
    if regime == "sparse":
        if per_class is not None:
            if per_class > min(sizes):
                raise DataError(f"--per-class {per_class} is larger than the smallest class ({min(sizes)} "
                                f"training images after the validation split); allowed: 1..{min(sizes)}")
            keep = [per_class] * num_classes
        else:
            keep = [max(1, int(round(fraction * s))) for s in sizes]
    elif regime == "imbalanced":
        keep = [max(1, k) for k in long_tail_counts(min(sizes), num_classes, imbalance_ratio, imbalance_profile)]
    else:
        keep = sizes
    return torch.cat([p[:k] for p, k in zip(perms, keep)]).sort().values


def data_config(given):
    """The data section of a run's config from the options given (None: not given): defaults filled in, only the
    options that apply kept; DataError naming the flag for one that does not apply or is out of range."""
    data = DATA_DEFAULTS | {k: v for k, v in given.items() if v is not None}
    regime = data["regime"]
    if regime == "many-classes":
        if data.setdefault("dataset", "cifar100") != "cifar100":
            raise DataError(f"--regime many-classes trains on cifar100, but --dataset {data['dataset']} was given; "
                            "drop --dataset or use cifar100")
    data = dict(dataset=data.pop("dataset", "cifar10"), regime=data.pop("regime"), **data)
    if "classes" in data:
        data["classes"] = parse_classes(data["classes"], dataset_shape(data["dataset"])[0])
    conditional = [(regime == r, f"--regime {r} (got --regime {regime})", options)
                   for r, options in REGIME_OPTIONS.items()]
    conditional += [(data["dataset"] == "synthetic", "--dataset synthetic", SYNTHETIC_OPTIONS),
                    ("train_corruption" in data, "--train-corruption", TRAIN_CORRUPTION_OPTIONS)]
    for applies, condition, options in conditional:
        for key, default in options.items():
            if applies:
                data.setdefault(key, default)
            elif key in data:
                raise DataError(f"--{key.replace('_', '-')} only applies to {condition}")
    if regime == "sparse":
        if data["fraction"] is not None and data["per_class"] is not None:
            raise DataError("give --fraction or --per-class, not both")
        if data["per_class"] is None:
            data["fraction"] = SPARSE_FRACTION if data["fraction"] is None else data["fraction"]
        data = {k: v for k, v in data.items() if v is not None}
    if "resize" in data and "img_size" not in data:
        raise DataError("--resize applies to --img-size")
    if "img_size" in data:
        data.setdefault("resize", "bilinear")
    if regime == "corrupted":
        text = data["corruptions"]
        names = text.split(",") if isinstance(text, str) else text or list(CORRUPTIONS)
        data["corruptions"] = [c for c in names if c]
    check_data_config(data)
    return data


def check_data_config(data):
    """DataError naming the flag for a value of a data section out of its range."""
    bad = [c for c in data.get("corruptions", CORRUPTIONS) if c not in CORRUPTIONS]
    if bad or not data.get("corruptions", CORRUPTIONS):
        raise DataError(f"unknown corruption '{bad[0] if bad else ''}'; choose from {', '.join(CORRUPTIONS)}")
    if not 0 < data.get("fraction", 1) <= 1:
        raise DataError(f"--fraction {data['fraction']} is outside (0, 1]")
    if not 0 <= data["val_fraction"] < 1:
        raise DataError(f"--val-fraction {data['val_fraction']} is outside [0, 1)")
    if not 0 <= data.get("train_corruption_fraction", 0) <= 1:
        raise DataError(f"--train-corruption-fraction {data['train_corruption_fraction']} is outside [0, 1]")
    for key in ("per_class", "max_per_class", "test_per_class", "img_size"):
        if data.get(key, 1) < 1:
            raise DataError(f"--{key.replace('_', '-')} {data[key]} must be at least 1")
    if data.get("imbalance_ratio", 1) < 1:
        raise DataError(f"--imbalance-ratio {data['imbalance_ratio']} must be at least 1")
    if data.get("synthetic_per_class", 5) < 5 or data.get("synthetic_size", 16) < 16:  # defocus_blur's 17x17 kernel
        raise DataError(f"--synthetic-per-class ({data['synthetic_per_class']}) must be at least 5 "
                        f"and --synthetic-size ({data['synthetic_size']}) at least 16")


def build_data(dataset, regime, seed, val_fraction, data_dir="data", download=True, fraction=None, per_class=None,
               imbalance_ratio=None, imbalance_profile=None, max_per_class=None, test_per_class=None,
               corruptions=None, train_corruption=None, train_severity=None, train_corruption_fraction=None,
               synthetic_per_class=SYNTHETIC_OPTIONS["synthetic_per_class"],
               synthetic_size=SYNTHETIC_OPTIONS["synthetic_size"], classes=None, img_size=None, resize=None):
    """Load the dataset (only `classes`, relabelled, if given) and apply split and regime: train/val/test tensors,
    per-class counts, normalisation, the corruptions the test set is swept over, and the model's input size with
    the resize mode that reaches it (the data section of a run's config gives every argument)."""
    raw = load_dataset(dataset, data_dir, download, synthetic_per_class, synthetic_size)
    if classes:  # before the split and the regime: they apply to the classes kept
        raw = keep_classes(raw, classes)
    C = raw["num_classes"]
    x, y = raw["x_train"], raw["y_train"]
    train_idx, val_idx = stratified_split(y, C, val_fraction, seed)
    keep = train_idx[regime_indices(y[train_idx], C, seed, regime, fraction, per_class, imbalance_ratio,
                                    imbalance_profile, max_per_class)]
    x_train, y_train = x[keep].clone(), y[keep].clone()
    if train_corruption:
        # A fixed, seeded share of training images is replaced by its corrupted version once, before training.
        g = torch.Generator().manual_seed(seed + 2)
        pick = torch.randperm(len(x_train), generator=g)[: int(round(train_corruption_fraction * len(x_train)))]
        x_train[pick] = corrupt(x_train[pick], train_corruption, train_severity, seed=seed + 3)
    x_test, y_test = raw["x_test"], raw["y_test"]
    if test_per_class:
        # A fixed subset (seed 0, not --seed): every run and every seed is tested on the same images.
        pick = torch.cat([p[:test_per_class] for p in class_permutations(y_test, C, 0)]).sort().values
        x_test, y_test = x_test[pick], y_test[pick]
    counts = lambda labels: torch.bincount(labels, minlength=C).tolist()
    mean, std = channel_stats(x_train)
    return dict(x_train=x_train, y_train=y_train, x_val=x[val_idx], y_val=y[val_idx],
                x_test=x_test, y_test=y_test, num_classes=C, class_names=raw["class_names"],
                mean=mean, std=std, corruptions=list(corruptions or []), input_size=img_size or x.shape[-1],
                resize=resize or "bilinear",
                counts=dict(train=counts(y_train), val=counts(y[val_idx]), test=counts(y_test)))


def channel_stats(images, chunk=8192):
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks to bound memory."""
    s = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(images), chunk):
        x = images[i:i + chunk].double() / 255
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = s / n
    return mean.float().tolist(), (s2 / n - mean * mean).clamp_min(1e-12).sqrt().float().tolist()


# ----------------------------------------------------------------------------- batches and augmentation

def epoch_plan(n, epoch, seed, world_size=1, pad=4, repeats=1):
    """One epoch's sample order and crop/flip draws: (perm, shifts (len, 2), flips (len,)), the same on every rank.

    The tail that does not divide by world_size is dropped, so every process gets an equal share. Drawn on
    the CPU from a generator seeded by (seed, epoch), so a resumed epoch repeats exactly; moved to the device
    once per epoch, so the training loop makes no host-to-device copy per step. repeats K > 1 is DeiT's repeated
    augmentation: the first ceil(n / K) images of the order, each K times in a row (each copy with its own crop,
    flip and recipe draws), cut to n positions, so an epoch keeps its length and the regime's subset.
    """
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    if repeats > 1:
        perm = perm[: -(-n // repeats)].repeat_interleave(repeats)[:n]
    perm = perm[: n - n % world_size]
    shifts = torch.randint(0, 2 * pad + 1, (len(perm), 2), generator=g)
    flips = torch.rand(len(perm), generator=g) < 0.5
    return perm, shifts, flips


def rank_batches(n, batch_size, rank=0, world_size=1):
    """Slices of the epoch plan for this rank: its equal, disjoint part of each global batch of batch_size.

    Global batch i holds the same samples (and crops) for any number of processes, so a torchrun run
    follows the single-process run with the same global batch.
    """
    slices = []
    for start in range(0, n, batch_size):
        per_rank = min(batch_size, n - start) // world_size
        slices.append(slice(start + rank * per_rank, start + (rank + 1) * per_rank))
    return slices


def augment(images, shifts, flips, pad=4):
    """Crop (zero padding `pad`, offsets `shifts` (n, 2) into the padded image) and flip (`flips` (n,)) a uint8 batch.

    One gather on the batch's device: output pixel (i, c, r, k) is padded pixel (i, c, r + dy_i, k' + dx_i),
    with k' = k, or w - 1 - k where the image is flipped.
    """
    n, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = shifts[:, 0, None] + torch.arange(h, device=dev)  # n, h
    cols = shifts[:, 1, None] + torch.arange(w, device=dev)  # n, w
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images, mean, std, size=None, mode="bilinear"):
    """uint8 (N, 3, H, W) to float32, standardised per channel (mean and std: lists or tensors on the device) and
    resized to size x size if given (--img-size: batched, on the images' device, antialiased when shrinking)."""
    mean = torch.as_tensor(mean, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, device=images.device).view(1, -1, 1, 1)
    return resize((images.float() / 255 - mean) / std, size, mode)


def resize(x, size=None, mode="bilinear"):
    """A standardised float batch resized to size x size (None or its own size: unchanged), antialiased when
    shrinking."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    # After standardising: a per-channel affine map commutes with interpolation (its weights sum to 1), and the
    # float image needs no rounding back to uint8.
    return F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=size < x.shape[-1])


# ----------------------------------------------------------------------------- corruptions (CIFAR-10-C)
# Parameters are Hendrycks & Dietterich's CIFAR-10-C ones (make_cifar_c.py), computed on float tensors in
# [0, 1]. Random corruptions take an explicit seed so that every architecture sees the same corrupted images.

def _gaussian_kernel1d(sigma, radius):
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-x * x / (2 * sigma * sigma))
    return k / k.sum()


def _filter(x, kernel, border):
    """Convolve every channel with a 2-D kernel; border 'reflect' is cv2's default, 'replicate' skimage's."""
    kh, kw = kernel.shape
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode=border)
    weight = kernel.to(x)[None, None].repeat(x.shape[1], 1, 1, 1)
    return F.conv2d(x, weight, groups=x.shape[1])


def _gaussian_blur(x, sigma):
    radius = max(1, int(4 * sigma + 0.5))  # scipy.ndimage.gaussian_filter's default truncation
    k = _gaussian_kernel1d(sigma, radius)
    return _filter(x, k[:, None] * k[None, :], "replicate")  # skimage.filters.gaussian, mode='nearest'


def _defocus_blur(x, radius, alias_blur):
    r = 8 if radius <= 8 else int(radius)
    L = torch.arange(-r, r + 1, dtype=torch.float32)
    disk = ((L[:, None] ** 2 + L[None, :] ** 2) <= radius ** 2).float()
    disk = disk / disk.sum()
    g = _gaussian_kernel1d(alias_blur, 1)  # cv2.GaussianBlur with ksize (3, 3)
    disk = _filter(disk[None, None], g[:, None] * g[None, :], "reflect")[0, 0]
    return _filter(x, disk, "reflect")  # cv2.filter2D


def _scale_saturation(x, factor, add):
    """Set HSV saturation s to clip(s * factor + add), keeping hue and value (exact in RGB)."""
    v = x.max(1, keepdim=True).values
    mn = x.min(1, keepdim=True).values
    s = torch.where(v > 0, (v - mn) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * factor + add).clamp(0, 1)
    scaled = v - (v - x) * s_new / s.clamp_min(1e-12)
    # Grey pixels have hue 0 (red) by the HSV convention, so added saturation tints them red.
    grey = torch.cat([v, v * (1 - s_new), v * (1 - s_new)], 1)
    return torch.where(s > 0, scaled, grey)


def _brightness(x, c):
    v = x.max(1, keepdim=True).values
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-12), v_new.expand_as(x))


def _pil_box_weights(n_out, n_in):
    """(n_out, n_in) weights of Pillow's BOX resampling (its precompute_coeffs): an output pixel averages the
    input pixels whose centres fall in its window, so enlarging is nearest-neighbour."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    center = (torch.arange(n_out, dtype=torch.float64)[:, None] + 0.5) * scale
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    lo = (center - 0.5 * filterscale + 0.5).floor().clamp_min(0)
    hi = (center + 0.5 * filterscale + 0.5).floor().clamp_max(n_in)
    t = (j - center + 0.5) / filterscale
    w = ((t > -0.5) & (t <= 0.5) & (j >= lo) & (j < hi)).double()
    return (w / w.sum(1, keepdim=True)).float()


def _pil_box_resize(x255, h, w):
    """Pillow's resize(BOX) of float images in 0..255: horizontal pass, then vertical, each rounded half up."""
    x255 = (x255 @ _pil_box_weights(w, x255.shape[-1]).to(x255).T + 0.5).floor()
    return (_pil_box_weights(h, x255.shape[-2]).to(x255) @ x255 + 0.5).floor()


def _pixelate(x_uint8, c):
    """Hendrycks' pixelate: PIL BOX resize down to c times the size, then back up (uint8 in and out)."""
    h, w = x_uint8.shape[-2:]
    small = _pil_box_resize(x_uint8.float(), int(h * c), int(w * c))
    return _pil_box_resize(small, h, w).to(torch.uint8)


def _jpeg(x_uint8, quality):
    with warnings.catch_warnings():  # torchvision 0.29 marks its codec deprecated; it is pinned and works
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import decode_jpeg, encode_jpeg
        encoded = encode_jpeg(list(x_uint8.cpu()), quality=quality)
        return torch.stack(decode_jpeg(encoded)).to(x_uint8.device)


# name -> (severity parameters 1..5, fn(images, parameter, generator)): float in [0, 1], uint8 for UINT8_CORRUPTIONS
CORRUPTIONS = {
    "gaussian_noise": ([0.04, 0.06, 0.08, 0.09, 0.10],
                       lambda x, c, g: x + c * torch.randn(x.shape, generator=g).to(x)),
    "shot_noise": ([500, 250, 100, 75, 50],
                   lambda x, c, g: torch.poisson((x * c).cpu(), generator=g).to(x) / c),
    "impulse_noise": ([0.01, 0.02, 0.03, 0.05, 0.07],
                      lambda x, c, g: _salt_pepper(x, c, g)),
    "speckle_noise": ([0.06, 0.10, 0.12, 0.16, 0.20],
                      lambda x, c, g: x + x * c * torch.randn(x.shape, generator=g).to(x)),
    "gaussian_blur": ([0.4, 0.6, 0.7, 0.8, 1.0], lambda x, c, g: _gaussian_blur(x, c)),
    "defocus_blur": ([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
                     lambda x, c, g: _defocus_blur(x, *c)),
    "contrast": ([0.75, 0.5, 0.4, 0.3, 0.15],
                 lambda x, c, g: (x - x.mean((2, 3), keepdim=True)) * c + x.mean((2, 3), keepdim=True)),
    "brightness": ([0.05, 0.1, 0.15, 0.2, 0.3], lambda x, c, g: _brightness(x, c)),
    "saturate": ([(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)],
                 lambda x, c, g: _scale_saturation(x, *c)),
    "pixelate": ([0.95, 0.9, 0.85, 0.75, 0.65], lambda x, c, g: _pixelate(x, c)),
    "jpeg_compression": ([80, 65, 58, 50, 40], lambda x, c, g: _jpeg(x, c)),
}
UINT8_CORRUPTIONS = {"pixelate", "jpeg_compression"}  # these take and return uint8, as PIL does


def _salt_pepper(x, amount, g):
    """skimage.util.random_noise(mode='s&p'): each value becomes 0 or 1 with probability amount, half each."""
    hit = torch.rand(x.shape, generator=g).to(x) < amount
    salt = torch.rand(x.shape, generator=g).to(x) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def corrupt(images, name, severity, seed=0):
    """Apply a CIFAR-10-C corruption at severity 1..5 to uint8 images; returns uint8, same shape and device."""
    if name not in CORRUPTIONS:
        raise DataError(f"unknown corruption '{name}'; choose from {', '.join(CORRUPTIONS)}")
    if severity not in (1, 2, 3, 4, 5):
        raise DataError(f"corruption severity must be 1..5, got {severity}")
    params, fn = CORRUPTIONS[name]
    c = params[severity - 1]
    if len(images) == 0:
        return images.clone()
    if name in UINT8_CORRUPTIONS:
        return fn(images, c, None)
    # Each corruption and severity draws its own noise; the same for every model evaluated with this seed.
    g = torch.Generator().manual_seed(seed * 1000003 + list(CORRUPTIONS).index(name) * 101 + severity)
    out = fn(images.float() / 255, c, g)
    # make_cifar_c.py stores np.uint8(x), a truncation; the 1e-3 grey level absorbs float32 rounding
    # (a blurred flat 100 comes out as 99.99999 here, where the reference's float64 gives 100).
    return (out.clamp(0, 1) * 255 + 1e-3).floor().to(torch.uint8)
