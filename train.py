"""Train a ViT or a ResNet on one data regime and write a complete run folder.

    python train.py --arch resnet18 --regime imbalanced --epochs 30
    torchrun --nproc_per_node=2 train.py --arch vit --regime sparse --fraction 0.05

Run folder: config.json (everything needed to reproduce), metrics.jsonl (one line per epoch),
checkpoint.pt (after every epoch, for --resume), final.json (written last: the run is finished).
"""
import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time

# The command line is made from options.py alone, which imports no torch: see the check after recipe_flags.
from options import (ARCHS, ATTENTION_OPTIONS, ATTENTIONS, ATTN_QUANTS, BINARY_DISTILL, CORRUPTION_NAMES,
                     DATA_DEFAULTS, DATASETS, DEFAULT_WEIGHTS, OPTIM_DEFAULTS, OPTIMIZERS, RECIPES, REGIME_OPTIONS,
                     REGIMES, RESIZE_MODES, SECTIONS, SPARSE_FRACTION, SYNTHETIC_OPTIONS, TRAIN_CORRUPTION_OPTIONS,
                     VIT_DEFAULTS, Parser, option_flag)

# Fine-tuning (--init or --pretrained) defaults, after AugReg's transfer recipe: SGD with momentum for both
# families, a small lr, no weight decay, a short warm-up (at most 1 epoch); --opt adamw gets a small lr too.
FINETUNE = {"adamw": dict(lr=1e-4, weight_decay=0.0), "sgd": dict(lr=0.01, weight_decay=0.0, momentum=0.9)}
FINETUNE_WARMUP_EPOCHS = 1.0

MIX_DEFAULTS = dict(mix_prob=1.0, switch_prob=0.5)  # DeiT's
DISTILL_DEFAULTS = dict(distill_alpha=0.5, distill_tau=1.0)  # DeiT's code; its paper's soft runs use 0.1 and 3.0


# ----------------------------------------------------------------------------- the command line and the config

