"""evaluate.py: the run folder, the evaluation loop, FLOPs, attention distance, re-evaluation and bench-attention."""
import json
import math
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

import evaluate
from helpers import TINY_DATA, TINY_VIT, brute_force_mask, run_train
from model import ViT


def test_predict_is_one_loop_for_validation_and_test_against_plain_cross_entropy(monkeypatch):
    # Batches of 3 over 7 images: the loop's logits, summed loss and split accuracy equal one plain forward pass.
    torch.manual_seed(0)
    model = ViT(5, image_size=8, patch_size=4, depth=1, dim=16, heads=2)
    images = torch.randint(0, 256, (7, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    model.eval()
    with torch.no_grad():
        x = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        expect = model(x)
    logits, loss_sum = evaluate.predict(model, images, labels, mean, std, torch.device("cpu"), batch_size=3)
    assert torch.allclose(logits, expect, atol=1e-6) and loss_sum.dtype == torch.float64
    assert loss_sum.item() == pytest.approx(F.cross_entropy(expect, labels, reduction="sum").item(), rel=1e-6)
    data = dict(mean=mean, std=std, input_size=8, resize="bilinear")
    loss, acc = evaluate.evaluate_split(model, images, labels, data, torch.device("cpu"), False)
    assert loss == pytest.approx(loss_sum.item() / 7) and acc == (expect.argmax(1) == labels).double().mean().item()
    # A process's share is every world-th image: rank 1 of 2 takes images 1, 3, 5 (the sum over processes skipped).
    monkeypatch.setattr(evaluate.dist, "all_reduce", lambda totals: None)
    loss1, acc1 = evaluate.evaluate_split(model, images, labels, data, torch.device("cpu"), False, rank=1, world=2)
    assert loss1 == pytest.approx(F.cross_entropy(expect[1::2], labels[1::2]).item(), rel=1e-6)
    assert evaluate.evaluate_split(model, images[:0], labels[:0], data, torch.device("cpu"), False) == (None, None)


def test_run_folder_files_are_written_whole_and_old_configs_are_refused(tmp_path):
    evaluate.write_json(str(tmp_path / "a.json"), dict(x=1))
    evaluate.write_jsonl(str(tmp_path / "m.jsonl"), [dict(epoch=1), dict(epoch=2)])
    assert json.loads((tmp_path / "a.json").read_text()) == dict(x=1)
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [dict(epoch=1), dict(epoch=2)]
    flat = dict(arch="vit", regime="standard", seed=0)  # as train.py wrote config.json before 2026-12
    (tmp_path / "config.json").write_text(json.dumps(flat))
    with pytest.raises(ValueError, match="has no model, data, optim and run sections: it was written by train.py"):
        evaluate.read_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read .*config.json .JSONDecodeError"):
        evaluate.read_config(str(tmp_path))


def test_flops_count_only_the_allowed_pairs_of_a_window():
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 16, 16)
    full = evaluate.count_flops(ViT(10, 16, 4, depth=2, dim=32, heads=4), x)
    covering = evaluate.count_flops(ViT(10, 16, 4, depth=2, dim=32, heads=4, attention="local",
                                        attention_options=dict(radius=3)), x)
    assert covering == full  # a window over the whole grid is full attention
    mask = brute_force_mask(4, 4, 1, 1)
    for backend in ("sdpa", "flex"):  # the counter cannot run flex_attention: the count must not need it
        local = ViT(10, 16, 4, depth=2, dim=32, heads=4, attention="local",
                    attention_options=dict(radius=1, backend=backend))
        # per block, Q K^T and the weighted sum of V: 2 x 2 x width FLOPs for every pair the window rules out
        assert evaluate.count_flops(local, x) == full - 2 * int((~mask).sum()) * 4 * 32
        assert all(block.attn.backend == backend for block in local.blocks)  # restored after counting


@pytest.mark.parametrize("kind,pool,expect", [
    ("full", "mean", (2 + math.sqrt(2)) / 4),  # uniform over the 2 x 2 grid: distances 0, 1, 1, sqrt(2)
    ("full", "cls", (2 + math.sqrt(2)) / 4),  # the cls key is left out and the rest renormalised
    ("lsa", "mean", (2 + math.sqrt(2)) / 3),  # uniform over the three other patches
    ("local", "mean", 0.0)])  # radius 0: each patch on itself
def test_attention_distance_against_hand_values(kind, pool, expect):
    opts = dict(radius=0) if kind == "local" else {}
    model = ViT(10, image_size=8, patch_size=4, depth=2, dim=16, heads=2, pool=pool, attention=kind,
                attention_options=opts)
    with torch.no_grad():
        for block in model.blocks:  # zero queries and keys: every allowed key gets the same weight
            block.attn.qkv.weight[:32].zero_()
            block.attn.qkv.bias[:32].zero_()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    distance = evaluate.attention_distance(model, images, [0.5] * 3, [0.25] * 3, torch.device("cpu"), batch_size=2)
    expected = torch.full((2, 2), expect, dtype=torch.float64)
    assert torch.allclose(torch.tensor(distance, dtype=torch.float64), expected, atol=1e-6)


def test_attention_distance_is_none_without_explicit_weights():
    model = ViT(10, image_size=8, patch_size=4, depth=1, dim=16, heads=2, attention="performer")
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    assert evaluate.attention_distance(model, images, [0.5] * 3, [0.25] * 3, torch.device("cpu")) is None


def test_bench_attention_writes_the_documented_fields_and_linear_kinds_scale_linearly(tmp_path):
    out = tmp_path / "bench.json"
    variants = "full,local,linformer,performer,nystrom"
    assert evaluate.main(["bench-attention", "--variants", variants, "--grids", "8,32,64", "--scopes", "layer,model",
                          "--depth", "1", "--dim", "32", "--heads", "2", "--batch-size", "1", "--warmup", "1",
                          "--repeats", "3", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["benchmark"] == "attention" and report["settings"]["grids"] == [8, 32, 64]
    assert {"device", "versions", "git_commit", "command"} <= set(report)
    rows = {(r["variant"], r["scope"], r["tokens"]): r for r in report["results"]}
    assert len(rows) == 5 * 2 * 3 and {t for _, _, t in rows} == {65, 1025, 4097}
    for r in rows.values():
        assert r["error"] is None and r["backend"] == "sdpa" and r["image_size"] == 4 * r["grid"]
        for key in ("forward_ms", "forward_backward_ms"):
            assert r[key]["repeats"] == 3 and 0 < r[key]["min"] <= r[key]["median"] <= r[key]["max"]
        assert r["forward_peak_memory_mb"] is None and r["flops"] > 0  # no CUDA memory on CPU
    # FLOPs: full attention's score and value products grow 16x from 1025 to 4097 tokens (4x for the rest).
    flops = lambda v, t: rows[(v, "layer", t)]["flops"]
    assert flops("full", 4097) / flops("full", 1025) > 10 and flops("local", 4097) < flops("full", 4097) / 10
    for v in ("linformer", "performer", "nystrom"):
        assert flops(v, 4097) / flops(v, 1025) < 5  # counted, not timed: a busy machine cannot fail it


def test_bench_attention_bad_input_exits_2(tmp_path, capsys):
    for argv, message in ((["--variants", "full,sparse"], "--variants: unknown 'sparse'; choose from full, local"),
                          (["--grids", "4"], "--grids 4 with --variants linformer: linformer k 64 exceeds the 16 patch "
                                             "tokens; allowed: 1 to 16"),
                          (["--dim", "30"], "--grids 8 with --variants full: width 30 is not divisible by 8 heads"),
                          (["--grids", "8,x"], "--grids '8,x' is not a comma-separated list")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["bench-attention", *argv, "--out", str(tmp_path / "b.json")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "b.json").exists()



def test_bench_train_splits_the_step_and_counts_its_flops(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bench.json"
    monkeypatch.setitem(sys.modules, "timm", None)  # as on a machine without timm: its row is skipped, said so
    assert evaluate.main(["bench-train", "--models", "vit-shallow1,timm-vit,resnet18-shallow", "--compile", "off",
                          "--img-size", "16", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                          "--peak-tflops", "2", "--device", "cpu", "--out", str(out)]) == 0
    assert "timm-vit skipped: timm is not installed" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["benchmark"] == "train" and report["matmul_tflops"] > 0
    rows = {r["model"]: r for r in report["results"]}
    assert list(rows) == ["vit-shallow1", "resnet18-shallow"]
    for r in rows.values():
        assert set(r["split_ms"]) == {"data", "forward", "backward", "optimizer"} and min(r["split_ms"].values()) > 0
        assert sum(r["split_share"].values()) == pytest.approx(1)
        assert r["images_per_s"] == pytest.approx(4 / r["step_ms"] * 1000)
        assert r["tflops"] == pytest.approx(r["train_flops_per_image"] * r["images_per_s"] / 1e12)
        assert r["mfu"] == pytest.approx(r["tflops"] / 2) and r["compile"] is False
    # One block of width 256 (MLP 512) on 16 patches + cls: forward FLOPs by hand; the step's are three times
    # those, less the patch embedding's input gradient (the image needs none).
    T, D, H, patch = 17, 256, 512, 16 * 256 * 3 * 4 * 4
    forward = 2 * (patch + T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * H + D * 10)
    assert rows["vit-shallow1"]["train_flops_per_image"] == 3 * forward - 2 * patch


def test_bench_train_times_each_binary_twin_against_its_full_precision_model(tmp_path):
    out = tmp_path / "bench.json"
    assert evaluate.main(["bench-train", "--models", "vit-shallow1,resnet18-shallow", "--compile", "off", "--binary",
                          "off,on", "--img-size", "16", "--batch-size", "4", "--steps", "2", "--warmup", "1",
                          "--device", "cpu", "--out", str(out)]) == 0
    rows = {(r["model"], r["binary"]): r for r in json.loads(out.read_text())["results"]}
    assert list(rows) == [("vit-shallow1", False), ("vit-shallow1", True), ("resnet18-shallow", False),
                          ("resnet18-shallow", True)]
    for arch in ("vit-shallow1", "resnet18-shallow"):
        fp, binary = rows[arch, False], rows[arch, True]
        assert binary["step_vs_full_precision"] == binary["step_ms"] / fp["step_ms"]
        assert "step_vs_full_precision" not in fp and binary["params"] != fp["params"]  # a different model


def test_bench_train_bad_input_exits_2(tmp_path, capsys):
    for argv, message in ((["--models", "vit,vgg"], "--models: unknown 'vgg'; choose from vit, vit-tiny"),
                          (["--models", "resnet50", "--binary", "on"], "resnet50 has no binary twin"),
                          (["--compile", "maybe"], "--compile: unknown 'maybe'; choose from off, on"),
                          (["--steps", "0"], "--steps must be at least 1")):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["bench-train", *argv, "--out", str(tmp_path / "b.json")])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.slow
def test_evaluate_cli_reproduces_final_metrics(vit_run, tmp_path):
    out, (_, _, final) = vit_run
    evaluate.main([str(out), "--out", str(tmp_path / "eval.json"), "--device", "cpu"])
    again = json.load(open(tmp_path / "eval.json"))
    assert again["test_acc"] == final["test_acc"] and again["confusion"] == final["confusion"]
    assert again["epoch"] == 10


def test_evaluate_cli_rejects_a_folder_without_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        evaluate.main([str(tmp_path)])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"evaluate.py: error: {tmp_path} is not a run folder with a checkpoint (need config.json and checkpoint.pt)"


@pytest.mark.slow
def test_performer_run_re_evaluates_to_the_same_metrics(tmp_path, capsys):
    # The random features are saved with the model, so evaluate.py reproduces the run's own numbers.
    args = [*TINY_VIT, *TINY_DATA, "--epochs", "2", "--attention", "performer", "--redraw-interval", "5"]
    _, _, final = run_train(tmp_path / "p", *args)
    capsys.readouterr()
    evaluate.main([str(tmp_path / "p"), "--device", "cpu"])
    again = json.loads(capsys.readouterr().out)
    assert again["test_acc"] == final["test_acc"] and again["confusion"] == final["confusion"]


@pytest.mark.slow
def test_evaluate_cli_refuses_old_and_foreign_configs_in_one_line(vit_run, tmp_path, capsys):
    out, _ = vit_run
    config = json.loads((out / "config.json").read_text())
    flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()}
    future = dict(config, data=dict(config["data"], binary=True))  # a key from another version of the code
    for name, written, message in (("old", flat, "has no model, data, optim and run sections"),
                                   ("future", future, "the data section of this config does not fit this code")):
        shutil.copytree(out, tmp_path / name)
        (tmp_path / name / "config.json").write_text(json.dumps(written))
        with pytest.raises(SystemExit) as e:
            evaluate.main([str(tmp_path / name), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("evaluate.py: error: ")
        assert message in err


def test_bench_data_times_both_pipelines_for_each_recipe(tmp_path):
    from helpers import write_cifar_folder
    write_cifar_folder(tmp_path, "cifar10", 4, 1)
    out = tmp_path / "bench.json"
    assert evaluate.main(["bench-data", "--data-dir", str(tmp_path), "--recipes", "none,deit", "--batches", "2",
                          "--warmup", "1", "--batch-size", "8", "--workers", "0", "--out", str(out)]) == 0
    report = json.load(open(out))
    assert report["benchmark"] == "data" and report["settings"]["recipes"]["none"] == {}
    assert report["settings"]["recipes"]["deit"]["randaug"] == [2, 9.0, 0.5]
    rows = {(r["pipeline"], r["recipe"]): r for r in report["results"]}
    # ours-every-op (RandAugment applying all its ops, as torchvision's does) only where there is RandAugment.
    expected = {(p, r) for p in ("ours", "torchvision") for r in ("none", "deit")} | {("ours-every-op", "deit")}
    assert set(rows) == expected
    for r in rows.values():
        assert r["images_per_s"] == pytest.approx(2 * 8 / r["seconds"])
    for name in ("none", "deit"):
        ratio = rows["ours", name]["images_per_s"] / rows["torchvision", name]["images_per_s"]
        assert report["ratios"][name] == pytest.approx(ratio)
    every_op = rows["ours-every-op", "deit"]["images_per_s"] / rows["torchvision", "deit"]["images_per_s"]
    assert report["ratios_every_op"] == {"deit": pytest.approx(every_op)}


def test_ema_moves_each_tensor_once_toward_the_model_and_copies_other_buffers():
    torch.manual_seed(0)
    # Linformer with --linformer-share kv: one matrix under two names; a Performer's random features are buffers.
    model = ViT(10, 16, patch_size=4, depth=1, dim=32, heads=4, attention="linformer",
                attention_options=dict(linformer_k=4, linformer_share="kv"))
    ema = ViT(10, 16, patch_size=4, depth=1, dim=32, heads=4, attention="linformer",
              attention_options=dict(linformer_k=4, linformer_share="kv"))
    ema.load_state_dict(model.state_dict())
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    evaluate.ema_update(evaluate.ema_pairs(ema, model), 0.9)
    for name, p in ema.named_parameters():  # e = e + (1 - decay) (m - e): 0.1 of the way, once
        assert torch.allclose(p, before[name] + 0.1), name
    assert model.blocks[0].attn.proj_k is model.blocks[0].attn.proj_v
    torch.manual_seed(0)
    performer = ViT(10, 16, patch_size=4, depth=1, dim=32, heads=4, attention="performer")
    copy = ViT(10, 16, patch_size=4, depth=1, dim=32, heads=4, attention="performer")
    evaluate.ema_update(evaluate.ema_pairs(copy, performer), 0.9)
    assert torch.equal(copy.blocks[0].attn.features, performer.blocks[0].attn.features)  # copied, not averaged
