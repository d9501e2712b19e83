"""binary.py's bit-packed XNOR-popcount layers against the float simulation, bit for bit; evaluate.py bench-binary."""
import json

import pytest
import torch
import torch.nn.functional as F

import binary
import evaluate
from binary import (POPCOUNT, POPCOUNT16, BinaryConv2d, BinaryLinear, binary_weight, pack_signs, packed_conv2d,
                    packed_linear, sign_pm1)


def with_zeros(*shape):
    """Random floats with a third of them exactly 0 and a few -0.0: sign_pm1 makes 0 +1 and -0.0 -1 (the sign bit),
    as a packed bit must."""
    x = torch.randn(*shape)
    x[torch.rand(*shape) < 0.33] = 0.0
    x[torch.rand(*shape) < 0.05] = -0.0
    return x


def test_popcount_tables_count_the_bits_of_every_byte_and_word():
    assert POPCOUNT.tolist() == [bin(i).count("1") for i in range(256)]
    assert POPCOUNT16.tolist() == [bin(i).count("1") for i in range(65536)]


def test_pack_signs_by_hand():
    # signs + - + - + - + - | +  ->  0b10101010 (-0.0 has its sign bit set), then 0b1 and seven zero bits of padding
    x = torch.tensor([[0.5, -1.0, 0.0, -0.0, 2.0, -3.0, 1.0, -1e-30, 7.0]])
    assert pack_signs(x).tolist() == [[0b10101010, 0b10000000]] and pack_signs(x).dtype == torch.uint8
    assert pack_signs(torch.tensor([-1.0] * 8 + [1.0] * 8)).tolist() == [0, 255]


@pytest.mark.parametrize("k", [1, 8, 13, 77, 130])  # 130 bits: 17 bytes, an odd count (the 8-bit table)
def test_packed_linear_equals_the_float_simulation_exactly(k):
    torch.manual_seed(k)
    x, layer = with_zeros(3, 5, k), BinaryLinear(k, 7)
    signs, scale = binary_weight(layer.weight.detach())
    out = packed_linear(pack_signs(x), pack_signs(signs), k, scale)
    assert torch.equal(out, F.linear(sign_pm1(x), signs) * scale.view(-1))
    with torch.no_grad():  # the layer binarises x + its learned shift (RSign)
        layer.shift.copy_(torch.randn(k).round() / 4)
        out = packed_linear(pack_signs(x + layer.shift), pack_signs(signs), k, scale)
        assert torch.equal(out, layer(x))


@pytest.mark.parametrize("c_in, stride, side", [(1, 1, 5), (2, 2, 7), (5, 1, 9), (11, 2, 6), (13, 2, 1)])
def test_packed_conv_equals_the_zero_padded_float_conv_exactly(c_in, stride, side):
    # 2 and 11 channels: 18 and 99 taps, an odd byte count; side 1: every tap but the centre is padding
    torch.manual_seed(c_in)
    x, layer = with_zeros(2, c_in, side, side + 2), BinaryConv2d(c_in, 6, 3, stride, padding=1)
    signs, scale = binary_weight(layer.weight.detach())
    out = packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, stride, padding=1)
    assert torch.equal(out, F.conv2d(sign_pm1(x), signs, None, stride, 1) * scale.view(1, -1, 1, 1))
    with torch.no_grad():  # the layer binarises x + its learned shift, then pads with zeros
        layer.shift.copy_(torch.randn(c_in).round() / 4)
        out = packed_conv2d(x + layer.shift.view(-1, 1, 1), pack_signs(signs.flatten(1)), scale, 3, stride, padding=1)
        assert torch.equal(out, layer(x))


def test_chunks_of_a_few_rows_give_the_same_result(monkeypatch):
    torch.manual_seed(0)
    x, w = with_zeros(3, 4, 5, 5), torch.randn(5, 4, 3, 3)
    signs, scale = binary_weight(w)
    whole = packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, 1, 1)
    monkeypatch.setattr(binary, "CHUNK_BYTES", 7)  # one row of 25 * 3 per chunk: 75 chunks
    assert torch.equal(packed_conv2d(x, pack_signs(signs.flatten(1)), scale, 3, 1, 1), whole)


def test_bench_binary_times_exact_rows_and_counts_their_bops(tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    assert evaluate.main(["bench-binary", "--sizes", "linear13,conv3@5", "--tokens", "4", "--batch-size", "2",
                          "--warmup", "0", "--repeats", "2", "--threads", "1", "--out", str(out)]) == 0
    assert torch.get_num_threads() == threads  # set for the benchmark only
    report = json.loads(out.read_text())
    assert report["benchmark"] == "binary" and report["threads"] == 1 and report["settings"]["tokens"] == 4
    rows = {r["layer"]: r for r in report["results"]}
    assert list(rows) == ["linear13", "conv3@5"] and all(r["exact"] is True for r in rows.values())
    assert rows["linear13"]["bops"] == 4 * 13 * 13 and rows["conv3@5"]["bops"] == 2 * 3 * 5 * 5 * 3 * 9  # by hand
    for r in rows.values():
        for key in ("float_ms", "binary_sim_ms", "packed_ms"):
            assert r[key]["repeats"] == 2 and 0 < r[key]["min"] <= r[key]["median"]
        assert r["packed_over_float"] == pytest.approx(r["packed_ms"]["median"] / r["float_ms"]["median"])


def test_bench_binary_stops_with_exit_1_where_packed_is_not_exact(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setattr(evaluate, "packed_linear", lambda *args: binary.packed_linear(*args) + 1)
    assert evaluate.main(["bench-binary", "--sizes", "linear8,linear16", "--tokens", "2", "--out", str(out)]) == 1
    assert "linear8: the packed result differs from the float simulation" in capsys.readouterr().err
    rows = json.loads(out.read_text())["results"]
    assert len(rows) == 1 and rows[0]["exact"] is False and "packed_ms" not in rows[0]


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "linear64,conv"], "--sizes: bad 'conv'; each is linear<features> (e.g. linear512) or "
                                   "conv<channels>@<side> (e.g. conv128@16)"),
    (["--sizes", "linear0"], "--sizes: bad 'linear0'"),
    (["--sizes", "conv64@0"], "--sizes: bad 'conv64@0'"),
    (["--sizes", "linear64,"], "--sizes: bad ''"),
    (["--repeats", "0"], "--repeats 0 must be at least 1"),
    (["--warmup", "-1"], "--warmup -1 must be at least 0"),
    (["--threads", "0"], "--threads 0 must be at least 1"),
    (["--tokens", "x"], "--tokens: invalid int value: 'x'"),
])
def test_bench_binary_bad_input_exits_2_in_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        evaluate.main(["bench-binary", *argv, "--out", str(tmp_path / "b.json")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("evaluate.py bench-binary: error: ") and message in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "b.json").exists()
