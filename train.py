"""Train a ViT or a ResNet on one data regime and write a complete run folder.

    python train.py --arch resnet18 --regime imbalanced --epochs 30
    torchrun --nproc_per_node=2 train.py --arch vit --regime sparse --fraction 0.05

Run folder: config.json (everything needed to reproduce), metrics.jsonl (one line per epoch),
checkpoint.pt (after every epoch, for --resume), final.json (written last: the run is finished).
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from tqdm import tqdm

from attention import ATTENTIONS, LINFORMER_SHARING, WINDOWED, default_performer_features, flex_attention
from data import CORRUPTIONS, DATASETS, REGIMES, DataError, augment, build_data, epoch_plan, normalize, rank_batches
from evaluate import autocast, final_metrics
from model import ARCHS, RESNET_PRESETS, build_model, count_params, vit_config

# Arguments that change what is trained: a --resume must repeat them exactly.
NOT_TRAINING_ARGS = {"resume", "overwrite", "device", "no_download", "data_dir", "progress", "stop_after_steps", "out",
                     "attention_backend"}  # flex and sdpa compute the same attention
# Attention options: default and the --attention kinds each applies to (given for another kind: an error).
ATTENTION_OPTIONS = {
    "radius": (1, WINDOWED), "window_shape": ("square", WINDOWED), "dilation": (2, {"dilated"}),
    "dilations": ([1, 2, 4], {"hybrid"}), "linformer_k": (64, {"linformer"}), "linformer_share": ("heads", {"linformer"}),
    "performer_features": (None, {"performer"}), "redraw_interval": (1000, {"performer"}),
    "landmarks": (16, {"nystrom"}), "pinv_iters": (6, {"nystrom"}), "nystrom_conv": (33, {"nystrom"})}


def fail(message, prog="train.py"):
    """Print one error line and exit with code 2 (bad input: nothing was trained or overwritten)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints usage plus the error; one line is what we promise
        fail(message, self.prog)


