"""train.py end to end on tiny models and synthetic data: learning, run folder, resume, DDP, bad input."""
import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torchvision

import evaluate

from attention import ATTENTIONS
from data import DATASETS, REGIMES, SHAPES
from helpers import ROOT, TINY_DATA, TINY_RESNET, TINY_VIT, read_run, run_train, write_cifar_folder
from model import ARCHS, build_model


@pytest.mark.slow
def test_vit_learns_synthetic(vit_run):
    _, (cfg, rows, final) = vit_run
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.2
    assert final["test_acc"] > 0.25 and rows[-1]["val_acc"] > 0.25  # chance is 0.10


@pytest.mark.slow
def test_resnet_learns_synthetic(tmp_path):
    cfg, rows, final = run_train(tmp_path / "r", *TINY_RESNET, *TINY_DATA, "--epochs", "3")
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.3
    assert final["test_acc"] > 0.5 and cfg["optim"]["opt"] == "sgd" and cfg["optim"]["lr"] == 0.1
    assert cfg["optim"]["momentum"] == 0.9 and cfg["model"] == dict(arch="resnet18-shallow", stages=1)


@pytest.mark.slow
def test_run_folder_contract(vit_run):
    out, (cfg, rows, final) = vit_run
    expected = dict(model=("arch", "depth", "dim", "heads", "patch_size", "mlp_ratio", "pool", "drop_path"),
                    data=("dataset", "regime", "val_fraction", "synthetic_per_class", "synthetic_size"),
                    optim=("epochs", "batch_size", "opt", "lr", "weight_decay", "warmup_epochs", "amp"),
                    run=("seed", "out", "device", "thresholds"),
                    recorded=("params", "counts_per_class", "world_size", "device", "versions", "git_commit",
                              "normalization", "image_size", "num_classes"))
    assert list(cfg) == list(expected)
    for section, keys in expected.items():
        assert set(keys) <= set(cfg[section]), section
    model, recorded = cfg["model"], cfg["recorded"]
    assert cfg["data"]["dataset"] == "synthetic" and recorded["world_size"] == 1 and model["depth"] == 2
    assert model["mlp_ratio"] == 2.0 and "stages" not in model and "radius" not in model  # only what applies
    assert "momentum" not in cfg["optim"] and "fraction" not in cfg["data"]  # adamw, standard regime
    assert recorded["counts_per_class"]["train"] == [90] * 10 and recorded["counts_per_class"]["val"] == [10] * 10
    assert recorded["versions"]["torch"] == torch.__version__
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    for r in rows:
        assert set(r) >= {"epoch", "time_s", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "images_per_s"}
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and r["images_per_s"] > 0
    assert all(a["time_s"] < b["time_s"] for a, b in zip(rows, rows[1:]))
    confusion = torch.tensor(final["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum() == 200
    assert final["test_acc"] == pytest.approx(confusion.trace().item() / 200)
    recall = (confusion.diag().double() / confusion.sum(1)).tolist()
    assert final["per_class_recall"] == pytest.approx(recall)
    assert final["test_acc"] <= final["test_top5"] <= 1
    assert final["params"] == recorded["params"] and final["flops_per_image"] > 0
    assert final["throughput_images_per_s"] > 0 and final["latency_ms"] > 0 and final["peak_memory_mb"] is None
    assert final["best_val_acc"] == max(r["val_acc"] for r in rows)
    for t in cfg["run"]["thresholds"]:
        first = next((r for r in rows if r["val_acc"] >= t), None)
        assert final["epochs_to"][str(t)] == (first["epoch"] if first else None)
        assert final["seconds_to"][str(t)] == (first["time_s"] if first else None)
    assert not [f for f in os.listdir(out) if ".tmp" in f]


@pytest.mark.slow
def test_flops_match_hand_count_for_the_tiny_vit(vit_run):
    _, (cfg, _, final) = vit_run
    # 16 px, patch 4: 16 patches + cls = 17 tokens, width 64, MLP 128, 2 blocks, 10 classes; FLOPs = 2 x MACs.
    T, D, H, n = 17, 64, 128, 16
    patch = n * D * 3 * 4 * 4
    block = T * D * 3 * D + 2 * T * T * D + T * D * D + 2 * T * D * H
    assert final["flops_per_image"] == 2 * (patch + 2 * block + D * 10)


@pytest.mark.slow
def test_train_flops_against_a_hand_count_and_mfu_arithmetic(vit_run, monkeypatch):
    _, (cfg, rows, final) = vit_run
    # Backward costs twice the forward for every matmul (the input's and the weight's gradient), but the image
    # needs no gradient: the patch embedding's input gradient is never computed.
    patch_macs = 16 * 64 * 3 * 4 * 4
    assert final["train_flops_per_image"] == 3 * final["flops_per_image"] - 2 * patch_macs
    assert final["train_flops"] == final["train_flops_per_image"] * 900 * 10  # 900 training images, 10 epochs
    assert final["peak_tflops"] is None and final["mfu"] is None  # a CPU has no peak in the table
    assert evaluate.mfu(2e12, 4.0, 1.0) == 0.5 and evaluate.mfu(2e12, 4.0, None) is None
    names = {"NVIDIA H100 80GB HBM3": (989, 495), "NVIDIA H100 PCIe": (756, 378), "NVIDIA A100-SXM4-40GB": (312, 156),
             "NVIDIA L40S": (362, 183), "NVIDIA GeForce GTX 1080": (None, None)}
    for name, (bf16, tf32) in names.items():
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        cuda = torch.device("cuda", 0)
        assert (evaluate.peak_tflops(cuda, True), evaluate.peak_tflops(cuda, False)) == (bf16, tf32), name
        assert evaluate.peak_tflops(cuda, True, given=7.0) == 7.0
    assert evaluate.peak_tflops(torch.device("cpu"), True) is None


def test_counting_a_training_steps_flops_leaves_no_trace():
    torch.manual_seed(0)
    model = build_model(arch="resnet18-shallow", stages=1, num_classes=10, image_size=16).eval()
    before, x = {k: v.clone() for k, v in model.state_dict().items()}, torch.randn(2, 3, 16, 16)
    rng = torch.get_rng_state()
    assert evaluate.count_flops(model, x, backward=True) > 2 * evaluate.count_flops(model, x)  # backward counted
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BatchNorm statistics too
    assert torch.equal(rng, torch.get_rng_state())


@pytest.mark.slow
def test_compiled_steps_train_like_the_plain_module_and_save_it(tmp_path, monkeypatch):
    # A dynamo backend that runs each captured graph as it is: the same kernels, so the same numbers bit for bit,
    # while what is compiled, when, and what is saved are the real wiring. (Inductor's code generation takes half
    # a minute on 2 cores; gpu-check.sh runs --compile for real.)
    import train
    graphs, compile_, epoch_starts, train_one_epoch = [], torch.compile, [], train.train_one_epoch

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend=backend))
    monkeypatch.setattr(train, "train_one_epoch", lambda *a: (epoch_starts.append(len(graphs)), train_one_epoch(*a))[1])
    # 90 training images in batches of 16: two batch sizes (16, 10), each compiled before the first step.
    args = [*TINY_VIT, *TINY_DATA, "--synthetic-per-class", "10", "--batch-size", "16", "--epochs", "2",
            "--dropout", "0.1"]
    _, plain_rows, plain = run_train(tmp_path / "plain", *args)
    assert graphs == [] and epoch_starts == [0, 0]
    cfg, rows, final = run_train(tmp_path / "compiled", *args, "--compile")
    assert epoch_starts[2:] == [2, 2] and len(graphs) == 2  # both sizes before the first epoch; none recompiled
    assert cfg["run"]["compile"] is True
    drop = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "images_per_s")}
    assert [drop(r) for r in rows] == [drop(r) for r in plain_rows]
    for key in ("test_acc", "confusion", "train_flops"):
        assert final[key] == plain[key]
    saved = torch.load(tmp_path / "compiled" / "checkpoint.pt", weights_only=False)["model"]
    assert list(saved) == list(torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=False)["model"])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--attention", "performer", "--redraw-interval", "5"],
                                   ["--recipe", "deit", "--ema", "0.9", "--binary", "--pool", "mean", "--multi-pool",
                                    "--residual-affine"]], ids=["performer", "deit-recipe-binary"])
