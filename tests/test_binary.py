"""Binary networks (binary.py and BinaryViT's switches in model.py): the binarisers against hand computations, the
binary layers against sign-times-scale arithmetic, the cost counts against hand counts, what each switch adds,
the recipe, and that binary models learn."""
import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from binary import (ApproxSign, AttentionProbQuant, BinaryConv2d, BinaryLinear, BinaryResNet, binary_weight,
                    model_bits, sign_pm1)
from evaluate import bit_costs
from helpers import TINY_DATA, TINY_VIT, run_train
from model import ViT, build_model, count_params


def test_weight_binariser_centres_signs_scales_and_passes_the_gradient_through_a_clamp():
    w = torch.tensor([[0.5, -1.5, 2.0], [0.1, 0.2, -0.9]], requires_grad=True)
    signs, scale = binary_weight(w)
    # row means 1/3 and -0.2: centred rows (0.17, -1.83, 1.67) and (0.3, 0.4, -0.7); scales mean |w|: 4/3 and 0.4
    assert signs.tolist() == [[1, -1, 1], [1, 1, -1]]
    assert torch.allclose(scale.view(-1), torch.tensor([4 / 3, 0.4]))
    c = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    (c * scale * signs).sum().backward()  # the loss of the binarised weight scale * signs
    # d/d(centred) = c where |centred| <= 1: (1, 0, 0) and (4, 5, 6); then the centring's own gradient (minus the
    # row mean): (2/3, -1/3, -1/3) and (-1, 0, 1)
    assert torch.allclose(w.grad, torch.tensor([[2 / 3, -1 / 3, -1 / 3], [-1.0, 0.0, 1.0]]), atol=1e-6)


def test_activation_binariser_is_a_shifted_sign_with_the_approxsign_gradient():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.25, 1.5]], requires_grad=True)
    shift = torch.tensor(0.25, requires_grad=True)
    out = ApproxSign.apply(x, shift)  # x + 0.25 = -1.75, -0.25, 0.25, 0.5, 1.75
    assert out.tolist() == [[-1, -1, 1, 1, 1]]
    g = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0]])
    out.backward(g)
    slope = [0.0, 1.5, 1.5, 1.0, 0.0]  # 2 - 2|x + shift| on [-1, 1], else 0
    assert torch.allclose(x.grad, g * torch.tensor(slope))
    assert torch.isclose(shift.grad, torch.tensor(2 * 1.5 + 3 * 1.5 + 4 * 1.0))
    assert sign_pm1(torch.tensor([0.0, -0.0, 3.0, -3.0])).tolist() == [1, -1, 1, -1]  # never 0


def test_attention_probabilities_quantise_to_zero_or_a_with_bits_gradients():
    p = torch.tensor([0.001, 0.003, 0.0074, 0.02], requires_grad=True)
    a = torch.tensor(0.005, requires_grad=True)
    out = AttentionProbQuant.apply(p, a)  # p / a = 0.2, 0.6, 1.48, 4: rounded 0, 1, 1, 4, clamped to [0, 1]
    assert torch.allclose(out, torch.tensor([0.0, 0.005, 0.005, 0.005]))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out.backward(g)
    assert torch.allclose(p.grad, torch.tensor([1.0, 2.0, 0.0, 0.0]))  # passes where p / a is in [0, 1]
    assert torch.isclose(a.grad, torch.tensor((0 - 0.2) * 1 + (1 - 0.6) * 2 + 3 + 4)), a.grad


def test_binary_linear_is_scale_times_a_sum_of_sign_products():
    torch.manual_seed(0)
    layer = BinaryLinear(5, 3)
    with torch.no_grad():
        layer.shift.copy_(torch.tensor([0.0, 0.5, -0.5, 0.0, 1.0]))
    x = torch.randn(4, 5)
    w = layer.weight.detach().tolist()
    sign = lambda v: 1.0 if v >= 0 else -1.0
    expected = torch.zeros(4, 3)
    for i, j in itertools.product(range(4), range(3)):
        mean, scale = sum(w[j]) / 5, sum(abs(v) for v in w[j]) / 5
        expected[i, j] = scale * sum(sign(x[i, k].item() + layer.shift[k].item()) * sign(w[j][k] - mean)
                                     for k in range(5))
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_binary_conv_is_scale_times_a_sum_of_sign_products_with_zero_padding():
    torch.manual_seed(1)
    conv = BinaryConv2d(2, 3, 3, stride=2, padding=1)
    x = torch.randn(1, 2, 5, 5)
    w = conv.weight.detach()
    sign = lambda v: 1.0 if v >= 0 else -1.0
    out = conv(x)
    assert out.shape == (1, 3, 3, 3)
    for o, r, c in itertools.product(range(3), range(3), range(3)):
        mean, scale = w[o].mean().item(), w[o].abs().mean().item()
        total = 0.0
        for i, dr, dc in itertools.product(range(2), range(3), range(3)):
            row, col = 2 * r + dr - 1, 2 * c + dc - 1
            if 0 <= row < 5 and 0 <= col < 5:  # a padded position multiplies zero
                total += sign(x[0, i, row, col].item()) * sign(w[o, i, dr, dc].item() - mean)
        assert abs(out[0, o, r, c].item() - scale * total) < 1e-6


