"""The batched recipe augmentations, each op pixel for pixel against torchvision's functional kernel."""
import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

import augment as A

NEAREST = InterpolationMode.NEAREST
SHAPES = [(12, 16, 16), (4, 32, 32), (6, 12, 20)]  # n, H, W: the brief's square cases and a non-square one


def reference(img, name, f, fill=128):
    """torchvision's functional op (or the hand computation of SolarizeAdd) on one image at signed fraction f."""
    h, w = img.shape[-2:]
    factor = max(0.1, 1 + 0.9 * f)  # timm's floor: no image made black or flat beyond level 10
    affine = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0], interpolation=NEAREST, fill=fill)
    if name == "Rotate":
        return TF.rotate(img, angle=30 * f, interpolation=NEAREST, fill=fill)
    if name in ("ShearX", "ShearY"):
        s = math.degrees(math.atan(0.3 * f))
        return TF.affine(img, **affine | dict(shear=[s, 0.0] if name == "ShearX" else [0.0, s], center=[0, 0]))
    if name == "TranslateX":
        return TF.affine(img, **affine | dict(translate=[int(0.45 * f * w), 0]))
    if name == "TranslateY":
        return TF.affine(img, **affine | dict(translate=[0, int(0.45 * f * h)]))
    enhance = dict(Brightness=TF.adjust_brightness, Color=TF.adjust_saturation, Contrast=TF.adjust_contrast,
                   Sharpness=TF.adjust_sharpness)
    if name in enhance:
        return enhance[name](img, factor)
    if name == "Posterize":
        return TF.posterize(img, min(8, max(4, 8 - round(4 * f))))  # never below torchvision's 4 bits
    if name == "Solarize":
        threshold = 256 * (1 - f)
        return img.clone() if threshold > 255 else TF.solarize(img, threshold)  # torchvision refuses > 255
    if name == "SolarizeAdd":
        add = int(110 * f)
        return torch.where(img < 128, (img.int() + add).clamp(max=255), img.int()).to(torch.uint8)
    return dict(AutoContrast=TF.autocontrast, Equalize=TF.equalize, Invert=TF.invert)[name](img)


