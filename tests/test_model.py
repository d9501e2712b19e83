"""Model sizes against published counts; ResNet stages; every preset classifies; transfer of weights (torchvision's
ViT mapping, position embeddings, truncation, attention swap). (Attention: test_attention.py.)"""
import math

import pytest
import torch
import torchvision

from model import (ARCHS, TORCHVISION_VITS, ViT, build_model, count_params, model_config, resize_pos_embed,
                   torchvision_vit_state, transfer_state)


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


@pytest.mark.parametrize("arch", [a for a in ARCHS if a not in TORCHVISION_VITS])  # those: tested against torchvision
def test_every_arch_builds_and_classifies(arch):
    model = build_model(arch, 7, image_size=32).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_patch_size_must_divide_image():
    with pytest.raises(ValueError, match="patch size 5 does not divide the image size 32"):
        ViT(10, image_size=32, patch_size=5)


def test_model_config_fills_the_preset_and_keeps_only_what_applies():
    vit = model_config(dict(arch="vit", depth=2, attention="local", stages=None, spt=False))
    assert vit == dict(arch="vit", depth=2, dim=256, heads=8, mlp_ratio=2.0, patch_size=4, pool="cls", spt=False,
                       dropout=0.0, drop_path=0.1, attention="local", radius=1, window_shape="square")
    assert model_config(dict(arch="resnet18-shallow", depth=None)) == dict(arch="resnet18-shallow", stages=2)
    assert model_config(dict(arch="vit", attention="performer"))["performer_features"] == 111  # 32 ln 32 = 110.9
    for given, message in ((dict(arch="vit", radius=2), "--radius only applies to --attention dilated, hybrid, local"),
                           (dict(arch="resnet18", spt=True), "--spt applies to ViTs, not to --arch resnet18"),
                           (dict(arch="vit", stages=2), "--stages applies to ResNets, not to --arch vit"),
                           (dict(arch="vit", depth=0), "--depth 0 must be at least 1"),
                           (dict(arch="vgg"), "unknown architecture 'vgg'; choose from vit, ")):
        with pytest.raises(ValueError, match=message):
            model_config(given)
    # The model built from a config is the one its options say.
    model = build_model(**model_config(dict(arch="vit", depth=1, dim=32, heads=4, attention="dilated", dilation=3)),
                        num_classes=10, image_size=16)
    assert len(model.blocks) == 1 and model.blocks[0].attn.windows == [(1, "square", 3)]


# ----------------------------------------------------------------------------- starting from trained weights

def random_torchvision_vit(depth, heads, dim, image_size=224, patch_size=16, classes=10, seed=0):
    """torchvision's VisionTransformer with every tensor random (its own init zeroes the head and biases)."""
    torch.manual_seed(seed)
    tv = torchvision.models.VisionTransformer(image_size, patch_size, depth, heads, dim, 4 * dim, num_classes=classes)
    for p in tv.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return tv.eval()


def test_our_vit_b16_with_torchvision_weights_gives_torchvision_logits():
    tv = random_torchvision_vit(depth=2, heads=12, dim=768)
    ours = build_model("vit-b16", 10, image_size=224, depth=2).eval()
    report = transfer_state(ours, torchvision_vit_state(tv.state_dict()))
    assert report == dict(new_head=False, resized=None, removed=[], created=[], left_behind=[])
    assert ours.norm.eps == 1e-6 == tv.encoder.ln.eps
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - tv(x)).abs().max() <= 1e-5
    # torchvision's older files name the MLP's layers linear_1 and linear_2: the same weights.
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in tv.state_dict().items()}
    assert torchvision_vit_state(old).keys() == torchvision_vit_state(tv.state_dict()).keys()
    with pytest.raises(ValueError, match="heads.pre_logits.weight has no counterpart"):
        torchvision_vit_state({"heads.pre_logits.weight": torch.zeros(1)})