def test_interrupted_run_resumes_to_the_same_result(tmp_path, extra):  # a plain run: test_kill_9_anywhere_...
    # The performer's features and redraw count come back from the checkpoint, so it resumes exactly too; so do
    # a recipe's draws (RandAugment, erasing, mixing, repeated augmentation), the EMA weights and a binary ViT's
    # token BatchNorm statistics, shifts and quantiser scales (one run for the last three: the suite's time).
    args = [*TINY_VIT, *TINY_DATA, "--epochs", "3", "--dropout", "0.1", *extra]
    _, full_rows, full_final = run_train(tmp_path / "full", *args)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *args, "--out", str(tmp_path / "cut"), "--progress", "off"]
    # 17 steps an epoch: stopping after 25 dies in the middle of epoch 2, after epoch 1's checkpoint.
    killed = subprocess.run(cmd + ["--stop-after-steps", "25"], capture_output=True, text=True)
    assert killed.returncode == 3, killed.stderr
    _, rows, final = read_run(tmp_path / "cut")
    assert final is None and len(rows) == 1
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    _, rows, final = read_run(tmp_path / "cut")
    drop_time = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "images_per_s")}
    assert [drop_time(r) for r in rows] == [drop_time(r) for r in full_rows]
    for key in ("test_acc", "test_top5", "macro_f1", "confusion", "best_val_acc", "epochs_to", "ema"):
        assert final.get(key) == full_final.get(key), key
    assert ("ema" in final) == ("--ema" in extra) and ("ema_val_acc" in rows[0]) == ("--ema" in extra)
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert again.returncode == 0 and "already finished" in again.stdout
    cfg, _, _ = read_run(tmp_path / "cut")
    assert [r["epoch"] for r in cfg["resumes"]] == [1]  # resumed once, after epoch 1's checkpoint


@pytest.mark.slow
def test_unreadable_checkpoint_exits_2(tmp_path, exits_2):
    out = tmp_path / "r"
    run_train(out, *BASE)
    os.remove(out / "final.json")
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert f"cannot load {out}/checkpoint.pt (UnpicklingError" in exits_2([*BASE, "--out", str(out), "--resume"])
    assert not (out / "final.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--attention", "performer", "--redraw-interval", "4"],
                                   ["--repeated-aug", "3", "--randaug", "2,9,0.5"]],
                         ids=["full", "performer", "repeated-randaug"])
def test_two_process_torchrun_matches_single_process(tmp_path, extra):
    # The performer redraws its features from a seeded generator, so both processes use the single process's; the
    # repeated order and every image's RandAugment draws are made for the global batch, so they are the same too.
    args = [*TINY_VIT, *TINY_DATA, "--epochs", "2", "--drop-path", "0", "--batch-size", "32", *extra]
    _, single_rows, single_final = run_train(tmp_path / "one", *args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train.py"), *args, "--out", str(tmp_path / "two"), "--progress", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg, rows, final = read_run(tmp_path / "two")
    assert cfg["recorded"]["world_size"] == 2 and len(rows) == len(single_rows) == 2
    for a, b in zip(rows, single_rows):
        assert a["val_acc"] == b["val_acc"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert final["test_acc"] == single_final["test_acc"]


@pytest.mark.slow
def test_corrupted_regime_writes_the_sweep(tmp_path):
    _, _, final = run_train(tmp_path / "c", *TINY_VIT, *TINY_DATA, "--epochs", "1", "--regime", "corrupted",
                            "--corruptions", "contrast,gaussian_noise")
    table = final["corruption"]
    assert set(table) == {"contrast", "gaussian_noise"}
    assert all(set(per) == {"1", "2", "3", "4", "5"} for per in table.values())
    cells = [a for per in table.values() for a in per.values()]
    assert all(0 <= a <= 1 for a in cells)
    assert final["corruption_mean"] == pytest.approx(sum(cells) / 10)


@pytest.mark.slow
def test_many_classes_trains_on_cifar100_folders(tmp_path):
    write_cifar_folder(tmp_path / "data", "cifar100", 10, 2)
    cfg, rows, final = run_train(tmp_path / "m", *TINY_VIT, "--regime", "many-classes", "--data-dir",
                                 str(tmp_path / "data"), "--epochs", "1", "--batch-size", "100", "--no-download",
                                 "--device", "cpu")
    counts = cfg["recorded"]["counts_per_class"]
    assert cfg["data"]["dataset"] == "cifar100" and cfg["recorded"]["num_classes"] == 100
    assert counts["train"] == [9] * 100 and counts["test"] == [2] * 100
    assert len(final["per_class_recall"]) == 100 and len(final["confusion"]) == 100
    # CIFAR-100 as the pretraining set: fine-tuned on CIFAR-10 classes 5-9, its 100-way head replaced.
    write_cifar_folder(tmp_path / "data", "cifar10", 20, 4)
    ft, _, _ = run_train(tmp_path / "ft", *TINY_VIT, "--dataset", "cifar10", "--classes", "5-9", "--init",
                         str(tmp_path / "m"), "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--no-download",
                         "--device", "cpu")
    init = ft["recorded"]["init"]
    assert init["new_head"] and init["source_data"]["dataset"] == "cifar100" and ft["recorded"]["num_classes"] == 5
    assert ft["recorded"]["normalization"] == cfg["recorded"]["normalization"]


@pytest.mark.slow
def test_a_subset_of_classes_trains_a_head_of_that_size(tmp_path):
    # Classes 5-9 of the synthetic shapes, relabelled 0-4: the model, the metrics and the record all have 5.
    cfg, rows, final = run_train(tmp_path / "c", *TINY_VIT, *TINY_DATA, "--epochs", "1", "--classes", "5-9")
    assert cfg["data"]["classes"] == [5, 6, 7, 8, 9] and cfg["recorded"]["num_classes"] == 5
    assert cfg["recorded"]["class_names"] == SHAPES[5:] == ["x-cross", "ring", "h-bar", "v-bar", "triangle-down"]
    assert cfg["recorded"]["counts_per_class"]["train"] == [54] * 5 and len(final["confusion"]) == 5
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=False)["model"]
    assert state["head.weight"].shape[0] == 5
    import train
    parser = train.get_parser()
    name = train.resolve_config(parser.parse_args(["--classes", "0,2-4"]), parser.sections)["run"]["out"]
    assert name == "runs/vit-standard-cifar10-c0,2-4-s0"


@pytest.mark.slow
def test_imbalanced_run_records_long_tail_counts(tmp_path):
    cfg, _, _ = run_train(tmp_path / "i", *TINY_VIT, *TINY_DATA, "--epochs", "1", "--regime", "imbalanced",
                          "--imbalance-ratio", "10")
    counts = cfg["recorded"]["counts_per_class"]
    assert counts["train"] == [54, 41, 32, 25, 19, 15, 11, 9, 6, 5]  # 54 * 10^(-i/9), floored: 25.06, 15.03, 9.01
    assert counts["val"] == [6] * 10 and counts["test"] == [12] * 10
    assert cfg["data"]["imbalance_ratio"] == 10 and cfg["data"]["imbalance_profile"] == "exp"


# ----------------------------------------------------------------------------- bad input

BASE = [*TINY_VIT, *TINY_DATA, "--epochs", "1"]


@pytest.mark.parametrize("extra,message", [
    (["--regime", "corrupted", "--corruptions", "fog"], "unknown corruption 'fog'; choose from gaussian_noise"),
    (["--train-corruption", "fog"], "argument --train-corruption: invalid choice: 'fog'"),
    (["--regime", "sparse", "--fraction", "0"], "--fraction 0.0 is outside (0, 1]"),
    (["--skip-nonfinite", "-1"], "--skip-nonfinite -1 must be 0 or more"),
    (["--regime", "sparse", "--fraction", "1.5"], "--fraction 1.5 is outside (0, 1]"),
    (["--regime", "sparse", "--per-class", "55"], "--per-class 55 is larger than the smallest class (54 training"),
    (["--fraction", "0.5"], "--fraction only applies to --regime sparse"),
    (["--regime", "imbalanced", "--imbalance-ratio", "0.5"], "--imbalance-ratio 0.5 must be at least 1"),
    (["--attention", "local", "--radius", "-1"], "--radius -1 must be at least 0"),
    (["--radius", "2"], "--radius only applies to --attention dilated, hybrid, local (got --attention full)"),
    (["--attention", "local", "--dilation", "2"],
     "--dilation only applies to --attention dilated (got --attention local)"),
    (["--attention", "hybrid", "--dilations", "2,2"], "--dilations 2,2 needs at least two different dilations"),
    (["--attention", "hybrid", "--dilations", "1,x"],
     "--dilations '1,x' is not a comma-separated list of whole numbers"),
    (["--attention", "linformer", "--linformer-k", "17"],
     "linformer k 17 exceeds the 16 patch tokens; allowed: 1 to 16"),
    (["--attention", "nystrom", "--landmarks", "18"], "18 landmarks exceed the 17 tokens; allowed: 1 to 17"),
    (["--attention", "nystrom", "--nystrom-conv", "4"], "--nystrom-conv 4 must be odd"),
    (["--attention", "performer", "--redraw-interval", "-1"], "--redraw-interval -1 must be at least 0"),
    (["--arch", "resnet18", "--spt"], "--spt applies to ViTs, not to --arch resnet18"),
    (["--arch", "resnet18", "--attention", "lsa"], "--attention lsa applies to ViTs, not to --arch resnet18"),
    (["--attention-backend", "flex"],
     "--attention-backend flex applies to --attention dilated, hybrid, local, not full"),
    (["--attention", "local", "--attention-backend", "flex", "--device", "cpu"], "--attention-backend flex needs CUDA"),
    (["--label-smoothing", "1.5"], "--label-smoothing 1.5 is outside [0, 1]"),
    (["--drop-path", "1"], "--drop-path 1.0 is outside [0, 1)"),
    (["--dropout", "-0.1"], "--dropout -0.1 is outside [0, 1)"),
    (["--lr", "-1"], "--lr -1.0 must be positive"),
    (["--weight-decay", "-1"], "--weight-decay -1.0 must be 0 or more"),
    (["--max-per-class", "0"], "--max-per-class 0 must be at least 1"),
    (["--test-per-class", "0"], "--test-per-class 0 must be at least 1"),
    (["--time-budget", "-5"], "--time-budget -5.0 must be positive seconds"),
    (["--thresholds", "0.5,70"], "--thresholds 0.5,70 must be accuracies in (0, 1]"),
    (["--synthetic-size", "8"], "--synthetic-size (8) at least 16"),
    (["--patch-size", "5"], "patch size 5 does not divide the image size 16; allowed: 1, 2, 4, 8, 16"),
    (["--heads", "3"], "width 64 is not divisible by 3 heads"),
    (["--arch", "resnet18", "--depth", "3"], "--depth 3 applies to ViTs, not to --arch resnet18"),
    (["--arch", "resnet18", "--dropout", "0.1"], "--dropout 0.1 applies to ViTs, not to --arch resnet18"),
    (["--stages", "2"], "--stages applies to ResNets, not to --arch vit"),
    (["--momentum", "0.5"], "--momentum only applies to --opt sgd (got --opt adamw)"),
    (["--opt", "sgd", "--momentum", "1"], "--momentum 1.0 is outside [0, 1)"),
    (["--dataset", "cifar10"], "--synthetic-per-class only applies to --dataset synthetic"),
    (["--train-severity", "2"], "--train-severity only applies to --train-corruption"),
    (["--corruptions", "contrast"], "--corruptions only applies to --regime corrupted (got --regime standard)"),
    (["--regime", "sparse", "--fraction", "0.5", "--per-class", "3"], "give --fraction or --per-class, not both"),
    (["--warmup-epochs", "3"], "--warmup-epochs 3.0 must be in [0, --epochs 1]"),
    (["--val-fraction", "1"], "--val-fraction 1.0 is outside [0, 1)"),
    (["--classes", "3-12"], "--classes 3-12 names a class outside the dataset's 0-9"),
    (["--classes", "0-x"], "--classes '0-x' is not a list of classes such as 0-4, 5-9 or 0,2,4"),
    (["--regime", "many-classes"], "--regime many-classes trains on cifar100, but --dataset synthetic was given"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, exits_2, extra, message):
    base = BASE if "resnet18" not in extra else [*TINY_DATA, "--epochs", "1"]  # no ViT sizes for a ResNet
    err = exits_2([*base, *extra, "--out", str(tmp_path / "x")])
    assert message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,value,allowed", [
    ("--arch", "vgg", ARCHS), ("--regime", "tiny", REGIMES), ("--dataset", "mnist", DATASETS),
    ("--attention", "sparse", ATTENTIONS),
])
def test_unknown_names_exit_2_listing_the_allowed_ones(tmp_path, exits_2, flag, value, allowed):
    err = exits_2([*BASE, flag, value, "--out", str(tmp_path / "x")])
    assert f"argument {flag}: invalid choice: '{value}'" in err  # argparse's wording; quoting of choices varies
    assert all(name in err for name in allowed)


def test_missing_and_corrupt_dataset_folders_exit_2(tmp_path, exits_2, monkeypatch):
    args = [*TINY_VIT, "--epochs", "1", "--data-dir", str(tmp_path / "d"), "--out", str(tmp_path / "x")]
    assert "cifar10 not found: expected the folder" in exits_2([*args, "--no-download"])

    def offline(*a, **k):
        raise OSError("Name or service not known")
    monkeypatch.setattr("torchvision.datasets.utils.download_and_extract_archive", offline)
    assert "offline, put the extracted 'cifar-10-batches-py' folder in" in exits_2(args)
    write_cifar_folder(tmp_path / "d", "cifar10", 2, 1)
    open(tmp_path / "d" / "cifar-10-batches-py" / "test_batch", "wb").write(b"not a pickle")
    assert "test_batch is corrupt" in exits_2(args)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_run_folder_is_protected(tmp_path, exits_2, monkeypatch):
    out = tmp_path / "done"
    run_train(out, *BASE)
    before = {f: open(out / f, "rb").read() for f in os.listdir(out)}
    err = exits_2([*BASE, "--out", str(out)])
    assert "already holds a finished run; pass --resume to continue it or --overwrite" in err
    assert "--resume: --lr is 0.5 but the run in" in exits_2([*BASE, "--out", str(out), "--resume", "--lr", "0.5"])
    # The seed draws the subset, the order and the dropout; the thresholds make final.json's epochs_to.
    assert "--resume: --seed is 5 but the run in" in exits_2([*BASE, "--out", str(out), "--resume", "--seed", "5"])
    assert "--resume: --thresholds is [0.5] but" in exits_2([*BASE, "--out", str(out), "--resume", "--thresholds",
                                                            "0.5"])
    assert {f: open(out / f, "rb").read() for f in os.listdir(out)} == before
    assert "has no checkpoint.pt to resume from" in exits_2([*BASE, "--out", str(tmp_path / "empty"), "--resume"])
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert "was started with 1 processes, not 2" in exits_2([*BASE, "--out", str(out), "--resume"])
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "file").write_text("x")
    assert f"--out {tmp_path / 'file'} is a file, not a folder" in exits_2([*BASE, "--out", str(tmp_path / "file")])
    nested = exits_2([*BASE, "--out", str(tmp_path / "file" / "run")])
    assert f"--out {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a folder" in nested
    assert {f: open(out / f, "rb").read() for f in os.listdir(out)} == before
    _, rows, _ = run_train(out, *BASE, "--epochs", "2", "--overwrite")
    assert len(rows) == 2


