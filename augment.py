"""The training augmentations of the DeiT / AugReg recipes, batched on the device, from explicit CPU draws.

A training batch, in timm/DeiT's order (`recipe_batch`):
  1. crop and flip, uint8 (data.augment, done by the caller);
  2. RandAugment, uint8 (`rand_augment`): `layers` ops per image, each applied with probability `prob`;
  3. standardise (data.normalize);
  4. random erasing (`random_erase`): one box per image filled with normal(0, 1) noise (timm's mode 'pixel');
  5. mixup or cutmix of the batch with its flip (`mix_batch`), label smoothing folded into the soft targets;
  6. resize to the model's input size (the caller).
Every draw but the erasing noise is made once per epoch on the CPU (`recipe_draws`, seeded by seed and epoch),
so an epoch is reproducible, resumable and the same on every process; the device only runs kernels.

RandAugment ops (RANDAUG_OPS; op id = index, -1 = skipped) are timm's "increasing" set as DeiT uses it
(rand-m9-mstd0.5-inc1). A level m on the scale 0..RANDAUG_MAX_LEVEL is the fraction f = m / 10 of each op's
maximum: our m equals timm's rand-mM, and torchvision's RandAugment bin 3m of num_magnitude_bins=31 (its bins
0..30 span nearly the same maxima: translate 150/331 = 0.453 of the side, solarize 255 (1 - f); posterize
differs, below). Levels above 10 extrapolate linearly (AugReg uses 15 and 20), within the floors below.
  op            parameter at fraction f (+/-: a random sign, as timm and torchvision draw it)
  AutoContrast, Equalize, Invert     no parameter
  Rotate        +/- 30 f degrees
  Posterize     8 - round(4 f) bits, clamped to 4..8 (torchvision's range: 8 bits at m 0, 4 at m 10 and beyond;
                not timm's increasing 4 -> 0 bits, which wipes out a CIFAR image)
  Solarize      invert the pixels >= 256 (1 - f) (timm's increasing threshold)
  SolarizeAdd   add int(110 f) to the pixels < 128, clipped at 255 (timm; not in torchvision)
  Color, Contrast, Brightness, Sharpness   factor 1 +/- 0.9 f, at least 0.1 as timm's (Color is saturation)
  ShearX, ShearY     shear factor +/- 0.3 f about the top-left corner (torchvision's angle degrees(atan(0.3 f)))
  TranslateX, TranslateY     +/- 0.45 f of the image side, truncated to whole pixels (torchvision's int())
Geometric ops sample the nearest pixel (torchvision's RandAugment default) and fill with `fill` (timm's default grey
128; DeiT's timm call fills with the dataset mean).
Every op equals the torchvision.transforms.v2.functional kernel it names, pixel for pixel (tests/test_augment.py).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from data import normalize

RANDAUG_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
               "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"]
RANDAUG_MAX_LEVEL = 10
SIGNED = {"Rotate", "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY"}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
OP_ID = {name: i for i, name in enumerate(RANDAUG_OPS)}

# The --recipe presets (RECIPES) are in options.py, which imports no torch.
RECIPE_KEYS = ("randaug", "mixup", "cutmix", "mix_prob", "switch_prob", "random_erasing")  # recipe_batch's


# ----------------------------------------------------------------------------- RandAugment draws

def randaug_draws(n, layers, magnitude, magnitude_std, generator, prob=0.5):
    """(ops (n, layers) int64, levels (n, layers) float32): a fresh op and signed level per image and layer."""
    # timm's RandAugment: op uniform with replacement, applied with probability prob (timm's default 0.5; -1 marks
    # a skipped op), level normal(magnitude, magnitude_std) when magnitude_std > 0, clipped to [0, 10] as timm does
    # (to [0, magnitude] above 10, timm's mmax), negated with p 0.5 for the ops in SIGNED. Every tensor is drawn
    # whatever the values, so the stream's use is fixed.
    ops = torch.randint(0, len(RANDAUG_OPS), (n, layers), generator=generator)
    skip = torch.rand(n, layers, generator=generator) >= prob
    noise = torch.randn(n, layers, generator=generator)
    negate = torch.rand(n, layers, generator=generator) < 0.5
    levels = torch.full((n, layers), float(magnitude))
    if magnitude_std > 0:
        levels = (levels + magnitude_std * noise).clamp(0, max(RANDAUG_MAX_LEVEL, magnitude))
    signed = torch.tensor([name in SIGNED for name in RANDAUG_OPS])[ops]
    levels = torch.where(signed & negate, -levels, levels)
    return ops.masked_fill(skip, -1), levels.float()


# ----------------------------------------------------------------------------- colour ops, per-image parameters
# Each takes a uint8 group (g, 3, H, W) and the signed fractions f (g,) float64 on its device. Parameters are
# computed in float64, then rounded to float32 where torchvision casts a Python float into a float32 kernel.

def _col(v):
    """(g,) -> (g, 1, 1, 1) float32, a per-image scalar broadcast over the image."""
    return v.float().view(-1, 1, 1, 1)


def _blend(x, y, factor):
    """torchvision's _blend with per-image ratios: x * r + y * (1 - r) in one fused multiply-add as its
    add_(alpha=), clamped, truncated to uint8."""
    return torch.addcmul(x * _col(factor), y, _col(1 - factor)).clamp_(0, 255).to(torch.uint8)


def _gray(x):
    """torchvision's grayscale of a uint8 batch, floored: (g, 1, H, W) float32, the same ops in the same order."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _factor(f):
    """The enhance factor 1 + 0.9 f (timm's increasing ops), at least 0.1 as timm's: beyond level 10 a factor of 0
    would make an all-black (brightness) or flat (contrast, color) image."""
    return (1 + 0.9 * f).clamp_min(0.1)