def get_parser():
    """The command line of train.py; `parser.sections` names the config section each flag's value goes to."""
    p = Parser(prog="train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.sections = {s: [] for s in SECTIONS}

    def group(section, title):
        g = p.add_argument_group(title)
        return lambda *flags, **kw: p.sections[section].append(g.add_argument(*flags, **kw).dest)

    model_flags(group)
    data_flags(group)
    optim_flags(group("optim", "optimisation"))
    recipe_flags(group("optim", "recipe: augmentation, regularisation, distillation (on the device; default: crop "
                             "and flip)"))
    run_flags(group("run", "run (where and how; not what is trained)"))
    return p


def model_flags(group):
    """The model section's flags of train.py (model, starting weights, attention), added through get_parser's group."""
    a = group("model", "model (ViT sizes override the preset)")
    a("--arch", default="vit", choices=ARCHS, metavar="ARCH", help=f"model: {', '.join(ARCHS)} (default: vit)")
    for name in ("depth", "dim", "heads", "patch_size"):
        a(option_flag(name), type=int)
    a("--mlp-ratio", type=float)
    a("--pool", choices=["cls", "mean"],
      help=f"ViT: cls token or global average pooling (default {VIT_DEFAULTS['pool']})")
    a("--spt", action="store_true", help="ViT: Shifted Patch Tokenization (with --attention lsa: SL-ViT)")
    a("--dropout", type=float, help=f"ViT: dropout after embeddings and in the MLP (default {VIT_DEFAULTS['dropout']})")
    a("--drop-path", type=float, help="ViT: stochastic depth, rising linearly from 0 at the first block to this rate "
                                      f"at the last (default {VIT_DEFAULTS['drop_path']})")
    a("--stages", type=int, choices=[1, 2, 3, 4], help="ResNet: residual stages kept")
    a = group("model", "binary networks (BinaryViT, ReActNet): --binary uses --recipe binary unless --recipe is given")
    a("--binary", action="store_true", help="one-bit weights and activations: ViTs (BinaryViT's attention and MLP) "
                                            "and the ResNet-18s (Bi-Real/ReActNet blocks); stem, embedding, head stay "
                                            "full precision")
    a("--attn-quant", choices=ATTN_QUANTS, help="--binary ViT: attention probabilities quantised to {0, a} (binary, "
                                                "default) or kept real (none)")
    a("--multi-pool", action="store_true", help="ViT: add 1x3, 3x1, 1x5, 5x1 average pools of the MLP's input")
    a("--residual-affine", action="store_true", help="ViT: a learned scale (0.1) and bias before each residual add")
    a("--pyramid", action="store_true", help="ViT: four stages joined by patch merging, grid halving, width "
                                             "doubling from dim/4 (needs --pool mean; a grid divisible by 8)")
    a("--fp-merge", action="store_true", help="--binary --pyramid: the patch merging in full precision")
    a = group("model", "starting weights (default: random; fine-tuning defaults then apply, see --lr)")
    a("--init", metavar="RUN_DIR", help="start from a finished run of this lab (or a checkpoint file): a new head "
                                        "if the classes differ, position embeddings resized to the grid")
    a("--pretrained", choices=["imagenet"], help="torchvision's ImageNet weights (ResNets; vit-b16, vit-b32, vit-l16)")
    a("--weights", help=f"--pretrained: torchvision's weights name (default {DEFAULT_WEIGHTS})")
    a("--weights-file", metavar="PATH", help="--pretrained: load this local file instead of the torch hub cache")
    a("--truncate", type=int, metavar="K", help="keep the first K blocks (ViT) or residual stages (ResNet) of the "
                                                "starting model, with a fresh head")
    a = group("model", "ViT attention (each option only with the kinds named; defaults in options.py)")
    a("--attention", choices=ATTENTIONS, metavar="KIND", help=f"{', '.join(ATTENTIONS)} (default full)")
    for name, o in ATTENTION_OPTIONS.items():
        a(option_flag(name), type=o.get("type"), choices=o.get("choices"),
          help=f"{', '.join(sorted(o['kinds']))}: {o['help']} (default {o['default']})")


def data_flags(group):
    """The data section's flags of train.py (the data and the regimes), added through get_parser's group."""
    a = group("data", "data")
    a("--dataset", choices=DATASETS, metavar="DATASET",
      help=f"{', '.join(DATASETS)} (default: cifar100 for many-classes, else cifar10)")
    a("--regime", choices=REGIMES, metavar="REGIME", help=f"{', '.join(REGIMES)} (default {DATA_DEFAULTS['regime']})")
    a("--val-fraction", type=float,
      help=f"stratified share of the training set held out (default {DATA_DEFAULTS['val_fraction']})")
    a("--max-per-class", type=int,
      help="cap every class's training pool at this many images before the regime (a seeded prefix; quick sweeps)")
    a("--test-per-class", type=int, help="evaluate on a fixed balanced test subset of this many images per class")
    a("--classes", help="keep only these classes of the dataset, relabelled 0..k-1 in order: 0-4, 5-9, 0,2,4")
    a("--img-size", type=int, metavar="N", help="resize every batch to N x N on the device (training and evaluation)")
    a("--resize", choices=RESIZE_MODES, help="--img-size: interpolation (default bilinear; antialiased when shrinking)")
    a("--synthetic-per-class", type=int, help="synthetic: training images per class, a fifth as many test images "
                                              f"(default {SYNTHETIC_OPTIONS['synthetic_per_class']})")
    a("--synthetic-size", type=int,
      help=f"synthetic: image side in pixels (default {SYNTHETIC_OPTIONS['synthetic_size']})")
    a = group("data", "regimes")
    a("--fraction", type=float, help=f"sparse: share of each class kept, in (0, 1] (default {SPARSE_FRACTION})")
    a("--per-class", type=int, help="sparse: images kept per class (instead of --fraction)")
    a("--imbalance-ratio", type=float,
      help=f"imbalanced: largest / smallest class (>= 1, default {REGIME_OPTIONS['imbalanced']['imbalance_ratio']:g})")
    a("--imbalance-profile", choices=["exp", "step"], help="imbalanced: exp (default) or step")
    a("--corruptions", help="corrupted: comma-separated corruptions evaluated at severities 1-5 (default: all)")
    a("--train-corruption", choices=CORRUPTION_NAMES, metavar="NAME",
      help="also corrupt a share of the training images with this corruption")
    a("--train-severity", type=int, choices=[1, 2, 3, 4, 5],
      help=f"severity for --train-corruption (default {TRAIN_CORRUPTION_OPTIONS['train_severity']})")
    a("--train-corruption-fraction", type=float,
      help=f"share of training images corrupted (default {TRAIN_CORRUPTION_OPTIONS['train_corruption_fraction']})")


def optim_flags(a):
    """The optimisation flags of train.py (optim section), added through the group adder `a` of get_parser."""
    a("--epochs", type=int, default=100)
    a("--batch-size", type=int, default=128, help="global batch size (split across processes)")
    a("--opt", choices=list(OPTIMIZERS), help="default: adamw for ViT, sgd for ResNet")
    per_opt = lambda key: ", ".join(f"{o} {d[key]:g}" for o, d in OPTIMIZERS.items())
    per_finetune = lambda key: ", ".join(f"{o} {d[key]:g}" for o, d in FINETUNE.items())
    a("--lr", type=float, help=f"peak learning rate (default: {per_opt('lr')}; fine-tuning {per_finetune('lr')})")
    a("--weight-decay", type=float, help=f"default: {per_opt('weight_decay')}; fine-tuning "
                                         f"{per_finetune('weight_decay')}")
    a("--freeze", choices=["backbone"], help="linear probe: only the head trains (the backbone stays as loaded, "
                                             "in eval mode: BatchNorm statistics, dropout, drop-path)")
    a("--layer-decay", type=float, metavar="D", help="ViT: block i (of depth) trains at lr * D^(depth - i), the "
                                                     "embeddings at D^(depth + 1), norm and head at lr")
    a("--momentum", type=float, help=f"sgd: Nesterov momentum (default {OPTIMIZERS['sgd']['momentum']})")
    a("--warmup-epochs", type=float, help="linear warm-up (default: min(5, epochs / 10); fine-tuning "
                                          f"min({FINETUNE_WARMUP_EPOCHS:g}, epochs / 10))")
    a("--label-smoothing", type=float, help=f"default {OPTIM_DEFAULTS['label_smoothing']}")
    a("--grad-clip", type=float, help=f"max gradient norm, 0 disables (default {OPTIM_DEFAULTS['grad_clip']})")
    a("--time-budget", type=float, help="seconds of training steps: the schedule follows the share of the budget "
                                        "spent and training stops when it is spent (--epochs is then an upper bound); "
                                        "single process only")
    a("--no-amp", action="store_true", help="no bf16 autocast on CUDA (it is always off on CPU)")
    a("--skip-nonfinite", type=int, metavar="K", help="skip up to K steps whose loss is nan or inf (default: a "
                                                      "non-finite loss stops the run, final.json says failed)")


def run_flags(a):
    """The run section's flags of train.py (where and how, not what is trained), added through get_parser's adder a."""
    a("--seed", type=int, default=0, help="seeds the model, the batch order and the data subset")
    a("--data-dir", default="data", help="folder holding cifar-10-batches-py / cifar-100-python (default: data)")
    a("--no-download", action="store_true", help="fail instead of downloading a missing CIFAR archive")
    a("--device", default="auto", help="auto (cuda if present), cpu or cuda")
    a("--out", help="run folder (default: runs/<arch>[<attention>][-t<S>s]-<regime>[-f<F>|-n<N>|-r<R>-<profile>]"
                    "-<dataset>-s<seed>)")
    a("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    a("--overwrite", action="store_true", help="replace a run already in --out")
    a("--dry-run", action="store_true", help="make every check a run makes (config, model, data, starting weights, "
                                             "teacher, run folder), print the config and stop: nothing trained or "
                                             "written")
    a("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="val accuracies for epochs_to/seconds_to")
    a("--progress", default="auto", choices=["auto", "on", "off"], help="tqdm bar on rank 0 (auto: on a terminal)")
    a("--stop-after-steps", type=int, help="stop abruptly after this many optimizer steps, as if killed (tests)")
    a("--attention-backend", default="auto", choices=["auto", "sdpa", "flex"],
      help="local, dilated, hybrid: flex_attention block masks (CUDA) or SDPA with a dense mask; "
           "auto: flex on CUDA when available")
    a("--compile", action="store_true", help="torch.compile the model for the training steps (compiled before the "
                                             "clock starts; evaluation and checkpoints use the plain module)")
    a("--peak-tflops", type=float, help="the device's peak TFLOP/s, for final.json's mfu (default: evaluate.py's "
                                        "table of GPUs; none on CPU)")

def recipe_flags(a):
    """The recipe's flags of train.py (optim section), added through the group adder `a` of get_parser."""
    a("--recipe", choices=list(RECIPES), help="a preset: AugReg's none, light1, ..., strong2, or DeiT's deit; the "
                                              "flags below and above override its values")
    a("--randaug", metavar="N,M[,STD]", help="RandAugment: N ops per image, magnitude M of 10 (timm's rand-mM; "
                                             "torchvision's bin 3M of 31), per-image magnitude std STD (default 0)")
    a("--mixup", type=float, metavar="A", help="mixup Beta(A, A) on each batch (0: off)")
    a("--cutmix", type=float, metavar="A", help="cutmix Beta(A, A) on each batch (0: off)")
    a("--mix-prob", type=float, help=f"share of batches mixed (default {MIX_DEFAULTS['mix_prob']})")
    a("--switch-prob", type=float, help=f"with --mixup and --cutmix: share of mixed batches that use cutmix "
                                        f"(default {MIX_DEFAULTS['switch_prob']})")
    a("--random-erasing", type=float, metavar="P", help="erase one random box per image with probability P")
    a("--repeated-aug", type=int, metavar="K", help="DeiT's repeated augmentation: each image K times per epoch")
    a("--ema", type=float, metavar="DECAY", help="also keep an exponential moving average of the weights; evaluated "
                                                 "and saved beside them")
    a("--teacher", metavar="RUN_DIR", help="distil from this finished run of this lab (its own architecture, "
                                           "normalisation and image size)")
    a("--distill", choices=["soft", "hard", "token"], help="with --teacher: soft (KL on tau-softened logits), hard "
                                                           "(the teacher's argmax), token (DeiT's distillation token)")
    a("--distill-alpha", type=float,
      help=f"weight of the distillation term (default {DISTILL_DEFAULTS['distill_alpha']})")
    a("--distill-tau", type=float, help=f"--distill soft: temperature (default {DISTILL_DEFAULTS['distill_tau']})")


if __name__ == "__main__":
    # A bad command line (a mistyped flag, an unknown name, a value of the wrong type) is refused here, before torch
    # and the modules that import it load: they take seconds (tens on a busy machine), this takes milliseconds.
    # This is the real parser, not a copy: every list it offers lives in options.py, which imports no torch, and
    # model.py, attention.py, data.py and augment.py import them from there. main() parses again, to use the values.
    get_parser().parse_args()

import torch  # noqa: E402  (the imports below load torch: after the check above)
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from attention import shown_options  # noqa: E402
from augment import RECIPE_KEYS, recipe_batch, recipe_draws  # noqa: E402
from binary import binary_weights  # noqa: E402
from data import (augment, class_list_text, data_config, epoch_plan, normalize, rank_batches,  # noqa: E402
                  resize)
from evaluate import (RunFolderError, attention_backend, autocast, build_run_data, build_run_model,  # noqa: E402
                      count_flops, device_layout, device_name, ema_pairs, ema_update, evaluate_split, fail,
                      final_metrics, git_commit, load_checkpoint, load_teacher, lock_run_folder, make_device, mfu,
                      model_kept, os_error, outputs_sum, pause_point, peak_tflops, read_config, read_json,
                      save_checkpoint, start_weights, test_metrics, unlock_run_folder, versions, write_json,
                      write_jsonl)
from model import RESNET_PRESETS, count_params, model_config  # noqa: E402


def resolve_config(args, sections, world=1):
    """The run's config, resolved once from the command line and never changed afterwards: a model, a data, an
    optim and a run section, each holding only what applies; ValueError naming the flag for a bad value."""
    given = {s: {k: getattr(args, k) for k in keys} for s, keys in sections.items()}
    check_numbers(given)
    if given["model"]["binary"] and not given["optim"]["recipe"]:  # the authors' recipe is a binary run's default
        given = dict(given, optim=dict(given["optim"], recipe="binary"))
    if given["optim"]["recipe"]:
        given = with_recipe(given)
    if given["optim"]["distill"] == "token":  # the distillation token is part of the model
        if given["model"]["arch"] in RESNET_PRESETS:
            raise ValueError(f"--distill token adds a token to a ViT, not to --arch {given['model']['arch']}; "
                             "use soft or hard")
        if given["optim"]["freeze"]:
            raise ValueError("--distill token trains a distillation head and token; it cannot be a --freeze backbone "
                             "probe (use --distill soft or hard)")
        given["model"] = dict(given["model"], distill_token=True)
    model = model_config(given["model"])
    data = data_config(given["data"])
    optim = optim_config(given["optim"], model["arch"], world, finetune="init" in model or "pretrained" in model)
    run = dict(given["run"])
    try:
        run["thresholds"] = sorted(float(t) for t in run["thresholds"].split(","))
    except ValueError:
        raise ValueError(f"--thresholds '{run['thresholds']}' is not a comma-separated list of numbers")
    if not all(0 < t <= 1 for t in run["thresholds"]):
        raise ValueError(f"--thresholds {given['run']['thresholds']} must be accuracies in (0, 1]")
    if run["peak_tflops"] is not None and not run["peak_tflops"] > 0:
        raise ValueError(f"--peak-tflops {run['peak_tflops']} must be a positive number of TFLOP/s")
    if not 0 <= run["seed"] < 2 ** 32:  # NumPy's seeds; seed * 1000003 + epoch * 101 (train_one_epoch) stays int64
        raise ValueError(f"--seed {run['seed']} is outside 0 to {2 ** 32 - 1}")
    run["out"] = run["out"] or default_out(model, data, optim, run["seed"])
    return dict(model=model, data=data, optim=optim, run=run)


def check_numbers(given):
    """ValueError naming the flag of a number that no range check written as a comparison refuses: nan (every
    comparison with it is false), inf, and an integer beyond the 64 bits that torch and NumPy count with."""
    for key, value in ((k, v) for section in given.values() for k, v in section.items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option_flag(key)} {value} is not a finite number")
        if isinstance(value, int) and not -2 ** 63 <= value < 2 ** 63:
            raise ValueError(f"{option_flag(key)} {value} is beyond the 64-bit integers (at most {2 ** 63 - 1})")


def with_recipe(given):
    """The flags given, with the --recipe preset's values filled in where a flag was not given (model keys for
    ViTs only, an AugReg weight decay for AdamW only, DeiT's lr scaled to the batch size)."""
    arch, optim = given["model"]["arch"], given["optim"]
    preset = dict(RECIPES[optim["recipe"]])
    if optim["recipe"] == "binary" and optim["teacher"]:  # BinaryViT distils with the teacher's probabilities alone
        preset |= BINARY_DISTILL
    if "lr_per_512" in preset:  # DeiT's linear scaling rule
        preset["lr"] = preset.pop("lr_per_512") * optim["batch_size"] / 512
    opt = optim["opt"] or preset.get("opt") or ("sgd" if arch in RESNET_PRESETS or given["model"]["init"]
                                                or given["model"]["pretrained"] else "adamw")
    if opt != preset.get("opt", "adamw"):  # the preset's lr and weight decay are AdamW's: another optimiser has its own
        for key in ("opt", "lr", "weight_decay"):
            preset.pop(key, None)
    out = {section: dict(values) for section, values in given.items()}
    for key, value in preset.items():
        section = "model" if key in ("dropout", "drop_path") else "optim"
        if section == "model" and arch in RESNET_PRESETS:
            continue
        if out[section].get(key) is None:
            out[section][key] = value
    # A mixing flag turned off (--mixup 0, --cutmix 0) takes the preset's probabilities of it along.
    mixing = [k for k in ("mixup", "cutmix") if out["optim"].get(k)]
    for key in ("mix_prob", "switch_prob"):
        if optim.get(key) is None and key in preset and len(mixing) < (2 if key == "switch_prob" else 1):
            out["optim"][key] = None
    return out


def parse_randaug(text):
    """'2,9' or '2,9,0.5' -> [N, M, STD] (STD 0 when not given); ValueError naming the text."""
    try:
        values = [float(v) for v in text.split(",")]
        assert len(values) in (2, 3) and all(map(math.isfinite, values)) and values[0] == int(values[0])
    except (ValueError, AssertionError):
        raise ValueError(f"--randaug '{text}' is not N,M or N,M,STD (e.g. 2,9 or 2,9,0.5)")
    return [int(values[0]), values[1], values[2] if len(values) == 3 else 0.0]


def recipe_config(optim):
    """The recipe keys of an optim section checked and kept only where they act (RandAugment as [N, M, STD], the
    mixing probabilities only with mixing, DeiT's distillation defaults); ValueError naming the flag."""
    if isinstance(optim.get("randaug"), str):
        optim["randaug"] = parse_randaug(optim["randaug"])
    if "randaug" in optim:
        n, m, std = optim["randaug"]
        if not (0 <= n <= 10 and 0 <= m <= 30 and std >= 0):
            raise ValueError(f"--randaug {n},{m:g},{std:g}: N must be in 0-10, M in [0, 30], STD at least 0")
        if n == 0:
            del optim["randaug"]
    for key, high in (("mixup", math.inf), ("cutmix", math.inf), ("random_erasing", 1)):
        if not 0 <= optim.get(key, 0) <= high:
            raise ValueError(f"{option_flag(key)} {optim[key]} is outside [0, {high}]")
        if optim.get(key) == 0:
            del optim[key]
    mixing = [k for k in ("mixup", "cutmix") if k in optim]
    for key, default in MIX_DEFAULTS.items():
        applies = len(mixing) == 2 if key == "switch_prob" else bool(mixing)
        if not applies and key in optim:
            raise ValueError(f"{option_flag(key)} only applies with {'both ' if key == 'switch_prob' else ''}"
                             f"--mixup {'and' if key == 'switch_prob' else 'or'} --cutmix above 0")
        if applies:
            optim.setdefault(key, default)
            if not 0 <= optim[key] <= 1:
                raise ValueError(f"{option_flag(key)} {optim[key]} is outside [0, 1]")
    if optim.get("repeated_aug", 1) < 1:
        raise ValueError(f"--repeated-aug {optim['repeated_aug']} must be at least 1")
    if optim.get("repeated_aug") == 1:
        del optim["repeated_aug"]
    if not 0 <= optim.get("ema", 0) < 1:
        raise ValueError(f"--ema {optim['ema']} is outside [0, 1) (0: off)")
    if optim.get("ema") == 0:
        del optim["ema"]
    if ("teacher" in optim) != ("distill" in optim):
        raise ValueError("--teacher RUN_DIR and --distill soft|hard|token go together")
    if "distill_alpha" in optim and "distill" not in optim:
        raise ValueError("--distill-alpha only applies with --distill")
    if "distill_tau" in optim and optim.get("distill") != "soft":
        raise ValueError("--distill-tau only applies to --distill soft")
    if "distill" in optim:
        optim.setdefault("distill_alpha", DISTILL_DEFAULTS["distill_alpha"])
        if optim["distill"] == "soft":
            optim.setdefault("distill_tau", DISTILL_DEFAULTS["distill_tau"])
        if not 0 <= optim["distill_alpha"] <= 1 or optim.get("distill_tau", 1) <= 0:
            raise ValueError(f"--distill-alpha {optim['distill_alpha']} must be in [0, 1] and --distill-tau "
                             f"{optim.get('distill_tau')} positive")
    return optim


def optim_config(given, arch, world, finetune=False):
    """The optim section: the optimiser's defaults (fine-tuning's when finetune) under the flags given, amp for
    --no-amp; ValueError if bad."""
    given = {k: v for k, v in given.items() if v is not None}
    opt = given.pop("opt", "sgd" if arch in RESNET_PRESETS or finetune else "adamw")
    if "momentum" in given and opt != "sgd":
        raise ValueError(f"--momentum only applies to --opt sgd (got --opt {opt})")
    defaults = (FINETUNE if finetune else OPTIMIZERS)[opt]
    optim = dict(epochs=given.pop("epochs"), batch_size=given.pop("batch_size"), opt=opt, **defaults)
    optim |= {k: v for k, v in given.items() if k != "no_amp"}
    optim = recipe_config(optim)
    for key, value in OPTIM_DEFAULTS.items():
        optim.setdefault(key, value)
    optim.setdefault("warmup_epochs", min(FINETUNE_WARMUP_EPOCHS if finetune else 5.0, optim["epochs"] / 10))
    if "layer_decay" in optim:
        if arch in RESNET_PRESETS:
            raise ValueError(f"--layer-decay applies to ViTs, not to --arch {arch}")
        if not 0 < optim["layer_decay"] <= 1:
            raise ValueError(f"--layer-decay {optim['layer_decay']} is outside (0, 1]")
    optim["amp"] = not given["no_amp"]
    if optim["epochs"] < 1 or optim["batch_size"] < 1:
        raise ValueError(f"--epochs ({optim['epochs']}) and --batch-size ({optim['batch_size']}) must be at least 1")
    if optim["batch_size"] % world:
        raise ValueError(f"--batch-size {optim['batch_size']} is not divisible by the {world} processes")
    ranges = {"label_smoothing": (0, 1, True), "momentum": (0, 1, False), "grad_clip": (0, math.inf, False)}
    for key, (low, high, closed) in ranges.items():  # key: (low, high, high included)
        value = optim.get(key, low)
        if not (low <= value <= high if closed else low <= value < high):
            raise ValueError(f"{option_flag(key)} {value} is outside [{low}, {high}{']' if closed else ')'}")
    if optim["lr"] <= 0:
        raise ValueError(f"--lr {optim['lr']} must be positive")
    if optim["weight_decay"] < 0:
        raise ValueError(f"--weight-decay {optim['weight_decay']} must be 0 or more")
    if not 0 <= optim["warmup_epochs"] <= optim["epochs"]:
        raise ValueError(f"--warmup-epochs {optim['warmup_epochs']} must be in [0, --epochs {optim['epochs']}]")
    if optim.get("skip_nonfinite", 0) < 0:
        raise ValueError(f"--skip-nonfinite {optim['skip_nonfinite']} must be 0 or more")
    if optim.get("skip_nonfinite") == 0:
        del optim["skip_nonfinite"]
    if "skip_nonfinite" in optim and world > 1:  # a step skipped on one process would leave DDP's others waiting
        raise ValueError(f"--skip-nonfinite needs a single process, not {world}")
    if optim.get("time_budget", 1) <= 0:
        raise ValueError(f"--time-budget {optim['time_budget']} must be positive seconds")
    if "time_budget" in optim and world > 1:  # each process's clock would end its run at another step
        raise ValueError(f"--time-budget needs a single process, not {world}")
    return optim


def attention_tag(model):
    """The attention part of a run name: '' for full attention, else e.g. -local2, -dilated1d2, -hybrid1d1-2-4,
    -local1c, -linformer16kv, -nystrom16-conv0, -lsa-spt."""
    tag = "" if model.get("attention", "full") == "full" else "-" + model["attention"]
    for i, (name, value) in enumerate(shown_options(model)):
        o = ATTENTION_OPTIONS[name]
        value = "-".join(map(str, value)) if isinstance(value, list) else str(value)
        if o["main"]:  # the first bare, the others after their short name
            tag += (o["short"] if i else "") + value
        else:
            tag += o["tag"].format(value) if "tag" in o else f"-{o['short']}{value}"
    return tag + ("-spt" if model.get("spt") else "")


BINARY_TAGS = (("binary", "-bin"), ("pool", "-gap"), ("multi_pool", "-mp"), ("residual_affine", "-ra"),
               ("pyramid", "-pyr"), ("fp_merge", "-fpm"))  # model key: its tag in a run name


def binary_tag(model):
    """BinaryViT's switches in a run name: -bin, -gap (--pool mean), -mp, -ra, -pyr, -fpm, -aqnone."""
    tag = "".join(t for key, t in BINARY_TAGS if model.get(key) and model[key] != "cls")
    return tag + ("-aqnone" if model.get("attn_quant") == "none" else "")


def start_tag(model, data, optim):
    """The starting point and what of it trains, in a run name: -from-<source run>, -in1k[-<weights>], -k<K>,
    -probe, -ld<D>, -<N>px."""
    tag = ""
    if "init" in model:
        source = os.path.normpath(model["init"])
        tag += "-from-" + os.path.basename(source if os.path.isdir(source) else os.path.dirname(source) or source)
    if "pretrained" in model:
        tag += "-in1k" + ("" if model["weights"] == DEFAULT_WEIGHTS else "-" + model["weights"].lower())
    tag += f"-k{model['truncate']}" if "truncate" in model else ""
    tag += "-probe" if optim.get("freeze") == "backbone" else ""
    tag += f"-ld{optim['layer_decay']:g}" if "layer_decay" in optim else ""
    return tag + (f"-{data['img_size']}px" if "img_size" in data else "")


RECIPE_TAGS = (("mixup", "mixup"), ("cutmix", "cutmix"), ("random_erasing", "re"), ("repeated_aug", "rep"),
               ("ema", "ema"))  # optim key: its short name in a run name


def recipe_tag(optim):
    """The recipe in a run name: -<preset> for --recipe, then the augmentation values that differ from it (without
    a preset: those given) as -ra2m9[s0.5], -mixup0.8, -cutmix1, -re0.25, -rep3, -ema0.999; then
    -kd<soft|hard|token>[-a<alpha>][-t<tau>] for distillation. Dropout, drop-path, lr and weight decay are not named."""
    preset = RECIPES.get(optim.get("recipe"), {})
    differs = lambda key: (optim.get(key) or None) != (preset.get(key) or None)  # a value of 0 is one left out
    tag = f"-{optim['recipe']}" if "recipe" in optim else ""
    if differs("randaug"):
        n, m, std = optim.get("randaug", (0, 0, 0))
        tag += f"-ra{n}m{m:g}" + (f"s{std:g}" if std else "") if n else "-ra0"
    tag += "".join(f"-{short}{optim.get(key, 0):g}" for key, short in RECIPE_TAGS if differs(key))
    if "distill" in optim:
        tag += f"-kd{optim['distill']}"
        tag += "" if optim["distill_alpha"] == DISTILL_DEFAULTS["distill_alpha"] else f"-a{optim['distill_alpha']:g}"
        tag += "" if optim.get("distill_tau", 1.0) == DISTILL_DEFAULTS["distill_tau"] else f"-t{optim['distill_tau']:g}"
    return tag


def default_out(model, data, optim, seed):
    """runs/<arch>[<binary>][<attention>][<start>][<recipe>][-t<budget>s]-<regime>[<its parameter>]-<dataset>
    [-c<classes>]-s<seed>: distinct across a sweep."""
    arch = model["arch"] + binary_tag(model) + attention_tag(model) + start_tag(model, data, optim) + recipe_tag(optim)
    arch += f"-t{optim['time_budget']:g}s" if "time_budget" in optim else ""
    regime = data["regime"]
    if regime == "sparse":
        regime += f"-n{data['per_class']}" if "per_class" in data else f"-f{data['fraction']:g}"
    elif regime == "imbalanced":
        regime += f"-r{data['imbalance_ratio']:g}-{data['imbalance_profile']}"
    classes = f"-c{class_list_text(data['classes'])}" if "classes" in data else ""
    return f"runs/{arch}-{regime}-{data['dataset']}{classes}-s{seed}"


def check_out_dir(cfg, world):
    """Refuse to touch a run folder unless the flags say what to do with it (ValueError); True if --resume finds
    it finished."""
    out = cfg["run"]["out"]
    has = lambda name: os.path.exists(os.path.join(out, name))
    path = os.path.abspath(out)
    while not os.path.exists(path):  # the nearest part of the path that exists must be a folder
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "" if path == os.path.abspath(out) else f": {path}"
        raise ValueError(f"--out {out}{where} is a file, not a folder")
    final = read_json(os.path.join(out, "final.json")) if has("final.json") else {}
    if final.get("status") == "failed" and not cfg["run"]["overwrite"]:  # resuming would meet the same nan again
        raise ValueError(f"the run in {out} failed ({final['reason']}); pass --overwrite to start it again")
    if cfg["run"]["resume"]:
        if not (has("checkpoint.pt") and has("config.json")):
            raise ValueError(f"--resume: {out} has no checkpoint.pt to resume from")
        old = read_config(out)
        if old["recorded"]["world_size"] != world:  # the batch split and the dropped tail depend on it
            raise ValueError(f"--resume: the run in {out} was started with {old['recorded']['world_size']} "
                             f"processes, not {world}")
        # What is trained must not change: the model, data and optim sections, the seed (it draws the subset, the
        # order and the dropout) and the thresholds (final.json must agree with config.json). The rest of the run
        # section (--out, --data-dir, --device, ...) may.
        for section, keys in (("model", None), ("data", None), ("optim", None), ("run", ("seed", "thresholds"))):
            for k in keys or dict.fromkeys([*old[section], *cfg[section]]):
                if old[section].get(k) != cfg[section].get(k):
                    raise ValueError(f"--resume: {option_flag(k)} is {cfg[section].get(k)!r} but the run in {out} "
                                     f"was started with {old[section].get(k)!r}")
        if has("final.json"):
            return True
    elif not cfg["run"]["overwrite"] and (has("final.json") or has("checkpoint.pt")):
        state = "a finished" if has("final.json") else "an unfinished"
        raise ValueError(f"{out} already holds {state} run; pass --resume to continue it or --overwrite to replace it")
    try:  # a folder that cannot be written (read-only, /proc, a full disk) is refused now, not after an epoch
        os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=path))
    except OSError as e:
        raise ValueError(f"--out {out}: cannot write in {path} ({os_error(e)})")
    return False


# ----------------------------------------------------------------------------- optimisation

def lr_at(progress, warmup, peak):
    """Learning rate when `progress` of training is done: linear warm-up over the first `warmup`, then cosine to 0."""
    if progress < warmup:
        return peak * progress / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-12, 1 - warmup))))