@pytest.mark.slow
def test_runs_written_before_config_sections_are_refused_by_resume(tmp_path, exits_2):
    out = tmp_path / "old"
    run_train(out, *BASE, "--stop-after-steps", "1000")
    os.remove(out / "final.json")
    config = json.loads((out / "config.json").read_text())
    flat = {k: v for section in config.values() if isinstance(section, dict) for k, v in section.items()}
    (out / "config.json").write_text(json.dumps(flat))  # the layout train.py wrote before 2026-12
    before = {f: open(out / f, "rb").read() for f in os.listdir(out)}
    err = exits_2([*BASE, "--out", str(out), "--resume"])
    assert f"{out}/config.json has no model, data, optim and run sections: it was written by train.py before" in err
    assert {f: open(out / f, "rb").read() for f in os.listdir(out)} == before


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--arch", "vgg"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr


def test_default_run_folders_differ_across_a_regime_sweep():
    import train
    parser = train.get_parser()
    name = lambda *a: train.resolve_config(parser.parse_args(list(a)), parser.sections)["run"]["out"]
    assert name("--regime", "sparse", "--fraction", "0.01") == "runs/vit-sparse-f0.01-cifar10-s0"
    assert name("--regime", "sparse", "--fraction", "0.05") != name("--regime", "sparse", "--fraction", "0.01")
    assert name("--arch", "resnet18", "--regime", "sparse", "--per-class", "100", "--seed", "2") == \
        "runs/resnet18-sparse-n100-cifar10-s2"
    assert name("--regime", "imbalanced") == "runs/vit-imbalanced-r100-exp-cifar10-s0"
    assert name("--time-budget", "60") == "runs/vit-t60s-standard-cifar10-s0"
    assert name("--attention", "local", "--radius", "2", "--regime", "many-classes") == \
        "runs/vit-local2-many-classes-cifar100-s0"
    names = {name("--attention", "local"), name("--attention", "local", "--window-shape", "circle"),
             name("--attention", "dilated"), name("--attention", "dilated", "--dilation", "3"),
             name("--attention", "hybrid"),
             name("--attention", "linformer"), name("--attention", "linformer", "--linformer-share", "kv"),
             name("--attention", "performer"), name("--attention", "nystrom"), name("--attention", "lsa"),
             name("--attention", "lsa", "--spt"), name("--spt"), name()}
    assert len(names) == 13
    assert name("--attention", "hybrid") == "runs/vit-hybrid1d1-2-4-standard-cifar10-s0"
    assert name("--attention", "performer") == "runs/vit-performer111-standard-cifar10-s0"  # 32 ln 32 = 110.9
    assert name("--attention", "lsa", "--spt") == "runs/vit-lsa-spt-standard-cifar10-s0"
    assert name("--attention", "nystrom", "--nystrom-conv", "0") == "runs/vit-nystrom16-conv0-standard-cifar10-s0"
    # Minor options keep the names runs had before the options table: a circle window, Linformer sharing.
    assert name("--attention", "local", "--window-shape", "circle") == "runs/vit-local1c-standard-cifar10-s0"
    assert name("--attention", "linformer", "--linformer-share", "kv") == "runs/vit-linformer64kv-standard-cifar10-s0"
    assert name("--arch", "resnet18", "--attention", "full") == "runs/resnet18-standard-cifar10-s0"  # allowed


