"""run_all.sh: the grid of commands, skipping finished and resuming interrupted runs, bad arguments, a tiny real run."""
import json
import os
import subprocess
import sys

import pytest
import torch

import analyze
from helpers import ROOT


def run_all(*args, python="python3", torch_home="/nonexistent-torch-home", **env):
    """bash run_all.sh ARGS with PYTHON=python (the commands printed by a dry run start with it), TORCH_HOME
    (default: one without ImageNet weights) and the other environment variables given."""
    return subprocess.run(["bash", os.path.join(ROOT, "run_all.sh"), *args], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHON=str(python), TORCH_HOME=str(torch_home), **env))


# A stand-in for the interpreter: `train.py ... --out OUT` sleeps (ResNets twice as long), fails for the run named
# in $FAIL_RUN, writes OUT/times.json (start, end, CUDA_VISIBLE_DEVICES) and, when it succeeds, OUT/final.json;
# `-c CODE` calling data.load_cifar makes the dataset folder and logs the call in $FAKE_LOG, asking
# torch.cuda.is_available() prints $FAKE_CUDA; anything else runs the tests' own interpreter.
FAKE_PYTHON = f"#!{sys.executable}\n" + """import json, os, sys, time
args = sys.argv[1:]
if args[:1] == ["-c"] and "load_cifar" in args[1]:
    name, folder = args[2:4]
    os.makedirs(os.path.join(folder, {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[name]))
    open(os.environ["FAKE_LOG"], "a").write(f"load_cifar {name}\\n")
    sys.exit(0)
if args[:1] == ["-c"] and "cuda.is_available" in args[1]:
    sys.exit(print(os.environ["FAKE_CUDA"]))
if args[:1] != ["train.py"]:
    os.execv(sys.executable, [sys.executable, *args])
out = args[args.index("--out") + 1]
os.makedirs(out, exist_ok=True)
start = time.time()
print("training", out)
time.sleep(0.4 if "/resnet18-" in out else 0.2)
times = dict(start=start, end=time.time(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"))
json.dump(times, open(os.path.join(out, "times.json"), "w"))
if os.path.basename(out) == os.environ.get("FAIL_RUN"):
    sys.exit("fake failure")
json.dump({}, open(os.path.join(out, "final.json"), "w"))
"""


def fake_python(tmp_path):
    """FAKE_PYTHON as an executable file in tmp_path."""
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


