"""Our ViT and torchvision's ResNets (with a small-image stem); `build_model` makes any of them by name, and
`transfer_state` starts one from another's weights (a run of this lab or torchvision's ImageNet weights)."""
import functools
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from attention import ATTENTION_OPTIONS, Attention, attention_options, option_flag
from binary import BinaryAttention, BinaryMerge, BinaryMLP, BinaryResNet, TokenBatchNorm
# The presets are in options.py, which imports no torch: train.py builds its command line from them first.
from options import ARCHS, DEFAULT_WEIGHTS, RESNET_PRESETS, VIT_DEFAULTS, VIT_PRESETS

# The presets torchvision has ImageNet weights for, by its model names.
TORCHVISION_VITS = {"vit-b16": "vit_b_16", "vit-b32": "vit_b_32", "vit-l16": "vit_l_16"}


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample with probability p, rescaling the rest."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.p
        return x * keep.to(x.dtype) / (1 - self.p)


def shifted_images(x, shift):
    """The image and its four diagonal shifts by `shift` pixels (zero-filled), on channels: (B, 5C, H, W)."""
    if shift == 0:
        return torch.cat([x] * 5, 1)
    s = shift
    padded = F.pad(x, (s, s, s, s))
    H, W = x.shape[-2:]
    crops = [padded[..., dr:dr + H, dc:dc + W] for dr, dc in ((0, 0), (0, 2 * s), (2 * s, 0), (2 * s, 2 * s))]
    return torch.cat([x, *crops], 1)


class ShiftedPatchEmbed(nn.Module):
    """Shifted Patch Tokenization (Lee et al. 2021): patches of the image and its four half-patch diagonal
    shifts, flattened together, then LayerNorm and Linear. Each token sees a wider, overlapping area."""

    def __init__(self, patch_size, dim, channels=3):
        super().__init__()
        self.patch_size, self.shift = patch_size, patch_size // 2
        self.norm = nn.LayerNorm(5 * channels * patch_size ** 2)
        self.proj = nn.Linear(5 * channels * patch_size ** 2, dim)

    def forward(self, x):
        p = self.patch_size
        patches = F.unfold(shifted_images(x, self.shift), p, stride=p).transpose(1, 2)  # B, N, 5C*p*p
        return self.proj(self.norm(patches))


class ResidualAffine(nn.Module):
    """--residual-affine (BinaryViT): a learned per-channel scale (0.1 at first) and bias before a residual add."""

    def __init__(self, dim):
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.full((dim,), 0.1)), nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return x * self.scale + self.bias


class MultiPool(nn.Module):
    """--multi-pool (BinaryViT): average pools 1x3, 3x1, 1x5, 5x1 over the patch grid of the MLP's normalised input,
    each times a learned per-channel scale (0 at first); prefix tokens (cls) get none. The CNN's local pooling."""

    KERNELS = ((1, 3), (3, 1), (1, 5), (5, 1))

    def __init__(self, dim, grid, num_prefix_tokens):
        super().__init__()
        self.grid, self.num_prefix_tokens = grid, num_prefix_tokens
        self.scales = nn.ParameterList(torch.zeros(dim) for _ in self.KERNELS)  # vectors: no weight decay

    def forward(self, x):
        c = self.num_prefix_tokens
        image = x[:, c:].transpose(1, 2).unflatten(2, self.grid)  # B, D, h, w
        out = 0
        for (kh, kw), scale in zip(self.KERNELS, self.scales):  # zero padding counted, as the authors' AvgPool2d
            out = out + F.avg_pool2d(image, (kh, kw), 1, (kh // 2, kw // 2)).flatten(2).transpose(1, 2) * scale
        return F.pad(out, (0, 0, c, 0))  # zeros for the prefix tokens


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)). binary: BinaryViT's binary attention
    and MLP with token BatchNorms; residual_affine: a ResidualAffine before each add; multi_pool: MultiPool of
    the MLP's input added to the output (`grid` and `num_prefix_tokens` of attention options give its grid)."""

    def __init__(self, dim, heads, mlp_ratio, dropout, drop_path, attention, norm_eps=1e-5, binary=False,
                 attn_quant="binary", multi_pool=False, residual_affine=False):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        norm = functools.partial(TokenBatchNorm if binary else nn.LayerNorm, eps=norm_eps)
        self.norm1 = norm(dim)
        self.norm2 = norm(dim)
        if binary:
            grid, prefix = attention["grid"], attention["num_prefix_tokens"]
            self.attn = BinaryAttention(dim, heads, norm, attn_quant, grid[0] * grid[1] + prefix)
            self.mlp = BinaryMLP(dim, hidden, norm, dropout)
        else:
            self.attn = Attention(dim, heads, **attention)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.affine1 = ResidualAffine(dim) if residual_affine else nn.Identity()
        self.affine2 = ResidualAffine(dim) if residual_affine else nn.Identity()
        self.multi_pool = MultiPool(dim, attention["grid"], attention["num_prefix_tokens"]) if multi_pool else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.affine1(self.attn(self.norm1(x))))
        h = self.norm2(x)
        out = x + self.drop_path(self.affine2(self.mlp(h)))
        return out if self.multi_pool is None else out + self.multi_pool(h)