def test_lr_schedule_against_hand_values():
    import train
    assert train.lr_at(0.05, 0.1, 1.0) == pytest.approx(0.5)  # half-way through warm-up
    assert train.lr_at(0.1, 0.1, 1.0) == pytest.approx(1.0)  # peak at the end of warm-up
    assert train.lr_at(0.55, 0.1, 1.0) == pytest.approx(0.5)  # cosine half-way: (1 + cos(pi / 2)) / 2
    assert train.lr_at(1.0, 0.1, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert train.lr_at(1.3, 0.1, 1.0) == pytest.approx(0.0, abs=1e-12)  # a budget overrun stays at 0
    assert train.lr_at(0.5, 0.0, 2.0) == pytest.approx(1.0)  # no warm-up


@pytest.mark.slow
def test_time_budget_stops_training_when_spent(tmp_path, monkeypatch):
    import types
    import train
    # train.py's clock made a counter that moves 0.01 s at each reading (two readings a step): the budget's
    # arithmetic, not the machine's speed, decides when training stops, so a busy machine cannot fail this.
    clock = iter(range(10 ** 9))
    monkeypatch.setattr(train, "time", types.SimpleNamespace(time=lambda: next(clock) * 0.01))
    cfg, rows, final = run_train(tmp_path / "t", *TINY_VIT, *TINY_DATA, "--epochs", "1000", "--time-budget", "1.5")
    assert 1 <= len(rows) < 1000 and final["epochs"] == len(rows)
    assert 1.5 <= final["train_step_time_s"] <= 1.5 + 0.02  # it stops at the first step past the budget
    assert rows[-1]["lr"] < 0.002 * cfg["optim"]["lr"]  # the cosine ran to its end within the budget
    assert rows[0]["lr"] > 0.5 * cfg["optim"]["lr"] and cfg["optim"]["time_budget"] == 1.5


def test_time_budget_refuses_several_processes(tmp_path, exits_2, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    err = exits_2([*BASE, "--time-budget", "5", "--out", str(tmp_path / "x")])
    assert "--time-budget needs a single process, not 2" in err
    err = exits_2([*BASE, "--skip-nonfinite", "2", "--out", str(tmp_path / "x")])
    assert "--skip-nonfinite needs a single process, not 2" in err


@pytest.mark.slow
def test_test_per_class_keeps_a_fixed_balanced_subset(tmp_path):
    a, _, fa = run_train(tmp_path / "a", *BASE, "--test-per-class", "3")
    b, _, fb = run_train(tmp_path / "b", *BASE, "--test-per-class", "3", "--seed", "1")
    assert a["recorded"]["counts_per_class"]["test"] == [3] * 10 == b["recorded"]["counts_per_class"]["test"]
    assert sum(map(sum, fa["confusion"])) == 30 and sum(map(sum, fb["confusion"])) == 30


# ----------------------------------------------------------------------------- attention variants end to end

VARIANTS = [["--attention", "full"], ["--attention", "local"], ["--attention", "dilated"], ["--attention", "hybrid"],
            ["--attention", "linformer", "--linformer-k", "8"], ["--attention", "performer"],
            ["--attention", "nystrom", "--landmarks", "8"], ["--attention", "lsa"], ["--attention", "lsa", "--spt"]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(a.lstrip("-") for a in v[1:]))
def test_every_attention_variant_learns_synthetic(tmp_path, variant):
    args = [*TINY_VIT, *TINY_DATA, "--epochs", "8", "--batch-size", "16", "--drop-path", "0", "--device", "cpu",
            *variant]
    cfg, rows, final = run_train(tmp_path / "v", *args)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert final["test_acc"] > 0.2, final["test_acc"]  # chance is 0.10 (120 test images: 3.6 standard errors)
    assert cfg["recorded"]["attention_backend_used"] == "sdpa"  # on the CPU: the portable path
    distance = final["attention_distance"]
    model = cfg["model"]
    if model["attention"] in ("full", "local", "dilated", "hybrid", "lsa"):
        assert len(distance) == 2 and all(len(layer) == 4 for layer in distance)
        reach = {"local": math.sqrt(2), "dilated": 2 * math.sqrt(2)}.get(model["attention"], 3 * math.sqrt(2))
        assert all(0 < d <= reach + 1e-6 for layer in distance for d in layer)  # within the window it may use
    else:
        assert distance is None
    state = torch.load(tmp_path / "v" / "checkpoint.pt", weights_only=False)["model"]
    if model["attention"] == "lsa":  # the temperature is trained, away from 1 / sqrt(16)
        assert (state["blocks.0.attn.temperature"] - 0.25).abs().max() > 1e-3
    if model["attention"] == "performer":  # the features in use are in the checkpoint
        assert state["blocks.0.attn.features"].shape == (model["performer_features"], 16)


# ----------------------------------------------------------------------------- transfer: starting from trained weights

VIT_SOURCE = [*TINY_VIT, *TINY_DATA, "--synthetic-per-class", "100"]  # the flags of the session's vit_run


def checkpoint_model(run_dir):
    """The model state dict of a run folder's checkpoint."""
    return torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=False)["model"]


@pytest.mark.slow
def test_init_starts_from_exactly_the_source_runs_weights(vit_run, tmp_path, capsys):
    src, (src_cfg, src_rows, src_final) = vit_run
    cfg, rows, final = run_train(tmp_path / "same", *VIT_SOURCE, "--epochs", "1", "--init", str(src))
    before = cfg["recorded"]["init"]["before"]
    # The same data and the source's weights: the first evaluation is the source run's last one.
    assert before["test_acc"] == src_final["test_acc"] and before["val_acc"] == src_rows[-1]["val_acc"]
    assert cfg["recorded"]["init"]["new_head"] is False and cfg["recorded"]["init"]["source_model"] == src_cfg["model"]
    assert cfg["recorded"]["normalization"] == src_cfg["recorded"]["normalization"]
    # Fine-tuning defaults: SGD with momentum, no weight decay (TINY_VIT's --lr and TINY_DATA's warm-up given).
    assert {k: cfg["optim"][k] for k in ("opt", "lr", "weight_decay", "momentum", "warmup_epochs")} == dict(
        opt="sgd", lr=2e-3, weight_decay=0.0, momentum=0.9, warmup_epochs=1.0)
    import train
    given = dict(epochs=30, batch_size=128, no_amp=False)
    assert {k: v for k, v in train.optim_config(given, "vit", 1, finetune=True).items() if k != "amp"} == dict(
        epochs=30, batch_size=128, opt="sgd", lr=0.01, weight_decay=0.0, momentum=0.9, warmup_epochs=1.0,
        label_smoothing=0.1, grad_clip=1.0)
    assert os.path.basename(cfg["run"]["out"]) == "same"
    # Other classes: a new head (said in the log), chance before training.
    cfg, _, final = run_train(tmp_path / "other", *VIT_SOURCE, "--epochs", "1", "--init", str(src), "--classes",
                              "5-9")
    assert cfg["recorded"]["init"]["new_head"] and "started from" in capsys.readouterr().out
    assert checkpoint_model(tmp_path / "other")["head.weight"].shape == (5, 64)
    # Re-evaluation standardises as training did: with the source's statistics, not those of classes 5-9.
    import evaluate
    again = evaluate.evaluate_run(str(tmp_path / "other"), "cpu", None)
    assert again["test_acc"] == final["test_acc"] and again["confusion"] == final["confusion"]


@pytest.mark.slow
def test_frozen_backbone_is_bitwise_unchanged_and_the_head_trains(tmp_path):
    run_train(tmp_path / "src", *TINY_RESNET, *TINY_DATA, "--epochs", "1")
    cfg, _, _ = run_train(tmp_path / "probe", *TINY_RESNET, *TINY_DATA, "--epochs", "2", "--init",
                          str(tmp_path / "src"), "--freeze", "backbone", "--lr", "0.1")
    before, after = checkpoint_model(tmp_path / "src"), checkpoint_model(tmp_path / "probe")
    backbone = [k for k in before if not k.startswith("fc.")]
    assert any("running_mean" in k for k in backbone)  # BatchNorm statistics are frozen too
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    assert cfg["recorded"]["trainable_params"] == 64 * 10 + 10 < cfg["recorded"]["params"]


def test_layer_decay_lrs_against_a_hand_computation():
    import train
    model = build_model("vit", 10, image_size=16, depth=2, dim=32, heads=4)
    optimizer = train.make_optimizer(model, dict(opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5))
    scale_of = {id(p): g["lr_scale"] for g in optimizer.param_groups for p in g["params"]}
    hand = lambda name: 0.125 if name.startswith(("patch_embed", "cls_token", "pos_embed")) else (
        0.25 if name.startswith("blocks.0.") else 0.5 if name.startswith("blocks.1.") else 1.0)
    assert {n: scale_of[id(p)] for n, p in model.named_parameters()} == {n: hand(n) for n, _ in
                                                                         model.named_parameters()}
    no_decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.pos_embed) in no_decay and id(model.blocks[0].attn.qkv.weight) not in no_decay


