"""Our ViT and torchvision's ResNets (with a small-image stem); `build_model` makes any of them by name."""
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from attention import ATTENTION_OPTIONS, Attention, attention_options, option_flag

# ViT presets for 32 px inputs. Shallow presets keep the default's width and cut its depth.
VIT_PRESETS = {
    "vit": dict(depth=6, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
    "vit-tiny": dict(depth=12, dim=192, heads=3, mlp_ratio=4.0, patch_size=4),
    "vit-small": dict(depth=12, dim=384, heads=6, mlp_ratio=4.0, patch_size=4),
    "vit-11m": dict(depth=6, dim=384, heads=6, mlp_ratio=4.0, patch_size=4),  # ResNet-18's parameter count
    "vit-shallow": dict(depth=2, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
    "vit-shallow1": dict(depth=1, dim=256, heads=8, mlp_ratio=2.0, patch_size=4),
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


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim, heads, mlp_ratio, dropout, drop_path, attention):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, **attention)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer: conv (or shifted, --spt) patch embedding, cls token or mean pooling, learned positions,
    pre-norm blocks with any attention of attention.py (its options, and `backend`, in attention_options)."""

    def __init__(self, num_classes, image_size=32, patch_size=4, depth=6, dim=256, heads=8, mlp_ratio=2.0,
                 pool="cls", attention="full", attention_options=None, spt=False, dropout=0.0, drop_path=0.0):
        super().__init__()
        if image_size % patch_size:
            allowed = ", ".join(str(p) for p in range(1, image_size + 1) if image_size % p == 0)
            raise ValueError(f"patch size {patch_size} does not divide the image size {image_size}; "
                             f"allowed: {allowed}")
        grid = image_size // patch_size
        self.pool = pool
        self.num_prefix_tokens = int(pool == "cls")  # tokens before the patches: the cls token, if any
        self.patch_embed = ShiftedPatchEmbed(patch_size, dim) if spt else nn.Conv2d(3, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + self.num_prefix_tokens, dim))
        self.dropout = nn.Dropout(dropout)
        options = dict(attention_options or {}, kind=attention, grid=(grid, grid),
                       num_prefix_tokens=self.num_prefix_tokens)
        rates = torch.linspace(0, drop_path, depth).tolist()  # deeper blocks are dropped more often
        self.blocks = nn.ModuleList()
        for r in rates:
            self.blocks.append(Block(dim, heads, mlp_ratio, dropout, r, options))
            if attention == "linformer" and options.get("linformer_share") == "layers":
                options["shared_projection"] = self.blocks[0].attn.proj_k  # one matrix for every layer
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def embed(self, x):
        """Images (B, 3, H, W) to the first block's input tokens (B, T, D): patches, cls token, positions."""
        x = self.patch_embed(x)
        if x.ndim == 4:  # the conv embedding gives B, D, h, w
            x = x.flatten(2).transpose(1, 2)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        return self.dropout(x + self.pos_embed)

    def forward(self, x):
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))


def resnet(base, num_classes, image_size=32, stages=4):
    """torchvision ResNet; for inputs of 64 px or less a 3x3 stride-1 stem without max-pool; keeps `stages` stages."""
    net = getattr(torchvision.models, base)(weights=None, num_classes=num_classes)
    if image_size <= 64:
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


def model_config(given):
    """The model section of a run's config from the options given (None: not given): the preset's sizes and the
    defaults filled in, only the options that apply to the architecture kept; ValueError for one that does not."""
    arch = given["arch"]
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    given = {k: v for k, v in given.items() if v is not None and v is not False and k != "arch"}
    if arch in RESNET_PRESETS:
        vit_only = [k for k in given if k != "stages" and (k, given[k]) != ("attention", "full")]
        if vit_only:
            value = given[vit_only[0]]
            flag = option_flag(vit_only[0]) + ("" if value is True else f" {value}")
            raise ValueError(f"{flag} applies to ViTs, not to --arch {arch}")
        return dict(arch=arch, stages=given.get("stages", RESNET_PRESETS[arch]["stages"]))
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
    chosen = {k: v for k, v in given.items() if k in ATTENTION_OPTIONS}
    # Heads that do not divide the width give no head width: Attention refuses them when the model is built.
    head_dim = model["dim"] // model["heads"] if model["dim"] % model["heads"] == 0 else None
    return model | attention_options(model["attention"], chosen, head_dim)


def build_model(arch, num_classes, image_size=32, backend="sdpa", **options):
    """Any model by name, with the options of its model section (ResNets: stages; ViTs: sizes, pool, spt, dropout,
    drop_path, attention and the attention options; the rest from the preset and VIT_DEFAULTS)."""
    if arch in RESNET_PRESETS:
        return resnet(RESNET_PRESETS[arch]["base"], num_classes, image_size,
                      options.get("stages") or RESNET_PRESETS[arch]["stages"])
    if arch not in VIT_PRESETS:
        raise ValueError(f"unknown architecture '{arch}'; choose from {', '.join(ARCHS)}")
    vit = dict(VIT_PRESETS[arch], **VIT_DEFAULTS)
    vit.update({k: v for k, v in options.items() if k not in ATTENTION_OPTIONS})
    attention = {k: v for k, v in options.items() if k in ATTENTION_OPTIONS}
    return ViT(num_classes, image_size, attention_options=dict(attention, backend=backend), **vit)


def count_params(model):
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