class PatchMerge(nn.Module):
    """--pyramid's full-precision patch merging (BinaryViT's): norm, 2x2 stride-2 conv widening the channels, norm.
    Tokens (B, h*w, C) -> (B, h/2*w/2, C_out)."""

    def __init__(self, c_in, c_out, grid, norm):
        super().__init__()
        self.grid = grid
        self.norm_in, self.conv, self.norm = norm(c_in), nn.Conv2d(c_in, c_out, 2, 2, bias=False), norm(c_out)

    def forward(self, x):
        x = self.norm_in(x).transpose(1, 2).unflatten(2, self.grid)
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


def pyramid_stages(dim, heads, depth, grid):
    """--pyramid's four stages for a ViT of `depth` blocks of width `dim` with `heads` on a grid x grid of patches:
    widths dim/4, dim/2, dim, 2 dim and heads/8 ... heads (BinaryViT-S's 64-512 and 1-8 for the vit preset), one
    block per stage and the rest in the third (BinaryViT's deepest), grids halving from `grid`; ValueError if not."""
    if grid % 8:
        raise ValueError(f"--pyramid halves the token grid three times: the {grid}x{grid} grid of this image and patch "
                         "size does not (allowed: a grid divisible by 8, e.g. 32 px with --patch-size 4 or 2)")
    if heads % 8 or dim % 4 or depth < 4:
        raise ValueError(f"--pyramid needs --heads divisible by 8 (got {heads}), --dim divisible by 4 (got {dim}) "
                         f"and --depth at least 4, a block per stage (got {depth})")
    return ([dim // 4, dim // 2, dim, 2 * dim], [heads // 8, heads // 4, heads // 2, heads], [1, 1, depth - 3, 1],
            [grid, grid // 2, grid // 4, grid // 8])


class ViT(nn.Module):
    """Vision Transformer: conv (or shifted, --spt) patch embedding, cls token or mean pooling, learned positions,
    pre-norm blocks with any attention of attention.py (its options, and `backend`, in attention_options).

    distill_token (DeiT): a second token after the cls token with its own head, head_dist. Training mode returns
    both heads' logits (cls, dist); eval mode their mean, or one head's as `output` says ("mean", "cls", "dist").

    BinaryViT's switches: binary (binary.py's attention and MLP, token BatchNorms; embedding and head stay full
    precision), multi_pool, residual_affine (see Block), pyramid (four stages joined by patch merging, each merge
    with its own position embeddings: pyramid_stages), fp_merge (a binary pyramid's merges in full precision)."""

    def __init__(self, num_classes, image_size=32, patch_size=4, depth=6, dim=256, heads=8, mlp_ratio=2.0,
                 pool="cls", attention="full", attention_options=None, spt=False, dropout=0.0, drop_path=0.0,
                 norm_eps=1e-5, distill_token=False, binary=False, attn_quant="binary", multi_pool=False,
                 residual_affine=False, pyramid=False, fp_merge=False):
        super().__init__()
        if image_size % patch_size:
            allowed = ", ".join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)
            raise ValueError(f"patch size {patch_size} does not divide the image size {image_size}; "
                             f"allowed: {allowed}")
        if distill_token and pool != "cls":
            raise ValueError("--distill token needs the cls token; it cannot be used with --pool mean")
        grid = image_size // patch_size
        dims, heads_of, depths, grids = (pyramid_stages(dim, heads, depth, grid) if pyramid else
                                         ([dim], [heads], [depth], [grid]))
        self.pool = pool
        self.output = "mean"
        # Tokens before the patches: the cls token, if any, and the distillation token.
        self.num_prefix_tokens = int(pool == "cls") + int(distill_token)
        self.patch_embed = (ShiftedPatchEmbed(patch_size, dims[0]) if spt else
                            nn.Conv2d(3, dims[0], patch_size, patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distill_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + self.num_prefix_tokens, dims[0]))
        self.dropout = nn.Dropout(dropout)
        norm = functools.partial(TokenBatchNorm if binary else nn.LayerNorm, eps=norm_eps)
        rates = iter(torch.linspace(0, drop_path, depth).tolist())  # deeper blocks are dropped more often
        self.blocks, self.merges, self.merge_after = nn.ModuleList(), nn.ModuleList(), {}
        for stage, (width, n_heads, n_blocks, g) in enumerate(zip(dims, heads_of, depths, grids)):
            options = dict(attention_options or {}, kind=attention, grid=(g, g),
                           num_prefix_tokens=self.num_prefix_tokens)
            for _ in range(n_blocks):
                self.blocks.append(Block(width, n_heads, mlp_ratio, dropout, next(rates), options, norm_eps, binary,
                                         attn_quant, multi_pool, residual_affine))
                if attention == "linformer" and options.get("linformer_share") == "layers":
                    options["shared_projection"] = self.blocks[0].attn.proj_k  # one matrix for every layer
            if stage < len(dims) - 1:  # a pyramid: merge 2x2 patches into the next stage's tokens
                self.merge_after[len(self.blocks) - 1] = stage
                merge = BinaryMerge if binary and not fp_merge else PatchMerge
                self.merges.append(merge(width, dims[stage + 1], (g, g), norm))
        self.merge_pos = nn.ParameterList(nn.Parameter(torch.zeros(1, g * g // 4, w))
                                          for w, g in zip(dims[1:], grids))
        self.norm = norm(dims[-1])
        self.head = nn.Linear(dims[-1], num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distill_token else None
        for pos in (self.pos_embed, *self.merge_pos):
            nn.init.trunc_normal_(pos, std=0.02)
        for token in (self.cls_token, self.dist_token):
            if token is not None:
                nn.init.trunc_normal_(token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):  # the binary linears too (BinaryViT's init)
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def embed(self, x):
        """Images (B, 3, H, W) to the first block's input tokens (B, T, D): patches, cls token, positions."""
        x = self.patch_embed(x)
        if x.ndim == 4:  # the conv embedding gives B, D, h, w
            x = x.flatten(2).transpose(1, 2)
        prefix = [t.expand(len(x), -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], 1)
        return self.dropout(x + self.pos_embed)

    def forward(self, x):
        x = self.embed(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.merge_after:  # --pyramid: the next stage's tokens, at half the grid
                stage = self.merge_after[i]
                x = self.merges[stage](x) + self.merge_pos[stage]
        x = self.norm(x)
        if self.dist_token is None:
            return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))
        cls, dist = self.head(x[:, 0]), self.head_dist(x[:, 1])
        if self.training:  # each head has its own loss (train.distill_loss)
            return cls, dist
        return {"mean": (cls + dist) / 2, "cls": cls, "dist": dist}[self.output]


def resnet(base, num_classes, image_size=32, stages=4, imagenet_stem=False):
    """torchvision ResNet keeping `stages` stages; for inputs of 64 px or less a 3x3 stride-1 stem without max-pool,
    unless imagenet_stem (ImageNet weights bring their own stem)."""
    net = getattr(torchvision.models, base)(weights=None, num_classes=num_classes)
    if image_size <= 64 and not imagenet_stem:
        # The ImageNet stem (7x7 stride 2 + max-pool) shrinks a 32 px image to 8 px before any residual stage.
        net.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's convs
        net.maxpool = nn.Identity()
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    for i in range(stages, 4):
        setattr(net, f"layer{i + 1}", nn.Identity())
    last_block = layers[stages - 1][-1]
    out_channels = (last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2).num_features
    if stages < 4:
        net.fc = nn.Linear(out_channels, num_classes)
    return net


# The architectures --binary builds: every ViT (BinaryViT's blocks) and the ResNet-18s (binary.BinaryResNet).
BINARY_ARCHS = [a for a in ARCHS if a in VIT_PRESETS or RESNET_PRESETS[a]["base"] == "resnet18"]

# What a model starts from (absent: random weights) and how much of it is kept: a run's model section holds
# these only when given. build_model makes the architecture; the weights are loaded by transfer_state.
TRANSFER_KEYS = ("init", "pretrained", "weights", "weights_file", "truncate")


def torchvision_name(arch):
    """torchvision's builder name for an architecture with ImageNet weights (vit-b16 -> vit_b_16), else None."""
    return TORCHVISION_VITS.get(arch) or RESNET_PRESETS.get(arch, {}).get("base")


def transfer_config(arch, depth, given):
    """The model section's starting point (init, or pretrained with its weights) and truncate K, checked against
    the architecture of `depth` blocks or stages; ValueError naming the bad flag."""
    out = {k: given[k] for k in TRANSFER_KEYS if given.get(k) is not None}
    if "init" in out and "pretrained" in out:
        raise ValueError("--init and --pretrained are two starting points; give one")
    if "pretrained" in out:
        name = torchvision_name(arch)
        with_weights = [a for a in ARCHS if torchvision_name(a)]
        if out["pretrained"] != "imagenet" or name is None:
            raise ValueError(f"--pretrained {out['pretrained']} --arch {arch}: torchvision has ImageNet weights "
                             f"(--pretrained imagenet) for {', '.join(with_weights)}")
        out.setdefault("weights", DEFAULT_WEIGHTS)
        names = [w for w in torchvision.models.get_model_weights(name).__members__ if w != "DEFAULT"]
        if out["weights"] not in names:
            raise ValueError(f"--weights {out['weights']} is not one of {name}'s: {', '.join(names)}")
    else:
        for flag in ("weights", "weights_file"):
            if flag in out:
                raise ValueError(f"{option_flag(flag)} applies to --pretrained imagenet")
    if "truncate" in out:
        if "init" not in out and "pretrained" not in out:
            raise ValueError("--truncate removes later layers of a trained model: give --init or --pretrained")
        unit = "residual stages" if arch in RESNET_PRESETS else "blocks"
        if not 1 <= out["truncate"] <= depth:
            raise ValueError(f"--truncate {out['truncate']} is outside 1-{depth}, the {unit} of --arch {arch}")
    return out


def check_binary_switches(model, transfer):
    """BinaryViT's switches in a ViT's model section (attn_quant's default set for a binary one); ValueError naming
    the flag that cannot apply."""
    if model.get("binary"):
        if model["attention"] != "full":
            raise ValueError(f"--binary builds BinaryViT's attention: --attention full only "
                             f"(got --attention {model['attention']})")
        if int(model["dim"] * model["mlp_ratio"]) % model["dim"]:  # the MLP's shortcuts repeat and pool channels
            raise ValueError(f"--binary needs a whole --mlp-ratio, its MLP's shortcut repeats the channels "
                             f"(got {model['mlp_ratio']:g})")
        model.setdefault("attn_quant", "binary")
    elif "attn_quant" in model:
        raise ValueError(f"--attn-quant {model['attn_quant']} applies to --binary ViTs")
    if model.get("fp_merge") and not (model.get("pyramid") and model.get("binary")):
        raise ValueError("--fp-merge keeps a binary pyramid's patch merging in full precision: give it with "
                         "--pyramid and --binary")
    if model.get("pyramid"):
        for bad, flag in ((model["pool"] != "mean", f"--pool {model['pool']} (it has no cls token: --pool mean)"),
                          (model["attention"] != "full", f"--attention {model['attention']} (full only)"),
                          (model.get("distill_token"), "--distill token (no cls token)"),
                          ("truncate" in transfer and transfer["truncate"], "--truncate (its stages are one whole)")):
            if bad:
                raise ValueError(f"--pyramid cannot take {flag}")
        pyramid_stages(model["dim"], model["heads"], model["depth"], 8)  # the grid is checked when built


def model_config(given):
    """The model section of a run's config from the options given (None: not given): the preset's sizes and the
    defaults filled in, only the options that apply to the architecture kept; ValueError for one that does not."""
    arch = given["arch"]
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    transfer = {k: given.get(k) for k in TRANSFER_KEYS}
    given = {k: v for k, v in given.items()
             if v is not None and v is not False and k != "arch" and k not in TRANSFER_KEYS}
    if given.get("binary") and arch in BINARY_ARCHS:
        if transfer["pretrained"]:
            raise ValueError("--binary builds binary layers that ImageNet weights do not fit; drop --pretrained")
    elif given.get("binary"):
        resnet18s = [a for a in BINARY_ARCHS if a in RESNET_PRESETS]
        raise ValueError(f"--binary applies to the ViTs and {', '.join(resnet18s)}, not to --arch {arch}")
    if arch in RESNET_PRESETS:
        vit_only = [k for k in given if k not in ("stages", "binary") and (k, given[k]) != ("attention", "full")]
        if vit_only:
            value = given[vit_only[0]]
            flag = option_flag(vit_only[0]) + ("" if value is True else f" {value}")
            raise ValueError(f"{flag} applies to ViTs, not to --arch {arch}")
        stages = given.get("stages", RESNET_PRESETS[arch]["stages"])
        binary = dict(binary=True) if given.get("binary") else {}
        return dict(arch=arch, stages=stages, **binary, **transfer_config(arch, stages, transfer))
    if "stages" in given:
        raise ValueError(f"--stages applies to ResNets, not to --arch {arch}")
    for name in ("depth", "dim", "heads", "patch_size"):
        if given.get(name, 1) < 1:
            raise ValueError(f"{option_flag(name)} {given[name]} must be at least 1")
    model = dict(arch=arch, **VIT_PRESETS[arch], **VIT_DEFAULTS)
    model.update({k: v for k, v in given.items() if k not in ATTENTION_OPTIONS})
    for flag, value in (("--dropout", model["dropout"]), ("--drop-path", model["drop_path"])):
        if not 0 <= value < 1:
            raise ValueError(f"{flag} {value} is outside [0, 1)")
    if model["mlp_ratio"] <= 0:
        raise ValueError(f"--mlp-ratio {model['mlp_ratio']} must be positive")
    if int(model["dim"] * model["mlp_ratio"]) < 1:  # Block's hidden width: an MLP of no unit is no MLP
        raise ValueError(f"--mlp-ratio {model['mlp_ratio']:g} gives the MLP of width {model['dim']} no hidden unit; "
                         f"allowed: at least 1/{model['dim']}")
    check_binary_switches(model, transfer)
    chosen = {k: v for k, v in given.items() if k in ATTENTION_OPTIONS}
    # Heads that do not divide the width give no head width: Attention refuses them when the model is built.
    head_dim = model["dim"] // model["heads"] if model["dim"] % model["heads"] == 0 else None
    model |= attention_options(model["attention"], chosen, head_dim)
    return model | transfer_config(arch, model["depth"], transfer)


def build_model(arch, num_classes, image_size=32, backend="sdpa", **options):
    """Any model by name, with the options of its model section (ResNets: stages, binary; ViTs: sizes, pool, spt,
    dropout, drop_path, attention and the attention options, BinaryViT's switches; the rest from the preset and
    VIT_DEFAULTS). truncate K keeps the first K blocks or stages; the starting weights are not loaded here
    (transfer_state)."""
    truncate = options.get("truncate")
    if arch in RESNET_PRESETS:
        stages = truncate or options.get("stages") or RESNET_PRESETS[arch]["stages"]
        if options.get("binary"):
            return BinaryResNet(num_classes, image_size, stages)
        return resnet(RESNET_PRESETS[arch]["base"], num_classes, image_size, stages,
                      imagenet_stem=options.get("pretrained") == "imagenet")
    if arch not in VIT_PRESETS:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    vit = dict(VIT_PRESETS[arch], **VIT_DEFAULTS)
    vit.update({k: v for k, v in options.items() if k not in ATTENTION_OPTIONS and k not in TRANSFER_KEYS})
    vit["depth"] = truncate or vit["depth"]
    attention = {k: v for k, v in options.items() if k in ATTENTION_OPTIONS}
    return ViT(num_classes, image_size, attention_options=dict(attention, backend=backend), **vit)


# ----------------------------------------------------------------------------- starting from trained weights

def torchvision_vit_state(state):
    """torchvision VisionTransformer's state dict under our ViT's names (q, k, v in one matrix in both; the MLP's
    layers as 0 and 3, or linear_1 and linear_2 in torchvision's older files); ValueError for a key with no
    counterpart."""
    renames = [(r"conv_proj\.", "patch_embed."), (r"class_token$", "cls_token"),
               (r"encoder\.pos_embedding$", "pos_embed"), (r"encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
               (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."), (r"self_attention\.in_proj_", "attn.qkv."),
               (r"self_attention\.out_proj\.", "attn.proj."), (r"mlp\.linear_1\.", "mlp.0."),
               (r"mlp\.linear_2\.", "mlp.3."), (r"encoder\.ln\.", "norm."), (r"heads\.head\.", "head.")]
    out = {}
    for key, value in state.items():
        new = key
        for pattern, repl in renames:
            new = re.sub(pattern, repl, new)
        if new == key:
            raise ValueError(f"torchvision ViT weight {key} has no counterpart in our ViT")
        out[new] = value
    return out


def imagenet_state(arch, weights, weights_file=None, download=True):
    """torchvision's ImageNet weights for `arch` (our ViT's names for ViTs) through its weight API and the torch hub
    cache, or from weights_file -> (state dict, the weights' enum entry); ValueError naming the file to fetch."""
    entry = torchvision.models.get_model_weights(torchvision_name(arch))[weights]
    if weights_file is None:
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        file = os.path.basename(entry.url)
        where = (f"--pretrained imagenet --weights {weights}: {file} is not in the torch hub cache; put it in "
                 f"{folder} ($TORCH_HOME/hub/checkpoints/{file}, from {entry.url}) or pass --weights-file PATH")
        if not download and not os.path.isfile(os.path.join(folder, file)):
            raise ValueError(where + " (--no-download)")
        try:
            state = entry.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # offline, or a corrupt download: the message says which file is wanted
            raise ValueError(f"{where} ({type(e).__name__})")
    else:
        try:
            state = torch.load(weights_file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"--weights-file {weights_file}: cannot load it ({type(e).__name__})")
    return (state if arch in RESNET_PRESETS else torchvision_vit_state(state)), entry


def resize_pos_embed(pos, num_prefix_tokens, grid):
    """Position embeddings (1, prefix + g*g, D) resized to a (h, w) patch grid: bicubic on the 2-D grid (antialiased
    when shrinking), the prefix (cls) embeddings kept; the same tensor when the grid does not change."""
    prefix, patches = pos[:, :num_prefix_tokens], pos[:, num_prefix_tokens:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"position embeddings of {patches.shape[1]} patches are not a square grid")
    if (side, side) == tuple(grid):
        return pos
    patches = patches.reshape(1, side, side, -1).permute(0, 3, 1, 2).float()
    patches = F.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False,
                            antialias=grid[0] * grid[1] < side * side)
    return torch.cat([prefix, patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)], 1)


def is_attention_own(key):
    """A tensor only some attention kinds have (Linformer projections, Nystrom conv, LSA temperature, hybrid gate,
    Performer features): created fresh, or left behind, when a pretrained backbone's attention is swapped."""
    return re.match(r"blocks\.\d+\.attn\.(?!qkv\.|proj\.)", key) is not None


def transfer_state(model, source, fresh_head=False, truncated=False):
    """Load a source state dict (same family, our names) into `model` where it maps, strictly: a new head when the
    class count differs (or fresh_head), position embeddings resized to the model's grid, later blocks or stages
    than the model keeps removed (only if truncated), the attention kind's own tensors created or left behind.
    Returns what was done (new_head, resized, removed blocks or stages, created and left_behind tensors);
    ValueError naming the tensor that cannot be mapped."""
    target = model.state_dict()
    removed_layer = re.compile(r"(blocks\.(\d+)|layer(\d))\.")
    kept_layers = len(model.blocks) if isinstance(model, ViT) else sum(
        not isinstance(getattr(model, f"layer{i}"), nn.Identity) for i in range(1, 5))
    report = dict(new_head=False, resized=None, removed=[], created=[], left_behind=[])
    for key in source:
        if key in target:
            continue
        m = removed_layer.match(key)
        if m and int(m.group(2) or int(m.group(3)) - 1) >= kept_layers:
            if not truncated:  # removing layers is a choice the command line states
                raise ValueError(f"the source has more blocks or stages than this model's {kept_layers} ({key}); "
                                 f"pass --truncate {kept_layers} to keep its first {kept_layers}")
            report["removed"].append(m.group(1))  # a later block or stage than the model keeps
        elif is_attention_own(key):
            report["left_behind"].append(key)
        else:
            raise ValueError(f"the source's {key} has no place in this model (another architecture?)")
    merged = {}
    for key, value in target.items():
        if key.startswith(("head.", "fc.")) and (fresh_head or key not in source or source[key].shape != value.shape):
            merged[key], report["new_head"] = value, True
        elif key not in source:
            if not is_attention_own(key):
                raise ValueError(f"the source has no {key}: it has fewer blocks or stages than this model, or is "
                                 "another architecture")
            merged[key] = value
            report["created"].append(key)
        elif key == "pos_embed" and source[key].shape != value.shape and source[key].shape[2] == value.shape[2]:
            merged[key] = resize_pos_embed(source[key], model.num_prefix_tokens, model.blocks[0].attn.grid)
            old, new = source[key].shape[1] - model.num_prefix_tokens, value.shape[1] - model.num_prefix_tokens
            report["resized"] = f"{math.isqrt(old)}x{math.isqrt(old)} -> {math.isqrt(new)}x{math.isqrt(new)}"
        elif source[key].shape != value.shape:
            raise ValueError(f"cannot map {key}: the source has shape {tuple(source[key].shape)}, this model "
                             f"{tuple(value.shape)}")
        else:
            merged[key] = source[key]
    model.load_state_dict(merged, strict=True)
    report["removed"] = sorted(set(report["removed"]), key=lambda k: int(re.sub(r"\D", "", k)))
    return report


def count_params(model):
    """Number of parameters (a frozen backbone's included)."""
    return sum(p.numel() for p in model.parameters())