@pytest.mark.slow
def test_layer_decay_sets_each_groups_lr_in_the_training_loop(vit_run, tmp_path):
    src, _ = vit_run
    _, rows, _ = run_train(tmp_path / "ld", *VIT_SOURCE, "--epochs", "1", "--init", str(src), "--layer-decay", "0.5")
    groups = torch.load(tmp_path / "ld" / "checkpoint.pt", weights_only=False)["optimizer"]["param_groups"]
    assert sorted({g["lr_scale"] for g in groups}) == [0.125, 0.25, 0.5, 1.0]
    assert all(g["lr"] == pytest.approx(rows[-1]["lr"] * g["lr_scale"]) for g in groups)


@pytest.mark.slow
def test_img_size_resizes_every_batch_for_training_and_evaluation(tmp_path):
    import evaluate
    cfg, _, final = run_train(tmp_path / "r", *TINY_VIT, *TINY_DATA, "--epochs", "1", "--img-size", "24",
                              "--resize", "bicubic")
    assert cfg["data"]["img_size"] == 24 and cfg["recorded"]["input_size"] == 24
    model = evaluate.build_run_model(cfg)
    model.load_state_dict(checkpoint_model(tmp_path / "r"))
    assert model.pos_embed.shape[1] == 1 + 6 * 6  # built for 24 px: the 16 px images are resized to it
    data = evaluate.build_run_data(cfg)
    x = data["x_test"].float() / 255
    mean, std = (torch.tensor(data[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = torch.nn.functional.interpolate((x - mean) / std, size=(24, 24), mode="bicubic", align_corners=False)
    with torch.no_grad():
        acc = (model.eval()(x).argmax(1) == data["y_test"]).double().mean().item()
    assert acc == pytest.approx(final["test_acc"])


def test_pretrained_weights_from_a_local_file_keep_the_imagenet_stem_and_normalisation(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    cfg, _, _ = run_train(tmp_path / "r", "--arch", "resnet18", *TINY_DATA, "--epochs", "1", "--pretrained",
                          "imagenet", "--weights-file", str(tmp_path / "r18.pth"), "--freeze", "backbone",
                          "--max-per-class", "8")
    state = checkpoint_model(tmp_path / "r")
    assert state["conv1.weight"].shape == (64, 3, 7, 7) and torch.equal(state["conv1.weight"],
                                                                        reference.conv1.weight)
    assert cfg["recorded"]["normalization"] == dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert cfg["recorded"]["init"]["new_head"] and cfg["model"]["weights"] == "IMAGENET1K_V1"


def test_offline_pretrained_without_a_cached_file_exits_2_naming_it(tmp_path, exits_2, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    err = exits_2(["--arch", "resnet18", "--pretrained", "imagenet", "--no-download", *TINY_DATA,
                   "--out", str(tmp_path / "x")])
    assert f"resnet18-f37072fd.pth is not in the torch hub cache; put it in {tmp_path}/home/hub/checkpoints" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("extra,message", [
    (["--truncate", "3"], "--truncate 3 is outside 1-2, the blocks of --arch vit"),
    (["--dim", "32"], "cannot map cls_token: the source has shape (1, 1, 64), this model (1, 1, 32)"),
    (["--depth", "3"], "the source has no blocks.2.norm1.weight"),
    (["--depth", "1"], "the source has more blocks or stages than this model's 1 (blocks.1.norm1.weight); pass "
                       "--truncate 1"),
    (["--arch", "resnet18"], "a vit run cannot start --arch resnet18"),
    (["--layer-decay", "0"], "--layer-decay 0.0 is outside (0, 1]"),
    (["--resize", "bicubic"], "--resize applies to --img-size"),
])
def test_bad_transfer_input_exits_2_with_one_line(vit_run, tmp_path, exits_2, extra, message):
    src, _ = vit_run
    base = VIT_SOURCE if "resnet18" not in extra else TINY_DATA
    err = exits_2([*base, "--epochs", "1", "--init", str(src), *extra, "--out", str(tmp_path / "x")])
    assert message in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_interrupted_fine_tune_resumes_to_the_same_result(vit_run, tmp_path):
    # The resumed launch loads nothing from the source: its weights are in the checkpoint, and the normalisation
    # (the source's) comes from config.json.
    src, (src_cfg, _, _) = vit_run
    args = [*VIT_SOURCE, "--synthetic-per-class", "60", "--epochs", "2", "--init", str(src), "--classes", "5-9",
            "--layer-decay", "0.8"]
    _, full_rows, full_final = run_train(tmp_path / "full", *args)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *args, "--out", str(tmp_path / "cut"), "--progress", "off"]
    assert subprocess.run(cmd + ["--stop-after-steps", "12"], capture_output=True).returncode == 3
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0 and "started from" not in resumed.stdout, resumed.stderr
    cfg, rows, final = read_run(tmp_path / "cut")
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in full_rows] and len(rows) == 2
    assert final["test_acc"] == full_final["test_acc"] and final["confusion"] == full_final["confusion"]
    assert cfg["recorded"]["normalization"] == src_cfg["recorded"]["normalization"]


def test_init_needs_a_finished_run_and_weights_need_pretrained(tmp_path, exits_2):
    assert "is not a finished run folder (no final.json)" in exits_2(
        [*VIT_SOURCE, "--init", str(tmp_path), "--out", str(tmp_path / "x")])
    assert "--weights-file applies to --pretrained imagenet" in exits_2(
        [*VIT_SOURCE, "--weights-file", "f.pth", "--out", str(tmp_path / "x")])
    assert "--weights V2 is not one of resnet18's: IMAGENET1K_V1" in exits_2(
        [*TINY_RESNET, *TINY_DATA, "--pretrained", "imagenet", "--weights", "V2", "--out", str(tmp_path / "x")])
    assert "--layer-decay applies to ViTs, not to --arch resnet18" in exits_2(
        [*TINY_RESNET, *TINY_DATA, "--layer-decay", "0.7", "--out", str(tmp_path / "x")])


# ----------------------------------------------------------------------------- recipes and distillation

def test_distillation_losses_against_hand_computations():
    import train
    s = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    t = torch.tensor([[0.0, 1.0, 0.0], [1.0, 3.0, -2.0]])  # teacher argmax: 1, 1
    y = torch.tensor([0, 1])
    optim = dict(label_smoothing=0.0, distill_alpha=0.3, distill_tau=2.0, distill="soft")
    ce = lambda logits, labels: -sum(math.log(math.exp(r[c]) / sum(math.exp(v) for v in r))
                                     for r, c in zip(logits.tolist(), labels)) / len(labels)

    def softmax(row, tau):
        e = [math.exp(v / tau) for v in row]
        return [v / sum(e) for v in e]
    kl = sum(pt * math.log(pt / ps) for rs, rt in zip(s.tolist(), t.tolist())
             for ps, pt in zip(softmax(rs, 2.0), softmax(rt, 2.0)))
    soft = 0.7 * ce(s, [0, 1]) + 0.3 * 4.0 * kl / 6  # DeiT's reduction: summed KL / (batch x classes)
    assert train.distill_loss(s, y, t, optim).item() == pytest.approx(soft, rel=1e-6)
    assert train.soft_distillation(s, t, 2.0).item() == pytest.approx(4.0 * kl / 6, rel=1e-6)
    hard = 0.3 * ce(s, [1, 1]) + 0.7 * ce(s, [0, 1])
    assert train.distill_loss(s, y, t, dict(optim, distill="hard")).item() == pytest.approx(hard, rel=1e-6)
    d = torch.tensor([[0.0, 2.0, 1.0], [1.0, 0.0, 0.0]])  # the distillation head: trained on the teacher's argmax
    token = 0.7 * ce(s, [0, 1]) + 0.3 * ce(d, [1, 1])
    assert train.distill_loss((s, d), y, t, dict(optim, distill="token")).item() == pytest.approx(token, rel=1e-6)
    # Soft targets (mixed, smoothing folded in): -sum(q log p), the batch mean.
    q = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    logp = torch.log_softmax(s, 1)
    assert train.distill_loss(s, q, None, dict(label_smoothing=0.1)).item() == pytest.approx(
        -(q * logp).sum().item() / 2, rel=1e-6)
    smoothed = train.distill_loss(s, y, None, dict(label_smoothing=0.1)).item()
    assert smoothed == pytest.approx(torch.nn.functional.cross_entropy(s, y, label_smoothing=0.1).item())
    assert smoothed != pytest.approx(ce(s, [0, 1]))


def test_distillation_token_model_has_two_heads_averaged_at_test():
    torch.manual_seed(0)
    m = build_model("vit", 5, 16, depth=1, dim=32, heads=4, patch_size=4, distill_token=True)
    x = torch.randn(3, 3, 16, 16)
    cls, dist = m.train()(x)
    assert m.num_prefix_tokens == 2 and m.pos_embed.shape[1] == 16 + 2 and cls.shape == dist.shape == (3, 5)
    m.eval()
    with torch.no_grad():
        tokens = m.norm(m.blocks[0](m.embed(x)))
        assert torch.allclose(m(x), (m.head(tokens[:, 0]) + m.head_dist(tokens[:, 1])) / 2, atol=1e-6)
        m.output = "dist"
        assert torch.allclose(m(x), m.head_dist(tokens[:, 1]), atol=1e-6)
    assert not torch.allclose(m.head.weight, m.head_dist.weight)  # two heads, not one shared


def test_run_names_carry_the_recipe_and_what_flags_changed_of_it():
    import train
    p = train.get_parser()
    name = lambda *argv: os.path.basename(train.resolve_config(p.parse_args(list(argv)), p.sections)["run"]["out"])
    assert name("--recipe", "strong1") == "vit-strong1-standard-cifar10-s0"
    assert name("--recipe", "strong1", "--mixup", "0.2") == "vit-strong1-mixup0.2-standard-cifar10-s0"
    assert name("--recipe", "deit", "--mixup", "0", "--ema", "0.999") == "vit-deit-mixup0-ema0.999-standard-cifar10-s0"
    assert name("--recipe", "deit", "--randaug", "2,9,0.5", "--cutmix", "1") == "vit-deit-standard-cifar10-s0"
    assert name("--recipe", "strong2", "--randaug", "2,9") == "vit-strong2-ra2m9-standard-cifar10-s0"
    assert name("--randaug", "2,9,0.5", "--random-erasing", "0.25", "--repeated-aug", "3") == \
        "vit-ra2m9s0.5-re0.25-rep3-standard-cifar10-s0"
    assert name("--teacher", "t", "--distill", "soft", "--distill-tau", "3", "--distill-alpha", "0.1") == \
        "vit-kdsoft-a0.1-t3-standard-cifar10-s0"


def test_recipe_presets_resolve_to_the_documented_values():
    import train
    p = train.get_parser()
    resolve = lambda *argv: train.resolve_config(p.parse_args(list(argv)), p.sections)
    cfg = resolve("--recipe", "deit", "--batch-size", "256")
    o, m = cfg["optim"], cfg["model"]
    assert (o["opt"], o["lr"], o["weight_decay"], o["randaug"], o["mixup"], o["cutmix"], o["mix_prob"],
            o["switch_prob"], o["random_erasing"], o["repeated_aug"], o["ema"], o["grad_clip"], o["label_smoothing"]) \
        == ("adamw", 5e-4 * 256 / 512, 0.05, [2, 9.0, 0.5], 0.8, 1.0, 1.0, 0.5, 0.25, 3, 0.99996, 0.0, 0.1)
    assert (m["drop_path"], m["dropout"]) == (0.1, 0.0) and o["recipe"] == "deit"
    levels = {"light1": (0.0, None), "light2": (10.0, 0.2), "medium1": (15.0, 0.2), "medium2": (15.0, 0.5),
              "strong1": (20.0, 0.5), "strong2": (20.0, 0.8)}
    for name, (magnitude, alpha) in levels.items():
        o, m = (cfg := resolve("--recipe", name))["optim"], cfg["model"]
        assert o["randaug"] == [2, magnitude, 0.0] and o.get("mixup") == alpha, name
        assert (m["dropout"], m["drop_path"], o["weight_decay"], o["label_smoothing"]) == (0.1, 0.1, 0.1, 0.0), name
    # Switched off: a preset's mixing (with its probabilities) and its EMA.
    off = resolve("--recipe", "deit", "--mixup", "0", "--cutmix", "0", "--ema", "0")["optim"]
    assert not set(off) & {"mixup", "cutmix", "mix_prob", "switch_prob", "ema"} and off["random_erasing"] == 0.25
    cut = resolve("--recipe", "deit", "--mixup", "0")["optim"]
    assert (cut["cutmix"], cut["mix_prob"], "switch_prob" in cut) == (1.0, 1.0, False)
    none = resolve("--recipe", "none")
    assert "randaug" not in none["optim"] and "mixup" not in none["optim"]
    assert (none["model"]["dropout"], none["model"]["drop_path"]) == (0.0, 0.0)
    # A flag overrides its preset; a ResNet keeps SGD's weight decay and has no dropout to set.
    assert resolve("--recipe", "strong2", "--mixup", "0.3", "--drop-path", "0")["optim"]["mixup"] == 0.3
    assert resolve("--recipe", "strong2", "--drop-path", "0")["model"]["drop_path"] == 0
    r = resolve("--arch", "resnet18", "--recipe", "light2")
    assert r["optim"]["weight_decay"] == 5e-4 and "dropout" not in r["model"] and r["optim"]["randaug"][1] == 10
    # DeiT's lr and weight decay are AdamW's: another optimiser keeps its own, the rest of the preset stays.
    sgd = resolve("--recipe", "deit", "--opt", "sgd")["optim"]
    assert (sgd["lr"], sgd["weight_decay"], sgd["momentum"], sgd["mixup"]) == (0.1, 5e-4, 0.9, 0.8)
    # Without a recipe nothing of it appears: old configs and new ones of the default recipe stay equal.
    plain = resolve()["optim"]
    assert not set(plain) & {"recipe", "randaug", "mixup", "cutmix", "random_erasing", "repeated_aug", "ema"}
    assert (plain["label_smoothing"], plain["grad_clip"]) == (0.1, 1.0)


@pytest.mark.parametrize("extra,message", [
    (["--randaug", "2"], "--randaug '2' is not N,M"),
    (["--randaug", "2,40"], "M in [0, 30]"),
    (["--mixup", "-1"], "--mixup -1.0 is outside"),
    (["--random-erasing", "1.5"], "--random-erasing 1.5 is outside [0, 1]"),
    (["--switch-prob", "0.5", "--mixup", "0.8"], "--switch-prob only applies with both --mixup and --cutmix"),
    (["--mix-prob", "0.5"], "--mix-prob only applies with --mixup or --cutmix"),
    (["--repeated-aug", "0"], "--repeated-aug 0 must be at least 1"),
    (["--ema", "1.5"], "--ema 1.5 is outside [0, 1)"),
    (["--teacher", "nowhere", "--distill", "token", "--freeze", "backbone"], "it cannot be a --freeze backbone probe"),
    (["--distill", "soft"], "--teacher RUN_DIR and --distill soft|hard|token go together"),
    (["--distill-tau", "2"], "--distill-alpha only applies|--distill-tau only applies"),
    (["--teacher", "nowhere", "--distill", "hard"], "--teacher nowhere is not a finished run folder"),
    (["--arch", "resnet18", "--teacher", "nowhere", "--distill", "token"], "--distill token adds a token to a ViT"),
    (["--recipe", "heavy"], "invalid choice: 'heavy'"),
])
def test_bad_recipe_input_exits_2_with_one_line(tmp_path, exits_2, extra, message):
    import re
    err = exits_2([*BASE, *extra, "--out", str(tmp_path / "run")])
    assert re.search(message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)"), err), err
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.slow
def test_teacher_of_other_classes_or_another_split_exits_2(vit_run, tmp_path, exits_2):
    run_dir, _ = vit_run
    err = exits_2([*BASE, "--classes", "0-4", "--teacher", str(run_dir), "--distill", "hard",
                   "--out", str(tmp_path / "run")])
    assert "was trained on synthetic (10 classes), this run trains on synthetic classes 0-4 (5 classes)" in err
    err = exits_2([*BASE, "--seed", "1", "--teacher", str(run_dir), "--distill", "hard",
                   "--out", str(tmp_path / "run")])
    assert "was trained with --seed 0 --val-fraction 0.1, this run has --seed 1 --val-fraction 0.1" in err
    # A distilled student's weights cannot start a model without the token (nor the reverse): one line.
    err = exits_2([*BASE, "--init", str(run_dir), "--teacher", str(run_dir), "--distill", "token",
                   "--out", str(tmp_path / "run")])
    assert "only this model has a distillation token" in err
    assert not os.path.exists(tmp_path / "run")


def test_distillation_token_trains_like_the_cls_token():
    # DeiT's no_weight_decay holds dist_token; --layer-decay puts it with the embeddings.
    import train
    m = build_model("vit", 5, 16, depth=2, dim=32, heads=4, patch_size=4, distill_token=True)
    groups = train.make_optimizer(m, dict(opt="adamw", lr=1e-3, weight_decay=0.05)).param_groups
    no_decay = [g for g in groups if g["weight_decay"] == 0][0]["params"]
    assert any(p is m.dist_token for p in no_decay) and any(p is m.cls_token for p in no_decay)
    assert train.layer_lr_scale("dist_token", 2, 0.5) == train.layer_lr_scale("cls_token", 2, 0.5) == 0.125


@pytest.mark.slow
def test_teacher_sees_the_students_batch_in_eval_mode_and_gets_no_gradient(vit_run):
    import train
    from data import normalize
    from evaluate import load_teacher, predict
    run_dir, (teacher_cfg, _, _) = vit_run
    p = train.get_parser()
    cfg = train.resolve_config(p.parse_args([*BASE, "--teacher", str(run_dir), "--distill", "soft"]), p.sections)
    device = torch.device("cpu")
    teacher, source, record = load_teacher(cfg, device)
    assert not teacher.training and not any(q.requires_grad for q in teacher.parameters())
    assert record["model"] == teacher_cfg["model"] and record["test_acc"] == json.load(
        open(os.path.join(run_dir, "final.json")))["test_acc"]
    # The student's standardisation differs from the teacher's; the teacher gets the same pixels in its own.
    data = dict(mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3])
    logits = train.teacher_logits(teacher, source, data, device, False)
    pixels = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    norm = source["recorded"]["normalization"]
    expected, _ = predict(teacher, pixels, torch.zeros(4, dtype=torch.long), norm["mean"], norm["std"], device)
    assert torch.allclose(logits(normalize(pixels, data["mean"], data["std"])), expected, atol=1e-4)
    # A batch of another size reaches the teacher resized to its input size (16 px here), after its standardising.
    big = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    expected, _ = predict(teacher, big, torch.zeros(4, dtype=torch.long), norm["mean"], norm["std"], device, size=16)
    assert torch.allclose(logits(normalize(big, data["mean"], data["std"])), expected, atol=1e-4)
    student = build_model("vit", 10, 16, depth=1, dim=32, heads=4, patch_size=4)
    images = normalize(pixels, data["mean"], data["std"]).requires_grad_(True)
    loss = train.make_loss(cfg, logits)(student(images), torch.arange(4), images)
    loss.backward()
    assert all(q.grad is None for q in teacher.parameters()) and student.head.weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_in_training_the_teacher_sees_each_augmented_mixed_batch_and_never_changes(vit_run, tmp_path, monkeypatch):
    import train
    run_dir, _ = vit_run
    batches, calls, teachers = [], [], []
    real_batch, real_logits = train.training_batch, train.teacher_logits

    def recording_batch(*args):
        images, targets = real_batch(*args)
        batches.append((images, targets))
        return images, targets

    def recording_logits(teacher, *args):
        logits = real_logits(teacher, *args)
        teachers.append(teacher)

        def wrapped(images):
            out = logits(images)
            calls.append((images, teacher.training, any(q.requires_grad for q in teacher.parameters()),
                          out.requires_grad))
            return out
        return wrapped

    monkeypatch.setattr(train, "training_batch", recording_batch)
    monkeypatch.setattr(train, "teacher_logits", recording_logits)
    run_train(tmp_path / "s", *TINY_VIT, *TINY_DATA, "--epochs", "1", "--randaug", "2,9", "--mixup", "0.8",
              "--teacher", str(run_dir), "--distill", "soft")
    assert len(calls) == len(batches) > 1 and all(targets.ndim == 2 for _, targets in batches)  # mixed: soft targets
    for (images, _), (seen, training, trainable, grad) in zip(batches, calls):
        assert seen is images and not training and not trainable and not grad
    source = checkpoint_model(run_dir)  # the teacher's weights are the run's, untouched by the student's steps
    (teacher,) = teachers
    assert all(torch.equal(source[k], v) for k, v in teacher.state_dict().items())


@pytest.mark.slow
def test_token_distillation_reports_each_head_and_the_teacher(vit_run, tmp_path):
    run_dir, _ = vit_run
    out = tmp_path / "student"
    cfg, rows, final = run_train(out, *TINY_VIT, *TINY_DATA, "--epochs", "2", "--teacher", str(run_dir),
                                 "--distill", "token")
    assert cfg["model"]["distill_token"] is True and cfg["optim"]["distill_alpha"] == 0.5
    assert cfg["recorded"]["teacher"]["source"] == os.path.abspath(run_dir)
    # final.json's numbers are the averaged heads' and each head's alone, recomputed here from the checkpoint.
    from evaluate import build_run_data, build_run_model, predict
    model = build_run_model(cfg)
    model.load_state_dict(checkpoint_model(out))
    data = build_run_data(cfg)
    norm = cfg["recorded"]["normalization"]
    for head, expected in (("mean", final["test_acc"]), ("cls", final["head_test_acc"]["cls"]),
                           ("dist", final["head_test_acc"]["dist"])):
        model.output = head
        logits, _ = predict(model, data["x_test"], data["y_test"], norm["mean"], norm["std"], torch.device("cpu"))
        assert (logits.argmax(1) == data["y_test"]).double().mean().item() == pytest.approx(expected), head
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def nan_at_step(monkeypatch, bad_step):
    """Make train.py's loss nan at global step `bad_step` (1-based) of this process's next run."""
    import train
    real, calls = train.make_loss, [0]

    def make_loss(cfg, teacher=None):
        loss = real(cfg, teacher)

        def poisoned(*args):
            calls[0] += 1
            value = loss(*args)
            return value * float("nan") if calls[0] == bad_step else value
        return poisoned
    monkeypatch.setattr(train, "make_loss", make_loss)


@pytest.mark.slow
def test_a_nan_loss_stops_the_run_keeps_the_last_checkpoint_and_says_failed(tmp_path, monkeypatch, capsys, exits_2):
    import train
    from data import rank_batches
    steps = len(rank_batches(540, 32, 0, 1))  # TINY_DATA: 600 images, 60 for validation, batches of 32
    nan_at_step(monkeypatch, steps + 4)  # epoch 2, step 4
    out = tmp_path / "nan"
    assert train.main([*TINY_VIT, *TINY_DATA, "--epochs", "3", "--out", str(out), "--progress", "off"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["train.py: error: loss is nan or inf at epoch 2 step 4; the checkpoint of epoch 1 is kept; "
                   "final.json says failed"]
    cfg, rows, final = read_run(out)
    assert final == dict(status="failed", reason="loss is nan or inf at epoch 2 step 4", last_checkpoint_epoch=1,
                         epochs=1)
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 1 and len(rows) == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    # A failed run is not resumed (the same nan would come back): one line, exit 2, nothing changed.
    err = exits_2([*TINY_VIT, *TINY_DATA, "--epochs", "3", "--out", str(out), "--resume"])
    assert f"the run in {out} failed (loss is nan or inf at epoch 2 step 4); pass --overwrite" in err
    assert read_run(out)[2] == final
    # --skip-nonfinite 1 steps over the same nan and finishes, counting the skipped step.
    nan_at_step(monkeypatch, steps + 4)
    cfg, rows, final = run_train(tmp_path / "skip", *TINY_VIT, *TINY_DATA, "--epochs", "3", "--skip-nonfinite", "1")
    assert final["status"] == "finished" and final["skipped_steps"] == 1 and cfg["optim"]["skip_nonfinite"] == 1
    assert len(rows) == 3 and all(math.isfinite(r["train_loss"]) for r in rows)
    assert "epoch 2 step 4: loss is nan, step skipped (1 of --skip-nonfinite 1)" in capsys.readouterr().err



@pytest.mark.slow
def test_a_run_folder_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path, exits_2, capsys):
    import platform
    out = tmp_path / "run"
    # A real training process holds the folder: a second one exits 2 naming it, and changes nothing.
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), *TINY_VIT, *TINY_DATA, "--epochs", "200", "--out", str(out),
           "--progress", "off"]
    trainer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # until it has taken the lock (torch's import takes seconds)
            if (out / ".lock").exists() and (out / "config.json").exists():
                break
            trainer.poll()
            assert trainer.returncode is None
            time.sleep(0.1)
        before = sorted(os.listdir(out))
        err = exits_2([*BASE, "--out", str(out), "--overwrite"])
        assert f"{out} is in use by pid {trainer.pid} on {platform.node()} (its .lock); wait for it" in err
        assert sorted(os.listdir(out)) == before and os.path.exists(out / "config.json")
    finally:
        trainer.kill()  # SIGKILL: no cleanup, the lock stays behind
        trainer.wait()
    assert json.load(open(out / ".lock")) == dict(pid=trainer.pid, host=platform.node())
    capsys.readouterr()
    cfg, rows, final = run_train(out, *BASE, "--overwrite")
    assert f"took over the stale lock of pid {trainer.pid} (no longer running)" in capsys.readouterr().err
    assert final["status"] == "finished" and not (out / ".lock").exists()


def killed_at(point, cmd):
    """Run cmd with LAB_PAUSE_AT=point, send SIGKILL when it says it got there; its stderr up to then."""
    import signal
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, LAB_PAUSE_AT=point))
    lines = []
    for line in proc.stderr:  # the process waits at the point until the signal comes
        lines.append(line)
        if line.startswith(f"paused at {point}"):
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -9, "".join(lines)
    return "".join(lines)


