"""Metrics for a trained model, and the attention cost benchmark.

    python evaluate.py RUN_DIR                 # re-evaluate a run's checkpoint
    python evaluate.py bench-attention --out bench-attention.json
"""
import json
import platform
import statistics
import sys
import time

import torch
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from attention import ATTENTIONS, WINDOWED, Attention, flex_block_mask, local_attention_mask
from data import corrupt, normalize
from model import ViT, count_params

SOFTMAX_KINDS = WINDOWED | {"full", "lsa"}  # kinds with explicit attention weights, for attention_distance


def autocast(device, amp):
    """bf16 autocast on CUDA when amp is on; a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict(model, images, mean, std, device, amp=False, batch_size=512):
    """Float32 logits for uint8 images (N, 3, H, W), in eval mode, batch by batch on `device`."""
    model.eval()
    mean, std = (torch.tensor(v, device=device) for v in (mean, std))
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].to(device), mean, std)
        with autocast(device, amp):
            out.append(model(x).float())
    return torch.cat(out) if out else torch.zeros(0)


def classification_metrics(logits, labels, num_classes):
    """Top-1, top-5, macro-F1, per-class recall and confusion matrix (rows: true class, columns: predicted)."""
    logits, labels = logits.cpu(), labels.cpu()
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1_denominator = support + predicted
    f1 = torch.where(f1_denominator > 0, 2 * tp / f1_denominator.clamp_min(1), torch.zeros_like(tp))
    top5 = logits.topk(min(5, num_classes), 1).indices.eq(labels[:, None]).any(1)
    return dict(test_acc=pred.eq(labels).double().mean().item(), test_top5=top5.double().mean().item(),
                macro_f1=f1.mean().item(), per_class_recall=recall.tolist(), confusion=confusion.tolist())


def threshold_crossings(history, thresholds):
    """For each accuracy threshold, the first epoch (1-based) and wall time at which val_acc reached it, else None."""
    epochs_to, seconds_to = {}, {}
    for t in thresholds:
        hit = next((m for m in history if m.get("val_acc") is not None and m["val_acc"] >= t), None)
        epochs_to[str(t)] = hit["epoch"] if hit else None
        seconds_to[str(t)] = hit["time_s"] if hit else None
    return epochs_to, seconds_to


def count_flops(net, x):
    """Forward FLOPs of net(x) (a multiply-add counts 2) by torch.utils.flop_counter; windows count allowed pairs only."""
    net.eval()
    layers = [m for m in net.modules() if isinstance(m, Attention)]
    backends = [m.backend for m in layers]
    for m in layers:  # the counter cannot run flex_attention; SDPA computes the same attention
        m.backend = "sdpa"
    try:  # the math backend runs attention as matmuls the counter sees (it has no formula for the fused kernels)
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            net(x)
    finally:
        for m, backend in zip(layers, backends):
            m.backend = backend
    # The math path scores every (query, key) pair of a windowed kind; only the allowed pairs are its work (what
    # a block-sparse kernel approaches): Q K^T and the weighted sum of V take 2 * 2 * width FLOPs per pair.
    masked_out = 0
    for m in layers:
        for radius, shape, dilation in getattr(m, "windows", []):
            mask = local_attention_mask(*m.grid, radius, m.cls_token, shape, dilation)
            masked_out += int((~mask).sum()) * 4 * m.proj.in_features * len(x)
    return counter.get_total_flops() - masked_out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_speed(model, image_size, device, amp=False, batch_size=256, repeats=10, max_seconds=2.0):
    """Inference throughput (images/s at batch_size) and median latency (ms at batch size 1), after warm-up.

    Up to `repeats` timed calls after 3 warm-up calls, but no more once `max_seconds` are spent (at least 3):
    a slow CPU model would otherwise spend half a minute here.
    """
    model.eval()
    results = {}
    for bs in (batch_size, 1):
        x = torch.randn(bs, 3, image_size, image_size, device=device)
        times = []
        for i in range(repeats + 3):  # the first three are warm-up
            _sync(device)
            t = time.perf_counter()
            with autocast(device, amp):
                model(x)
            _sync(device)
            if i >= 3:
                times.append(time.perf_counter() - t)
                if len(times) >= 3 and sum(times) > max_seconds:
                    break
        results[bs] = statistics.median(times)
    return dict(throughput_images_per_s=batch_size / results[batch_size], latency_ms=1000 * results[1])


def corruption_sweep(model, images, labels, mean, std, device, amp, names, seed=0):
    """Top-1 accuracy on corrupted copies of the test set: {name: {severity: acc}} and the mean over all cells."""
    table = {}
    for name in names:
        table[name] = {}
        for severity in range(1, 6):
            bad = corrupt(images, name, severity, seed=seed)  # same seed for every model: identical images
            table[name][str(severity)] = predict(model, bad, mean, std, device, amp).argmax(1).cpu().eq(labels).double().mean().item()
    cells = [a for per in table.values() for a in per.values()]
    return table, sum(cells) / len(cells)


@torch.no_grad()
def attention_distance(model, images, mean, std, device, batch_size=64):
    """Per block and head, the mean grid distance (in patches) from a patch to the patches it attends to.

    Each patch query's weights on patch keys (the cls key left out, the rest renormalised) weight the
    Euclidean distances between patch centres; averaged over queries and images (as Dosovitskiy et al.'s
    mean attention distance, in patches instead of pixels). None for a model without explicit softmax weights.
    """
    if not isinstance(model, ViT) or model.blocks[0].attn.kind not in SOFTMAX_KINDS:
        return None
    model.eval()
    h, w = model.blocks[0].attn.grid
    c = int(model.cls_token is not None)
    rows, cols = torch.arange(h * w, device=device) // w, torch.arange(h * w, device=device) % w
    dist = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).float().sqrt()
    mean, std = (torch.tensor(v, device=device) for v in (mean, std))
    sums = torch.zeros(len(model.blocks), model.blocks[0].attn.heads, dtype=torch.float64, device=device)
    for i in range(0, len(images), batch_size):
        x = model.embed(normalize(images[i:i + batch_size].to(device), mean, std))
        for n, block in enumerate(model.blocks):
            a = block.attn.weights(block.norm1(x))[:, :, c:, c:].float()  # patch queries on patch keys
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
            sums[n] += (a * dist).sum(-1).mean(-1).sum(0)  # per head: mean over queries, summed over images
            x = block(x)
    return (sums / len(images)).tolist()


def final_metrics(model, data, cfg, device, amp, history=None):
    """Every number of final.json that depends on the model and data (train.py adds timing and memory)."""
    image_size = data["x_test"].shape[-1]
    logits = predict(model, data["x_test"], data["mean"], data["std"], device, amp)
    out = classification_metrics(logits, data["y_test"], data["num_classes"])
    out["params"] = count_params(model)
    out["flops_per_image"] = count_flops(model, torch.zeros(1, 3, image_size, image_size, device=device))
    out.update(measure_speed(model, image_size, device, amp))
    history = history or []
    out["epochs_to"], out["seconds_to"] = threshold_crossings(history, cfg["thresholds"])
    vals = [m["val_acc"] for m in history if m.get("val_acc") is not None]
    out["best_val_acc"] = max(vals) if vals else None
    # On a fixed first 256 test images: the same for every model of a comparison.
    out["attention_distance"] = attention_distance(model, data["x_test"][:256], data["mean"], data["std"], device)
    if cfg["regime"] == "corrupted":
        out["corruption"], out["corruption_mean"] = corruption_sweep(
            model, data["x_test"], data["y_test"], data["mean"], data["std"], device, amp, cfg["corruptions"])
        out["corruption_relative_drop"] = 1 - out["corruption_mean"] / max(out["test_acc"], 1e-12)
    return out


def time_call(fn, device, warmup, repeats):
    """Median, min and max milliseconds of fn() over `repeats` calls after `warmup` calls, and peak CUDA memory (MB)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return dict(median=statistics.median(times), min=min(times), max=max(times), repeats=repeats), peak