def get_parser():
    """The command line of train.py."""
    p = Parser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--arch", default="vit", choices=ARCHS, metavar="ARCH", help=f"model: {', '.join(ARCHS)} (default: vit)")
    a("--regime", default="standard", choices=REGIMES, metavar="REGIME", help=f"{', '.join(REGIMES)}")
    a("--dataset", default=None, choices=DATASETS, metavar="DATASET",
      help=f"{', '.join(DATASETS)} (default: cifar100 for many-classes, else cifar10)")
    a("--data-dir", default="data", help="folder holding cifar-10-batches-py / cifar-100-python (default: data)")
    a("--no-download", action="store_true", help="fail instead of downloading a missing CIFAR archive")
    a("--synthetic-per-class", type=int, default=500, help="synthetic training images per class (test: a fifth)")
    a("--synthetic-size", type=int, default=32, help="synthetic image side in pixels (default 32)")
    a("--val-fraction", type=float, default=0.1, help="stratified share of the training set held out (default 0.1)")
    a("--max-per-class", type=int, default=None,
      help="cap every class's training pool at this many images before the regime (a seeded prefix; for quick sweeps)")
    a("--test-per-class", type=int, default=None, help="evaluate on a fixed balanced test subset of this many images per class")
    g = p.add_argument_group("regimes")
    g.add_argument("--fraction", type=float, default=None, help="sparse: share of each class kept, in (0, 1] (default 0.1)")
    g.add_argument("--per-class", type=int, default=None, help="sparse: images kept per class (instead of --fraction)")
    g.add_argument("--imbalance-ratio", type=float, default=None, help="imbalanced: largest / smallest class (>= 1, default 100)")
    g.add_argument("--imbalance-profile", default=None, choices=["exp", "step"], help="imbalanced: exp (default) or step")
    g.add_argument("--corruptions", default=",".join(CORRUPTIONS),
                   help="corrupted: comma-separated corruptions evaluated at severities 1-5 (default: all)")
    g.add_argument("--train-corruption", default=None, choices=list(CORRUPTIONS), metavar="NAME",
                   help="also corrupt a share of the training images with this corruption")
    g.add_argument("--train-severity", type=int, default=3, choices=[1, 2, 3, 4, 5], help="severity for --train-corruption")
    g.add_argument("--train-corruption-fraction", type=float, default=0.5, help="share of training images corrupted")
    g = p.add_argument_group("model (ViT sizes override the preset)")
    g.add_argument("--depth", type=int, default=None)
    g.add_argument("--dim", type=int, default=None)
    g.add_argument("--heads", type=int, default=None)
    g.add_argument("--patch-size", type=int, default=None)
    g.add_argument("--mlp-ratio", type=float, default=None)
    g.add_argument("--pool", default="cls", choices=["cls", "mean"], help="ViT: cls token or global average pooling")
    g.add_argument("--spt", action="store_true", help="ViT: Shifted Patch Tokenization (with --attention lsa: SL-ViT)")
    g.add_argument("--dropout", type=float, default=0.0, help="ViT: dropout after embeddings and in the MLP")
    g.add_argument("--drop-path", type=float, default=0.1,
                   help="ViT: stochastic depth, rising linearly from 0 at the first block to this rate at the last")
    g.add_argument("--stages", type=int, default=None, choices=[1, 2, 3, 4], help="ResNet: residual stages kept")
    g = p.add_argument_group("ViT attention (each option only with the kinds named; see attention.py)")
    g.add_argument("--attention", default="full", choices=ATTENTIONS, metavar="KIND", help=f"{', '.join(ATTENTIONS)}")
    g.add_argument("--radius", type=int, default=None,
                   help="local, dilated, hybrid: window radius on the patch grid, in (dilated) steps (default 1)")
    g.add_argument("--window-shape", default=None, choices=["square", "circle"],
                   help="local, dilated, hybrid: Chebyshev (square, default) or Euclidean (circle) radius")
    g.add_argument("--dilation", type=int, default=None, help="dilated: grid step between attended patches (default 2)")
    g.add_argument("--dilations", default=None, help="hybrid: dilations of the parallel window branches (default 1,2,4)")
    g.add_argument("--linformer-k", type=int, default=None, help="linformer: projected sequence length (default 64)")
    g.add_argument("--linformer-share", default=None, choices=LINFORMER_SHARING,
                   help="linformer: none (a projection per head), heads (per layer, default), kv (keys = values), "
                        "layers (one for the whole network)")
    g.add_argument("--performer-features", type=int, default=None, help="performer: random features (default d ln d, d = head width)")
    g.add_argument("--redraw-interval", type=int, default=None,
                   help="performer: redraw the features every this many training steps, 0 never (default 1000)")
    g.add_argument("--landmarks", type=int, default=None, help="nystrom: landmarks (default 16)")
    g.add_argument("--pinv-iters", type=int, default=None, help="nystrom: pseudo-inverse iterations (default 6)")
    g.add_argument("--nystrom-conv", type=int, default=None,
                   help="nystrom: kernel of the depthwise conv residual on values, odd, 0 = off (default 33)")
    g.add_argument("--attention-backend", default="auto", choices=["auto", "sdpa", "flex"],
                   help="local, dilated, hybrid: flex_attention block masks (CUDA) or SDPA with a dense mask; "
                        "auto: flex on CUDA when available")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (split across processes)")
    g.add_argument("--opt", default=None, choices=["adamw", "sgd"], help="default: adamw for ViT, sgd for ResNet")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 1e-3 adamw, 0.1 sgd)")
    g.add_argument("--weight-decay", type=float, default=None, help="default: 0.05 adamw, 5e-4 sgd")
    g.add_argument("--momentum", type=float, default=0.9, help="sgd momentum (Nesterov)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="linear warm-up (default: min(5, epochs / 10))")
    g.add_argument("--label-smoothing", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 disables")
    g.add_argument("--seed", type=int, default=0, help="seeds the model, the batch order and the data subset")
    g.add_argument("--time-budget", type=float, default=None,
                   help="seconds of training steps: the schedule follows the share of the budget spent and training "
                        "stops when it is spent (--epochs is then an upper bound); single process only")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA (it is always off on CPU)")
    g.add_argument("--out", default=None, help="run folder (default: runs/<arch>[<attention>][-t<S>s]-<regime>[-f<F>|-n<N>|-r<R>-<profile>]-<dataset>-s<seed>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="val accuracies for epochs_to/seconds_to")
    g.add_argument("--progress", default="auto", choices=["auto", "on", "off"], help="tqdm bar on rank 0 (auto: on a terminal)")
    g.add_argument("--stop-after-steps", type=int, default=None,
                   help="stop abruptly after this many optimizer steps, as if killed (to test --resume)")
    return p


def resolve_args(args):
    """Check the arguments and fill regime- and family-dependent defaults; returns the config dict."""
    if args.regime == "many-classes":
        if args.dataset not in (None, "cifar100"):
            fail(f"--regime many-classes trains on cifar100, but --dataset {args.dataset} was given; drop --dataset or use cifar100")
        args.dataset = "cifar100"
    args.dataset = args.dataset or "cifar10"
    sparse_flags = {"--fraction": args.fraction, "--per-class": args.per_class}
    imbalance_flags = {"--imbalance-ratio": args.imbalance_ratio, "--imbalance-profile": args.imbalance_profile}
    for regime, flags in (("sparse", sparse_flags), ("imbalanced", imbalance_flags)):
        given = [k for k, v in flags.items() if v is not None]
        if given and args.regime != regime:
            fail(f"{given[0]} only applies to --regime {regime} (got --regime {args.regime})")
    if args.fraction is not None and args.per_class is not None:
        fail("give --fraction or --per-class, not both")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        fail(f"--fraction {args.fraction} is outside (0, 1]")
    if args.per_class is not None and args.per_class < 1:
        fail(f"--per-class {args.per_class} must be at least 1")
    if args.regime == "sparse" and args.per_class is None:
        args.fraction = args.fraction or 0.1
    if args.regime == "imbalanced":
        args.imbalance_ratio = 100.0 if args.imbalance_ratio is None else args.imbalance_ratio
        args.imbalance_profile = args.imbalance_profile or "exp"
        if args.imbalance_ratio < 1:
            fail(f"--imbalance-ratio {args.imbalance_ratio} must be at least 1")
    corruptions = [c for c in args.corruptions.split(",") if c]
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad or not corruptions:
        fail(f"unknown corruption '{bad[0] if bad else ''}'; choose from {', '.join(CORRUPTIONS)}")
    if not 0 <= args.train_corruption_fraction <= 1:
        fail(f"--train-corruption-fraction {args.train_corruption_fraction} is outside [0, 1]")
    if not 0 <= args.val_fraction < 1:
        fail(f"--val-fraction {args.val_fraction} is outside [0, 1)")
    if args.synthetic_per_class < 5 or args.synthetic_size < 16:  # 16: defocus_blur's 17x17 kernel needs it
        fail(f"--synthetic-per-class ({args.synthetic_per_class}) must be at least 5 "
             f"and --synthetic-size ({args.synthetic_size}) at least 16")
    if args.max_per_class is not None and args.max_per_class < 1:
        fail(f"--max-per-class {args.max_per_class} must be at least 1")
    if args.test_per_class is not None and args.test_per_class < 1:
        fail(f"--test-per-class {args.test_per_class} must be at least 1")
    if args.time_budget is not None and args.time_budget <= 0:
        fail(f"--time-budget {args.time_budget} must be positive seconds")
    if args.epochs < 1 or args.batch_size < 1:
        fail(f"--epochs ({args.epochs}) and --batch-size ({args.batch_size}) must be at least 1")
    ranges = {  # flag: (value, low, high, high included)
        "--label-smoothing": (args.label_smoothing, 0, 1, True), "--dropout": (args.dropout, 0, 1, False),
        "--drop-path": (args.drop_path, 0, 1, False), "--momentum": (args.momentum, 0, 1, False),
        "--grad-clip": (args.grad_clip, 0, math.inf, False)}
    for flag, (value, low, high, closed) in ranges.items():
        if not (low <= value <= high if closed else low <= value < high):
            fail(f"{flag} {value} is outside [{low}, {high}{']' if closed else ')'}")
    if args.lr is not None and args.lr <= 0:
        fail(f"--lr {args.lr} must be positive")
    if args.weight_decay is not None and args.weight_decay < 0:
        fail(f"--weight-decay {args.weight_decay} must be 0 or more")
    for name in ("depth", "dim", "heads", "patch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    try:
        thresholds = sorted(float(t) for t in args.thresholds.split(","))
    except ValueError:
        fail(f"--thresholds '{args.thresholds}' is not a comma-separated list of numbers")
    if not all(0 < t <= 1 for t in thresholds):
        fail(f"--thresholds {args.thresholds} must be accuracies in (0, 1]")
    is_resnet = args.arch in RESNET_PRESETS
    args.opt = args.opt or ("sgd" if is_resnet else "adamw")
    args.lr = args.lr if args.lr is not None else {"adamw": 1e-3, "sgd": 0.1}[args.opt]
    args.weight_decay = args.weight_decay if args.weight_decay is not None else {"adamw": 0.05, "sgd": 5e-4}[args.opt]
    if args.warmup_epochs is None:
        args.warmup_epochs = min(5.0, args.epochs / 10)
    if not 0 <= args.warmup_epochs <= args.epochs:
        fail(f"--warmup-epochs {args.warmup_epochs} must be in [0, --epochs {args.epochs}]")
    cfg = vars(args).copy()
    if is_resnet:
        cfg["stages"] = cfg["stages"] or RESNET_PRESETS[args.arch]["stages"]
    else:
        cfg.update(vit_config(args.arch, {k: cfg[k] for k in ("depth", "dim", "heads", "patch_size", "mlp_ratio")}))
        if cfg["dim"] % cfg["heads"]:
            fail(f"--dim {cfg['dim']} is not divisible by --heads {cfg['heads']}")
    resolve_attention(args, cfg, is_resnet)
    cfg["out"] = args.out = args.out or default_out(args)
    cfg["corruptions"] = corruptions
    cfg["thresholds"] = thresholds
    cfg["amp"] = not args.no_amp
    return cfg


def resolve_attention(args, cfg, is_resnet):
    """Check the attention options against --attention and fill the defaults of the kind chosen (others stay None)."""
    given = [k for k in ATTENTION_OPTIONS if cfg[k] is not None]
    if is_resnet and (given or args.attention != "full" or args.spt):
        flag = f"--{given[0].replace('_', '-')}" if given else ("--spt" if args.spt else f"--attention {args.attention}")
        fail(f"{flag} applies to ViTs, not to --arch {args.arch}")
    for k in given:
        if args.attention not in ATTENTION_OPTIONS[k][1]:
            kinds = ", ".join(sorted(ATTENTION_OPTIONS[k][1]))
            fail(f"--{k.replace('_', '-')} only applies to --attention {kinds} (got --attention {args.attention})")
    if is_resnet:
        return
    for k, (default, kinds) in ATTENTION_OPTIONS.items():
        if args.attention in kinds and cfg[k] is None:
            cfg[k] = default
    checks = {"radius": 0, "dilation": 1, "linformer_k": 1, "performer_features": 1, "redraw_interval": 0,
              "landmarks": 1, "pinv_iters": 1, "nystrom_conv": 0}
    for k, low in checks.items():
        if cfg[k] is not None and cfg[k] < low:
            fail(f"--{k.replace('_', '-')} {cfg[k]} must be at least {low}")
    if cfg["nystrom_conv"] and cfg["nystrom_conv"] % 2 == 0:
        fail(f"--nystrom-conv {cfg['nystrom_conv']} must be odd (or 0 for no conv residual)")
    if isinstance(cfg["dilations"], str):
        try:
            cfg["dilations"] = [int(d) for d in cfg["dilations"].split(",")]
        except ValueError:
            fail(f"--dilations '{cfg['dilations']}' is not a comma-separated list of whole numbers")
    if cfg["dilations"] is not None:
        if min(cfg["dilations"]) < 1 or len(set(cfg["dilations"])) < 2:
            fail(f"--dilations {','.join(map(str, cfg['dilations']))} needs at least two different dilations, each at least 1")
    if args.attention == "performer" and cfg["performer_features"] is None:
        cfg["performer_features"] = default_performer_features(cfg["dim"] // cfg["heads"])
    for k in ATTENTION_OPTIONS:  # default_out reads them from args
        setattr(args, k, cfg[k])


def attention_tag(args):
    """The attention part of a run name: '' for full attention, else e.g. -local2, -dilated1d2, -lsa-spt."""
    kind = args.attention
    tag = {"full": "", "local": f"-local{args.radius}", "dilated": f"-dilated{args.radius}d{args.dilation}",
           "hybrid": f"-hybrid{args.radius}d{'-'.join(map(str, args.dilations or []))}",
           "linformer": f"-linformer{args.linformer_k}", "performer": f"-performer{args.performer_features}",
           "nystrom": f"-nystrom{args.landmarks}", "lsa": "-lsa"}[kind]
    if kind in WINDOWED and args.window_shape == "circle":
        tag += "c"
    if kind == "linformer" and args.linformer_share != "heads":
        tag += args.linformer_share
    for key, short in (("redraw_interval", "rd"), ("pinv_iters", "pi"), ("nystrom_conv", "conv")):
        default, kinds = ATTENTION_OPTIONS[key]
        if kind in kinds and getattr(args, key) != default:  # e.g. -nystrom16-conv0: no conv residual
            tag += f"-{short}{getattr(args, key)}"
    return tag + ("-spt" if args.spt else "")


def attention_backend(cfg, device, prog="train.py"):
    """The attention backend this run uses: flex_attention for windowed kinds on CUDA (auto, or asked), else sdpa."""
    asked, windowed = cfg.get("attention_backend", "auto"), cfg.get("attention") in WINDOWED
    if asked == "flex":
        if not windowed:
            fail(f"--attention-backend flex applies to --attention {', '.join(sorted(WINDOWED))}, not {cfg.get('attention')}", prog)
        if device.type != "cuda" or flex_attention is None:
            fail("--attention-backend flex needs CUDA and torch.nn.attention.flex_attention; use sdpa or auto", prog)
    flex = asked == "flex" or (asked == "auto" and windowed and device.type == "cuda" and flex_attention is not None)
    return "flex" if flex else "sdpa"


def default_out(args):
    """runs/<arch>[<attention>][-t<budget>s]-<regime>[<its parameter>]-<dataset>-s<seed>: distinct across a sweep."""
    arch = args.arch + attention_tag(args)
    arch += f"-t{args.time_budget:g}s" if args.time_budget else ""
    regime = args.regime
    if regime == "sparse":
        regime += f"-n{args.per_class}" if args.per_class is not None else f"-f{args.fraction:g}"
    elif regime == "imbalanced":
        regime += f"-r{args.imbalance_ratio:g}-{args.imbalance_profile}"
    return f"runs/{arch}-{regime}-{args.dataset}-s{args.seed}"


def write_atomic(path, text):
    """Write text to a temp file in the same folder, then rename it over path: never a truncated file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path, obj):
    """Write JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_jsonl(path, rows):
    """Rewrite a JSON-lines file atomically (it is small: one line per epoch)."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def git_commit():
    """The commit of the code that runs, with '-dirty' when it has uncommitted changes, or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except Exception:
        return None


def make_device(name, prog="train.py", local_rank=0):
    """torch.device for --device; asking for CUDA where there is none is an error, never a quiet CPU run."""
    if name not in ("auto", "cpu", "cuda"):
        fail(f"--device '{name}' is not one of auto, cpu, cuda", prog)
    if name == "cuda" and not torch.cuda.is_available():
        fail("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)", prog)
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def device_name(device):
    """The GPU's name, or the CPU's architecture and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_run_data(cfg, prog="train.py"):
    """The run's data (split and regime applied) from its config; data errors exit 2."""
    try:
        return build_data(argparse.Namespace(**cfg), cfg["seed"])
    except DataError as e:
        fail(str(e), prog)


def build_run_model(cfg, data, backend="sdpa"):
    """The run's model from its config (ViT sizes and attention options already resolved in cfg)."""
    torch.manual_seed(cfg["seed"])
    if cfg["arch"] in RESNET_PRESETS:
        return build_model(cfg["arch"], data["num_classes"], data["x_train"].shape[-1], stages=cfg["stages"])
    # .get: a run from before an option existed used its default
    options = {k: cfg.get(k, default) for k, (default, kinds) in ATTENTION_OPTIONS.items() if cfg["attention"] in kinds}
    options["backend"] = backend
    kw = dict(pool=cfg["pool"], attention=cfg["attention"], attention_options=options, spt=cfg.get("spt", False),
              dropout=cfg["dropout"], drop_path=cfg["drop_path"])
    kw.update({k: cfg[k] for k in ("depth", "dim", "heads", "patch_size", "mlp_ratio")})
    return build_model(cfg["arch"], data["num_classes"], data["x_train"].shape[-1], **kw)


def read_json(path, prog="train.py"):
    """Load a JSON file of a run folder; an unreadable one is a one-line error."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read {path} ({type(e).__name__}: {e})", prog)


def check_out_dir(cfg, world):
    """Refuse to touch a run folder unless the flags say what to do with it; True if --resume finds it finished."""
    out = cfg["out"]
    has = lambda name: os.path.exists(os.path.join(out, name))
    if os.path.exists(out) and not os.path.isdir(out):
        fail(f"--out {out} is a file, not a folder")
    if cfg["resume"]:
        if not (has("checkpoint.pt") and has("config.json")):
            fail(f"--resume: {out} has no checkpoint.pt to resume from")
        old = read_json(os.path.join(out, "config.json"))
        if old.get("world_size", world) != world:  # the batch split and the dropped tail depend on it
            fail(f"--resume: the run in {out} was started with {old['world_size']} processes, not {world}")
        for k, v in cfg.items():
            if k in ATTENTION_OPTIONS and v is None:  # an option of another kind (runs before 2026-11 stored radius 1)
                continue
            if k not in NOT_TRAINING_ARGS and k in old and old[k] != v:
                fail(f"--resume: {k} is {v!r} but the run in {out} was started with {old[k]!r}")
        return has("final.json")
    if not cfg["overwrite"] and (has("final.json") or has("checkpoint.pt")):
        state = "a finished" if has("final.json") else "an unfinished"
        fail(f"{out} already holds {state} run; pass --resume to continue it or --overwrite to replace it")
    return False


def lr_at(progress, warmup, peak):
    """Learning rate when `progress` of training is done: linear warm-up over the first `warmup`, then cosine to 0."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))))


def make_optimizer(model, cfg):
    """AdamW or Nesterov SGD; biases, norms, cls token and position embedding get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or "pos_embed" in name or "cls_token" in name else decay).append(p)
    groups = [dict(params=decay, weight_decay=cfg["weight_decay"]), dict(params=no_decay, weight_decay=0.0)]
    if cfg["opt"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["momentum"] > 0)
    return torch.optim.AdamW(groups, lr=cfg["lr"])


@torch.no_grad()
def evaluate_split(model, x, y, data, device, amp, rank, world, batch_size=512):
    """Mean cross-entropy and accuracy on a split, each rank taking every world-th sample."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
    mean, std = (torch.tensor(v, device=device) for v in (data["mean"], data["std"]))
    idx = torch.arange(rank, len(x), world)
    for i in range(0, len(idx), batch_size):
        b = idx[i:i + batch_size]
        xb = normalize(x[b].to(device), mean, std)
        yb = y[b].to(device)
        with autocast(device, amp):
            logits = model(xb).float()
        totals[0] += F.cross_entropy(logits, yb, reduction="sum")
        totals[1] += (logits.argmax(1) == yb).sum()
    totals[2] = len(idx)
    if world > 1:
        dist.all_reduce(totals)
    loss, correct, n = totals.tolist()
    return (loss / n, correct / n) if n else (None, None)


def main(argv=None):
    """Parse, check, train, evaluate and write the run folder."""
    args = get_parser().parse_args(argv)
    cfg = resolve_args(args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cfg["batch_size"] % world:
        fail(f"--batch-size {cfg['batch_size']} is not divisible by the {world} processes")
    if cfg["time_budget"] is not None and world > 1:  # each process's clock would end its run at another step
        fail(f"--time-budget needs a single process, not {world}")
    device = make_device(cfg["device"], local_rank=local_rank)
    if check_out_dir(cfg, world):
        if rank == 0:
            print(f"{cfg['out']} is already finished; nothing to do")
        return 0

    data = load_run_data(cfg)
    image_size = data["x_train"].shape[-1]
    if cfg["arch"] not in RESNET_PRESETS and image_size % cfg["patch_size"]:
        fail(f"--patch-size {cfg['patch_size']} does not divide the image size {image_size}; "
             f"allowed: {', '.join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)}")
    if cfg["arch"] not in RESNET_PRESETS:
        patches = (image_size // cfg["patch_size"]) ** 2
        for k, most in (("linformer_k", patches), ("landmarks", patches + (cfg["pool"] == "cls"))):
            if cfg.get(k) is not None and cfg[k] > most:
                fail(f"--{k.replace('_', '-')} {cfg[k]} exceeds the {most} tokens of a {image_size} px image in "
                     f"{cfg['patch_size']} px patches; allowed: 1 to {most}")
    if len(data["x_train"]) < world:
        fail(f"the training set has {len(data['x_train'])} images, fewer than the {world} processes")

    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    amp = cfg["amp"] and device.type == "cuda"
    backend = attention_backend(cfg, device)
    model = build_run_model(cfg, data, backend).to(device)
    params = count_params(model)
    if world > 1 and device.type == "cuda":  # per-process BatchNorm statistics would differ from the 1-GPU run
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = make_optimizer(model, cfg)

    out = cfg["out"]
    start_epoch, history, elapsed, step_time, peak_memory = 0, [], 0.0, 0.0, None
    if cfg["resume"]:
        try:
            ckpt = torch.load(os.path.join(out, "checkpoint.pt"), map_location=device, weights_only=False)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except Exception as e:
            fail(f"--resume: cannot load {os.path.join(out, 'checkpoint.pt')} ({type(e).__name__}: {e})")
        start_epoch, history, elapsed = ckpt["epoch"], ckpt["history"], ckpt["elapsed"]
        step_time, peak_memory = ckpt["step_time"], ckpt["peak_memory_mb"]
        if rank == 0:  # config.json keeps describing the first launch; each resume is logged beside it
            config = read_json(os.path.join(out, "config.json"))
            config.setdefault("resumes", []).append(dict(epoch=start_epoch, device=device_name(device),
                                                         git_commit=git_commit(), command=" ".join(sys.argv)))
            write_json(os.path.join(out, "config.json"), config)
    elif rank == 0:
        os.makedirs(out, exist_ok=True)
        for name in ("final.json", "metrics.jsonl", "checkpoint.pt"):  # --overwrite: the old run goes now
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        run_info = dict(
            params=params, image_size=image_size, num_classes=data["num_classes"], class_names=data["class_names"],
            counts_per_class=data["counts"], sizes={k: sum(v) for k, v in data["counts"].items()},
            normalization=dict(mean=data["mean"], std=data["std"]), world_size=world,
            device=device_name(device), attention_backend_used=backend if cfg["arch"] not in RESNET_PRESETS else None,
            amp_active=amp, versions=dict(python=platform.python_version(), torch=torch.__version__,
                                          torchvision=torchvision.__version__),
            git_commit=git_commit(), command=" ".join(sys.argv))
        write_json(os.path.join(out, "config.json"), {**cfg, **run_info})

    ddp_model = model
    if world > 1:
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    x_train, y_train = data["x_train"].to(device), data["y_train"].to(device)
    mean, std = (torch.tensor(v, device=device) for v in (data["mean"], data["std"]))
    n_train = len(x_train)
    batches = rank_batches(n_train - n_train % world, cfg["batch_size"], rank, world)
    steps_per_epoch = len(batches)
    total_steps = cfg["epochs"] * steps_per_epoch
    warmup = cfg["warmup_epochs"] / cfg["epochs"]
    budget = cfg["time_budget"]
    out_of_time = False
    show_bar = rank == 0 and {"on": True, "off": False, "auto": sys.stderr.isatty()}[cfg["progress"]]
    steps_run = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    for epoch in range(start_epoch, cfg["epochs"]):
        torch.manual_seed(cfg["seed"] * 1000003 + epoch * 101 + rank)  # dropout and drop-path: resumable per epoch
        ddp_model.train()
        t0 = time.time()
        totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count
        perm, shifts, flips = (t.to(device) for t in epoch_plan(n_train, epoch, cfg["seed"], world))
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg['epochs']}", disable=not show_bar, leave=False)
        for i, part in enumerate(bar):
            done = (step_time + time.time() - t0) / budget if budget else (epoch * steps_per_epoch + i + 1) / total_steps
            lr = lr_at(done, warmup, cfg["lr"])
            for group in optimizer.param_groups:
                group["lr"] = lr
            idx = perm[part]
            xb = normalize(augment(x_train[idx], shifts[part], flips[part]), mean, std)
            yb = y_train[idx]
            with autocast(device, amp):
                logits = ddp_model(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            totals[0] += loss.detach() * len(yb)
            totals[1] += (logits.argmax(1) == yb).sum()
            totals[2] += len(yb)
            steps_run += 1
            if show_bar and i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
            if cfg["stop_after_steps"] is not None and steps_run >= cfg["stop_after_steps"]:
                print(f"stopped after {steps_run} steps (--stop-after-steps); continue with --resume", file=sys.stderr)
                os._exit(3)  # like a kill: no cleanup, no final files
            if budget and step_time + time.time() - t0 >= budget:
                out_of_time = True
                break
        if world > 1:
            dist.all_reduce(totals)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            peak_memory = max(peak_memory or 0, torch.cuda.max_memory_allocated(device) / 2 ** 20)
        train_seconds = time.time() - t0
        step_time += train_seconds
        val_loss, val_acc = evaluate_split(model, data["x_val"], data["y_val"], data, device, amp, rank, world)
        elapsed += time.time() - t0
        loss_sum, correct, count = totals.tolist()
        row = dict(epoch=epoch + 1, time_s=elapsed, lr=lr, train_loss=loss_sum / count, train_acc=correct / count,
                   val_loss=val_loss, val_acc=val_acc, images_per_s=count / train_seconds)
        history.append(row)
        if rank == 0:
            write_jsonl(os.path.join(out, "metrics.jsonl"), history)
            ckpt = dict(model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch + 1,
                        history=history, elapsed=elapsed, step_time=step_time, peak_memory_mb=peak_memory)
            torch.save(ckpt, os.path.join(out, "checkpoint.pt.tmp"))
            os.replace(os.path.join(out, "checkpoint.pt.tmp"), os.path.join(out, "checkpoint.pt"))
            val_text = f"val_loss {val_loss:.4f} val_acc {val_acc:.4f}" if val_acc is not None else "no validation set"
            print(f"epoch {epoch + 1}/{cfg['epochs']} train_loss {row['train_loss']:.4f} train_acc {row['train_acc']:.4f} "
                  f"{val_text} {row['images_per_s']:.0f} img/s {elapsed:.1f}s", flush=True)
        if out_of_time:
            break

    if world > 1:  # the final evaluation runs on rank 0 alone: no collective may wait on it
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        final = final_metrics(model, data, cfg, device, amp, history)
        final["peak_memory_mb"] = peak_memory
        final["train_time_s"] = elapsed
        final["train_step_time_s"] = step_time
        final["epochs"] = len(history)
        write_json(os.path.join(out, "final.json"), final)
        summary = f"test_acc {final['test_acc']:.4f} top5 {final['test_top5']:.4f} macro_f1 {final['macro_f1']:.4f}"
        if "corruption_mean" in final:
            summary += f" corruption_mean {final['corruption_mean']:.4f}"
        print(f"{out}: {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
