"""Model sizes against published counts, local attention against brute force and a reference attention."""
import math

import pytest
import torch
import torchvision

from attention import Attention, local_attention_mask
from model import ARCHS, ViT, build_model, count_params


def test_vit_ti16_matches_published_parameter_count():
    model = ViT(1000, image_size=224, patch_size=16, depth=12, dim=192, heads=3, mlp_ratio=4.0)
    assert count_params(model) == 5_717_416  # DeiT-Ti / ViT-Ti/16, as published (5.7M)


def test_small_stem_resnet18_is_torchvision_minus_the_stem_change():
    reference = count_params(torchvision.models.resnet18(weights=None, num_classes=1000))
    removed = 7 * 7 * 3 * 64 - 3 * 3 * 3 * 64  # 7x7 conv1 replaced by a 3x3 one; max-pool has no weights
    assert count_params(build_model("resnet18", 1000, image_size=32)) == reference - removed
    # At ImageNet size the stem is torchvision's own.
    assert count_params(build_model("resnet18", 1000, image_size=224)) == reference


def test_shallow_resnet_drops_stages():
    two = build_model("resnet18-shallow", 10)
    full = build_model("resnet18", 10)
    stem_and_two = sum(count_params(m) for m in (full.conv1, full.bn1, full.layer1, full.layer2)) + 128 * 10 + 10
    assert count_params(two) == stem_and_two
    assert build_model("resnet18", 10, stages=1)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_and_classifies(arch):
    model = build_model(arch, 7, image_size=32).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def brute_force_mask(h, w, radius, cls):
    coords = [(r, c) for r in range(h) for c in range(w)]
    n = len(coords) + cls
    mask = torch.ones(n, n, dtype=torch.bool)
    for i, (r1, c1) in enumerate(coords):
        for j, (r2, c2) in enumerate(coords):
            mask[i + cls, j + cls] = max(abs(r1 - r2), abs(c1 - c2)) <= radius
    return mask


@pytest.mark.parametrize("h,w", [(3, 3), (4, 4), (5, 3), (2, 6)])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("cls", [True, False])
def test_local_mask_matches_brute_force(h, w, radius, cls):
    assert torch.equal(local_attention_mask(h, w, radius, cls), brute_force_mask(h, w, radius, int(cls)))


def reference_attention(x, attn, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V written out by hand, in float64."""
    B, T, D = x.shape
    H = attn.heads
    qkv = (x.double() @ attn.qkv.weight.double().T + attn.qkv.bias.double()).view(B, T, 3, H, D // H)
    q, k, v = qkv.unbind(2)
    scores = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(D // H)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    y = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(B, T, D)
    return y @ attn.proj.weight.double().T + attn.proj.bias.double()


def test_attention_matches_hand_written_softmax_attention():
    torch.manual_seed(0)
    x = torch.randn(2, 17, 32)
    mask = local_attention_mask(4, 4, 1, cls_token=True)
    for m in (None, mask):
        attn = Attention(32, 4, mask=m)
        assert torch.allclose(attn(x).double(), reference_attention(x, attn, m), atol=1e-5)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_local_attention_covering_the_grid_equals_full(pool):
    torch.manual_seed(0)
    full = ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, pool=pool).eval()
    with torch.no_grad():  # weights far from the near-uniform-attention init, so masks matter
        for p in full.parameters():
            p.normal_(0, 0.3)
    local = ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, pool=pool, attention="local", radius=3).eval()
    local.load_state_dict(full.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(full(x), local(x), atol=1e-5)
    narrow = ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, pool=pool, attention="local", radius=1).eval()
    narrow.load_state_dict(full.state_dict())
    assert (full(x) - narrow(x)).abs().max() > 1e-2


def test_local_attention_keeps_patch_features_local_without_cls():
    # With mean pooling there is no global token: after one layer of radius 1, a patch's feature depends only
    # on the patches within distance 1, so changing a far pixel leaves it unchanged.
    torch.manual_seed(0)
    model = ViT(10, image_size=16, patch_size=4, depth=1, dim=32, heads=4, pool="mean", attention="local", radius=1).eval()
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[:, :, 12:, 12:] += 1.0  # patch (3, 3)
    feats = lambda inp: model.blocks[0](model.patch_embed(inp).flatten(2).transpose(1, 2) + model.pos_embed)
    fx, fy = feats(x), feats(y)
    assert torch.allclose(fx[0, 0], fy[0, 0])  # patch (0, 0) is 3 away
    assert not torch.allclose(fx[0, 10], fy[0, 10])  # patch (2, 2) is 1 away


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match="patch size 5 does not divide the image size 32"):
        ViT(10, image_size=32, patch_size=5)