@pytest.mark.slow
def test_kill_9_anywhere_resumes_to_the_same_result(tmp_path):
    # Real SIGKILLs: in a step, during validation, between the checkpoint's temp file and its rename, and between
    # final.json's temp file and its rename. Each resume must end with the uninterrupted run's numbers, bit for bit.
    args = [*TINY_VIT, *TINY_DATA, "--epochs", "2", "--dropout", "0.1", "--randaug", "2,9", "--mixup", "0.8"]
    _, full_rows, full_final = run_train(tmp_path / "full", *args)
    drop_time = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "images_per_s")}
    for point, epochs_kept in (("step:20", 1), ("eval:2", 1), ("checkpoint.pt:2", 1), ("final.json:1", 2)):
        out = tmp_path / point.replace(":", "-")
        killed_at(point, [sys.executable, os.path.join(ROOT, "train.py"), *args, "--out", str(out), "--progress",
                          "off"])
        _, rows, final = read_run(out)
        assert final is None and len(rows) == epochs_kept, point
        assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == epochs_kept, point
        _, rows, final = run_train(out, *args, "--resume")  # the killed process's lock is stale: taken over
        assert [drop_time(r) for r in rows] == [drop_time(r) for r in full_rows], point
        for key in ("test_acc", "test_top5", "macro_f1", "confusion", "best_val_acc", "epochs_to"):
            assert final[key] == full_final[key], (point, key)


