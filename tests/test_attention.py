"""Every attention variant against an independent computation: brute-force masks, float64 softmax attention,
torch.linalg.pinv, exact attention for the approximations at their exact settings."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attention import (ATTENTIONS, Attention, attention_options, flex_attention, flex_block_mask, iterative_pinv,
                       local_attention_mask, nystrom_attention, orthogonal_features, performer_attention,
                       segment_means, shown_options)
from helpers import brute_force_mask
from model import ShiftedPatchEmbed, ViT, count_params, shifted_images

SOFTMAX_KINDS = ["full", "local", "dilated", "hybrid", "lsa"]


@pytest.mark.parametrize("h,w", [(3, 3), (4, 4), (5, 3), (2, 6)])
@pytest.mark.parametrize("radius", [0, 1, 2])
@pytest.mark.parametrize("dilation", [1, 2, 3])
@pytest.mark.parametrize("shape", ["square", "circle"])
@pytest.mark.parametrize("prefix", [0, 1, 2])  # no cls token, cls, cls and a distillation token
def test_window_masks_match_brute_force(h, w, radius, dilation, shape, prefix):
    mask = local_attention_mask(h, w, radius, prefix, shape, dilation)
    assert torch.equal(mask, brute_force_mask(h, w, radius, prefix, dilation, shape))


def qkv_of(attn, x):
    B, T, D = x.shape
    return attn.qkv(x).view(B, T, 3, attn.heads, D // attn.heads).permute(2, 0, 3, 1, 4)


def softmax_attention(q, k, v, mask=None, scale=None):
    """softmax(Q K^T * scale + mask) V written out in float64."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def output(attn, y):
    """Merge heads (B, H, T, hd) and apply the output projection, in float64."""
    B, H, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, H * hd) @ attn.proj.weight.double().T + attn.proj.bias.double()


