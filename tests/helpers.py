"""Helpers shared by the test modules: tiny model and data flags, CIFAR-format folders, an in-process train.py."""
import json
import os
import pickle
import struct

import numpy as np
import torch

import analyze_groups

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small enough to train in seconds on 2 CPU cores, large enough to learn the synthetic shapes.
TINY_VIT = ["--arch", "vit", "--depth", "2", "--dim", "64", "--heads", "4", "--lr", "2e-3"]
TINY_RESNET = ["--arch", "resnet18-shallow", "--stages", "1"]
TINY_DATA = ["--dataset", "synthetic", "--synthetic-size", "16", "--synthetic-per-class", "60",
             "--batch-size", "32", "--warmup-epochs", "1", "--device", "cpu"]


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, as in the official CIFAR files: pickle.load with encoding='bytes' (our
    reader) gives b'data' keys and with encoding='latin1' (torchvision's CIFAR10) 'data' keys."""
    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


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
            Py2Pickler(f, protocol=2).dump({b"data": x, key: y, b"batch_label": fname.encode()})
    with open(os.path.join(folder, meta[0]), "wb") as f:
        Py2Pickler(f, protocol=2).dump(meta[1])
    return x_train.reshape(-1, 3, 32, 32), np.array(y_train)


def run_train(out, *args):
    """Run train.main in this process with --out `out`; returns (config, metrics rows, final)."""
    import train
    assert train.main([*args, "--out", str(out), "--progress", "off"]) == 0
    return read_run(out)


def read_run(out):
    """Load a run folder's config.json, metrics.jsonl and final.json (None where missing)."""
    path = lambda name: os.path.join(out, name)
    load = lambda name: json.load(open(path(name))) if os.path.exists(path(name)) else None
    rows = [json.loads(line) for line in open(path("metrics.jsonl"))] if os.path.exists(path("metrics.jsonl")) else []
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


# Where fake_run puts a setting: config.json's sections, as train.py writes them (the rest is recorded).
FAKE_SECTIONS = dict(model={"arch", "attention", "spt", "patch_size", "pool", "dropout", "drop_path", "radius",
                            "window_shape", "dilation", "dilations", "linformer_k", "linformer_share",
                            "performer_features", "landmarks", "pinv_iters", "nystrom_conv", "stages", "depth",
                            "init", "pretrained", "weights", "weights_file", "truncate"},
                     data={"dataset", "regime", "fraction", "per_class", "imbalance_ratio", "imbalance_profile",
                           "max_per_class", "corruptions", "classes", "img_size", "resize"},
                     optim={"epochs", "time_budget", "lr", "opt", "momentum", "amp", "freeze", "layer_decay"},
                     run={"seed", "out", "thresholds", "attention_backend"})


def fake_run(root, name, seed, test_acc, arch="vit", regime="standard", train_size=1000, finished=True,
             final_extra=None, flat=False, recorded_init=None, **cfg_extra):
    """Write a run folder with the given numbers (and plausible others) as train.py would: settings go to their
    config section (None: not written), final_extra updates final.json, recorded_init is recorded.init (where a
    fine-tune started); flat=True writes the flat config.json of runs from before sections."""
    out = os.path.join(root, f"{name}-s{seed}")
    os.makedirs(out)
    cfg = dict(arch=arch, regime=regime, dataset="cifar10", seed=seed, epochs=2, image_size=32, patch_size=4,
               thresholds=[0.5, 0.9], sizes=dict(train=train_size), out=out,
               counts_per_class=dict(train=[train_size // 10] * 10))
    if not arch.startswith("resnet"):
        cfg["attention"] = "full"
    else:
        del cfg["patch_size"]
    cfg.update(cfg_extra)
    if not flat:
        sections = {s: {k: v for k, v in cfg.items() if k in keys and v is not None}
                    for s, keys in FAKE_SECTIONS.items()}
        taken = set().union(*FAKE_SECTIONS.values())
        cfg = dict(sections, recorded={k: v for k, v in cfg.items() if k not in taken})
        if recorded_init is not None:
            cfg["recorded"]["init"] = recorded_init
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    rows = [dict(epoch=e, time_s=10.0 * e, lr=0.1, train_loss=1.0, train_acc=test_acc, val_loss=1.0, val_acc=test_acc)
            for e in (1, 2)]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if finished:
        final = dict(test_acc=test_acc, test_top5=min(1, test_acc + 0.1), macro_f1=test_acc - 0.01,
                     per_class_recall=[test_acc] * 10, params=1000 if arch == "vit" else 2000, flops_per_image=1e6,
                     throughput_images_per_s=100.0, latency_ms=1.0, train_time_s=20.0, epochs=2, best_val_acc=test_acc,
                     epochs_to={"0.5": 1, "0.9": None}, seconds_to={"0.5": 10.0, "0.9": None})
        final.update(final_extra or {})
        json.dump(final, open(os.path.join(out, "final.json"), "w"))



def fake_run_in_sections(root, name, seed, acc, optim=None, model=None, teacher=None, **kw):
    """fake_run, then the optim and model keys it does not place put in their sections and recorded.teacher (what
    the teacher trained, as train.py records it) written."""
    fake_run(root, name, seed, acc, **kw)
    path = os.path.join(root, f"{name}-s{seed}", "config.json")
    config = json.load(open(path))
    config["optim"] |= optim or {}
    config["model"] |= model or {}
    if teacher is not None:
        config["recorded"]["teacher"] = teacher
    json.dump(config, open(path, "w"))

def row_of(report, model, cell):
    """The markdown table row of a model on a data cell (first table that has it)."""
    return next(line for line in report.splitlines() if line.startswith(f"| {model} | {cell} |"))


def section(tmp_path, fn):
    """One report section's text on the runs under tmp_path (plots in tmp_path/out), without the rest of the report."""
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    return fn(groups, str(tmp_path / "out"))


def bench_row(variant, tokens, ms, scope="layer", error=None):
    """A bench-attention.json result row: ms median with min/max 10% around it, memory 2 MB per ms."""
    row = dict(variant=variant, scope=scope, grid=int((tokens - 1) ** 0.5), tokens=tokens, backend="sdpa", error=error)
    if error is None:
        row.update(forward_ms=dict(median=ms / 3, min=ms / 3, max=ms / 3, repeats=3), forward_peak_memory_mb=ms,
                   forward_backward_ms=dict(median=ms, min=0.9 * ms, max=1.1 * ms, repeats=3),
                   forward_backward_peak_memory_mb=2 * ms, flops=1000 * tokens)
    return row