def test_every_flag_an_error_message_names_exists():
    # An error that tells the user to pass a flag the command line lacks (once: --download) is a dead end.
    import re
    import evaluate
    import train
    options = {o for a in train.get_parser()._actions for o in a.option_strings}
    options |= {o for a in evaluate.bench_parser([])._actions for o in a.option_strings}
    evaluate_source = open(os.path.join(ROOT, "evaluate.py")).read()
    options |= set(re.findall(r'add_argument\("(--[a-z-]+)"', evaluate_source))  # bench-data and re-evaluation
    named = {}
    for name in ("train.py", "evaluate.py", "data.py", "model.py", "attention.py", "augment.py", "analyze.py"):
        source = open(os.path.join(ROOT, name)).read()
        for message in re.findall(r"(?:raise \w+Error|fail)\((.*?)\)\n", source, re.S):
            for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", message):
                named.setdefault(flag, name)
    assert len(named) > 40  # the scan finds the messages
    assert {flag: name for flag, name in named.items() if flag not in options} == {}


# ----------------------------------------------------------------------------- failures mid-run: disk, checkpoint, rank

# A ViT small enough that a process is mostly torch's import: 180 training images, 6 steps an epoch.
SMALL = ["--arch", "vit", "--depth", "1", "--dim", "32", "--heads", "2", "--patch-size", "8", "--dropout", "0.1",
         "--dataset", "synthetic", "--synthetic-size", "16", "--synthetic-per-class", "20", "--batch-size", "32",
         "--warmup-epochs", "1", "--device", "cpu", "--epochs", "2"]
