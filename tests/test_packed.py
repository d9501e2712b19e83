"""binary.py's bit-packed XNOR-popcount layers against the float simulation, bit for bit; evaluate.py bench-binary."""
import pytest
import torch
import torch.nn.functional as F

import binary
from binary import (POPCOUNT, POPCOUNT16, BinaryConv2d, BinaryLinear, binary_weight, pack_signs, packed_conv2d,
                    packed_linear, sign_pm1)


def with_zeros(*shape):
    """Random floats with a third of them exactly 0 and a few -0.0: sign_pm1 makes both +1, as a packed bit must."""
    x = torch.randn(*shape)
    x[torch.rand(*shape) < 0.33] = 0.0
    x[torch.rand(*shape) < 0.05] = -0.0
    return x


def test_popcount_tables_count_the_bits_of_every_byte_and_word():
    assert POPCOUNT.tolist() == [bin(i).count("1") for i in range(256)]
    assert POPCOUNT16.tolist() == [bin(i).count("1") for i in range(65536)]


def test_pack_signs_by_hand():
    # signs + - + + + - + - | +  ->  0b10111010, then 0b1 followed by seven zero bits of padding
    x = torch.tensor([[0.5, -1.0, 0.0, -0.0, 2.0, -3.0, 1.0, -1e-30, 7.0]])
    assert pack_signs(x).tolist() == [[0b10111010, 0b10000000]] and pack_signs(x).dtype == torch.uint8
    assert pack_signs(torch.tensor([-1.0] * 8 + [1.0] * 8)).tolist() == [0, 255]


@pytest.mark.parametrize("k", [1, 8, 13, 77, 130])  # 130 bits: 17 bytes, an odd count (the 8-bit table)
def test_packed_linear_equals_the_float_simulation_exactly(k):
    torch.manual_seed(k)
    x, layer = with_zeros(3, 5, k), BinaryLinear(k, 7)
    signs, scale = binary_weight(layer.weight.detach())
    out = packed_linear(pack_signs(x), pack_signs(signs), k, scale)
    assert torch.equal(out, F.linear(sign_pm1(x), signs) * scale.view(-1))
    with torch.no_grad():
        assert torch.equal(out, layer(x))


@pytest.mark.parametrize("c_in, stride, side", [(1, 1, 5), (2, 2, 7), (5, 1, 9), (11, 2, 6), (13, 2, 1)])
def test_packed_conv_equals_the_zero_padded_float_conv_exactly(c_in, stride, side):
    # 2 and 11 channels: 18 and 99 taps, an odd byte count; side 1: every tap but the centre is padding
    torch.manual_seed(c_in)
    x, layer = with_zeros(2, c_in, side, side + 2), BinaryConv2d(c_in, 6, 3, stride, padding=1)
    signs, scale = binary_weight(layer.weight.detach())
    out = packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, stride, padding=1)
    assert torch.equal(out, F.conv2d(sign_pm1(x), signs, None, stride, 1) * scale.view(1, -1, 1, 1))
    with torch.no_grad():
        assert torch.equal(out, layer(x))


def test_chunks_of_a_few_rows_give_the_same_result(monkeypatch):
    torch.manual_seed(0)
    x, w = with_zeros(3, 4, 5, 5), torch.randn(5, 4, 3, 3)
    signs, scale = binary_weight(w)
    whole = packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, 1, 1)
    monkeypatch.setattr(binary, "CHUNK_BYTES", 7)  # one row of 25 * 3 per chunk: 75 chunks
    assert torch.equal(packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, 1, 1), whole)