def set_lr(optimizer, progress, optim):
    """Set every group's lr for `progress` of training done (its lr_scale: --layer-decay; none before it), and
    return the schedule's lr."""
    lr = lr_at(progress, optim["warmup_epochs"] / optim["epochs"], optim["lr"])
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def layer_lr_scale(name, depth, decay):
    """--layer-decay (BEiT, MAE): a ViT parameter's lr factor, decay^(depth + 1 - layer), with layer 0 the
    embeddings, i + 1 block i, depth + 1 the final norm and head."""
    if name.startswith(("patch_embed.", "cls_token", "dist_token", "pos_embed")):
        layer = 0
    elif name.startswith("blocks."):
        layer = int(name.split(".")[1]) + 1
    else:
        layer = depth + 1
    return decay ** (depth + 1 - layer)


def make_optimizer(model, optim):
    """AdamW or Nesterov SGD over the parameters that train (not a frozen backbone's); biases, norms, cls token,
    position embeddings and binary weights (BinaryViT's, ReActNet's) get no weight decay; each group's lr_scale
    (--layer-decay, else 1) multiplies the lr."""
    groups = {(1.0, True): [], (1.0, False): []}  # (lr scale, weight decay): decaying first
    binary = {id(w) for w in binary_weights(model)}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = layer_lr_scale(name, len(model.blocks), optim["layer_decay"]) if "layer_decay" in optim else 1.0
        decay = not (p.ndim <= 1 or name in ("pos_embed", "cls_token", "dist_token") or id(p) in binary
                     or name.startswith("merge_pos."))
        groups.setdefault((scale, decay), []).append(p)
    groups = [dict(params=params, weight_decay=optim["weight_decay"] if decay else 0.0, lr_scale=scale)
              for (scale, decay), params in sorted(groups.items(), key=lambda g: (not g[0][1], -g[0][0])) if params
              or scale == 1.0]
    # fused: one kernel (CUDA) or one vectorised loop (CPU) updates every tensor of a group, instead of a few
    # small ops per tensor: the same update (SGD's bit for bit, AdamW's to the last float32 bit).
    if optim["opt"] == "sgd":
        return torch.optim.SGD(groups, lr=optim["lr"], momentum=optim["momentum"], nesterov=optim["momentum"] > 0,
                               fused=True)
    return torch.optim.AdamW(groups, lr=optim["lr"], fused=True)


