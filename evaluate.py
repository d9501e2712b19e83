"""Metrics for a trained model; also `python evaluate.py RUN_DIR` to re-evaluate a run's checkpoint."""
import json
import statistics
import sys
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from data import corrupt, normalize
from model import count_params


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


def count_flops(model, image_size, device):
    """Forward FLOPs for one image (a multiply-add counts 2), counted by torch.utils.flop_counter."""
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    # The counter has no formula for SDPA's fused CPU kernel; the math backend runs attention as matmuls it
    # counts. A masked (local) attention is counted as executed: the full T x T scores.
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


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


def final_metrics(model, data, cfg, device, amp, history=None):
    """Every number of final.json that depends on the model and data (train.py adds timing and memory)."""
    image_size = data["x_test"].shape[-1]
    logits = predict(model, data["x_test"], data["mean"], data["std"], device, amp)
    out = classification_metrics(logits, data["y_test"], data["num_classes"])
    out["params"] = count_params(model)
    out["flops_per_image"] = count_flops(model, image_size, device)
    out.update(measure_speed(model, image_size, device, amp))
    history = history or []
    out["epochs_to"], out["seconds_to"] = threshold_crossings(history, cfg["thresholds"])
    vals = [m["val_acc"] for m in history if m.get("val_acc") is not None]
    out["best_val_acc"] = max(vals) if vals else None
    if cfg["regime"] == "corrupted":
        out["corruption"], out["corruption_mean"] = corruption_sweep(
            model, data["x_test"], data["y_test"], data["mean"], data["std"], device, amp, cfg["corruptions"])
        out["corruption_relative_drop"] = 1 - out["corruption_mean"] / max(out["test_acc"], 1e-12)
    return out


def main(argv=None):
    """Re-evaluate a run folder's checkpoint on its own data and print the metrics as JSON."""
    import os
    from train import Parser, build_run_model, fail, load_run_data, make_device, read_json, write_json
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
    model = build_run_model(cfg, data).to(device)
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