def tiny_vit(**kw):
    """A ViT of one block, width 8, 2 heads, MLP 16, on 8 px images in 4 px patches: 4 patches and a cls token."""
    torch.manual_seed(0)
    return ViT(10, image_size=8, patch_size=4, depth=1, dim=8, heads=2, mlp_ratio=2.0, **kw).eval()


def test_bops_and_flops_of_small_models_equal_a_hand_count():
    T, D = 5, 8
    binary_macs = 4 * T * D * D + 2 * T * D * 2 * D + 2 * T * T * D  # q, k, v, proj; the MLP; q k^T and p v
    embed_and_head = 4 * D * 3 * 16 + D * 10  # the patch embedding (a 3x4x4 patch each) and the head: full precision
    costs = bit_costs(tiny_vit(binary=True), 8, "cpu")
    assert (costs["bops"], costs["flops"]) == (binary_macs, embed_and_head) == (2960, 1616)
    assert costs["ops"] == 2960 / 64 + 1616
    plain = bit_costs(tiny_vit(), 8, "cpu")  # the same matmuls in full precision, q k v in one
    assert (plain["bops"], plain["flops"]) == (0, binary_macs + embed_and_head)
    resnet = BinaryResNet(10, image_size=4, stages=1).eval()  # stem 3 -> 64, then 4 binary 3x3 convs, at 4 x 4
    costs = bit_costs(resnet, 4, "cpu")
    assert costs["bops"] == 4 * 16 * 64 * 64 * 9 and costs["flops"] == 16 * 64 * 27 + 64 * 10


def test_model_bits_count_binary_weights_at_one_bit():
    model = tiny_vit(binary=True)
    binary = 4 * 8 * 8 + 2 * 8 * 16  # q, k, v, proj; fc1 and fc2
    scales = 4 * 8 + 16 + 8  # one per output channel of each binary layer
    assert model_bits(model) == binary + 32 * (count_params(model) - binary + scales)
    assert model_bits(tiny_vit()) == 32 * count_params(tiny_vit())


def test_each_switch_adds_exactly_what_it_names():
    D, depth = 8, 1
    base = count_params(tiny_vit())
    assert count_params(tiny_vit(multi_pool=True)) - base == depth * 4 * D  # four pool branches' scales
    assert count_params(tiny_vit(residual_affine=True)) - base == depth * 2 * 2 * D  # scale and bias, twice
    assert base - count_params(tiny_vit(pool="mean")) == D + D  # the cls token and its position embedding
    model = tiny_vit(binary=True)
    linears = [m for m in model.blocks.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, BinaryLinear) for m in linears)  # every linear of the blocks is binary
    assert type(model.head) is nn.Linear and type(model.patch_embed) is nn.Conv2d  # these stay full precision
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())  # token BatchNorms, as the authors'
    resnet = BinaryResNet(10)
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, BinaryConv2d) for m in convs) == 16 and type(resnet.conv1) is nn.Conv2d
    assert [m.kernel_size for m in convs if type(m) is nn.Conv2d] == [(3, 3), (1, 1), (1, 1), (1, 1)]  # stem, 3 downs


def test_pyramid_parameters_and_token_shapes_per_stage():
    torch.manual_seed(0)
    model = ViT(10, image_size=32, patch_size=4, depth=4, dim=16, heads=8, mlp_ratio=2.0, pool="mean", pyramid=True)
    dims, grids = [4, 8, 16, 32], [8, 4, 2, 1]
    block = lambda d: 8 * d * d + 11 * d  # two norms, qkv, proj, fc1, fc2 (MLP ratio 2), with biases
    merge = lambda a, b, g: 2 * a + 4 * a * b + 2 * b + (g // 2) ** 2 * b  # norm, 2x2 conv, norm, positions
    expected = (3 * 16 * 4 + 4 + 64 * 4 + sum(block(d) for d in dims) + sum(merge(a, b, g) for a, b, g in
                zip(dims, dims[1:], grids)) + 2 * 32 + 32 * 10 + 10)
    assert count_params(model) == expected
    shapes = []
    for b in model.blocks:
        b.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shapes == [(2, g * g, d) for g, d in zip(grids, dims)]
    with pytest.raises(ValueError, match="grid"):
        ViT(10, image_size=32, patch_size=8, depth=4, dim=16, heads=8, pool="mean", pyramid=True)


@pytest.mark.parametrize("arch", ["vit", "resnet18"])
def test_only_full_precision_kernels_decay_binary_weights_and_per_channel_parameters_do_not(arch):
    import train
    model = build_model(arch, 10, depth=1, dim=16, heads=2, binary=True) if arch == "vit" else BinaryResNet(10)
    opt = train.make_optimizer(model, dict(opt="adamw", lr=1e-3, weight_decay=0.05))
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    kernels = {id(m.weight) for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)}  # not the binary ones
    assert decay == kernels and len(kernels) >= 2  # ViT: embedding and head; ResNet: stem, 3 shortcuts and fc