def head_of(model):
    """The classification head: a ViT's head, a ResNet's fc."""
    return model.head if hasattr(model, "head") else model.fc


def set_train_mode(model, optim):
    """Training mode; for a linear probe only the head's: the backbone computes as evaluated (BatchNorm statistics,
    no dropout or drop-path)."""
    frozen = optim.get("freeze") == "backbone"
    model.train(not frozen)
    if frozen:
        head_of(getattr(model, "module", model)).train()  # under DDP the model is .module


def freeze_backbone(model):
    """--freeze backbone: every parameter but the head's stops training (and so is never changed)."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head_of(model).parameters():
        p.requires_grad_(True)


def soft_target_cross_entropy(logits, targets):
    """Cross-entropy against soft targets (rows summing to one: mixed, label smoothing folded in), batch mean."""
    return torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()


def soft_distillation(student, teacher, tau):
    """DeiT's soft term: tau^2 KL(softmax(teacher / tau) || softmax(student / tau)), the KL summed over the batch
    and the classes and divided by batch x classes, as DeiT's code does (PyTorch's 'batchmean' is C times this)."""
    kl = F.kl_div(F.log_softmax(student / tau, 1), F.log_softmax(teacher / tau, 1), reduction="sum", log_target=True)
    return kl * tau * tau / student.numel()


def distill_loss(outputs, targets, teacher_logits, optim):
    """The training loss of a student: (1 - alpha) * its base loss + alpha * the distillation term (soft: the
    tau-softened KL; hard: cross-entropy against the teacher's argmax; token: that, on the distillation head)."""
    base = lambda logits: (soft_target_cross_entropy(logits.float(), targets) if targets.ndim == 2 else
                           F.cross_entropy(logits.float(), targets, label_smoothing=optim["label_smoothing"]))
    mode, alpha = optim.get("distill"), optim.get("distill_alpha", 0.0)
    if mode is None:
        return base(outputs)
    student, distilled = outputs if mode == "token" else (outputs, outputs)  # token: the cls head, the dist head
    if mode == "soft":
        term = soft_distillation(distilled.float(), teacher_logits, optim["distill_tau"])
    else:  # DeiT's hard label: the teacher's argmax, no smoothing
        term = F.cross_entropy(distilled.float(), teacher_logits.argmax(1))
    return (1 - alpha) * base(student) + alpha * term


def teacher_logits(teacher, source, data, device, amp):
    """--teacher: a function of the student's standardised batch (at the data's size, after augmentation and mixing)
    giving the teacher's float32 logits of the same pixels, standardised as its data was and at its input size."""
    to_pixels = [torch.tensor(data[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std")]
    norm = source["recorded"]["normalization"]
    to_teacher = [torch.tensor(norm[k], device=device).view(1, -1, 1, 1) for k in ("mean", "std")]
    size, mode = source["recorded"]["input_size"], source["data"].get("resize", "bilinear")

    @torch.no_grad()
    def logits(images):
        x = ((images * to_pixels[1] + to_pixels[0]) - to_teacher[0]) / to_teacher[1]
        with autocast(device, amp):
            return teacher(resize(x, size, mode)).float()
    return logits


def recipe_of(optim):
    """The augmentation keys of an optim section that act (augment.recipe_batch's recipe), or None: crop and flip."""
    return {k: optim[k] for k in RECIPE_KEYS if k in optim} or None


def make_loss(cfg, teacher=None):
    """The training loss, built once: loss(outputs, targets, images) -> scalar, images being the student's
    standardised batch (the teacher's input). Label-smoothed cross-entropy, soft targets when mixed, distillation."""
    optim = cfg["optim"]

    def loss(outputs, targets, images):
        return distill_loss(outputs, targets, teacher(images) if teacher else None, optim)
    return loss


# ----------------------------------------------------------------------------- training

class NonFiniteLoss(RuntimeError):
    """A nan or inf training loss (beyond --skip-nonfinite): the run stops and final.json says it failed."""


def check_loss(loss, first_bad, i, steps, epoch, clock, optim):
    """Whether step i (of the epoch's `steps`) is to be skipped (its loss is nan or inf, within --skip-nonfinite),
    and the epoch's first bad step so far, kept on the device (-1: none); NonFiniteLoss to stop the run. On CUDA
    that step is read back every 20 steps and at the epoch's end, not at every step (no sync per step)."""
    finite = torch.isfinite(loss.detach())
    allowed = optim.get("skip_nonfinite", 0)
    if allowed:  # to skip a step we must know now: one read-back per step, only with this option
        if bool(finite):
            return False, first_bad
        clock["skipped_steps"] += 1
        if clock["skipped_steps"] <= allowed:
            print(f"epoch {epoch + 1} step {i + 1}: loss is {loss.item()}, step skipped ({clock['skipped_steps']} "
                  f"of --skip-nonfinite {allowed})", file=sys.stderr, flush=True)
            return True, first_bad
        raise NonFiniteLoss(f"loss is {loss.item()} at epoch {epoch + 1} step {i + 1}, after {allowed} skipped steps "
                            "(--skip-nonfinite)")
    first_bad = torch.where(finite | (first_bad >= 0), first_bad, torch.full_like(first_bad, i))
    check_now = loss.device.type != "cuda" or i % 20 == 19 or i == steps - 1
    if check_now and int(first_bad) >= 0:
        raise NonFiniteLoss(f"loss is nan or inf at epoch {epoch + 1} step {int(first_bad) + 1}")
    return False, first_bad


def epoch_draws(train, epoch, cfg, world):
    """The epoch's order and crop/flip draws and the recipe's (or None), made on the CPU from (seed, epoch) and put
    on the device in one copy each; the RandAugment ops (grouped on the host) and the per-batch mixing draws stay
    on the CPU."""
    x, seed, recipe = train["x"], cfg["run"]["seed"], train["recipe"]
    perm, shifts, flips = (t.to(x.device) for t in epoch_plan(len(x), epoch, seed, world,
                                                               repeats=cfg["optim"].get("repeated_aug", 1)))
    draws = recipe and recipe_draws(len(perm), train["batches"], recipe, x.shape[2], x.shape[3], seed, epoch)
    draws = recipe and {k: v.to(x.device) if k in ("levels", "boxes") else v for k, v in draws.items()}
    return perm, shifts, flips, draws


def training_batch(train, plan, part, i, optim):
    """Global batch i's share `part`: gathered by index from the uint8 set on the device, cropped and flipped there,
    then the recipe (RandAugment, standardising, erasing, mixing) or just standardised -> (float images at the
    data's size, targets: labels, or soft targets when mixed)."""
    perm, shifts, flips, draws = plan
    idx = perm[part]
    images, labels = augment(train["x"][idx], shifts[part], flips[part]), train["y"][idx]
    if train["recipe"] is None:
        return normalize(images, train["mean"], train["std"]), labels
    return recipe_batch(images, labels, draws, part, i, train["recipe"], train["mean"], train["std"],
                        train["classes"], optim["label_smoothing"])


def kill_points(clock, run):
    """The tests' ways of killing a run after a step: LAB_PAUSE_AT=step:k (for a real SIGKILL), --stop-after-steps."""
    pause_point("step")
    if run["stop_after_steps"] is not None and clock["steps"] >= run["stop_after_steps"]:
        print(f"stopped after {clock['steps']} steps (--stop-after-steps); continue with --resume", file=sys.stderr)
        os._exit(3)  # like a kill: no cleanup, no final files


def train_one_epoch(net, train, epoch, clock, cfg, rank, world):
    """One epoch of optimizer steps, this process taking its share of each global batch; returns the epoch's lr,
    train loss and accuracy, images/s and whether the time budget ran out. Advances clock (step seconds, steps)."""
    optim, run, model, optimizer = cfg["optim"], cfg["run"], net["ddp_model"], net["optimizer"]
    device, budget = train["x"].device, optim.get("time_budget")
    total_steps = optim["epochs"] * len(train["batches"])
    # Dropout, drop-path and the erasing noise draw from the global generator, seeded per epoch (and rank).
    torch.manual_seed(run["seed"] * 1000003 + epoch * 101 + rank)
    set_train_mode(model, optim)
    t0 = time.time()
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, count: read once per epoch
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the epoch's first step with a nan or inf loss
    plan = epoch_draws(train, epoch, cfg, world)
    bar = tqdm(train["batches"], desc=f"epoch {epoch + 1}/{optim['epochs']}", disable=not train["show_bar"],
               leave=False)
    out_of_time = False
    for i, part in enumerate(bar):
        # Where training is sets the lr: the share of all steps done, or of the time budget spent.
        step_seconds = clock["train_step_seconds"] + time.time() - t0
        lr = set_lr(optimizer, step_seconds / budget if budget else (epoch * len(train["batches"]) + i + 1) /
                    total_steps, optim)
        images, targets = training_batch(train, plan, part, i, optim)  # standardised, at the data's size
        with autocast(device, optim["amp"]):  # bf16 matmuls on CUDA; the loss is taken in float32
            outputs = model(resize(images, train["size"], train["resize"]))
        loss = net["loss"](outputs, targets, images)  # a teacher sees the same batch, at its own size
        # A nan or inf loss stops the run before its step (on CUDA within 20): the last good checkpoint stays.
        skip, first_bad = check_loss(loss, first_bad, i, len(train["batches"]), epoch, clock, optim)
        if skip:
            continue
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # under DDP this also averages the gradients over the processes
        if optim["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), optim["grad_clip"])
        optimizer.step()
        if net["ema"] is not None:
            ema_update(net["ema_pairs"], optim["ema"])
        # Summed on the device: reading a number back (.item()) would wait for the GPU at every step. Mixed
        # targets count as their dominant label; a distillation token's two heads as their mean.
        logits = (outputs[0] + outputs[1]) / 2 if isinstance(outputs, tuple) else outputs
        totals[0] += loss.detach() * len(targets)
        totals[1] += (logits.argmax(1) == (targets.argmax(1) if targets.ndim == 2 else targets)).sum()
        totals[2] += len(targets)
        clock["steps"] += 1
        if train["show_bar"] and i % 20 == 0:  # the one read-back, every 20 steps and only with a bar
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}")
        kill_points(clock, run)
        if budget and clock["train_step_seconds"] + time.time() - t0 >= budget:
            out_of_time = True
            break
    if world > 1:
        dist.all_reduce(totals)  # every process's share: the epoch's numbers are the global batch's
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the clock below times the work, not just its queueing
    seconds = time.time() - t0
    clock["train_step_seconds"] += seconds
    loss_sum, correct, count = totals.tolist()
    if count == 0:
        raise NonFiniteLoss(f"every step of epoch {epoch + 1} had a nan or inf loss and was skipped")
    stats = dict(lr=lr, train_loss=loss_sum / count, train_acc=correct / count, images_per_s=count / seconds,
                 images=int(count))
    return stats, out_of_time


def compile_steps(net, train, optim):
    """--compile: run the compiled forward and backward once for each batch size of an epoch, so compiling is done
    before any clock starts; weights, BatchNorm statistics and gradients stay as they were (each epoch seeds the
    random generators itself)."""
    model, x = net["ddp_model"], train["x"]
    set_train_mode(model, optim)
    with model_kept(net["model"]):
        for n in sorted({part.stop - part.start for part in train["batches"]}, reverse=True):
            with autocast(x.device, optim["amp"]):
                outputs = model(normalize(x[:n], train["mean"], train["std"], train["size"], train["resize"]))
            outputs_sum(outputs).backward()


def run_epochs(net, data, start, history, clock, cfg, device, rank, world):
    """Train from epoch `start` to the end (or the time budget), validating (the EMA weights too), logging and
    checkpointing after every epoch; the metrics history grows by a row per epoch."""
    out, model, amp = cfg["run"]["out"], net["model"], cfg["optim"]["amp"]
    x_train, n_train = data["x_train"].to(device), len(data["x_train"])
    show_bar = rank == 0 and {"on": True, "off": False, "auto": sys.stderr.isatty()}[cfg["run"]["progress"]]
    train = dict(x=x_train, y=data["y_train"].to(device), show_bar=show_bar, size=data["input_size"],
                 resize=data["resize"], recipe=recipe_of(cfg["optim"]), classes=data["num_classes"],
                 mean=torch.tensor(data["mean"], device=device), std=torch.tensor(data["std"], device=device),
                 batches=rank_batches(n_train - n_train % world, cfg["optim"]["batch_size"], rank, world))
    if cfg["run"]["compile"]:
        compile_steps(net, train, cfg["optim"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for epoch in range(start, cfg["optim"]["epochs"]):
        t0 = time.time()
        stats, out_of_time = train_one_epoch(net, train, epoch, clock, cfg, rank, world)
        if clock["images"] is not None:  # None: resumed from a checkpoint older than the count
            clock["images"] += stats["images"]
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
            clock["peak_memory_mb"] = max(clock["peak_memory_mb"] or 0, peak)
        pause_point("eval")
        val_loss, val_acc = evaluate_split(model, data["x_val"], data["y_val"], data, device, amp, rank, world)
        ema_val = {}
        if net["ema"] is not None:  # the averaged weights, validated beside the raw ones
            ema_loss, ema_acc = evaluate_split(net["ema"], data["x_val"], data["y_val"], data, device, amp, rank, world)
            ema_val = dict(ema_val_loss=ema_loss, ema_val_acc=ema_acc)
        clock["elapsed"] += time.time() - t0
        history.append(dict(epoch=epoch + 1, time_s=clock["elapsed"], lr=stats["lr"], train_loss=stats["train_loss"],
                            train_acc=stats["train_acc"], val_loss=val_loss, val_acc=val_acc,
                            images_per_s=stats["images_per_s"], **ema_val))
        if rank == 0:
            # The checkpoint first: metrics.jsonl never shows an epoch that a resume would not start after.
            save_checkpoint(os.path.join(out, "checkpoint.pt"), dict(
                model=model.state_dict(), optimizer=net["optimizer"].state_dict(), epoch=epoch + 1, history=history,
                elapsed=clock["elapsed"], train_step_seconds=clock["train_step_seconds"],
                peak_memory_mb=clock["peak_memory_mb"], skipped_steps=clock["skipped_steps"], images=clock["images"],
                **({"ema": net["ema"].state_dict()} if net["ema"] else {})))
            clock["saved_epoch"] = epoch + 1  # what a failure later on says is kept
            write_jsonl(os.path.join(out, "metrics.jsonl"), history)
            val_text = f"val_loss {val_loss:.4f} val_acc {val_acc:.4f}" if val_acc is not None else "no validation set"
            print(f"epoch {epoch + 1}/{cfg['optim']['epochs']} train_loss {stats['train_loss']:.4f} train_acc "
                  f"{stats['train_acc']:.4f} {val_text} {stats['images_per_s']:.0f} img/s {clock['elapsed']:.1f}s",
                  flush=True)
        if out_of_time:
            break


def record(cfg, data, model, backend, device, world):
    """What this launch found, written beside the config: data counts, parameters, device, versions, commit."""
    is_vit = cfg["model"]["arch"] not in RESNET_PRESETS
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(params=count_params(model), trainable_params=trainable, image_size=data["x_train"].shape[-1],
                input_size=data["input_size"], num_classes=data["num_classes"],
                class_names=data["class_names"], counts_per_class=data["counts"],
                sizes={k: sum(v) for k, v in data["counts"].items()},
                normalization=dict(mean=data["mean"], std=data["std"]), world_size=world, device=device_name(device),
                attention_backend_used=backend if is_vit else None,
                amp_active=cfg["optim"]["amp"] and device.type == "cuda", versions=versions(),
                git_commit=git_commit(), command=" ".join(sys.argv))


def start_from(cfg, model, data):
    """The run's starting weights (--init, --pretrained) loaded into model and their normalisation put into data
    (a resume: the normalisation it was started with), the backbone frozen for a probe; what the starting weights
    were, or None for random ones or a resume (whose weights are in its checkpoint)."""
    started = None
    if cfg["run"]["resume"]:
        norm = read_config(cfg["run"]["out"])["recorded"]["normalization"]
        data["mean"], data["std"] = norm["mean"], norm["std"]
    elif "init" in cfg["model"] or "pretrained" in cfg["model"]:
        started, norm = start_weights(cfg, model, download=not cfg["run"]["no_download"])
        if norm is not None:  # the features were learned on inputs standardised this way
            data["mean"], data["std"] = [float(v) for v in norm[0]], [float(v) for v in norm[1]]
    if cfg["optim"].get("freeze") == "backbone":
        freeze_backbone(model)
    return started


def start_accuracy(model, data, device, amp):
    """Validation loss and accuracy and test accuracy of a model as it is (the starting weights of a transfer)."""
    val_loss, val_acc = evaluate_split(model, data["x_val"], data["y_val"], data, device, amp)
    return dict(val_loss=val_loss, val_acc=val_acc, test_acc=test_metrics(model, data, device, amp)["test_acc"])


def start_line(cfg, started):
    """The log line of a run's starting weights: where from, what changed, the accuracy before training."""
    m, before = cfg["model"], started["before"]
    what = ["new head" if started["new_head"] else "head kept"]
    what += [f"position embeddings {started['resized']}"] if started["resized"] else []
    what += [f"removed {', '.join(started['removed'])}"] if started["removed"] else []
    if m.get("attention", "full") != (started["attention_from"] or m.get("attention", "full")):
        what += [f"attention {started['attention_from']} -> {m['attention']} ({len(started['created'])} new tensors)"]
    val = f"val_acc {before['val_acc']:.4f} " if before["val_acc"] is not None else ""
    return (f"started from {started['source']}: {'; '.join(what)}; before training {val}"
            f"test_acc {before['test_acc']:.4f}")


def build_net(cfg, model, data, device):
    """What trains and what helps it: the model, its optimizer, the EMA copy (or None) and the loss (with the
    teacher's logits inside for --teacher); ddp_model is the model until torchrun wraps it. Also the teacher's
    record for config.json (or None)."""
    teacher, teacher_record = None, None
    if "teacher" in cfg["optim"]:
        teacher_model, source, teacher_record = load_teacher(cfg, device)
        teacher = teacher_logits(teacher_model, source, data, device, cfg["optim"]["amp"])
    ema = copy.deepcopy(model).requires_grad_(False).eval() if "ema" in cfg["optim"] else None
    net = dict(model=model, ddp_model=model, optimizer=make_optimizer(model, cfg["optim"]), ema=ema,
               ema_pairs=ema and ema_pairs(ema, model), loss=make_loss(cfg, teacher))
    return net, teacher_record


def resume(cfg, net, device, clock):
    """--resume: the checkpoint's states loaded into the model, optimizer and EMA; (start epoch, history) and
    the clocks put into `clock`."""
    ckpt = load_checkpoint(os.path.join(cfg["run"]["out"], "checkpoint.pt"), device, net["model"], net["optimizer"])
    if net["ema"] is not None:
        net["ema"].load_state_dict(ckpt["ema"])
    clock |= {k: ckpt[k] for k in ("elapsed", "train_step_seconds", "peak_memory_mb")}
    clock["skipped_steps"] = ckpt.get("skipped_steps", 0)  # checkpoints from before --skip-nonfinite lack it
    clock["images"] = ckpt.get("images")  # checkpoints from before train_flops lack it: final.json's is then null
    return ckpt["epoch"], ckpt["history"]  # the rest of ckpt goes now: a second copy would stay on the device


def open_run_folder(cfg, recorded, start, device):
    """Rank 0: a new run's config.json, with what the launch recorded (the old run's files removed for
    --overwrite); a resume's launch logged in its config.json."""
    out = cfg["run"]["out"]
    if cfg["run"]["resume"]:  # config.json keeps describing the first launch; each resume is logged beside it
        config = read_config(out)
        config.setdefault("resumes", []).append(dict(epoch=start, device=device_name(device), git_commit=git_commit(),
                                                     command=" ".join(sys.argv)))
        write_json(os.path.join(out, "config.json"), config)
        return
    os.makedirs(out, exist_ok=True)
    for name in ("final.json", "metrics.jsonl", "checkpoint.pt"):  # --overwrite: the old run goes now
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    write_json(os.path.join(out, "config.json"), dict(cfg, recorded=recorded))


def finish_run(cfg, net, data, device, history, clock):
    """Rank 0, after the last epoch: the test metrics of the model (and of its EMA) into final.json, a summary."""
    amp, model = cfg["optim"]["amp"], net["model"]
    final = final_metrics(model, data, device, amp, history, cfg["run"]["thresholds"])
    if net["ema"] is not None:
        final["ema"] = {k: v for k, v in test_metrics(net["ema"], data, device, amp).items()
                        if k in ("test_acc", "test_top5", "macro_f1")}
    final |= dict(status="finished", peak_memory_mb=clock["peak_memory_mb"], train_time_s=clock["elapsed"],
                  train_step_time_s=clock["train_step_seconds"], epochs=len(history))
    final |= train_cost(cfg, model, data, device, clock)
    final |= {"skipped_steps": clock["skipped_steps"]} if "skip_nonfinite" in cfg["optim"] else {}
    write_json(os.path.join(cfg["run"]["out"], "final.json"), final)
    summary = f"test_acc {final['test_acc']:.4f} top5 {final['test_top5']:.4f} macro_f1 {final['macro_f1']:.4f}"
    for key, text in (("head_test_acc", "heads cls {cls:.4f} dist {dist:.4f}"), ("ema", "ema {test_acc:.4f}")):
        summary += f" {text.format(**final[key])}" if key in final else ""
    if "corruption_mean" in final:
        summary += f" corruption_mean {final['corruption_mean']:.4f}"
    print(f"{cfg['run']['out']}: {summary}", flush=True)


def train_cost(cfg, model, data, device, clock):
    """final.json's training cost: counted FLOPs of the student's forward and backward per image and over the run
    (a teacher's forward not included), the device's peak and the model FLOPs utilisation of the step time."""
    side = data["input_size"]
    per_image = count_flops(model, torch.zeros(2, 3, side, side, device=device), backward=True) / 2
    flops = None if clock["images"] is None else per_image * clock["images"]
    peak = peak_tflops(device, cfg["optim"]["amp"], cfg["run"]["peak_tflops"])
    return dict(train_flops_per_image=per_image, train_flops=flops, peak_tflops=peak,
                mfu=mfu(flops, clock["train_step_seconds"], peak) if flops else None)


def join_processes(net, device):
    """Under torchrun: the process group, and the model wrapped for DDP (SyncBatchNorm on CUDA)."""
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    model = net["model"]
    if device.type == "cuda":
        torch.cuda.set_device(device)
        # Per-process BatchNorm statistics would differ from the 1-GPU run. The converted model keeps the same
        # parameter tensors, so the optimizer built above still holds them.
        net["model"] = model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net["ddp_model"] = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def fail_run(cfg, clock, error, rank):
    """The run cannot go on: a nan or inf loss (final.json says failed) or a run-folder file that cannot be written
    (RunFolderError: no final.json, so --resume continues once it can be). The last good checkpoint stays; one line
    on stderr; exit code 1."""
    saved = clock["saved_epoch"]
    kept = f"the checkpoint of epoch {saved} is kept" if saved else "no checkpoint was written"
    outcome = "no final.json: --resume continues the run once its folder can be written"
    if isinstance(error, NonFiniteLoss):
        outcome = "final.json says failed"
        if rank == 0:
            try:
                write_json(os.path.join(cfg["run"]["out"], "final.json"), dict(
                    status="failed", reason=str(error), last_checkpoint_epoch=saved, epochs=saved))
            except RunFolderError as e:
                outcome = f"{e}, so final.json does not say failed"
    print(f"train.py: error: {error}; {kept}; {outcome}", file=sys.stderr, flush=True)
    return 1


def dry_run(cfg, rank):
    """--dry-run, after every other check of a run: the run folder's lock taken and given back where the folder
    exists (one not made yet holds none), then the resolved config on stdout; exit code 0, nothing left written."""
    if rank == 0 and os.path.isdir(cfg["run"]["out"]):  # the lock's check is the lock's own code: take, give back
        lock_run_folder(cfg["run"]["out"])
        unlock_run_folder(cfg["run"]["out"])
    if rank == 0:
        print(json.dumps(cfg, indent=1), flush=True)
    return 0


def main(argv=None):
    """Parse, check, train, evaluate and write the run folder."""
    parser = get_parser()
    args = parser.parse_args(argv)
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    try:  # every bad input is refused here, in one line, before anything in the run folder changes
        cfg = resolve_config(args, parser.sections, world)
        device = make_device(cfg["run"]["device"], int(os.environ.get("LOCAL_RANK", 0)))
        if check_out_dir(cfg, world):
            if rank == 0:
                print(f"{cfg['run']['out']} is already finished; nothing to do")
            return 0
        backend = attention_backend(cfg["model"].get("attention", "full"), cfg["run"]["attention_backend"], device)
        # Before the data: no download for a model it refuses. Channels-last for a ResNet on CUDA.
        model = device_layout(build_run_model(cfg, backend).to(device), cfg["model"]["arch"], device)
        data = build_run_data(cfg)
        if len(data["x_train"]) < world:
            raise ValueError(f"the training set has {len(data['x_train'])} images, fewer than the {world} processes")
        started = start_from(cfg, model, data)
        net, teacher = build_net(cfg, model, data, device)
        start, history = 0, []
        clock = dict(elapsed=0.0, train_step_seconds=0.0, peak_memory_mb=None, skipped_steps=0, images=0,
                     steps=0)  # images: trained on, all processes, across resumes; steps: of this launch
        if cfg["run"]["resume"]:
            start, history = resume(cfg, net, device, clock)
        clock["saved_epoch"] = start  # the epoch of the checkpoint in the run folder: what fail_run says is kept
        if cfg["run"]["dry_run"]:
            return dry_run(cfg, rank)
        if rank == 0:  # the last check: a second process on this run folder stops here, before it writes anything
            lock_run_folder(cfg["run"]["out"])
    except ValueError as e:
        fail(e, "train.py")

    try:
        recorded = record(cfg, data, model, backend, device, world) | ({"teacher": teacher} if teacher else {})
        if started is not None and rank == 0:  # the accuracy of the starting weights, before any training step
            started["before"] = start_accuracy(model, data, device, cfg["optim"]["amp"])
            recorded["init"] = started
            print(start_line(cfg, started), flush=True)
        if world > 1:
            join_processes(net, device)
        if cfg["run"]["compile"]:  # the training steps run compiled; evaluation and checkpoints use net["model"]
            net["ddp_model"] = torch.compile(net["ddp_model"])
        if rank == 0:
            open_run_folder(cfg, recorded, start, device)
        run_epochs(net, data, start, history, clock, cfg, device, rank, world)
        if world > 1:  # the final evaluation runs on rank 0 alone: no collective may wait on it
            dist.barrier()
            dist.destroy_process_group()
        if rank == 0:
            finish_run(cfg, net, data, device, history, clock)
        return 0
    except (NonFiniteLoss, RunFolderError) as e:  # RunFolderError: rank 0's writes (torchrun then stops the others)
        return fail_run(cfg, clock, e, rank)
    finally:
        if rank == 0:
            unlock_run_folder(cfg["run"]["out"])


if __name__ == "__main__":
    sys.exit(main())