def _sharpness(x, factor):
    """torchvision's adjust_sharpness: the interior blended with the 13-weight 3x3 blur, the border kept."""
    if x.shape[-1] <= 2 or x.shape[-2] <= 2:
        return x
    xf = x.float()
    inner = xf[..., 1:-1, 1:-1]
    # Weights 1 around a centre 5, over 13. The exact value sum / 13 is never within 1/26 of a half, so rounding
    # the exact integer sum equals torchvision's rounding of its float32 convolution, whatever the algorithm.
    rows = xf[..., :-2] + xf[..., 1:-1] + xf[..., 2:]  # separable 3x3 sum (adds: cheaper than a convolution)
    blurred = ((rows[..., :-2, :] + rows[..., 1:-1, :] + rows[..., 2:, :] + 4 * inner) / 13).round_()
    xf[..., 1:-1, 1:-1] = torch.addcmul(inner, blurred - inner, _col(1 - factor))
    return xf.clamp_(0, 255).to(torch.uint8)


def _autocontrast(x):
    """torchvision's autocontrast: each channel stretched to 0..255 (a flat channel kept)."""
    xf = x.float()
    lo, hi = xf.amin((2, 3), keepdim=True), xf.amax((2, 3), keepdim=True)
    flat = hi == lo
    scale = ((hi - lo) * (1.0 / 255)).masked_fill_(flat, 1.0)
    return ((xf - lo.masked_fill_(flat, 0.0)) / scale).clamp_(0, 255).to(torch.uint8)


def _equalize(x):
    """torchvision's (PIL's) equalize per channel; a channel whose step is 0 is kept."""
    flat = x.flatten(2).long()  # g, 3, HW
    hist = torch.zeros(*flat.shape[:2], 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(2, flat, torch.ones_like(flat))
    cum = hist.cumsum(2)
    step = (flat.shape[-1] - hist.gather(2, cum.argmax(2, keepdim=True))) // 255  # all but the last level's
    lut = ((cum[..., :-1] + step // 2) // step.clamp_min(1)).clamp_(0, 255)
    lut = torch.cat([torch.zeros_like(lut[..., :1]), lut], 2)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device)).to(torch.uint8)  # step 0: kept
    return lut.gather(2, flat).view_as(x)


def _posterize(x, f):
    """Keep the top 8 - round(4 f) bits (round half to even, as torch.round and Python), at least 4 (torchvision's
    maximum: fewer bits beyond level 10 would wipe the image out)."""
    bits = (8 - torch.round(4 * f)).clamp(4, 8).long()
    return x & ((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1)


def _solarize(x, f):
    """Invert the pixels >= 256 (1 - f); the threshold is float32, as torchvision compares."""
    return x ^ (x >= _col(256 * (1 - f))).to(torch.uint8).neg_()  # xor 255 inverts (uint8 where is slow)


def _solarize_add(x, f):
    """timm's solarize_add: int(110 f) added to the pixels below 128, clipped at 255."""
    add = (110 * f).trunc().clamp(0, 255).to(torch.uint8).view(-1, 1, 1, 1)
    return x + torch.minimum(255 - x, add) * (x < 128)  # min(x + add, 255), in uint8 without overflow


COLOR_OPS = {
    "AutoContrast": lambda x, f: _autocontrast(x),
    "Equalize": lambda x, f: _equalize(x),
    "Invert": lambda x, f: 255 - x,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": lambda x, f: _blend(x, _gray(x), _factor(f)),
    "Contrast": lambda x, f: _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), _factor(f)),
    "Brightness": lambda x, f: (x * _col(_factor(f))).clamp_(0, 255).to(torch.uint8),
    "Sharpness": lambda x, f: _sharpness(x, _factor(f)),
}


