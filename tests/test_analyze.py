"""analyze.py on run folders with known numbers; run_all.sh's commands, skipping, resuming and a tiny real run."""
import json
import os
import subprocess

import pytest

import analyze
from conftest import ROOT


def fake_run(root, name, seed, test_acc, arch="vit", regime="standard", train_size=1000, finished=True, **cfg_extra):
    """Write a run folder with the given numbers (and plausible others) as train.py would."""
    out = os.path.join(root, f"{name}-s{seed}")
    os.makedirs(out)
    cfg = dict(arch=arch, regime=regime, dataset="cifar10", attention="full", radius=1, time_budget=None,
               fraction=None, per_class=None, imbalance_ratio=None, imbalance_profile=None, seed=seed, epochs=2,
               image_size=32, patch_size=4, thresholds=[0.5, 0.9], sizes=dict(train=train_size),
               counts_per_class=dict(train=[train_size // 10] * 10), out=out)
    cfg.update(cfg_extra)
    json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
    rows = [dict(epoch=e, time_s=10.0 * e, lr=0.1, train_loss=1.0, train_acc=test_acc, val_loss=1.0, val_acc=test_acc)
            for e in (1, 2)]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    if finished:
        final = dict(test_acc=test_acc, test_top5=min(1, test_acc + 0.1), macro_f1=test_acc - 0.01,
                     per_class_recall=[test_acc] * 10, params=1000 if arch == "vit" else 2000, flops_per_image=1e6,
                     throughput_images_per_s=100.0, latency_ms=1.0, train_time_s=20.0, epochs=2, best_val_acc=test_acc,
                     epochs_to={"0.5": 1, "0.9": None}, seconds_to={"0.5": 10.0, "0.9": None})
        json.dump(final, open(os.path.join(out, "final.json"), "w"))


def row_of(report, model, cell):
    """The markdown table row of a model on a data cell (first table that has it)."""
    return next(line for line in report.splitlines() if line.startswith(f"| {model} | {cell} |"))


def test_seeds_are_aggregated_and_findings_state_the_measured_gap(tmp_path):
    for seed, acc in enumerate([0.80, 0.82, 0.84]):
        fake_run(tmp_path, "vit-standard", seed, acc)
    for seed in range(3):
        fake_run(tmp_path, "resnet18-standard", seed, 0.90, arch="resnet18")
    fake_run(tmp_path, "vit-standard", 3, 0.10, finished=False)  # killed run: must not enter the mean
    report, n, skipped = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert (n, skipped) == (6, 1)
    assert "6 finished runs in 2 groups" in report and "1 unfinished runs skipped" in report
    # test acc, top-5, macro-F1, best val, params, train s: mean ± sample std over 3 seeds, in percent.
    assert row_of(report, "vit", "standard (cifar10)") == \
        "| vit | standard (cifar10) | 3 | 82.0 ± 2.0 | 92.0 ± 2.0 | 81.0 ± 2.0 | 82.0 ± 2.0 | 1,000 | 20 ± 0 |"
    assert row_of(report, "resnet18", "standard (cifar10)").startswith("| resnet18 | standard (cifar10) | 3 | 90.0 ± 0.0 |")
    assert ("resnet18 reaches 90.0% test accuracy against 82.0% for vit, 8.0 points ahead; the gap exceeds the "
            "seed-to-seed spread (std 0.0 and 2.0 points, 3 and 3 seeds)") in report
    for png in ("regimes", "curves_regimes_standard_cifar10", "cost", "convergence"):
        assert os.path.getsize(tmp_path / "out" / "plots" / f"{png}.png") > 1000
    assert "## Corruptions\n\nNo runs for this section yet" in report  # missing data: a note, not a crash
    assert open(tmp_path / "out" / "report.md").read() == report


def test_gap_within_the_spread_is_not_called_a_win(tmp_path):
    for seed, acc in enumerate([0.80, 0.90]):
        fake_run(tmp_path, "vit-standard", seed, acc)
    for seed in range(2):
        fake_run(tmp_path, "resnet18-standard", seed, 0.86, arch="resnet18")
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "1.0 points ahead; the gap is within the seed-to-seed spread (std 0.0 and 7.1 points), so they are not separated" in report
    fake_run(tmp_path / "one", "vit-standard", 0, 0.7)
    fake_run(tmp_path / "one", "resnet18-standard", 0, 0.6, arch="resnet18")
    report, _, _ = analyze.write_report([str(tmp_path / "one")], str(tmp_path / "out1"))
    assert "with 1 seed(s) the seed-to-seed spread is unknown, so this is not yet a finding" in report


def test_data_efficiency_marks_where_the_curves_cross(tmp_path):
    for n, vit, res in ((100, 0.3, 0.4), (1000, 0.5, 0.55), (10000, 0.8, 0.7)):
        regime = dict(regime="sparse", fraction=n / 10000) if n < 10000 else {}
        fake_run(tmp_path, f"vit-{n}", 0, vit, train_size=n, **regime)
        fake_run(tmp_path, f"resnet18-{n}", 0, res, arch="resnet18", train_size=n, **regime)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    # Differences -5 then +10 points: the crossing is a third of the way from 1,000 to 10,000 in log x.
    assert ("On cifar10, at the smallest training set (100 images): On standard (cifar10), resnet18 reaches 40.0% "
            "test accuracy against 30.0% for vit") not in report  # the smallest set is sparse, not standard
    assert "On cifar10, at the smallest training set (100 images): On sparse 1% (cifar10), resnet18 reaches 40.0%" in report
    assert "At the largest (10,000): On standard (cifar10), vit reaches 80.0% test accuracy against 70.0% for resnet18" in report
    assert "The mean curves cross near 2,154 training images (a crossing of means" in report
    assert os.path.exists(tmp_path / "out" / "plots" / "data_efficiency.png")


def test_crossings_interpolate_in_log_x():
    assert analyze.crossings([10, 1000], [0, 2], [1, 1]) == [pytest.approx(100)]
    assert analyze.crossings([1, 10, 100], [1, 2, 3], [0, 0, 0]) == []
    assert analyze.crossings([1, 10, 100], [1, 0, 1], [0, 0, 0]) == []  # touching is not crossing


def test_groups_that_look_alike_are_told_apart_and_never_paired_across_settings(tmp_path):
    fake_run(tmp_path, "vit-quick", 0, 0.3, epochs=3)
    fake_run(tmp_path, "resnet18-full", 0, 0.9, arch="resnet18", epochs=200)
    fake_run(tmp_path, "vit-2proc", 1, 0.5, epochs=3, world_size=2)  # a torchrun seed of the quick ViT
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "| vit | standard (cifar10) [epochs=3] | 2 | 40.0 ± 14.1 |" in report  # one group of two seeds
    assert "resnet18 reaches 90.0%" not in report  # a 3-epoch ViT is never compared with a 200-epoch ResNet
    assert "Only one architecture ran on these cells: nothing to compare yet." in report
    fake_run(tmp_path, "vit-full", 0, 0.8, epochs=200)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "| vit | standard (cifar10) [epochs=3] | 2 |" in report and "| vit | standard (cifar10) [epochs=200] | 1 |" in report
    assert "On standard (cifar10) [epochs=200], resnet18 reaches 90.0% test accuracy against 80.0% for vit" in report


def test_locality_imbalance_corruption_and_time_sections(tmp_path):
    for r, acc in ((1, 0.6), (2, 0.65)):
        fake_run(tmp_path, f"vit-local{r}", 0, acc, attention="local", radius=r)
    fake_run(tmp_path, "vit-standard", 0, 0.62)
    fake_run(tmp_path, "resnet18-standard", 0, 0.7, arch="resnet18")
    for arch, clean, mean in (("vit", 0.8, 0.6), ("resnet18", 0.9, 0.6)):
        fake_run(tmp_path, f"{arch}-corrupted", 0, clean, arch=arch, regime="corrupted")
        final_path = tmp_path / f"{arch}-corrupted-s0" / "final.json"
        final = json.load(open(final_path))
        final.update(corruption={"contrast": {str(s): mean for s in range(1, 6)}}, corruption_mean=mean,
                     corruption_relative_drop=1 - mean / clean)
        json.dump(final, open(final_path, "w"))
    fake_run(tmp_path, "vit-t20", 0, 0.5, time_budget=20.0)
    fake_run(tmp_path, "resnet18-t20", 0, 0.55, arch="resnet18", time_budget=20.0)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert ("On standard (cifar10), by mean test accuracy: vit local r=2 65.0 (n=1), vit 62.0 (n=1), vit local r=1 60.0 (n=1). "
            "Top two: On standard (cifar10), vit local r=2 reaches 65.0% test accuracy against 62.0% for vit") in report
    fake_run(tmp_path, "vit-local3", 0, 0.65, attention="local", radius=3)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "Top two: On standard (cifar10), vit local r=2 and vit local r=3 tie at 65.0% test accuracy." in report
    assert "| vit 20s | standard (cifar10) | 1 | 50.0 (n=1) | 20 | 2.0 (n=1) |" in report
    # The regimes section leaves the corrupted cell (clean accuracy) to the Corruptions section.
    regimes = report.split("## Regimes")[1].split("## Data efficiency")[0]
    assert "corrupted (cifar10)" not in regimes and "| vit | standard (cifar10) | 1 |" in regimes
    assert os.path.exists(tmp_path / "out" / "plots" / "locality.png")
    # Relative drop: lower is better, so the ViT (25.0% drop) is better than the ResNet (33.3%).
    assert "vit reaches 25.0% relative drop from clean accuracy against 33.3% for resnet18, 8.3 points lower" in report
    assert os.path.exists(tmp_path / "out" / "plots" / "corruption.png")


def test_cli_help_and_bad_folder():
    help_text = subprocess.run(["python3", os.path.join(ROOT, "analyze.py"), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "Runs whose configs differ only by seed form one group" in help_text.stdout
    bad = subprocess.run(["python3", os.path.join(ROOT, "analyze.py"), "/nonexistent"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip() == "analyze.py: error: /nonexistent is not a folder"


# ----------------------------------------------------------------------------- run_all.sh

def run_all(*args, cwd=ROOT):
    return subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), *args], capture_output=True, text=True, cwd=cwd)


def test_full_dry_run_prints_the_whole_grid_once(tmp_path):
    proc = run_all("--dry-run", "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cmds = proc.stdout.splitlines()
    assert len(cmds) == len(set(cmds)) == 111  # 37 cells x 3 seeds, shared cells once
    r = str(tmp_path)
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --regime sparse --fraction 0.01 --seed 2 --out {r}/vit-sparse-f0.01-cifar10-s2" in cmds
    assert f"python3 train.py --arch resnet18 --epochs 200 --data-dir data --regime many-classes --seed 0 --out {r}/resnet18-many-classes-cifar100-s0" in cmds
    assert f"python3 train.py --arch vit-11m --epochs 200 --data-dir data --dataset cifar10 --seed 1 --out {r}/vit-11m-standard-cifar10-s1" in cmds
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --attention local --radius 3 --seed 0 --out {r}/vit-local3-standard-cifar10-s0" in cmds
    assert sum("--imbalance-ratio 100 " in c for c in cmds) == 6 and sum("--regime corrupted" in c for c in cmds) == 6
    timed = [c for c in cmds if "--time-budget 1200" in c]
    assert len(timed) == 6 and all("--epochs 1000 --warmup-epochs 50" in c for c in timed)
    gpus = run_all("--dry-run", "--runs", r, "--gpus", "2", "--seeds", "5").stdout.splitlines()
    assert len(gpus) == 37 and all(c.endswith("-s5") for c in gpus)
    assert all(c.startswith("torchrun --standalone --nproc_per_node=2 train.py") for c in gpus if "--time-budget" not in c)
    assert all(c.startswith("python3 train.py") for c in gpus if "--time-budget" in c)


def test_quick_dry_run_shrinks_the_grid_and_says_which_data(tmp_path):
    proc = run_all("--dry-run", "--profile", "quick", "--runs", str(tmp_path), "--data-dir", str(tmp_path / "none"))
    lines = proc.stdout.splitlines()
    assert lines[0] == f"quick profile: no CIFAR-10 at {tmp_path}/none/cifar-10-batches-py, using the synthetic dataset"
    assert f"regimes: many-classes skipped, no CIFAR-100 at {tmp_path}/none/cifar-100-python" in lines
    cmds = [line for line in lines if "train.py" in line]
    # regimes 8 (no many-classes) + sparse 4x2 + shallow 4 + local 2x2 + vit-11m 1 + time 2 = 27
    assert len(cmds) == 27 and all("--dataset synthetic" in c and "--max-per-class 50" in c and c.endswith("-s0") for c in cmds)
    assert any(c.startswith("python3 train.py --arch resnet18 --stages 2 --epochs 3") for c in cmds)
    assert any("--arch vit-shallow --depth 1 --dim 64 --heads 4" in c for c in cmds)
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    cifar = run_all("--dry-run", "--profile", "quick", "--runs", str(tmp_path), "--data-dir", str(tmp_path / "data"))
    assert cifar.stdout.splitlines()[0] == f"quick profile: CIFAR-10 from {tmp_path}/data/cifar-10-batches-py"


def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
    (tmp_path / "vit-standard-synthetic-s0").mkdir()
    (tmp_path / "vit-standard-synthetic-s0" / "final.json").write_text("{}")
    (tmp_path / "resnet18-standard-synthetic-s0").mkdir()
    (tmp_path / "resnet18-standard-synthetic-s0" / "checkpoint.pt").write_text("")
    cmds = run_all("--dry-run", "--profile", "quick", "--only", "matched-params", "--runs", str(tmp_path),
                   "--data-dir", str(tmp_path / "none")).stdout.splitlines()[1:]
    assert cmds[0].startswith("# done: python3 train.py --arch vit ")
    assert cmds[1].startswith("python3 train.py --arch resnet18 ") and cmds[1].endswith("resnet18-standard-synthetic-s0 --resume")
    assert cmds[2].startswith("python3 train.py --arch vit-11m --depth 2 --dim 192 --heads 4 --mlp-ratio 2 ") and len(cmds) == 3


def test_one_runs_folder_holds_one_profile(tmp_path):
    (tmp_path / "PROFILE").write_text("quick\n")
    proc = run_all("--runs", str(tmp_path), "--only", "matched-params")
    assert proc.returncode == 2 and f"{tmp_path} holds --profile quick runs; use another --runs folder" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--profile", "huge"], "--profile 'huge' is not one of full, quick"),
    (["--only", "regimes,foo"], "unknown experiment 'foo'; choose from regimes, data-efficiency"),
    (["--seeds", "0,a"], "--seeds '0,a' is not a comma-separated list of whole numbers"),
    (["--gpus"], "--gpus needs a value"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--only", ","], "--only ',' names no experiment"),
    (["--time-budget", "abc"], "--time-budget 'abc' is not a number of seconds"),
])
def test_run_all_bad_arguments_exit_2(args, message):
    proc = run_all(*args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_quick_profile_on_one_tiny_experiment_runs_and_reports(tmp_path):
    runs = tmp_path / "runs"
    proc = run_all("--profile", "quick", "--only", "matched-time", "--time-budget", "2", "--runs", str(runs),
                   "--data-dir", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 runs finished now, 0 were already done, 0 failed" in proc.stdout
    again = run_all("--profile", "quick", "--only", "matched-time", "--time-budget", "2", "--runs", str(runs),
                    "--data-dir", str(tmp_path / "none"))
    assert "0 runs finished now, 2 were already done, 0 failed" in again.stdout
    report, n, _ = analyze.write_report([str(runs)], str(tmp_path / "out"))
    assert n == 2 and "| vit 2s | standard (synthetic) | 1 |" in report and "| resnet18 2s | standard (synthetic) | 1 |" in report
    for name in ("vit", "resnet18"):
        final = json.load(open(runs / f"{name}-t2s-standard-synthetic-s0" / "final.json"))
        assert 2 <= final["train_step_time_s"] < 30
