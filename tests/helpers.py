"""Helpers shared by the test modules: tiny model and data flags, CIFAR-format folders, an in-process train.py."""
import json
import os
import pickle

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough to train in seconds on 2 CPU cores, large enough to learn the synthetic shapes.
TINY_VIT = ["--arch", "vit", "--depth", "2", "--dim", "64", "--heads", "4", "--lr", "2e-3"]
TINY_RESNET = ["--arch", "resnet18-shallow", "--stages", "1"]
TINY_DATA = ["--dataset", "synthetic", "--synthetic-size", "16", "--synthetic-per-class", "60",
             "--batch-size", "32", "--warmup-epochs", "1"]


def write_cifar_folder(root, name, train_per_class, test_per_class, seed=0):
    """Write a CIFAR-10 or CIFAR-100 python pickle folder with random images; returns (x_train, y_train)."""
    rng = np.random.RandomState(seed)
    classes = 10 if name == "cifar10" else 100
    folder = os.path.join(root, "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    key = b"labels" if name == "cifar10" else b"fine_labels"

    def split(per_class):
        y = np.repeat(np.arange(classes), per_class)
        rng.shuffle(y)
        return rng.randint(0, 256, (len(y), 3072), dtype=np.uint8), y.tolist()

    x_train, y_train = split(train_per_class)
    x_test, y_test = split(test_per_class)
    if name == "cifar10":
        parts = np.array_split(np.arange(len(y_train)), 5)
        files = {f"data_batch_{i + 1}": (x_train[p], [y_train[j] for j in p]) for i, p in enumerate(parts)}
        files["test_batch"] = (x_test, y_test)
        meta = ("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    else:
        files = {"train": (x_train, y_train), "test": (x_test, y_test)}
        meta = ("meta", {b"fine_label_names": [f"c{i}".encode() for i in range(100)]})
    for fname, (x, y) in files.items():
        with open(os.path.join(folder, fname), "wb") as f:
            pickle.dump({b"data": x, key: y, b"batch_label": fname.encode()}, f)
    with open(os.path.join(folder, meta[0]), "wb") as f:
        pickle.dump(meta[1], f)
    return x_train.reshape(-1, 3, 32, 32), np.array(y_train)


def run_train(out, *args):
    """Run train.main in this process with --out `out`; returns (config, metrics rows, final)."""
    import train
    assert train.main([*args, "--out", str(out), "--progress", "off"]) == 0
    return read_run(out)


def read_run(out):
    """Load a run folder's config.json, metrics.jsonl and final.json (None where missing)."""
    load = lambda name: json.load(open(os.path.join(out, name))) if os.path.exists(os.path.join(out, name)) else None
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))] if os.path.exists(os.path.join(out, "metrics.jsonl")) else []
    return load("config.json"), rows, load("final.json")


def brute_force_mask(h, w, radius, prefix, dilation=1, shape="square"):
    """From the definition: q is in p's window when q - p is one of the window's offsets d * (i, j); the `prefix`
    tokens before the patches (cls, a distillation token) attend and are attended everywhere."""
    steps = [(i, j) for i in range(-radius, radius + 1) for j in range(-radius, radius + 1)
             if shape == "square" or i * i + j * j <= radius * radius]
    offsets = {(dilation * i, dilation * j) for i, j in steps}
    coords = [(r, c) for r in range(h) for c in range(w)]
    n = len(coords) + prefix
    mask = torch.ones(n, n, dtype=torch.bool)  # prefix rows and columns stay True: global tokens
    for a, (r1, c1) in enumerate(coords):
        for b, (r2, c2) in enumerate(coords):
            mask[a + prefix, b + prefix] = (r2 - r1, c2 - c1) in offsets
    return mask