def bench_one(variant, grid, scope, a, device, backend_for):
    """Forward and forward+backward cost of one attention layer or the whole ViT at one grid size."""
    from train import ATTENTION_OPTIONS
    kind, spt = ("lsa", True) if variant == "sl-vit" else (variant, False)
    options = {k: default for k, (default, kinds) in ATTENTION_OPTIONS.items() if kind in kinds and default is not None}
    options["backend"] = backend_for(kind)
    image_size = grid * a.patch_size
    row = dict(variant=variant, scope=scope, grid=grid, tokens=grid * grid + 1, image_size=image_size,
               backend=options["backend"], error=None)
    # Each row starts clean: no masks of earlier rows held in GPU memory, no compilations counted against
    # dynamo's recompile limit.
    local_attention_mask.cache_clear()
    flex_block_mask.cache_clear()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = ViT(10, image_size, a.patch_size, a.depth, a.dim, a.heads, attention=kind, attention_options=options,
                spt=spt).to(device).eval()
    if scope == "layer":
        net, x = model.blocks[0].attn, torch.randn(a.batch_size, grid * grid + 1, a.dim, device=device)
    else:
        net, x = model, torch.randn(a.batch_size, 3, image_size, image_size, device=device)
    amp = device.type == "cuda" and not a.no_amp

    def forward():
        with torch.no_grad(), autocast(device, amp):
            net(x)

    def forward_backward():
        with autocast(device, amp):
            out = net(x)
        out.float().sum().backward()

    try:
        row["forward_ms"], row["forward_peak_memory_mb"] = time_call(forward, device, a.warmup, a.repeats)
        row["forward_backward_ms"], row["forward_backward_peak_memory_mb"] = time_call(forward_backward, device, a.warmup, a.repeats)
        row["flops"] = count_flops(net, x[:1])  # per image
    except Exception as e:  # one configuration failing (out of memory, a kernel limit) must not lose the others
        row["error"] = "out of memory" if isinstance(e, torch.cuda.OutOfMemoryError) else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def bench_attention(argv):
    """python evaluate.py bench-attention: attention cost against token count for every variant; writes JSON."""
    from train import Parser, attention_backend, device_name, fail, git_commit, make_device, write_json
    variants = ATTENTIONS + ["sl-vit"]
    p = Parser(prog="evaluate.py bench-attention",
               description="Time, memory and FLOPs of one attention layer and of the whole ViT against token count.")
    p.add_argument("--variants", default=",".join(variants), help=f"comma-separated: {', '.join(variants)} (default: all)")
    p.add_argument("--grids", default="8,16,32,64", help="patch-grid sides; tokens = side^2 + 1 (default 8,16,32,64: 65 to 4097)")
    p.add_argument("--patch-size", type=int, default=4, help="image size = grid side x patch size (default 4)")
    p.add_argument("--scopes", default="layer,model", help="layer (one attention layer), model (the whole ViT), or both")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "sdpa", "flex"],
                   help="for local, dilated, hybrid (auto: flex on CUDA when available)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--out", default="bench-attention.json", help="JSON file to write (default: bench-attention.json)")
    a = p.parse_args(argv)
    prog = "evaluate.py bench-attention"
    lists = {}
    for flag, text, allowed in (("--variants", a.variants, variants), ("--scopes", a.scopes, ["layer", "model"])):
        lists[flag] = [v for v in text.split(",") if v]
        bad = [v for v in lists[flag] if v not in allowed]
        if bad or not lists[flag]:
            fail(f"{flag}: unknown '{bad[0] if bad else ''}'; choose from {', '.join(allowed)}", prog)
    try:
        grids = [int(g) for g in a.grids.split(",")]
    except ValueError:
        fail(f"--grids '{a.grids}' is not a comma-separated list of whole numbers", prog)
    for flag, value in (("--grids", min(grids)), ("--patch-size", a.patch_size), ("--depth", a.depth), ("--dim", a.dim),
                        ("--heads", a.heads), ("--batch-size", a.batch_size), ("--repeats", a.repeats)):
        if value < 1:
            fail(f"{flag} {value} must be at least 1", prog)
    if a.warmup < 0 or a.dim % a.heads:
        fail(f"--warmup ({a.warmup}) must be 0 or more and --dim ({a.dim}) divisible by --heads ({a.heads})", prog)
    if min(grids) < 8 and {"linformer", "nystrom"} & set(lists["--variants"]):  # k = 64, 16 landmarks
        fail(f"--grids {min(grids)} gives {min(grids) ** 2} patches, fewer than linformer's k = 64; use grids of 8 or more", prog)
    device = make_device(a.device, prog)
    backend_for = lambda kind: attention_backend(dict(attention=kind, attention_backend=a.attention_backend
                                                      if kind in WINDOWED else "auto"), device, prog)
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    settings.update(grids=grids, variants=lists["--variants"], scopes=lists["--scopes"])
    report = dict(benchmark="attention", device=device_name(device), settings=settings,
                  versions=dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__),
                  git_commit=git_commit(), command=" ".join(sys.argv), results=[])
    for variant in lists["--variants"]:
        for scope in lists["--scopes"]:
            for grid in grids:
                row = bench_one(variant, grid, scope, a, device, backend_for)
                report["results"].append(row)
                write_json(a.out, report)  # after every row: an interrupted benchmark keeps what it measured
                fb = row.get("forward_backward_ms")
                print(f"{variant:10s} {scope:5s} {row['tokens']:6d} tokens  " + (
                    f"forward {row['forward_ms']['median']:9.2f} ms  forward+backward {fb['median']:9.2f} ms"
                    if fb else row["error"]), flush=True)
    print(f"wrote {a.out}")
    return 0