def test_imagenet_resnet_weights_load_strictly_with_their_stem():
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=1000).eval()
    ours = build_model("resnet18", 1000, image_size=32, pretrained="imagenet").eval()
    assert transfer_state(ours, reference.state_dict())["new_head"] is False
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # at 32 px too the pretrained 7x7 stem and max-pool are kept
        assert torch.equal(ours(x), reference(x))
    ten = build_model("resnet18", 10, image_size=32, pretrained="imagenet")
    report = transfer_state(ten, reference.state_dict())
    assert report["new_head"] and ten.fc.out_features == 10
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in ten.state_dict().items() if not k.startswith("fc"))


def bicubic_1d(n_in, n_out, a=-0.75):
    """Keys' cubic convolution weights (n_out, n_in), half-pixel centres, border pixels repeated."""
    def kernel(t):
        t = abs(t)
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1 if t <= 1 else a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            w[i, min(max(j, 0), n_in - 1)] += kernel(src - j)
    return w


def test_position_embeddings_resize_bicubically_and_keep_the_cls_embedding():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 3 * 3, 4)
    assert resize_pos_embed(pos, 1, (3, 3)) is pos  # the same grid: the same tensor
    out = resize_pos_embed(pos, 1, (5, 5))
    assert torch.equal(out[:, 0], pos[:, 0]) and out.shape == (1, 26, 4)
    w = bicubic_1d(3, 5)
    grid = pos[0, 1:].double().reshape(3, 3, 4)
    expect = torch.einsum("ai,bj,ijc->abc", w, w, grid).reshape(25, 4)
    assert torch.allclose(out[0, 1:].double(), expect, atol=1e-5)


def tiny_vit(**kw):
    """A small ViT of 4 blocks, 16 px, for the transfer tests."""
    return build_model(**model_config(dict(arch="vit", depth=4, dim=32, heads=4, **kw)), num_classes=kw.pop("c", 10),
                       image_size=16)


def test_truncation_keeps_the_first_blocks_and_stages_with_a_fresh_head():
    torch.manual_seed(0)
    source = tiny_vit()
    torch.manual_seed(1)
    cut = build_model(**model_config(dict(arch="vit", depth=4, dim=32, heads=4, init="src", truncate=2)),
                      num_classes=10, image_size=16)
    head_before = cut.head.weight.clone()
    report = transfer_state(cut, source.state_dict(), fresh_head=True, truncated=True)
    assert len(cut.blocks) == 2 and report["removed"] == ["blocks.2", "blocks.3"] and report["new_head"]
    assert count_params(cut) == count_params(source) - 2 * count_params(source.blocks[0])
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in cut.state_dict().items() if not k.startswith("head"))
    assert torch.equal(cut.head.weight, head_before)  # fresh: not the source's head, which sat after 4 blocks
    full = build_model("resnet18", 10, pretrained="imagenet")
    two = build_model("resnet18", 10, pretrained="imagenet", truncate=2)
    report = transfer_state(two, full.state_dict(), fresh_head=True, truncated=True)
    assert report["removed"] == ["layer3", "layer4"] and two.fc.in_features == 128
    kept = sum(count_params(m) for m in (full.conv1, full.bn1, full.layer1, full.layer2))
    assert count_params(two) == kept + 128 * 10 + 10


def test_swapped_attention_reuses_qkv_and_projection_and_creates_only_its_own():
    torch.manual_seed(0)
    source = tiny_vit()
    swapped = tiny_vit(attention="linformer", linformer_k=8, linformer_share="kv")
    report = transfer_state(swapped, source.state_dict())
    # kv: one matrix for keys and values, under both names
    assert report["created"] == [f"blocks.{i}.attn.proj_{kv}" for i in range(4) for kv in "kv"]
    for i in range(4):
        assert torch.equal(swapped.blocks[i].attn.qkv.weight, source.blocks[i].attn.qkv.weight)
        assert torch.equal(swapped.blocks[i].attn.proj.bias, source.blocks[i].attn.proj.bias)
    back = tiny_vit(attention="lsa")  # and away again: the Linformer matrices are left behind
    report = transfer_state(back, swapped.state_dict())
    assert report["left_behind"] == [f"blocks.{i}.attn.proj_{kv}" for i in range(4) for kv in "kv"]
    assert report["created"] == [f"blocks.{i}.attn.temperature" for i in range(4)]