# ----------------------------------------------------------------------------- geometric ops, one affine call

def _inverse_affine(cx, cy, angle, tx, ty, shear_x, shear_y):
    """torchvision's _get_inverse_affine_matrix (scale 1), elementwise in float64 in its order: (g, 6)."""
    rot, sx, sy = angle * (math.pi / 180), shear_x * (math.pi / 180), shear_y * (math.pi / 180)
    cos_sy, tan_sx = torch.cos(sy), torch.tan(sx)
    a = torch.cos(rot - sy) / cos_sy
    b = -(a * tan_sx + torch.sin(rot))
    c = torch.sin(rot - sy) / cos_sy
    d = torch.cos(rot) - c * tan_sx
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = cx - m0 * (cx + tx) - m1 * (cy + ty)
    m5 = cy - m3 * (cx + tx) - m4 * (cy + ty)
    return torch.stack([m0, m1, m2, m3, m4, m5], 1)


def _geometric(x, op, f, fill):
    """Rotate, shear and translate a group, each image by its own op: one grid_sample, torchvision's grid."""
    g, _, h, w = x.shape
    is_op = lambda name: op == OP_ID[name]
    zero = torch.zeros_like(f)
    shear = torch.atan(0.3 * f) * (180 / math.pi)  # math.degrees(math.atan(0.3 f)), as torchvision's RandAugment
    # torchvision's rotate turns by -(angle % 360) about the centre; its RandAugment shears about the top-left
    # corner (center [0, 0], here in centred coordinates) and translates by whole pixels.
    angle = torch.where(is_op("Rotate"), -torch.remainder(30 * f, 360), zero)
    corner = is_op("ShearX") | is_op("ShearY")
    matrix = _inverse_affine(torch.where(corner, -w * 0.5, zero), torch.where(corner, -h * 0.5, zero), angle,
                             torch.where(is_op("TranslateX"), (0.45 * f * w).trunc(), zero),
                             torch.where(is_op("TranslateY"), (0.45 * f * h).trunc(), zero),
                             torch.where(is_op("ShearX"), shear, zero), torch.where(is_op("ShearY"), shear, zero))
    theta = matrix.float().view(g, 2, 3)
    base = torch.empty(1, h, w, 3, device=x.device)
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, steps=w, device=x.device))
    base[..., 1].copy_(torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, steps=h, device=x.device)[:, None])
    base[..., 2].fill_(1)
    rescaled = theta.transpose(1, 2).contiguous()  # (g, 3, 2), divided by the half sides as torchvision
    rescaled[..., 0] /= 0.5 * w
    rescaled[..., 1] /= 0.5 * h
    grid = base.view(1, h * w, 3).expand(g, -1, -1).bmm(rescaled).view(g, h, w, 2)
    # torchvision samples a ones channel along and puts `fill` where it reads 0 (the nearest source lies outside).
    # Sampling x - fill with zero padding and adding fill back is the same, exactly (integers in float32).
    out = F.grid_sample(x.float() - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out + fill).to(torch.uint8)


# ----------------------------------------------------------------------------- RandAugment