def test_full_dry_run_prints_the_whole_grid_once(tmp_path):
    proc = run_all("--dry-run", "--profile", "full", "--runs", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    cmds = [line for line in lines if " train.py " in line]
    # 221 cells x 3 seeds, shared cells once: regimes 10, data efficiency 12, shallow 4, locality 4 cells x 6,
    # attention 6 + 6 + 8 (local1 and dilated1d2 shared with locality), vit-11m 1, matched time 2; transfer 2
    # pretrainings + 8 cells x (scratch, own, CIFAR-100) x 2 families; truncation 2 x (6 + 4) - 2 shared with
    # transfer; attention swap 7; distillation 3 cells x 3 students (teachers and plain ViTs shared); recipes 8
    # presets x 2 families x 4 cells (the default-recipe runs shared); binary 4 cells x 20 (the teachers shared)
    assert len(cmds) == len(set(cmds)) == 444 + 27 + 192 + 240 == 903
    r = str(tmp_path)
    assert f"python3 evaluate.py bench-attention --out {r}/bench/bench-attention.json" in lines and len(lines) == 907
    assert f"python3 evaluate.py bench-train --out {r}/bench/bench-train.json" in lines
    start = "python3 train.py --arch"
    for expected in (
            f"vit --epochs 200 --data-dir data --regime many-classes --attention lsa --spt --seed 2 "
            f"--out {r}/vit-lsa-spt-many-classes-cifar100-s2",
            f"vit --epochs 200 --data-dir data --dataset cifar10 --regime sparse --fraction 0.02 --attention dilated "
            f"--radius 1 --dilation 3 --seed 0 --out {r}/vit-dilated1d3-sparse-f0.02-cifar10-s0",
            f"vit --epochs 200 --data-dir data --dataset cifar10 --regime sparse --fraction 0.01 --seed 2 "
            f"--out {r}/vit-sparse-f0.01-cifar10-s2",
            f"resnet18 --epochs 200 --data-dir data --regime many-classes --seed 0 "
            f"--out {r}/resnet18-many-classes-cifar100-s0",
            f"vit-11m --epochs 200 --data-dir data --dataset cifar10 --seed 1 --out {r}/vit-11m-standard-cifar10-s1",
            f"vit --epochs 200 --data-dir data --dataset cifar10 --attention local --radius 3 --seed 0 "
            f"--out {r}/vit-local3-standard-cifar10-s0"):
        assert f"{start} {expected}" in cmds
    plain = [c for c in cmds if "--teacher" not in c and "--recipe" not in c]  # binary's are in its own test
    assert sum("--imbalance-ratio 100 " in c and "--classes" not in c for c in plain) == 6
    assert sum("--regime corrupted" in c for c in plain) == 6
    timed = [c for c in cmds if "--time-budget 1200" in c]
    assert len(timed) == 6 and all("--epochs 1000 --warmup-epochs 50" in c for c in timed)
    # torchrun on a part of the grid without transfer (its ImageNet look-up starts torch, seconds): regimes 10 runs,
    # matched-time 2
    gpu_lines = run_all("--dry-run", "--profile", "full", "--runs", r, "--gpus", "2", "--seeds", "5", "--only",
                        "regimes,matched-time")
    gpus = [c for c in gpu_lines.stdout.splitlines() if "train.py" in c]
    assert len(gpus) == 12 and all(c.endswith("-s5") for c in gpus)
    torchrun = "torchrun --standalone --nproc_per_node=2 train.py"
    assert all(c.startswith(torchrun) for c in gpus if "--time-budget" not in c)
    assert all(c.startswith("python3 train.py") for c in gpus if "--time-budget" in c)


def test_quick_dry_run_shrinks_the_grid_and_says_which_data(tmp_path):
    proc = run_all("--dry-run", "--profile", "quick", "--runs", str(tmp_path), "--data-dir", str(tmp_path / "none"))
    lines = proc.stdout.splitlines()
    assert lines[0] == f"quick profile: no CIFAR-10 at {tmp_path}/none/cifar-10-batches-py, using the synthetic dataset"
    assert f"regimes: many-classes skipped, no CIFAR-100 at {tmp_path}/none/cifar-100-python" in lines
    cmds = [line for line in lines if "train.py" in line]
    # regimes 8 (no many-classes) + sparse 4x2 + shallow 4 + locality 2x3 + attention 2x6 + vit-11m 1 + time 2 = 41;
    # transfer 2 pretrainings + 6 cells x 4 (no CIFAR-100), truncation 2 x (2 + 2) - 2 shared, attention swap 7;
    # distillation 3 x 3 students; recipes 4 presets x 2 families x 2 cells (sparse 10%, standard); binary 20
    assert "attention: CIFAR-100 cells skipped, no CIFAR-100 at " + f"{tmp_path}/none/cifar-100-python" in lines
    bench = "python3 evaluate.py bench-attention --depth 1 --dim 64 --heads 4 "
    assert sum(line.startswith(bench) for line in lines) == 1
    assert (f"python3 evaluate.py bench-train --models vit-shallow1,resnet18-shallow --compile off --batch-size 32 "
            f"--steps 3 --warmup 1 --out {tmp_path}/bench/bench-train.json") in lines
    assert len(cmds) == 41 + 26 + 6 + 7 + 9 + 16 + 20
    assert all("--dataset synthetic" in c and "--max-per-class 50" in c and c.endswith("-s0") for c in cmds)
    assert any(c.startswith("python3 train.py --arch resnet18 --stages 2 --epochs 3") for c in cmds)
    assert any("--arch vit-shallow --depth 1 --dim 64 --heads 4" in c for c in cmds)
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    cifar = run_all("--dry-run", "--profile", "quick", "--runs", str(tmp_path), "--data-dir", str(tmp_path / "data"),
                    "--only", "regimes")
    assert cifar.stdout.splitlines()[0] == f"quick profile: CIFAR-10 from {tmp_path}/data/cifar-10-batches-py"


def test_cpu_profile_is_the_default_without_a_gpu_and_has_the_documented_sizes(tmp_path):
    data, r = tmp_path / "data", str(tmp_path / "runs")
    (data / "cifar-10-batches-py").mkdir(parents=True)
    # The jobs' own interpreter is asked: the one torch import of a dry run without transfer.
    lines = run_all("--dry-run", "--runs", r, "--data-dir", str(data), "--only", "matched-params").stdout.splitlines()
    if torch.cuda.is_available():
        assert lines[0] == "profile: full (torch sees a CUDA GPU; --profile full, cpu or quick chooses)"
    else:
        assert lines[:2] == ["profile: cpu (torch sees no CUDA GPU; --profile full, cpu or quick chooses)",
                             f"cpu profile: CIFAR-10 from {data}/cifar-10-batches-py"]
    lines = run_all("--dry-run", "--profile", "cpu", "--runs", r, "--data-dir", str(data)).stdout.splitlines()
    cmds = [c for c in lines if "train.py" in c]
    assert lines[0] == f"cpu profile: CIFAR-10 from {data}/cifar-10-batches-py" and len(lines) == 1 + len(cmds)
    # data efficiency alone: 25, 50 and 100 images per class (sparse 25% and 50% of a 100-image pool), 3 seeds
    assert len(cmds) == len(set(cmds)) == 3 * 2 * 3
    common = (f"--epochs 25 --data-dir {data} --max-per-class 100 --val-fraction 0.004 --test-per-class 100 "
              "--batch-size 32 --dataset cifar10")
    for arch, sizes in (("vit", "--depth 4 --dim 128 --heads 4"), ("resnet18", "--stages 2")):
        for seed in (0, 1, 2):
            for cell, regime in (("standard", ""), ("sparse-f0.25", " --regime sparse --fraction 0.25"),
                                 ("sparse-f0.5", " --regime sparse --fraction 0.5")):
                assert (f"python3 train.py --arch {arch} {sizes} {common}{regime} --seed {seed} "
                        f"--out {r}/{arch}-{cell}-cifar10-s{seed}") in cmds
    matched = [c for c in run_all("--dry-run", "--profile", "cpu", "--runs", r, "--data-dir", str(data), "--only",
                                  "matched-time").stdout.splitlines() if "train.py" in c]
    assert len(matched) == 6 and all(" --time-budget 120 " in c for c in matched)


def test_a_gpu_answer_chooses_full_an_explicit_profile_wins_and_cpu_needs_cifar10(tmp_path):
    fake, r, none = fake_python(tmp_path), str(tmp_path / "runs"), str(tmp_path / "none")
    gpu = run_all("--dry-run", "--runs", r, "--data-dir", none, "--only", "data-efficiency", python=fake,
                  FAKE_CUDA="True")
    lines = gpu.stdout.splitlines()
    assert lines[0] == "profile: full (torch sees a CUDA GPU; --profile full, cpu or quick chooses)"
    assert len(lines) == 1 + 14 * 3 and all(" --epochs 200 " in c for c in lines[1:])
    quick = run_all("--dry-run", "--profile", "quick", "--runs", r, "--data-dir", none, "--only", "data-efficiency",
                    python=fake, FAKE_CUDA="True").stdout.splitlines()
    assert quick[0].startswith("quick profile: no CIFAR-10") and len(quick) == 1 + 10
    # Without CIFAR-10 the cpu profile stops (no synthetic stand-in), chosen or given.
    for args in ((), ("--profile", "cpu")):
        proc = run_all("--dry-run", *args, "--runs", r, "--data-dir", none, python=fake, FAKE_CUDA="False")
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
        assert proc.stderr.startswith(f"run_all.sh: error: --profile cpu needs the real CIFAR-10 at {none}/cifar-10-"
                                      "batches-py (see Data in README.md), or choose --profile quick")
    # A runs folder of another profile: the message says the profile was chosen, and how to go on with the other.
    os.makedirs(r)
    open(os.path.join(r, "PROFILE"), "w").write("full\n")
    (tmp_path / "data" / "cifar-10-batches-py").mkdir(parents=True)
    proc = run_all("--runs", r, "--data-dir", str(tmp_path / "data"), python=fake, FAKE_CUDA="False")
    assert proc.returncode == 2 and proc.stderr == (
        f"run_all.sh: error: {r} holds --profile full runs; use another --runs folder for --profile cpu (torch sees "
        "no CUDA GPU; give --profile full to go on with them)\n")
    bad = run_all("--runs", r, python=fake, FAKE_CUDA="maybe")
    assert bad.returncode == 2 and "printed 'maybe' for torch.cuda.is_available(), not True or False" in bad.stderr


def test_transfer_grid_pairs_each_fine_tune_with_its_pretraining_and_skips_absent_weights(tmp_path):
    r = str(tmp_path / "runs")
    proc = run_all("--dry-run", "--profile", "full", "--only", "transfer,truncation,attention-swap", "--runs", r,
                   torch_home=tmp_path / "home")
    lines = proc.stdout.splitlines()
    cache = f"{tmp_path}/home/hub/checkpoints"
    assert f"transfer: ImageNet resnet18 runs skipped, no weights file {cache}/resnet18-f37072fd.pth" in lines
    assert f"transfer: ImageNet vit-b16 runs skipped, no weights file {cache}/vit_b_16-c867db91.pth" in lines
    cmds = [line for line in lines if " train.py " in line]
    assert len(cmds) == len(set(cmds)) == 3 * (2 + 48 + 2 + 18 + 7)
    target = "--dataset cifar10 --classes 5-9 --regime sparse --fraction 0.1"
    assert (f"python3 train.py --arch resnet18 --epochs 200 --data-dir data {target} --init "
            f"{r}/resnet18-standard-cifar10-c0-4-s2 --truncate 2 --freeze backbone --epochs 50 --seed 2 "
            f"--out {r}/resnet18-from-c0-4-k2-probe-sparse-f0.1-cifar10-c5-9-s2") in cmds
    assert (f"python3 train.py --arch vit --epochs 200 --data-dir data {target} --init "
            f"{r}/vit-standard-cifar10-c0-4-s1 --attention linformer --linformer-k 16 --epochs 50 --seed 1 "
            f"--out {r}/vit-from-c0-4-swap-linformer16-sparse-f0.1-cifar10-c5-9-s1") in cmds
    assert sum(f"--init {r}/vit-many-classes-cifar100-s0 " in c for c in cmds) == 8
    # With the ResNet-18 weights in the cache, its ImageNet runs join: 8 transfer cells, 2 x 4 truncations (the
    # untruncated fine-tune at 10% is also a transfer cell).
    os.makedirs(cache)
    open(f"{cache}/resnet18-f37072fd.pth", "w").close()
    cmds = [c for c in run_all("--dry-run", "--profile", "full", "--only", "transfer,truncation", "--runs", r,
                               "--seeds", "0", torch_home=tmp_path / "home").stdout.splitlines()
            if "--pretrained imagenet" in c]
    assert len(cmds) == 15 and all("--arch resnet18 " in c and "--img-size 224" in c for c in cmds)


def out_of(cmd):
    """The --out folder of a train.py command."""
    return cmd.split(" --out ")[1].split()[0]


def cell_seed(cmd):
    """<cell>-s<seed> of a command whose run name is <arch>-<tag>-<cell>-s<seed> (vit-kdsoft-..., vit-none-...)."""
    return os.path.basename(out_of(cmd)).split("-", 2)[2]


def test_each_student_learns_from_the_resnet18_of_its_own_cell_and_seed_trained_before_it(tmp_path):
    r = str(tmp_path)
    out = run_all("--dry-run", "--profile", "full", "--only", "distillation", "--runs", r).stdout
    cmds = [c for c in out.splitlines() if "train.py" in c]
    students = [c for c in cmds if " --teacher " in c]
    # 3 cells x (teacher, plain ViT, soft, hard, token) x 3 seeds
    assert len(cmds) == len(set(cmds)) == 45 and len(students) == 27
    for c in students:
        teacher = c.split(" --teacher ")[1].split()[0]
        assert teacher == f"{r}/resnet18-{cell_seed(c)}" and c.startswith("python3 train.py --arch vit ")
        assert cmds.index(next(t for t in cmds if out_of(t) == teacher)) < cmds.index(c)
        # The student trains on its teacher's data: the teacher's command with --teacher, --distill and --out
        # taken out and --arch vit is the student's.
        distill = c.split(" --distill ")[1].split()[0]
        assert out_of(c) == f"{r}/vit-kd{distill}-{cell_seed(c)}" and distill in ("soft", "hard", "token")
        plain = next(t for t in cmds if out_of(t) == teacher).replace("resnet18", "vit")
        assert c.replace(f" --teacher {teacher} --distill {distill}", "").replace(f"-kd{distill}", "") == plain
    cells = {cell_seed(c).rsplit("-s", 1)[0] for c in students}
    assert cells == {"standard-cifar10", "sparse-f0.1-cifar10", "imbalanced-r100-cifar10"}
    # With the rest of the grid, the teachers and plain ViTs are the regimes and data-efficiency runs, once each.
    both = [c for c in run_all("--dry-run", "--profile", "full", "--only", "regimes,data-efficiency,distillation",
                               "--runs", r, "--seeds", "0").stdout.splitlines() if "train.py" in c]
    assert len(both) == len(set(out_of(c) for c in both)) == 10 + 12 + 9
    quick = [c for c in run_all("--dry-run", "--profile", "quick", "--only", "distillation", "--runs", r,
                                "--data-dir", str(tmp_path / "none")).stdout.splitlines() if " --teacher " in c]
    assert len(quick) == 9 and all("--arch vit --depth 2 --dim 64 --heads 4 " in c for c in quick)
    assert f"--teacher {r}/resnet18-sparse-f0.1-synthetic-s0 --distill token " in " ".join(quick)


def test_every_recipe_runs_for_both_families_beside_the_default_recipe(tmp_path):
    r = str(tmp_path)
    cmds = [c for c in run_all("--dry-run", "--profile", "full", "--only", "recipes", "--runs", r, "--seeds",
                               "0").stdout.splitlines() if "train.py" in c]
    presets = "none light1 light2 medium1 medium2 strong1 strong2 deit".split()
    cells = ["sparse-f0.02-cifar10", "sparse-f0.1-cifar10", "sparse-f0.5-cifar10", "standard-cifar10"]
    assert len(cmds) == len(set(cmds)) == (8 + 1) * 2 * 4  # the default recipe once per family and cell
    for arch in ("vit", "resnet18"):
        for cell in cells:
            assert f"{r}/{arch}-{cell}-s0" in map(out_of, cmds)
            for p in presets:
                c = next(c for c in cmds if out_of(c) == f"{r}/{arch}-{p}-{cell}-s0")
                assert c.startswith(f"python3 train.py --arch {arch} ") and c.count(f" --recipe {p} ") == 1
                sparse = f"--regime sparse --fraction {cell.split('-')[1][1:]} " if "sparse" in cell else "--regime"
                assert (sparse in c) == ("sparse" in cell)
    quick = [c for c in run_all("--dry-run", "--profile", "quick", "--only", "recipes", "--runs", r,
                                "--data-dir", str(tmp_path / "none")).stdout.splitlines() if " --recipe " in c]
    assert len(quick) == 16 and {c.split(" --recipe ")[1].split()[0] for c in quick} == {"none", "light2", "strong2",
                                                                                          "deit"}



BINARY_STEPS = {"gap": "--pool mean", "mp": "--multi-pool", "ra": "--residual-affine", "pyr": "--pyramid",
                "fpm": "--fp-merge"}


def ladder_tags(cmd):
    """The ladder's steps in a binary experiment run's name: vit-bin-gap-mp-kd-standard-cifar10-s0 -> [gap, mp]."""
    return [t for t in os.path.basename(out_of(cmd)).split("-")[2:] if t in BINARY_STEPS]


def test_binary_ladder_rungs_beside_their_twins_and_students_of_the_default_recipe_resnet18(tmp_path):
    r = str(tmp_path)
    cmds = [c for c in run_all("--dry-run", "--profile", "full", "--only", "binary", "--runs", r).stdout.splitlines()
            if "train.py" in c]
    # 4 cells x 3 seeds x (teacher, 5 full-precision ViT rungs and ResNet-18, 6 binary ViT rungs and ResNet-18, those
    # 7 again with the teacher)
    assert len(cmds) == len(set(cmds)) == 4 * 3 * (1 + 6 + 7 + 7)
    outs = list(map(out_of, cmds))
    assert (f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --regime imbalanced "
            f"--imbalance-ratio 100 --recipe binary --binary --pool mean --multi-pool --residual-affine --pyramid "
            f"--fp-merge --seed 1 --out {r}/vit-bin-gap-mp-ra-pyr-fpm-imbalanced-r100-cifar10-s1") in cmds
    for c in cmds:
        ladder = [flag for flag in BINARY_STEPS.values() if f" {flag} " in c]
        tags = ladder_tags(c)
        assert ladder == [BINARY_STEPS[t] for t in tags] and tags == list(BINARY_STEPS)[:len(tags)]  # cumulative
        assert (" --recipe binary " in c) == ("-fp-" in c or "-bin-" in c)
    binary = [c for c in cmds if " --binary " in c and " --teacher " not in c]
    assert len(binary) == 4 * 3 * 7
    for c in binary:  # the twin: the same command without --binary (and --fp-merge, which needs it), run -fp
        twin = c.replace(" --binary", "").replace(" --fp-merge", "").replace("-bin-", "-fp-").replace("-fpm-", "-")
        assert twin in cmds and cmds.index(twin) < cmds.index(c)
    students = [c for c in cmds if " --teacher " in c]
    assert len(students) == 4 * 3 * 7 and all(" --binary " in c for c in students)
    for c in students:
        teacher = c.split(" --teacher ")[1].split()[0]
        cell_seed = os.path.basename(out_of(c)).split("-kd-", 1)[1]
        assert teacher == f"{r}/resnet18-{cell_seed}" and teacher in outs
        assert outs.index(teacher) < cmds.index(c) and " --recipe " not in cmds[outs.index(teacher)]
        assert c.replace(f" --teacher {teacher}", "").replace("-kd-", "-") in binary  # the same run, taught
    cells = {os.path.basename(o).split("-kd-")[1].rsplit("-s", 1)[0] for o in map(out_of, students)}
    assert cells == {"standard-cifar10", "sparse-f0.1-cifar10", "imbalanced-r100-cifar10", "corrupted-cifar10"}
    # The teachers are the grid's runs of their cell, once: the same commands as regimes' and data efficiency's.
    grid = run_all("--dry-run", "--profile", "full", "--only", "regimes,data-efficiency", "--runs", r, "--seeds", "0")
    both = [c for c in run_all("--dry-run", "--profile", "full", "--only", "regimes,data-efficiency,binary", "--runs",
                               r, "--seeds", "0").stdout.splitlines() if "train.py" in c]
    assert len(both) == len(set(map(out_of, both))) == 10 + 12 + 4 * 20
    assert [c for c in both if " --recipe " not in c] == [c for c in grid.stdout.splitlines() if "train.py" in c]


def test_quick_binary_ladder_is_tiny_on_one_cell_with_a_vit_the_pyramid_takes(tmp_path):
    r = str(tmp_path)
    cmds = [c for c in run_all("--dry-run", "--profile", "quick", "--only", "binary", "--runs", r, "--data-dir",
                               str(tmp_path / "none")).stdout.splitlines() if "train.py" in c]
    assert len(cmds) == 21 and all(" --regime sparse --fraction 0.1 " in c for c in cmds)
    # --pyramid needs 8 heads and 4 blocks: the ladder's ViTs (twins and students too) are not quick's grid's ViT
    vits = [c for c in cmds if "--arch vit " in c]
    assert len(vits) == 17 and all("--arch vit --depth 4 --dim 64 --heads 8 --epochs 3 " in c for c in vits)
    assert f"--arch resnet18 --stages 2 --epochs 3 --data-dir {tmp_path}/none --max-per-class 50 " in cmds[0]
    plain = [c for c in run_all("--dry-run", "--profile", "quick", "--only", "binary,attention", "--runs", r,
                                "--data-dir", str(tmp_path / "none")).stdout.splitlines() if "--arch vit " in c]
    assert sum("--arch vit --depth 2 --dim 64 --heads 4 " in c for c in plain) == 2 * 9  # the others keep theirs

def test_finished_runs_are_skipped_and_interrupted_ones_resumed(tmp_path):
    (tmp_path / "vit-standard-synthetic-s0").mkdir()
    (tmp_path / "vit-standard-synthetic-s0" / "final.json").write_text("{}")
    (tmp_path / "resnet18-standard-synthetic-s0").mkdir()
    (tmp_path / "resnet18-standard-synthetic-s0" / "checkpoint.pt").write_text("")
    cmds = run_all("--dry-run", "--profile", "quick", "--only", "matched-params", "--runs", str(tmp_path),
                   "--data-dir", str(tmp_path / "none")).stdout.splitlines()[1:]
    assert cmds[0].startswith("# done: python3 train.py --arch vit ")
    assert cmds[1].startswith("python3 train.py --arch resnet18 ")
    assert cmds[1].endswith("resnet18-standard-synthetic-s0 --resume")
    assert cmds[2].startswith("python3 train.py --arch vit-11m --depth 2 --dim 192 --heads 4 --mlp-ratio 2 ")
    assert len(cmds) == 3
    # A run whose final.json says failed (a nan loss) is neither rerun nor counted as done.
    out = tmp_path / cmds[2].split("--out ")[1].split()[0].split("/")[-1]
    out.mkdir()
    (out / "final.json").write_text('{\n "status": "failed",\n "reason": "loss is nan or inf at epoch 1 step 2"\n}')
    cmds = run_all("--dry-run", "--profile", "quick", "--only", "matched-params", "--runs", str(tmp_path),
                   "--data-dir", str(tmp_path / "none")).stdout.splitlines()[1:]
    assert cmds[2].startswith("# failed: python3 train.py --arch vit-11m ")


def test_jobs_run_side_by_side_students_wait_for_their_teacher_and_failures_are_listed(tmp_path):
    runs, fail = tmp_path / "runs", "vit-kdhard-sparse-f0.1-synthetic-s0"
    proc = run_all("--profile", "quick", "--only", "distillation,matched-time", "--time-budget", "1", "--runs",
                   str(runs), "--data-dir", str(tmp_path / "none"), "--jobs", "2", "--devices", "3,5",
                   python=fake_python(tmp_path), FAIL_RUN=fail)
    # distillation: 3 cells x (vit, resnet18 teacher, 3 students); matched-time: vit and resnet18 on a time budget
    assert proc.returncode == 1, proc.stderr
    assert "run_all.sh: 16 runs finished now, 0 were already done, 1 failed" in proc.stdout
    assert f"  failed: {runs}/{fail}" in proc.stdout.splitlines()
    assert "training" not in proc.stdout and "fake failure" in open(runs / fail / "train.log").read()
    assert f"[end] {runs}/{fail}: exit 1 after " in proc.stdout
    times = {d.name: json.load(open(d / "times.json")) for d in runs.iterdir() if d.is_dir()}
    assert len(times) == 17 and all(os.path.exists(runs / n / "final.json") == (n != fail) for n in times)
    assert all(f"[start] {runs}/{n}, slot " in proc.stdout for n in times)
    beside = lambda a, b: a != b and times[a]["start"] < times[b]["end"] and times[b]["start"] < times[a]["end"]
    assert any(beside(a, b) for a in times for b in times)  # side by side...
    for a in times:  # ...never more than 2 at once, each job slot on its own GPU
        others = [b for b in times if beside(a, b) and times[b]["start"] <= times[a]["start"]]
        assert len(others) <= 1 and times[a]["gpu"] in ("3", "5")
        assert all(times[a]["gpu"] != times[b]["gpu"] for b in others)
    students = [n for n in times if n.startswith("vit-kd")]
    assert len(students) == 9
    for n in students:  # a student starts after its teacher has finished
        assert times[n]["start"] >= times["resnet18-" + n.split("-", 2)[2]]["end"]
    timed = [n for n in times if "-t1s-" in n]  # a time budget is wall-clock: nothing runs beside it
    assert len(timed) == 2 and not any(beside(a, b) for a in timed for b in times)


def test_jobs_fetch_missing_data_once_and_the_dry_run_is_unchanged(tmp_path):
    args = ("--profile", "quick", "--only", "distillation", "--runs", str(tmp_path), "--data-dir",
            str(tmp_path / "none"), "--dry-run")
    one = run_all(*args)
    assert one.returncode == 0 and run_all(*args, "--jobs", "4", "--devices", "0,1").stdout == one.stdout
    # Side by side, every job would download a missing archive into the same folder: it is fetched once, first.
    log = tmp_path / "fetched"
    proc = run_all("--profile", "full", "--only", "regimes", "--seeds", "0", "--jobs", "2",
                   "--runs", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"),
                   python=fake_python(tmp_path), FAKE_LOG=str(log))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert log.read_text() == "load_cifar cifar10\nload_cifar cifar100\n"
    again = run_all("--profile", "full", "--only", "matched-params", "--seeds", "0", "--jobs", "2", "--runs",
                    str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data"), python=fake_python(tmp_path),
                    FAKE_LOG=str(log))
    assert again.returncode == 0 and log.read_text().count("load_cifar") == 2  # present now: not fetched again


def test_one_runs_folder_holds_one_profile(tmp_path):
    (tmp_path / "PROFILE").write_text("quick\n")
    proc = run_all("--profile", "full", "--runs", str(tmp_path), "--only", "matched-params")
    assert proc.returncode == 2 and f"{tmp_path} holds --profile quick runs; use another --runs folder" in proc.stderr


@pytest.mark.parametrize("args,message", [
    (["--profile", "huge"], "--profile 'huge' is not one of full, quick, cpu"),
    (["--only", "regimes,foo"], "unknown experiment 'foo'; choose from regimes, data-efficiency"),
    (["--seeds", "0,a"], "--seeds '0,a' is not a comma-separated list of whole numbers"),
    (["--gpus"], "--gpus needs a value"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--only", ","], "--only ',' names no experiment"),
    (["--time-budget", "abc"], "--time-budget 'abc' is not a number of seconds"),
    (["--jobs", "0"], "--jobs '0' is not a whole number of at least 1"),
    (["--devices", "0,,1"], "--devices '0,,1' is not a comma-separated list of GPU indices, e.g. 0,1,2,3"),
    (["--jobs", "2", "--gpus", "2"], "--jobs 2 with --gpus 2: each job already takes 2 GPUs; use --jobs 1, or"),
    (["--devices", "0,1", "--gpus", "2"], "--devices '0,1' with --gpus 2: a job slot gets one GPU but each job"),
])
def test_run_all_bad_arguments_exit_2(args, message):
    proc = run_all(*args)
    assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_quick_profile_on_one_tiny_experiment_runs_and_reports(tmp_path):
    runs = tmp_path / "runs"
    proc = run_all("--profile", "quick", "--only", "matched-time", "--time-budget", "2", "--runs", str(runs),
                   "--data-dir", str(tmp_path / "none"), python=sys.executable)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 runs finished now, 0 were already done, 0 failed" in proc.stdout
    again = run_all("--profile", "quick", "--only", "matched-time", "--time-budget", "2", "--runs", str(runs),
                    "--data-dir", str(tmp_path / "none"), python=sys.executable)
    assert "0 runs finished now, 2 were already done, 0 failed" in again.stdout
    report, n, _ = analyze.write_report([str(runs)], str(tmp_path / "out"))
    assert n == 2 and "| vit 2s | standard (synthetic) | 1 |" in report
    assert "| resnet18 2s | standard (synthetic) | 1 |" in report
    for name in ("vit", "resnet18"):
        final = json.load(open(runs / f"{name}-t2s-standard-synthetic-s0" / "final.json"))
        assert 2 <= final["train_step_time_s"] < 30