def random_images(n, h, w, seed):
    """Random uint8 images; the first two low-contrast (narrow histograms: equalize's and autocontrast's edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    x[:2] = x[:2] // 8 + 100
    if n > 2:
        x[2, 0] = 77  # a flat channel
    return x


@pytest.mark.parametrize("name", A.RANDAUG_OPS)
def test_each_op_on_a_batch_equals_torchvision_per_image(name):
    for k, (n, h, w) in enumerate(SHAPES):
        x = random_images(n, h, w, seed=k)
        g = torch.Generator().manual_seed(100 + k)
        levels = torch.rand(n, 1, generator=g) * 20  # up to 20: AugReg's extrapolated magnitudes
        # Ends of the scale, DeiT's 9, an integer solarize threshold (128, 192), posterize's half-way roundings.
        fixed = torch.tensor([0.0, 10.0, 9.0, 5.0, 2.5, 1.25, 3.75])[:n]
        levels[:len(fixed), 0] = fixed
        if name in A.SIGNED:
            levels = torch.where(torch.rand(n, 1, generator=g) < 0.5, -levels, levels)
        out = A.rand_augment(x, torch.full((n, 1), A.OP_ID[name]), levels)
        assert out.dtype == torch.uint8 and out.shape == x.shape
        for i in range(n):
            expected = reference(x[i], name, float(levels[i, 0]) / A.RANDAUG_MAX_LEVEL)
            assert torch.equal(out[i], expected), (name, (h, w), float(levels[i, 0]))


def test_solarize_add_by_hand():
    x = torch.tensor([0, 100, 127, 128, 200, 255, 20, 150], dtype=torch.uint8).view(1, 1, 2, 4).expand(2, 3, 2, 4)
    out = A.rand_augment(x.contiguous(), torch.full((2, 1), A.OP_ID["SolarizeAdd"]), torch.tensor([[9.0], [20.0]]))
    assert out[0, 0].flatten().tolist() == [99, 199, 226, 128, 200, 255, 119, 150]  # + int(99)
    assert out[1, 2].flatten().tolist() == [220, 255, 255, 128, 200, 255, 240, 150]  # + 220, clipped


def test_images_get_their_own_ops_composed_in_order():
    n, h, w = 48, 16, 16
    x = random_images(n, h, w, seed=5)
    ops, levels = A.randaug_draws(n, 2, 9, 0.5, torch.Generator().manual_seed(3), prob=0.8)
    assert len(set(ops[:, 0].tolist())) > 8 and (ops == -1).any()  # many ops in one batch, some skipped
    out = A.rand_augment(x, ops, levels)
    for i in range(n):
        expected = x[i]
        for layer in range(2):
            if ops[i, layer] >= 0:
                name = A.RANDAUG_OPS[ops[i, layer]]
                expected = reference(expected, name, float(levels[i, layer]) / A.RANDAUG_MAX_LEVEL)
        assert torch.equal(out[i], expected), (i, ops[i].tolist())


def test_rand_augment_keeps_shape_and_takes_empty_and_single_batches():
    x = random_images(3, 16, 16, seed=1)
    before = x.clone()
    out = A.rand_augment(x, torch.tensor([[A.OP_ID["Rotate"]], [-1], [A.OP_ID["Equalize"]]]), torch.ones(3, 1))
    assert torch.equal(x, before) and torch.equal(out[1], x[1])  # input untouched, a skipped op is the identity
    one = A.rand_augment(x[:1], torch.tensor([[A.OP_ID["Sharpness"], A.OP_ID["ShearY"]]]), torch.tensor([[5.0, 5.0]]))
    assert one.shape == (1, 3, 16, 16) and one.dtype == torch.uint8
    empty = A.rand_augment(x[:0], torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2))
    assert empty.shape == (0, 3, 16, 16)


def test_randaug_draws_follow_the_settings_and_repeat_with_the_seed():
    draw = lambda *a, **k: A.randaug_draws(4000, 2, *a, generator=torch.Generator().manual_seed(7), **k)
    ops, levels = draw(9, 0.5)
    assert ops.dtype == torch.int64 and levels.dtype == torch.float32 and ops.shape == levels.shape == (4000, 2)
    again = draw(9, 0.5)
    assert torch.equal(ops, again[0]) and torch.equal(levels, again[1])
    assert abs((ops == -1).float().mean() - 0.5) < 0.03  # timm applies each op with probability 0.5
    assert set(ops[ops >= 0].unique().tolist()) == set(range(len(A.RANDAUG_OPS)))
    assert levels.abs().max() <= 10 and abs(levels.abs().mean() - 9) < 0.1 and levels.abs().std() > 0.3
    signed = torch.tensor([name in A.SIGNED for name in A.RANDAUG_OPS])[ops.clamp_min(0)]
    signed, unsigned = signed & (ops >= 0), ~signed & (ops >= 0)
    assert (levels[unsigned] >= 0).all() and abs((levels[signed] < 0).float().mean() - 0.5) < 0.04
    ops, levels = draw(15, 0, prob=1.0)  # AugReg: no noise, extrapolated, every op applied
    assert (ops >= 0).all() and (levels.abs() == 15).all()


def test_erasing_boxes_are_timms():
    n, h, w = 20000, 32, 32
    boxes = A.erasing_draws(n, 0.25, h, w, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, A.erasing_draws(n, 0.25, h, w, torch.Generator().manual_seed(0)))
    top, left, bh, bw = boxes.T
    has = bh > 0
    assert ((bw > 0) == has).all() and (boxes[~has] == 0).all()
    assert abs(has.float().mean() - 0.25) < 0.02
    top, left, bh, bw = (v[has].double() for v in boxes.T)
    assert (top >= 0).all() and (left >= 0).all() and (top + bh <= h).all() and (left + bw <= w).all()
    assert (bh < h).all() and (bw < w).all()
    # h and w are rounded from sqrt(area * ratio) and sqrt(area / ratio): area and ratio within rounding.
    assert ((bh - 0.5) * (bw - 0.5) <= h * w / 3).all() and ((bh + 0.5) * (bw + 0.5) >= 0.02 * h * w).all()
    assert ((bh - 0.5) / (bw + 0.5) <= 1 / 0.3).all() and ((bh + 0.5) / (bw - 0.5) >= 0.3).all()
    assert (top == 0).any() and (top + bh == h).any()  # placements reach both ends
    assert (A.erasing_draws(100, 0.0, h, w, torch.Generator()) == 0).all()


def test_random_erase_fills_exactly_the_boxes():
    x, noise = torch.zeros(3, 3, 8, 10), torch.randn(3, 3, 8, 10)
    boxes = torch.tensor([[1, 2, 3, 4], [0, 0, 0, 0], [5, 0, 3, 10]])
    out = A.random_erase(x, boxes, noise)
    assert (x == 0).all()
    expected = torch.zeros_like(x)
    expected[0, :, 1:4, 2:6] = noise[0, :, 1:4, 2:6]
    expected[2, :, 5:8, :] = noise[2, :, 5:8, :]
    assert torch.equal(out, expected)


def test_soft_targets_and_mixup_by_hand():
    targets = A.soft_targets(torch.tensor([0, 2]), 3, 0.1)
    off, on = 0.1 / 3, 0.9 + 0.1 / 3
    assert torch.allclose(targets, torch.tensor([[on, off, off], [off, off, on]]))
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1).expand(2, 3, 4, 4)
    mixed, soft = A.mix_batch(x, targets, 0.7, (0, 0, 0, 0))
    assert torch.allclose(mixed[0], torch.full((3, 4, 4), 0.7 * 1 + 0.3 * 3))
    assert torch.allclose(soft[0], torch.tensor([0.7 * on + 0.3 * off, off, 0.7 * off + 0.3 * on]))
    assert torch.allclose(soft.sum(1), torch.ones(2)) and soft.dtype == torch.float32


def test_cutmix_pastes_the_partner_and_lam_is_the_area_left():
    draws = A.mix_draws(400, 0.0, 1.0, 1.0, 0.5, 32, 32, torch.Generator().manual_seed(1))
    lam, box = draws["lam"], draws["box"]
    assert lam.dtype == torch.float64 and box.shape == (400, 4)
    assert torch.allclose(lam, 1 - (box[:, 2] * box[:, 3]).double() / 1024) and (box[:, 2] > 0).float().mean() > 0.9
    assert ((box[:, 0] + box[:, 2] <= 32) & (box[:, 1] + box[:, 3] <= 32)).all()
    x = torch.randn(5, 3, 32, 32)
    k = int(torch.nonzero(box[:, 2] > 3)[0, 0])
    top, left, h, w = box[k].tolist()
    out, soft = A.mix_batch(x, A.soft_targets(torch.arange(5), 5, 0.0), float(lam[k]), box[k].tolist())
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[top:top + h, left:left + w] = True
    assert torch.equal(out[:, :, inside], x.flip(0)[:, :, inside]) and torch.equal(out[:, :, ~inside], x[:, :, ~inside])
    assert torch.allclose(soft[0, 0], lam[k].float()) and torch.allclose(soft[0, 4], 1 - lam[k].float())


def test_mix_draws_follow_mix_prob_and_switch_prob():
    draw = lambda *a: A.mix_draws(4000, *a, 32, 32, torch.Generator().manual_seed(2))
    off = draw(0.8, 1.0, 0.0, 0.5)
    assert (off["lam"] == 1).all() and (off["box"] == 0).all()
    both = draw(0.8, 1.0, 1.0, 0.3)
    cut = both["box"][:, 2] > 0
    assert abs(cut.float().mean() - 0.3) < 0.03 and (both["lam"] < 1).float().mean() > 0.99
    mixup_only = draw(0.8, 0.0, 0.5, 0.5)
    assert (mixup_only["box"] == 0).all() and abs((mixup_only["lam"] < 1).float().mean() - 0.5) < 0.03
    again = draw(0.8, 1.0, 1.0, 0.3)
    assert torch.equal(both["lam"], again["lam"]) and torch.equal(both["box"], again["box"])


DEIT = {"randaug": [2, 9, 0.5], "mixup": 0.8, "cutmix": 1.0, "mix_prob": 1.0, "switch_prob": 0.5,
        "random_erasing": 0.25}


def test_recipe_batch_gives_standardised_images_and_soft_targets():
    n, h, w = 24, 16, 16
    images, labels = random_images(n, h, w, seed=9), torch.arange(n) % 10
    batches = [slice(0, 12), slice(12, 24)]
    draws = A.recipe_draws(n, batches, DEIT, h, w, seed=0, epoch=3)
    again = A.recipe_draws(n, batches, DEIT, h, w, seed=0, epoch=3)
    assert set(draws) == {"ops", "levels", "boxes", "lam", "box"}
    assert all(torch.equal(draws[k], again[k]) for k in draws)
    other = A.recipe_draws(n, batches, {"randaug": [2, 9, 0.5]}, h, w, seed=0, epoch=3)
    assert set(other) == {"ops", "levels"} and torch.equal(other["ops"], draws["ops"])  # parts drawn separately
    assert not torch.equal(A.recipe_draws(n, batches, DEIT, h, w, seed=0, epoch=4)["ops"], draws["ops"])
    always = A.recipe_draws(n, batches, {"randaug": [2, 9, 0.5, 1.0]}, h, w, seed=0, epoch=3)  # op probability 1
    assert (always["ops"] >= 0).all() and (draws["ops"] == -1).any()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    for b, part in enumerate(batches):
        x, targets = A.recipe_batch(images[part], labels[part], draws, part, b, DEIT, mean, std, 10, 0.1,
                                    noise_generator=torch.Generator().manual_seed(b))
        assert x.dtype == torch.float32 and x.shape == (12, 3, h, w)
        assert targets.shape == (12, 10) and torch.allclose(targets.sum(1), torch.ones(12))
    plain = A.recipe_draws(n, batches, {}, h, w, seed=0, epoch=0)
    x, targets = A.recipe_batch(images[:12], labels[:12], plain, slice(0, 12), 0, {}, mean, std, 10, 0.1)
    assert plain == {} and torch.equal(targets, labels[:12])
    assert torch.allclose(x, (images[:12].float() / 255 - torch.tensor(mean).view(1, 3, 1, 1))
                          / torch.tensor(std).view(1, 3, 1, 1))


@pytest.mark.parametrize("name", ["Brightness", "Contrast", "Color", "Posterize"])
def test_levels_beyond_10_keep_the_image(name):
    # AugReg's magnitudes 15 and 20 extrapolate; no op may turn an image into one flat colour there.
    x = random_images(4, 16, 16, seed=3)[2:] // 2 + 60  # no flat channel, mid-range values
    levels = torch.tensor([[-20.0], [20.0]]) if name in A.SIGNED else torch.tensor([[15.0], [20.0]])
    out = A.rand_augment(x.contiguous(), torch.full((2, 1), A.OP_ID[name]), levels)
    for img in out:
        assert img.float().std() > 1 and img.max() > 0, (name, levels)


def test_every_augmentation_keeps_shape_dtype_and_value_range():
    n, h, w = 16, 16, 16
    images = random_images(n, h, w, seed=5)
    g = torch.Generator().manual_seed(0)
    ops, levels = A.randaug_draws(n, 3, 20, 0.5, g, prob=1.0)  # strong: extrapolated levels, every op applied
    out = A.rand_augment(images, ops, levels)
    assert out.shape == images.shape and out.dtype == torch.uint8 and not torch.equal(out, images)
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
    x = (out.float() / 255 - mean) / std
    low, high = (0 - mean) / std, (1 - mean) / std  # the standardised range of uint8 pixels
    erased = A.random_erase(x, A.erasing_draws(n, 1.0, h, w, g), torch.randn(x.shape, generator=g))
    assert erased.shape == x.shape and erased.dtype == torch.float32 and (erased != x).any()
    targets = A.soft_targets(torch.arange(n) % 10, 10, 0.1)
    for lam, box in ((0.3, (0, 0, 0, 0)), (0.75, (2, 4, 8, 8))):  # mixup, cutmix
        mixed, soft = A.mix_batch(x, targets, lam, box)
        assert mixed.shape == x.shape and mixed.dtype == torch.float32 and soft.shape == targets.shape
        # Each mixed pixel lies between its image's and its partner's, so inside the standardised uint8 range.
        lo, hi = torch.minimum(x, x.flip(0)), torch.maximum(x, x.flip(0))
        assert ((mixed >= lo - 1e-6) & (mixed <= hi + 1e-6)).all()
        assert ((mixed >= low - 1e-6) & (mixed <= high + 1e-6)).all()
        assert torch.allclose(soft.sum(1), torch.ones(n)) and (soft >= 0).all()