def rand_augment(images, ops, levels, fill=128):
    """uint8 (n, 3, H, W) -> uint8: for each layer, image i gets op ops[i, l] at level levels[i, l]."""
    # Grouping happens on the host from `ops` on the CPU (as recipe_draws makes them; ops on the device cost one
    # sync): per layer a stable sort puts each op's images together, geometric ops as one group, and one copy of
    # that order reaches the device. Each colour op then runs once on its group, all geometric ops share one
    # grid_sample, and index_copy_ scatters the results back.
    x, dev = images.clone(), images.device
    ops_cpu = ops.cpu()
    op_dev, fraction = ops_cpu.to(dev), levels.to(dev, torch.float64) / RANDAUG_MAX_LEVEL
    geo_id = len(RANDAUG_OPS)  # the geometric group's key; -1 (skipped) sorts first
    is_geo = torch.tensor([name in GEOMETRIC for name in RANDAUG_OPS] + [False])  # op -1 reads the last entry
    for layer in range(ops_cpu.shape[1]):
        key = torch.where(is_geo[ops_cpu[:, layer]], geo_id, ops_cpu[:, layer])
        counts = torch.bincount(key + 1, minlength=geo_id + 2).tolist()
        groups = torch.argsort(key, stable=True).to(dev).split(counts)[1:]  # groups[k]: key k
        for k, idx in enumerate(groups):
            if len(idx) and k == geo_id:
                x.index_copy_(0, idx, _geometric(x[idx], op_dev[idx, layer], fraction[idx, layer], fill))
            elif len(idx):
                x.index_copy_(0, idx, COLOR_OPS[RANDAUG_OPS[k]](x[idx], fraction[idx, layer]))
    return x


# ----------------------------------------------------------------------------- random erasing

def erasing_draws(n, prob, height, width, generator, attempts=10):
    """(n, 4) int64 boxes (top, left, h, w) of timm's RandomErasing (mode 'pixel', one box): h = w = 0 for no box."""
    # timm: with probability prob, up to 10 attempts of area U[0.02, 1/3] of the image and log aspect ratio
    # U[log 0.3, log 1/0.3]; the first box that fits (h < H, w < W) is placed uniformly. All attempts of all
    # images are drawn at once, float64 on the CPU.
    uniform = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64)
    erase = uniform(n) < prob
    area = height * width * (0.02 + (1 / 3 - 0.02) * uniform(n, attempts))
    ratio = torch.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * uniform(n, attempts))
    h = torch.sqrt(area * ratio).round().long()  # round half to even, as Python's round
    w = torch.sqrt(area / ratio).round().long()
    fits = (h < height) & (w < width)
    first = fits.long().argmax(1, keepdim=True)  # the first attempt that fits (0 if none: masked below)
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top, left = (uniform(n) * (height - h + 1)).floor().long(), (uniform(n) * (width - w + 1)).floor().long()
    keep = (erase & fits.any(1)).long()[:, None]
    return torch.stack([top, left, h, w], 1) * keep


def _box_mask(boxes, height, width, device):
    """(n, 1, H, W) bool: the pixels inside each image's box (top, left, h, w)."""
    top, left, h, w = boxes.to(device).unbind(1)
    rows, cols = torch.arange(height, device=device), torch.arange(width, device=device)
    inside_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    inside_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    return (inside_rows[:, :, None] & inside_cols[:, None, :])[:, None]


def random_erase(x, boxes, noise):
    """Float batch (n, C, H, W) with each box filled by `noise` (same shape as x; normal(0, 1) in the standardised
    space, timm's 'pixel' mode), as a mask; x is not modified in place."""
    return torch.where(_box_mask(boxes, x.shape[2], x.shape[3], x.device), noise, x)


# ----------------------------------------------------------------------------- mixup, cutmix, soft targets

def mix_draws(num_batches, mixup, cutmix, mix_prob, switch_prob, height, width, generator):
    """Per global batch: dict of tensors lam (float64), box (num_batches, 4) int64 (top, left, h, w; h = w = 0 for
    mixup or no mixing): timm's Mixup in 'batch' mode."""
    # timm draws with NumPy's legacy generator (beta has no seedable torch counterpart), so a RandomState seeded
    # from `generator` draws every tensor below, whatever the settings, for a fixed use of the stream.
    rng = np.random.RandomState(int(torch.randint(0, 2 ** 31 - 1, (), generator=generator)))
    mix, switch = rng.rand(num_batches) < mix_prob, rng.rand(num_batches) < switch_prob
    lam_mixup = rng.beta(mixup, mixup, num_batches) if mixup > 0 else np.ones(num_batches)
    lam_cutmix = rng.beta(cutmix, cutmix, num_batches) if cutmix > 0 else np.ones(num_batches)
    cy, cx = rng.randint(0, height, num_batches), rng.randint(0, width, num_batches)
    use_cutmix = mix & (cutmix > 0) & ((mixup <= 0) | switch)
    use_mixup = mix & (mixup > 0) & ~use_cutmix
    # timm's rand_bbox: a box of side int(side * sqrt(1 - lam)) centred on (cy, cx), clipped to the image; then
    # lam = 1 - its area share (correct_lam).
    cut_rat = np.sqrt(1 - lam_cutmix)
    cut_h, cut_w = (height * cut_rat).astype(np.int64), (width * cut_rat).astype(np.int64)
    top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    box = np.stack([top, left, bottom - top, right - left], 1) * use_cutmix[:, None]
    lam = np.where(use_cutmix, 1 - (bottom - top) * (right - left) / (height * width),
                   np.where(use_mixup, lam_mixup, 1.0))
    return dict(lam=torch.from_numpy(lam.astype(np.float64)), box=torch.from_numpy(box.astype(np.int64)))