def test_binary_runs_default_to_the_authors_recipe_and_distil_on_teacher_probabilities_alone():
    import train
    parser = train.get_parser()
    resolve = lambda *argv: train.resolve_config(parser.parse_args(list(argv)), parser.sections)
    cfg = resolve("--binary", "--batch-size", "256")
    assert cfg["optim"]["recipe"] == "binary" and cfg["optim"]["lr"] == 5e-4 * 256 / 512
    assert (cfg["optim"]["weight_decay"], cfg["optim"]["warmup_epochs"], cfg["model"]["drop_path"]) == (0, 0, 0)
    assert cfg["model"]["attn_quant"] == "binary" and cfg["run"]["out"].startswith("runs/vit-bin-binary-")
    twin = resolve("--recipe", "binary", "--batch-size", "256")
    assert twin["optim"] == cfg["optim"] and "binary" not in twin["model"]
    taught = resolve("--arch", "resnet18", "--binary", "--teacher", "runs/t")
    assert {k: taught["optim"][k] for k in ("distill", "distill_alpha", "distill_tau")} == \
        dict(distill="soft", distill_alpha=1.0, distill_tau=1.0)
    assert taught["model"] == dict(arch="resnet18", stages=4, binary=True)


@pytest.mark.parametrize("argv, message", [
    (["--arch", "resnet50", "--binary"], "--binary applies to the ViTs and resnet18"),
    (["--binary", "--attention", "local"], "--attention full only"),
    (["--binary", "--mlp-ratio", "1.5"], "whole --mlp-ratio"),
    (["--pyramid"], "--pyramid cannot take --pool cls"),
    (["--pyramid", "--pool", "mean", "--patch-size", "8"], "grid divisible by 8"),
    (["--fp-merge"], "--fp-merge"),
    (["--pyramid", "--pool", "mean", "--fp-merge"], "with --pyramid and --binary"),
    (["--attn-quant", "none"], "--attn-quant none applies to --binary ViTs"),
    (["--arch", "resnet18", "--residual-affine"], "--residual-affine applies to ViTs"),
])
def test_binary_switches_that_cannot_apply_exit_2_writing_nothing(argv, message, tmp_path, exits_2):
    err = exits_2([*argv, "--dataset", "synthetic", "--out", str(tmp_path / "x")])
    assert message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("argv", [[*TINY_VIT, "--binary", "--pool", "mean", "--multi-pool", "--residual-affine",
                                   "--epochs", "15", "--lr", "1e-2"],
                                  ["--arch", "resnet18-shallow", "--stages", "1", "--binary", "--epochs", "6",
                                   "--lr", "2e-3"]], ids=["vit", "resnet"])
def test_binary_models_learn(argv, tmp_path):
    _, rows, final = run_train(tmp_path / "r", *TINY_DATA, *argv)
    assert final["test_acc"] > 0.35, final["test_acc"]  # 10 classes: chance is 0.1
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    assert final["bops"] > 0 and final["ops"] == final["bops"] / 64 + final["flops"]


@pytest.mark.parametrize("shape, dim", [((4, 5, 6), -1), ((2, 6, 3, 3), 1)], ids=["tokens", "maps"])
def test_rprelu_equals_shift_prelu_shift_in_value_and_gradients(shape, dim):
    from binary import RPReLU
    torch.manual_seed(0)
    m = RPReLU(6, dim)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    x, g = torch.randn(*shape, requires_grad=True), torch.randn(*shape)
    m(x).backward(g)
    got = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    x.grad = None
    m.zero_grad()
    shifted = x - m.shift_in.view(m.shape)  # torch's own PReLU, channels on dim 1 (tokens as rows)
    prelu = F.prelu(shifted, m.slope) if dim == 1 else F.prelu(shifted.reshape(-1, 6), m.slope).view(shape)
    (prelu + m.shift_out.view(m.shape)).backward(g)
    for a, b in zip(got, [x.grad] + [p.grad for p in m.parameters()]):
        assert torch.allclose(a, b, atol=1e-5)
