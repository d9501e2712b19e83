"""The names, presets and defaults that the command lines offer, and their one-line error: no torch import.

train.py builds its parser from these alone, so a mistyped flag or an unknown name is refused in milliseconds,
before torch loads (seconds). Each table has its one home here; model.py, attention.py, data.py, augment.py and
evaluate.py import what they use from here, and the names stay importable from them as before. Only what the
command line needs lives here: the code that gives each name its meaning stays in its module (the corruptions'
functions in data.py: CORRUPTION_NAMES, below, is the one list a test checks against data.CORRUPTIONS).
"""
import argparse
import sys

SECTIONS = ("model", "data", "optim", "run")  # a run's config.json: these, then what the run recorded


# ----------------------------------------------------------------------------- the one-line error

def fail(message, prog):
    """Print one error line and exit with code 2 (bad input: nothing was trained or overwritten)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line with exit code 2, as every other bad input."""

    def error(self, message):
        fail(message, self.prog)


# ----------------------------------------------------------------------------- models (model.py)

# ViT presets for 32 px inputs. Shallow presets keep the default's width and cut its depth.
VIT_PRESETS = {
    "vit": dict(depth=6, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
    "vit-tiny": dict(depth=12, dim=192, heads=3, mlp_ratio=4.0, patch_size=4),
    "vit-small": dict(depth=12, dim=384, heads=6, mlp_ratio=4.0, patch_size=4),
    "vit-11m": dict(depth=6, dim=384, heads=6, mlp_ratio=4.0, patch_size=4),  # ResNet-18's parameter count
    "vit-shallow": dict(depth=2, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
    "vit-shallow1": dict(depth=1, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
    # torchvision's vit_b_16 / vit_b_32 / vit_l_16 sizes, for its ImageNet weights (LayerNorm eps as its own).
    "vit-b16": dict(depth=12, dim=768, heads=12, mlp_ratio=4.0, patch_size=16, norm_eps=1e-6),
    "vit-b32": dict(depth=12, dim=768, heads=12, mlp_ratio=4.0, patch_size=32, norm_eps=1e-6),
    "vit-l16": dict(depth=24, dim=1024, heads=16, mlp_ratio=4.0, patch_size=16, norm_eps=1e-6),
}
# ResNets: torchvision's, with `stages` residual stages kept (4 is the full network).
RESNET_PRESETS = {
    "resnet18": dict(base="resnet18", stages=4),
    "resnet34": dict(base="resnet34", stages=4),
    "resnet50": dict(base="resnet50", stages=4),
    "resnet18-shallow": dict(base="resnet18", stages=2),
    "resnet18-shallow3": dict(base="resnet18", stages=3),
}
ARCHS = list(VIT_PRESETS) + list(RESNET_PRESETS)
# The ViT options every preset shares (its sizes are the preset's): the one home of their defaults.
VIT_DEFAULTS = dict(pool="cls", spt=False, dropout=0.0, drop_path=0.1, attention="full")
# --attn-quant: how a binary ViT's attention probabilities are quantised. binary: BinaryViT's default, {0, a} with a
# learned a (BiT's quantiser); none: real-valued, as the authors' code keeps them when activations are not binary.
ATTN_QUANTS = ["binary", "none"]
DEFAULT_WEIGHTS = "IMAGENET1K_V1"  # --pretrained: torchvision's weights when --weights is not given


# ----------------------------------------------------------------------------- ViT attention (attention.py)

ATTENTIONS = ["full", "local", "dilated", "hybrid", "linformer", "performer", "nystrom", "lsa"]
WINDOWED = {"local", "dilated", "hybrid"}  # kinds made of grid masks, run by flex_attention on CUDA
LINFORMER_SHARING = ["none", "heads", "kv", "layers"]

# Every option of the attention kinds, the one home of its default: the kinds it applies to, its type (`choices`
# instead for names), the lowest value allowed, its short name in run names and labels (a `main` option is always
# shown there, the others only when they differ from the default; `tag`, where given, is how a run name writes
# such an other option, else -<short><value>) and its help. train.py's flags, its run-name tag and analyze.py's
# labels are all made from this table.
ATTENTION_OPTIONS = {
    "radius": dict(default=1, kinds=WINDOWED, type=int, low=0, short="r", main=True,
                   help="window radius on the patch grid, in (dilated) steps"),
    "window_shape": dict(default="square", kinds=WINDOWED, choices=["square", "circle"], short="", main=False,
                         tag="c", help="Chebyshev (square) or Euclidean (circle) radius"),
    "dilation": dict(default=2, kinds={"dilated"}, type=int, low=1, short="d", main=True,
                     help="grid step between attended patches"),
    "dilations": dict(default=[1, 2, 4], kinds={"hybrid"}, type=str, short="d", main=True,
                      help="comma-separated dilations of the parallel window branches"),
    "linformer_k": dict(default=64, kinds={"linformer"}, type=int, low=1, short="k", main=True,
                        help="projected sequence length"),
    "linformer_share": dict(default="heads", kinds={"linformer"}, choices=LINFORMER_SHARING, short="share",
                            main=False, tag="{}", help="none (a projection per head), heads (one per layer), "
                                                       "kv (keys and values share it), layers (one for the network)"),
    "performer_features": dict(default=None, kinds={"performer"}, type=int, low=1, short="m", main=True,
                               help="random features (None: d ln d, d = head width)"),
    "redraw_interval": dict(default=1000, kinds={"performer"}, type=int, low=0, short="rd", main=False,
                            help="redraw the features every this many training steps, 0 never"),
    "landmarks": dict(default=16, kinds={"nystrom"}, type=int, low=1, short="m", main=True, help="landmarks"),
    "pinv_iters": dict(default=6, kinds={"nystrom"}, type=int, low=1, short="pi", main=False,
                       help="pseudo-inverse iterations"),
    "nystrom_conv": dict(default=33, kinds={"nystrom"}, type=int, low=0, short="conv", main=False,
                         help="kernel of the depthwise conv residual on values, odd, 0 = off"),
}


def option_flag(name):
    """The command-line flag of a config key: linformer_k -> --linformer-k."""
    return "--" + name.replace("_", "-")


# ----------------------------------------------------------------------------- data (data.py)

DATASETS = ["cifar10", "cifar100", "synthetic"]
REGIMES = ["standard", "sparse", "many-classes", "imbalanced", "corrupted"]
RESIZE_MODES = ["bilinear", "bicubic"]
# The data options that apply only under a condition, with their defaults; a data section holds only what applies.
REGIME_OPTIONS = {"sparse": dict(fraction=None, per_class=None), "corrupted": dict(corruptions=None),  # None: all
                  "imbalanced": dict(imbalance_ratio=100.0, imbalance_profile="exp")}
SYNTHETIC_OPTIONS = dict(synthetic_per_class=500, synthetic_size=32)
TRAIN_CORRUPTION_OPTIONS = dict(train_severity=3, train_corruption_fraction=0.5)
DATA_DEFAULTS = dict(regime="standard", val_fraction=0.1)
SPARSE_FRACTION = 0.1  # sparse without --fraction or --per-class
# data.CORRUPTIONS' names, in its order (its functions need torch); tests/test_cli.py checks that the two agree.
CORRUPTION_NAMES = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "gaussian_blur", "defocus_blur",
                    "contrast", "brightness", "saturate", "pixelate", "jpeg_compression"]


# ----------------------------------------------------------------------------- optimisation (train.py, bench-train)

# Each optimiser's defaults; ResNets train with sgd and ViTs with adamw unless --opt says otherwise.
OPTIMIZERS = {"adamw": dict(lr=1e-3, weight_decay=0.05), "sgd": dict(lr=0.1, weight_decay=5e-4, momentum=0.9)}
OPTIM_DEFAULTS = dict(label_smoothing=0.1, grad_clip=1.0)


# ----------------------------------------------------------------------------- recipes (augment.py, train.py)

# --recipe presets (train.with_recipe fills them in; a flag given overrides its value). AugReg (Steiner et al. 2021,
# big_vision's augreg configs): RandAugment (2 layers, magnitude m) and mixup alpha per level, with the regularised
# arm of AugReg's grid (dropout and stochastic depth 0.1; ViTs only) and weight decay 0.1 (AdamW only: AugReg's is an
# Adam weight decay), no label smoothing (AugReg has none); `none` is AugReg's no-augmentation, no-regularisation
# corner (crop and flip stay, as AugReg's inception crop and flip do).
AUGREG = {"none": (None, 0.0), "light1": (0, 0.0), "light2": (10, 0.2), "medium1": (15, 0.2), "medium2": (15, 0.5),
          "strong1": (20, 0.5), "strong2": (20, 0.8)}  # level: (RandAugment magnitude or None, mixup alpha)
RECIPES = {name: dict(randaug=None if m is None else [2, float(m), 0.0], mixup=alpha, dropout=0.1 * (m is not None),
                      drop_path=0.1 * (m is not None), weight_decay=0.1, label_smoothing=0.0)
           for name, (m, alpha) in AUGREG.items()}
# DeiT's recipe (facebookresearch/deit main.py defaults): AdamW at 5e-4 per 512 images of batch, weight decay 0.05,
# rand-m9-mstd0.5-inc1, mixup 0.8 / cutmix 1.0 switched at 0.5, random erasing 0.25, repeated augmentation 3,
# stochastic depth 0.1, label smoothing 0.1, model EMA 0.99996 and no gradient clipping.
RECIPES["deit"] = dict(opt="adamw", lr_per_512=5e-4, weight_decay=0.05, randaug=[2, 9.0, 0.5], mixup=0.8, cutmix=1.0,
                       mix_prob=1.0, switch_prob=0.5, random_erasing=0.25, repeated_aug=3, dropout=0.0, drop_path=0.1,
                       label_smoothing=0.1, ema=0.99996, grad_clip=0.0)
# BinaryViT's recipe (Phuoc-Hoan-Le/BinaryViT scripts: AdamW at 5e-4 for a batch of 512, cosine, no warm-up, no
# weight decay, dropout or stochastic depth, crop and flip only, label smoothing 0.1 as their main.py) with no gradient
# clipping (their scripts set none); the cosine spans this lab's --epochs. --binary runs use it unless --recipe says
# otherwise. With --teacher: their loss, the cross-entropy against the teacher's probabilities alone (BINARY_DISTILL).
RECIPES["binary"] = dict(opt="adamw", lr_per_512=5e-4, weight_decay=0.0, warmup_epochs=0.0, dropout=0.0,
                         drop_path=0.0, label_smoothing=0.1, grad_clip=0.0)
BINARY_DISTILL = dict(distill="soft", distill_alpha=1.0, distill_tau=1.0)