def main(argv=None):
    """Re-evaluate a run folder's checkpoint on its own data and print the metrics as JSON (or: bench-attention)."""
    import os
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-attention"]:
        return bench_attention(argv[1:])
    from train import Parser, attention_backend, build_run_model, fail, load_run_data, make_device, read_json, write_json
    p = Parser(prog="evaluate.py", description="Evaluate a run folder's checkpoint (test metrics, cost, corruptions).")
    p.add_argument("run_dir", help="a run folder written by train.py (config.json + checkpoint.pt)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--data-dir", default=None, help="where the dataset is (default: the run's own --data-dir)")
    a = p.parse_args(argv)
    cfg_path, ckpt_path = os.path.join(a.run_dir, "config.json"), os.path.join(a.run_dir, "checkpoint.pt")
    if not (os.path.isfile(cfg_path) and os.path.isfile(ckpt_path)):
        fail(f"{a.run_dir} is not a run folder with a checkpoint (need config.json and checkpoint.pt)", "evaluate.py")
    cfg = read_json(cfg_path, "evaluate.py")
    cfg["data_dir"] = a.data_dir or cfg["data_dir"]
    device = make_device(a.device, "evaluate.py")
    data = load_run_data(cfg, "evaluate.py")
    # The backend is not part of what was trained: pick the one this device runs (flex and sdpa agree).
    backend = attention_backend(dict(cfg, attention_backend="auto"), device, "evaluate.py")
    model = build_run_model(cfg, data, backend).to(device)
    try:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
    except Exception as e:
        fail(f"cannot load {ckpt_path} ({type(e).__name__}: {e})", "evaluate.py")
    amp = cfg["amp"] and device.type == "cuda"
    out = final_metrics(model, data, cfg, device, amp, ckpt["history"])
    out["epoch"] = ckpt["epoch"]
    print(json.dumps(out, indent=1))
    if a.out:
        write_json(a.out, out)


if __name__ == "__main__":
    sys.exit(main())