RESUME_HINT = "no final.json: --resume continues the run once its folder can be written"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """SMALL trained without interruption: (metrics rows, final), what a failed run must resume to."""
    _, rows, final = run_train(tmp_path_factory.mktemp("runs") / "small", *SMALL)
    return rows, final


def assert_same_result(out, small_run):
    """--resume the run in out (in this process) and check it ends with the uninterrupted run's numbers."""
    _, rows, final = run_train(out, *SMALL, "--resume")
    drop_time = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "images_per_s")}
    assert [drop_time(r) for r in rows] == [drop_time(r) for r in small_run[0]]
    for key in ("test_acc", "test_top5", "macro_f1", "confusion", "best_val_acc", "epochs_to"):
        assert final[key] == small_run[1][key], key


def run_paused(point, cmd, at_pause, limit=120, env=()):
    """Run cmd with LAB_PAUSE_AT=point (and env); when a process of it says it is paused there, call at_pause(its pid).
    Waits for cmd to end: (exit code, its stderr, seconds from at_pause to the end). Its whole process group is
    killed after `limit` seconds, so a hang fails the test instead of stopping the suite."""
    import signal
    import threading
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env=dict(os.environ, LAB_PAUSE_AT=point, **dict(env)))
    watchdog = threading.Timer(limit, os.killpg, (proc.pid, signal.SIGKILL))
    watchdog.start()
    lines, acted = [], None
    try:
        for line in proc.stderr:  # until every process of cmd has ended (they share the pipe)
            lines.append(line)
            if acted is None and line.startswith(f"paused at {point} (pid "):
                at_pause(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
                acted = time.time()
        proc.wait()
    finally:
        watchdog.cancel()
    assert acted is not None, "".join(lines)
    return proc.returncode, "".join(lines), time.time() - acted


def train_cmd(out, *args):
    """train.py's command line in a new process, on SMALL with --out out."""
    return [sys.executable, os.path.join(ROOT, "train.py"), *SMALL, *args, "--out", str(out), "--progress", "off"]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_load_back_never_replaces_the_last_good_one(tmp_path, small_run):
    # Epoch 2's checkpoint is cut to half its size after it was written and flushed, before its check: a real file
    # that torch.load refuses. The run stops; epoch 1's checkpoint stays the only one, and resumes to the same end.
    import re
    import signal
    out = tmp_path / "cut"

    def truncate(pid):
        os.truncate(out / "checkpoint.pt.tmp", os.path.getsize(out / "checkpoint.pt.tmp") // 2)
        os.kill(pid, signal.SIGUSR1)
    code, err, _ = run_paused("checkpoint.pt:2", train_cmd(out), truncate)
    assert code == 1 and len(err.splitlines()) == 2, err  # the pause's line, then the error's
    assert re.fullmatch(f"train.py: error: {out}/checkpoint.pt.tmp was written but does not load back \\(RuntimeError: "
                        "PytorchStreamReader failed reading zip archive: failed finding central directory.*\\); the "
                        f"checkpoint of epoch 1 is kept; {RESUME_HINT}", err.splitlines()[1]), err
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]  # no temp file, lock released
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1 and len(read_run(out)[1]) == 1
    assert_same_result(out, small_run)


@pytest.mark.slow
def test_a_full_disk_while_writing_the_checkpoint_keeps_the_last_good_one(tmp_path, small_run):
    # A real ENOSPC: while epoch 2 trains, the checkpoint's temp name becomes a link to /dev/full.
    import signal
    out = tmp_path / "full"

    def fill_disk(pid):
        os.symlink("/dev/full", out / "checkpoint.pt.tmp")
        os.kill(pid, signal.SIGUSR1)
    code, err, _ = run_paused("eval:2", train_cmd(out), fill_disk)
    assert code == 1 and err.splitlines()[1:] == [
        f"train.py: error: cannot write {out}/checkpoint.pt (ENOSPC: No space left on device); the checkpoint of "
        f"epoch 1 is kept; {RESUME_HINT}"], err
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1 and len(read_run(out)[1]) == 1
    assert_same_result(out, small_run)


@pytest.mark.slow
@pytest.mark.parametrize("name, kept", [("metrics.jsonl", 1), ("final.json", 2)])
def test_a_full_disk_while_writing_metrics_or_final_stops_in_one_line(tmp_path, capsys, small_run, name, kept):
    # A real ENOSPC from the start: the file's temp name (this process's pid in it) is a link to /dev/full, so its
    # first write fails: metrics.jsonl's after epoch 1's checkpoint, final.json's after the last epoch.
    import train
    out = tmp_path / "full"
    out.mkdir()
    os.symlink("/dev/full", out / f"{name}.tmp{os.getpid()}")
    assert train.main([*SMALL, "--out", str(out), "--progress", "off"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"train.py: error: cannot write {out / name} (ENOSPC: No space left on device); the checkpoint of epoch {kept} "
        f"is kept; {RESUME_HINT}"]
    # No temp file and no lock left, no final.json (so not a finished run), metrics.jsonl as before the failure.
    assert sorted(os.listdir(out)) == ["checkpoint.pt", "config.json", *(["metrics.jsonl"] if kept == 2 else [])]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == kept
    assert_same_result(out, small_run)


@pytest.mark.parametrize("out, why", [("/proc/self/lab-run", "ENOENT: No such file or directory"),
                                      ("/sys/kernel/lab-run", "(EPERM|EACCES|EROFS): .+")])
def test_a_run_folder_that_cannot_be_written_exits_2_at_start(exits_2, out, why):
    # Places no process can write in, root included (chmod stops nobody there); /sys's error depends on its mount.
    import re
    from evaluate import lock_run_folder
    err = exits_2([*SMALL, "--out", out])
    assert re.fullmatch(f"train.py: error: --out {out}: cannot write in {os.path.dirname(out)} \\({why}\\)", err), err
    assert not os.path.exists(out)
    with pytest.raises(ValueError, match=f"^cannot make {out} \\({why}\\)$"):  # the lock's own check, made later
        lock_run_folder(out)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["step:9@1", "checkpoint.pt:2@0"])
def test_a_rank_that_dies_ends_the_torchrun_job_without_final_json(tmp_path, point):
    # A real SIGKILL of one rank: rank 1 in the middle of epoch 2 (rank 0 is then in or near an all-reduce with it),
    # or rank 0, the writer, between epoch 2's checkpoint temp file and its rename (rank 1 waits at the barrier).
    import signal
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *train_cmd(out)[1:]]
    kill = lambda pid: os.kill(pid, signal.SIGKILL)
    code, err, seconds = run_paused(point, cmd, kill, env={"OMP_NUM_THREADS": "1"})  # a thread each: 2 cores
    assert code != 0 and seconds < 60, err[-3000:]
    assert not os.path.exists(out / "final.json")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1 and len(read_run(out)[1]) == 1