def soft_targets(labels, num_classes, smoothing):
    """(n,) int64 -> (n, C) float32 rows summing to 1: label smoothing as timm folds it in (off = smoothing / C,
    on = 1 - smoothing + off)."""
    off = smoothing / num_classes
    out = torch.full((len(labels), num_classes), off, device=labels.device)
    return out.scatter_(1, labels[:, None], 1 - smoothing + off)


def mix_batch(x, targets, lam, box):
    """Mix a float batch with its flip along the batch dimension (timm's partner: image i with image n-1-i):
    mixup x*lam + x.flip(0)*(1-lam), or cutmix pasting the flipped batch's box; soft targets
    targets*lam + targets.flip(0)*(1-lam). Returns new tensors. lam a python float, box a 4-tuple."""
    top, left, h, w = (int(v) for v in box)
    if h > 0 and w > 0:  # cutmix
        x = x.clone()
        x[:, :, top:top + h, left:left + w] = x.flip(0)[:, :, top:top + h, left:left + w]
    else:  # mixup (lam 1: a copy)
        x = x * lam + x.flip(0) * (1 - lam) if lam < 1 else x.clone()
    return x, targets * lam + targets.flip(0) * (1 - lam)


# ----------------------------------------------------------------------------- a recipe, end to end

def recipe_mixes(recipe):
    """Whether a recipe mixes images (mixup or cutmix on): its targets are then soft."""
    return recipe.get("mixup", 0) > 0 or recipe.get("cutmix", 0) > 0


def recipe_draws(n, batches, recipe, height, width, seed, epoch):
    """One epoch's recipe draws on the CPU, from a generator seeded by (seed, epoch) and separate from
    data.epoch_plan's: dict with randaug ops/levels per position (n positions), erasing boxes per position, mix
    lam/box per batch (index into `batches`, a list of slices); only the parts the recipe uses."""
    # One generator per part, seeded above epoch_plan's seeds (seed * 100003 + epoch < 2^40): switching one part
    # on or off leaves the other parts' draws as they were.
    part = lambda k: torch.Generator().manual_seed((1 << 40) + 4 * (seed * 100003 + epoch) + k)
    out = {}
    if "randaug" in recipe:
        layers, magnitude, magnitude_std, *prob = recipe["randaug"]  # an optional 4th entry: the op probability
        out["ops"], out["levels"] = randaug_draws(n, layers, magnitude, magnitude_std, part(1), *prob)
    if recipe.get("random_erasing", 0) > 0:
        out["boxes"] = erasing_draws(n, recipe["random_erasing"], height, width, part(2))
    if recipe_mixes(recipe):
        mixed = mix_draws(len(batches), recipe.get("mixup", 0), recipe.get("cutmix", 0), recipe.get("mix_prob", 1.0),
                          recipe.get("switch_prob", 0.5), height, width, part(3))
        out["lam"], out["box"] = mixed["lam"], mixed["box"]
    return out


def recipe_batch(images, labels, draws, part, batch_index, recipe, mean, std, num_classes, smoothing,
                 noise_generator=None):
    """A training batch after crop/flip (uint8 `images`, labels of the positions `part`): RandAugment, standardise,
    random erasing, mixing -> (float images standardised at the data's size, targets: int64 labels when nothing
    mixes, else (n, C) soft targets with label smoothing folded in)."""
    if "randaug" in recipe:
        images = rand_augment(images, draws["ops"][part], draws["levels"][part])
    x = normalize(images, mean, std)
    if recipe.get("random_erasing", 0) > 0:
        noise = torch.randn(x.shape, device=x.device, generator=noise_generator)
        x = random_erase(x, draws["boxes"][part], noise)
    if not recipe_mixes(recipe):
        return x, labels
    # The flip partner lies within this process's share of the global batch, as timm's Mixup under DDP.
    targets = soft_targets(labels, num_classes, smoothing)
    return mix_batch(x, targets, float(draws["lam"][batch_index]), draws["box"][batch_index].tolist())