def test_unmappable_weights_are_refused_naming_the_tensor():
    source = tiny_vit().state_dict()
    wider = r"cannot map cls_token: .*\(1, 1, 32\), this model \(1, 1, 64\)"
    for model, message in ((build_model("vit", 10, 16, depth=4, dim=64, heads=4), wider),
                           (build_model("vit", 10, 16, depth=5, dim=32, heads=4), "the source has no blocks.4"),
                           (build_model("vit", 10, 16, depth=2, dim=32, heads=4), "pass --truncate 2 to keep its"),
                           (build_model("resnet18", 10), "the source's cls_token has no place in this model")):
        with pytest.raises(ValueError, match=message):
            transfer_state(model, source)


def test_transfer_options_are_checked_against_the_architecture():
    vit = model_config(dict(arch="vit-b16", pretrained="imagenet"))
    assert vit["weights"] == "IMAGENET1K_V1" and vit["patch_size"] == 16 and vit["norm_eps"] == 1e-6
    for given, message in ((dict(arch="vit", depth=4, init="r", truncate=5), "--truncate 5 is outside 1-4"),
                           (dict(arch="resnet18", pretrained="imagenet", truncate=0), "--truncate 0 is outside 1-4"),
                           (dict(arch="vit", truncate=2), "--truncate removes later layers .* give --init"),
                           (dict(arch="vit-b16", pretrained="imagenet", weights="V9"),
                            "--weights V9 is not one of vit_b_16's: IMAGENET1K_V1, IMAGENET1K_SWAG_E2E_V1"),
                           (dict(arch="vit", pretrained="imagenet"), "ImageNet weights .* for vit-b16, vit-b32"),
                           (dict(arch="vit", init="r", pretrained="imagenet"), "give one"),
                           (dict(arch="vit", weights="IMAGENET1K_V1"), "--weights applies to --pretrained")):
        with pytest.raises(ValueError, match=message):
            model_config(given)


def test_dropout_and_drop_path_act_in_training_only():
    # The recipes set both: they must change training forwards and leave evaluation deterministic.
    x = torch.randn(4, 3, 16, 16)
    for options in (dict(dropout=0.3, drop_path=0.0), dict(dropout=0.0, drop_path=0.5)):
        torch.manual_seed(0)
        m = build_model("vit", 10, 16, depth=3, dim=32, heads=4, patch_size=4, **options)
        assert not torch.equal(m.train()(x), m(x)), options
        m.eval()
        assert torch.equal(m(x), m(x)), options
    m = build_model("vit", 10, 16, depth=3, dim=32, heads=4, patch_size=4, dropout=0.0, drop_path=0.0).train()
    assert torch.equal(m(x), m(x))
    # Stochastic depth rises linearly over the blocks; a dropped sample's residual is zero, a kept one's is scaled
    # by 1 / (1 - rate), so the expectation is unchanged.
    m = build_model("vit", 10, 16, depth=3, dim=32, heads=4, patch_size=4, drop_path=0.5)
    assert [b.drop_path.p for b in m.blocks] == pytest.approx([0.0, 0.25, 0.5])
    torch.manual_seed(1)
    out = m.blocks[2].drop_path.train()(torch.ones(1000, 2, 3))
    kept = out[:, 0, 0]
    assert set(kept.unique().tolist()) == {0.0, 2.0} and abs((kept > 0).float().mean().item() - 0.5) < 0.06