def spread(module, std=0.3):
    """Weights far from the near-uniform-attention init, so masks and approximations matter."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)
    return module


@pytest.mark.parametrize("kind,opts", [("full", {}), ("local", dict(radius=1)), ("dilated", dict(radius=1, dilation=2)),
                                       ("local", dict(radius=1, window_shape="circle"))])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_masked_kinds_match_float64_softmax_attention(kind, opts, prefix):
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, kind, grid=(4, 5), num_prefix_tokens=prefix, **opts))
    x = torch.randn(2, 20 + prefix, 32)
    shape = opts.get("window_shape", "square")
    mask = None if kind == "full" else brute_force_mask(4, 5, 1, prefix, opts.get("dilation", 1), shape)
    q, k, v = qkv_of(attn, x)
    assert torch.allclose(attn(x).double(), output(attn, softmax_attention(q, k, v, mask)), atol=1e-5)


def test_lsa_masks_the_diagonal_and_learns_its_temperature():
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, "lsa", grid=(3, 3)))
    with torch.no_grad():
        attn.temperature.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    x = torch.randn(2, 10, 32)
    q, k, v = qkv_of(attn, x)
    scale = attn.temperature.double().view(1, 4, 1, 1)
    expect = output(attn, softmax_attention(q, k, v, ~torch.eye(10, dtype=torch.bool), scale))
    assert torch.allclose(attn(x).double(), expect, atol=1e-5)
    weights = attn.weights(x)
    assert torch.equal(weights.diagonal(dim1=-2, dim2=-1), torch.zeros(2, 4, 10))  # never itself, cls included
    assert torch.allclose(weights.sum(-1), torch.ones(2, 4, 10))
    fresh = Attention(32, 4, "lsa", grid=(3, 3))
    assert isinstance(fresh.temperature, nn.Parameter) and any(p is fresh.temperature for p in fresh.parameters())
    assert torch.allclose(fresh.temperature, torch.full((4,), 8 ** -0.5))  # 1 / sqrt(head width)
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    fresh(torch.randn(2, 10, 32)).square().sum().backward()
    assert fresh.temperature.grad.abs().min() > 0
    before = fresh.temperature.detach().clone()
    opt.step()
    assert not torch.allclose(before, fresh.temperature)


@pytest.mark.parametrize("kind", SOFTMAX_KINDS)
def test_explicit_weights_reproduce_the_forward_pass(kind):
    # weights() feeds the attention-distance analysis: it must be the attention the model runs, hybrid's gate included.
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, kind, grid=(4, 4), radius=1))
    x = torch.randn(2, 17, 32)
    _, _, v = qkv_of(attn, x)
    w = attn.weights(x)
    assert torch.allclose(w.sum(-1), torch.ones_like(w[..., 0]), atol=1e-6)
    assert torch.allclose(output(attn, w.double() @ v.double()), attn(x).double(), atol=1e-5)


def test_hybrid_gate_mixes_its_branches_per_token():
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, "hybrid", grid=(5, 5), radius=1, dilations=(1, 2)))
    x = torch.randn(2, 26, 32)
    q, k, v = qkv_of(attn, x)
    branches = [softmax_attention(q, k, v, brute_force_mask(5, 5, 1, 1, d)) for d in (1, 2)]
    gate = (x.double() @ attn.gate.weight.double().T + attn.gate.bias.double()).softmax(-1)  # B, T, 2
    mixed = sum(gate[:, None, :, i, None] * b for i, b in enumerate(branches))
    assert torch.allclose(attn(x).double(), output(attn, mixed), atol=1e-5)


def vit_pair(kind_a, opts_a, kind_b, opts_b, pool="cls"):
    """Two tiny 16 px ViTs with identical (spread) weights and different attention."""
    a = spread(ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, pool=pool, attention=kind_a,
                   attention_options=opts_a)).eval()
    b = ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, pool=pool, attention=kind_b,
            attention_options=opts_b).eval()
    b.load_state_dict(a.state_dict(), strict=False)
    return a, b


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_local_attention_covering_the_grid_equals_full(pool):
    full, local = vit_pair("full", {}, "local", dict(radius=3), pool)
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(full(x), local(x), atol=1e-5)
    _, narrow = vit_pair("full", {}, "local", dict(radius=1), pool)
    assert (full(x) - narrow(x)).abs().max() > 1e-2


def test_dilation_one_equals_local():
    local, dilated = vit_pair("local", dict(radius=1), "dilated", dict(radius=1, dilation=1))
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(local(x), dilated(x))
    _, wider = vit_pair("local", dict(radius=1), "dilated", dict(radius=1, dilation=2))
    assert (local(x) - wider(x)).abs().max() > 1e-2


def test_local_attention_keeps_patch_features_local_without_cls():
    # With mean pooling there is no global token: after one layer of radius 1, a patch's feature depends only
    # on the patches within distance 1, so changing a far pixel leaves it unchanged.
    torch.manual_seed(0)
    model = ViT(10, image_size=16, patch_size=4, depth=1, dim=32, heads=4, pool="mean", attention="local",
                attention_options=dict(radius=1)).eval()
    x = torch.randn(1, 3, 16, 16)
    y = x.clone()
    y[:, :, 12:, 12:] += 1.0  # patch (3, 3)
    fx, fy = model.blocks[0](model.embed(x)), model.blocks[0](model.embed(y))
    assert torch.allclose(fx[0, 0], fy[0, 0])  # patch (0, 0) is 3 away
    assert not torch.allclose(fx[0, 10], fy[0, 10])  # patch (2, 2) is 1 away


@pytest.mark.parametrize("share", ["none", "heads", "kv", "layers"])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_linformer_with_identity_projections_equals_full(share, pool):
    full, lin = vit_pair("full", {}, "linformer", dict(linformer_k=16, linformer_share=share), pool)
    with torch.no_grad():
        for block in lin.blocks:
            for name in ("proj_k", "proj_v"):
                if hasattr(block.attn, name):
                    getattr(block.attn, name).copy_(torch.eye(16).expand_as(getattr(block.attn, name)))
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(full(x), lin(x), atol=1e-5)


def test_linformer_sharing_sets_the_number_of_projections():
    extra = {}
    for share in ("none", "heads", "kv", "layers"):
        model = ViT(10, image_size=16, patch_size=4, depth=3, dim=32, heads=4, attention="linformer",
                    attention_options=dict(linformer_k=8, linformer_share=share))
        plain = ViT(10, image_size=16, patch_size=4, depth=3, dim=32, heads=4)
        extra[share] = count_params(model) - count_params(plain)
    one = 8 * 16  # k x n
    assert extra == dict(none=3 * 2 * 4 * one, heads=3 * 2 * one, kv=3 * one, layers=one)


def test_linformer_shorter_sequence_and_refuses_a_longer_one():
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, "linformer", grid=(4, 4), linformer_k=8))
    x = torch.randn(2, 1 + 9, 32)  # cls + 9 patches, fewer than the 16 it was built for
    q, k, v = qkv_of(attn, x)
    e, f = attn.proj_k[:, :9].double(), attn.proj_v[:, :9].double()
    keys = torch.cat([k[..., :1, :].double(), e @ k[..., 1:, :].double()], -2)
    values = torch.cat([v[..., :1, :].double(), f @ v[..., 1:, :].double()], -2)
    assert torch.allclose(attn(x).double(), output(attn, softmax_attention(q, keys, values)), atol=1e-5)
    with pytest.raises(ValueError, match="built for 16 patch tokens, got 25"):
        attn(torch.randn(2, 26, 32))
    with pytest.raises(ValueError, match="linformer k 20 exceeds the 16 patch tokens; allowed: 1 to 16"):
        Attention(32, 4, "linformer", grid=(4, 4), linformer_k=20)


def test_segment_means_handle_lengths_not_divisible():
    a = segment_means(10, 4)
    sizes = (a > 0).sum(1).tolist()
    assert sizes == [3, 2, 3, 2] and torch.allclose(a.sum(1), torch.ones(4))
    assert ((a > 0).float().argmax(0).diff() >= 0).all()  # contiguous, in order
    assert torch.equal(segment_means(7, 7), torch.eye(7))


def test_iterative_pinv_matches_linalg_and_starts_per_matrix():
    torch.manual_seed(0)
    a = torch.randn(3, 6, 6, dtype=torch.float64).softmax(-1)  # softmax matrices, as in Nystromformer
    assert torch.allclose(iterative_pinv(a, 40), torch.linalg.pinv(a), atol=1e-8)
    # A batch-wide start (the original code's) would make one matrix's result depend on its neighbours.
    batch = torch.stack([a[0], 1000 * a[1]])
    assert torch.equal(iterative_pinv(batch, 6)[0], iterative_pinv(a[:1], 6)[0])
    assert torch.allclose(iterative_pinv(batch, 40)[1], torch.linalg.pinv(1000 * a[1]), atol=1e-10)


def test_nystrom_with_one_landmark_per_token_equals_full():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 9, 8, dtype=torch.float64)
    exact = softmax_attention(q, k, v)
    assert torch.allclose(nystrom_attention(q, k, v, landmarks=9, pinv_iters=60), exact, atol=1e-8)
    assert (nystrom_attention(q, k, v, landmarks=3) - exact).abs().max() > 1e-3  # fewer landmarks approximate
    # The module, conv residual off, through a ViT: the same as full attention.
    full, nys = vit_pair("full", {}, "nystrom", dict(landmarks=17, pinv_iters=60, nystrom_conv=0))
    full, nys = full.double(), nys.double()
    for block in (*full.blocks, *nys.blocks):
        block.attn.double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.allclose(full(x), nys(x), atol=1e-6)


def test_nystrom_conv_residual_is_a_depthwise_conv_over_the_sequence():
    torch.manual_seed(0)
    attn = spread(Attention(32, 4, "nystrom", grid=(4, 4), landmarks=17, pinv_iters=60, nystrom_conv=3), std=0.2)
    x = torch.randn(2, 17, 32, dtype=torch.float64)
    attn.double()
    q, k, v = qkv_of(attn, x)
    w = attn.value_conv.weight[:, 0, :, 0]  # heads, 3
    padded = F.pad(v, (0, 0, 1, 1))
    conv = sum(w[None, :, j, None, None] * padded[:, :, j:j + 17] for j in range(3))
    assert torch.allclose(attn(x), output(attn, softmax_attention(q, k, v) + conv), atol=1e-6)


def test_performer_error_falls_as_features_grow():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 64, 16) * 0.7
    exact = softmax_attention(q, k, v).float()
    errors = []
    for m in (4, 16, 64, 256, 1024):
        errs = [((performer_attention(q, k, v, orthogonal_features(m, 16, seed)) - exact).norm() / exact.norm()).item()
                for seed in range(5)]
        errors.append(sum(errs) / len(errs))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 4, errors


def test_orthogonal_features_are_orthogonal_within_a_block():
    w = orthogonal_features(20, 8, seed=3)
    for block in (w[:8], w[8:16]):
        gram = block @ block.T
        assert torch.allclose(gram - torch.diag(gram.diagonal()), torch.zeros(8, 8), atol=1e-4)
    assert torch.equal(w, orthogonal_features(20, 8, seed=3)) and not torch.equal(w, orthogonal_features(20, 8, seed=4))


def test_performer_features_are_fixed_in_eval_redrawn_in_training_and_saved():
    torch.manual_seed(0)
    attn = Attention(32, 4, "performer", grid=(3, 3), performer_features=16, redraw_interval=2)
    x = torch.randn(2, 10, 32)
    attn.eval()
    assert torch.equal(attn(x), attn(x))
    first = attn.features.clone()
    attn.train()
    attn(x), attn(x)
    assert torch.equal(attn.features, first)  # two steps on the first draw
    attn(x)
    assert not torch.equal(attn.features, first)  # the third step redraws
    torch.manual_seed(0)
    twin = Attention(32, 4, "performer", grid=(3, 3), performer_features=16, redraw_interval=2).train()
    for _ in range(3):
        twin(x)
    assert torch.equal(twin.features, attn.features)  # seeded draws: every process redraws the same features
    restored = Attention(32, 4, "performer", grid=(3, 3), performer_features=16, redraw_interval=2)
    restored.load_state_dict(attn.state_dict())
    attn.eval(), restored.eval()
    assert torch.equal(restored(x), attn(x)) and int(restored.train_calls) == 3


def test_shifted_images_are_the_four_diagonal_shifts():
    x = torch.randn(2, 3, 8, 8)
    s = 2
    out = shifted_images(x, s)
    assert out.shape == (2, 15, 8, 8) and torch.equal(out[:, :3], x)
    for n, (dy, dx) in enumerate([(-s, -s), (-s, s), (s, -s), (s, s)]):
        expect = torch.zeros_like(x)
        for i in range(8):
            for j in range(8):
                if 0 <= i + dy < 8 and 0 <= j + dx < 8:
                    expect[..., i, j] = x[..., i + dy, j + dx]
        assert torch.equal(out[:, 3 * (n + 1):3 * (n + 2)], expect)


def test_spt_shape_and_zero_shift_is_patch_embedding_of_the_concatenation():
    torch.manual_seed(0)
    spt = ShiftedPatchEmbed(4, 24)
    x = torch.randn(2, 3, 16, 16)
    assert spt(x).shape == (2, 16, 24) and spt.shift == 2
    spt.shift = 0
    patches = x.view(2, 3, 4, 4, 4, 4).permute(0, 2, 4, 1, 3, 5).reshape(2, 16, 48)  # (C, p, p) per patch, row-major
    expect = spt.proj(F.layer_norm(torch.cat([patches] * 5, -1), (240,), spt.norm.weight, spt.norm.bias))
    assert torch.allclose(spt(x), expect, atol=1e-6)
    vit = ViT(10, image_size=16, patch_size=4, depth=1, dim=24, heads=4, spt=True)
    assert vit(x).shape == (2, 10)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("shape,dilation,prefix",
                         [("square", 1, 1), ("circle", 1, 0), ("square", 2, 1), ("square", 1, 2)])
def test_flex_block_mask_equals_the_dense_mask(shape, dilation, prefix):
    # flex_attention runs eagerly (forward only) on CPU: enough to check that its mask_mod is the dense mask's rule.
    # A 32 x 32 grid spans nine 128-token blocks, so blocks with no allowed pair are really skipped.
    torch.manual_seed(0)
    n = 1024 + prefix
    q, k, v = torch.randn(3, 1, 2, n, 8)
    mask = local_attention_mask(32, 32, 1, prefix, shape, dilation)
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    block_mask = flex_block_mask(32, 32, 1, prefix, shape, dilation, "cpu")
    assert block_mask.sparsity() > 0
    with torch.no_grad():
        assert torch.allclose(flex_attention(q, k, v, block_mask=block_mask), dense, atol=1e-5)


@pytest.mark.parametrize("kind", ATTENTIONS)
def test_every_kind_runs_in_bf16_autocast_close_to_fp32(kind):
    torch.manual_seed(0)
    opts = {"linformer": dict(linformer_k=8), "nystrom": dict(landmarks=8)}.get(kind, {})
    model = spread(ViT(10, image_size=16, patch_size=4, depth=2, dim=32, heads=4, attention=kind,
                       attention_options=opts), std=0.05).eval()  # logits far from zero, so 5% means something
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
    assert (low.float() - exact).abs().max() < 0.05 * exact.abs().max()
    assert math.isfinite(model(x).sum().item())


def test_attention_options_and_their_defaults_come_from_one_table():
    assert attention_options("dilated", {}, 32) == dict(radius=1, window_shape="square", dilation=2)
    assert attention_options("hybrid", dict(dilations="1,3"), 32)["dilations"] == [1, 3]
    assert attention_options("performer", {}, 16)["performer_features"] == round(16 * math.log(16))
    assert attention_options("full", {}, 32) == {}
    for kind, given, message in (("full", dict(radius=2),
                                  "--radius only applies to --attention dilated, hybrid, local"),
                                 ("nystrom", dict(landmarks=0), "--landmarks 0 must be at least 1"),
                                 ("nystrom", dict(nystrom_conv=4), "--nystrom-conv 4 must be odd")):
        with pytest.raises(ValueError, match=message):
            attention_options(kind, given, 32)
    # A run's name and label show a kind's main options always and the others where they differ from the default.
    assert shown_options(dict(attention="nystrom", landmarks=16, pinv_iters=6, nystrom_conv=0)) == [
        ("landmarks", 16), ("nystrom_conv", 0)]
    assert shown_options(dict(attention="dilated", radius=1, window_shape="circle", dilation=3)) == [
        ("radius", 1), ("dilation", 3), ("window_shape", "circle")]


def test_linformer_keeps_every_prefix_token_exact():
    # With a cls and a distillation token before the patches, both keep their own keys and values.
    torch.manual_seed(0)
    full = spread(Attention(32, 4, "full", grid=(4, 4), num_prefix_tokens=2))
    lin = Attention(32, 4, "linformer", grid=(4, 4), num_prefix_tokens=2, linformer_k=16)
    lin.load_state_dict(full.state_dict(), strict=False)
    with torch.no_grad():
        lin.proj_k.copy_(torch.eye(16))
        lin.proj_v.copy_(torch.eye(16))
    x = torch.randn(2, 18, 32)
    assert torch.allclose(full(x), lin(x), atol=1e-5)
    with torch.no_grad():
        lin.proj_k.copy_(torch.eye(16).roll(1, 0))  # patches' keys permuted: the prefix tokens' outputs change
    assert not torch.allclose(full(x)[:, :2], lin(x)[:, :2], atol=1e-3)
