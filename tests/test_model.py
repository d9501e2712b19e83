"""Model sizes against published counts; ResNet stages; every preset classifies. (Attention: test_attention.py.)"""
import pytest
import torch
import torchvision

from model import ARCHS, ViT, build_model, count_params, model_config


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
