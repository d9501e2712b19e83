"""train.py's command line as a whole: --dry-run against a real run, the refusal of a bad command line before torch
loads, and numbers no range check refused."""
import json
import os
import platform
import subprocess
import sys

import pytest

import data
import evaluate
import options
import train
from helpers import ROOT

# Each model as small as it gets: a generated --arch that changes the family is refused (--depth with a ResNet,
# --stages with a ViT), so no example builds a full-size model.
VIT_SMALL = ["--depth", "1", "--dim", "16", "--heads", "2", "--patch-size", "4"]
RESNET_SMALL = ["--stages", "1"]
SYNTHETIC_SMALL = ["--synthetic-per-class", "5", "--synthetic-size", "16"]  # the smallest synthetic set allowed
TINY = ["--arch", "vit", *VIT_SMALL, "--dataset", "synthetic", *SYNTHETIC_SMALL, "--device", "cpu"]


def run_main(argv, capsys):
    """train.main(argv) in this process: (exit code, stdout, stderr)."""
    try:
        code = train.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def tree(root):
    """Every file and folder under root, with each file's bytes: what a command wrote there shows as a difference."""
    found = {}
    for folder, dirs, files in os.walk(root):
        found |= {os.path.join(folder, d): None for d in dirs}
        found |= {os.path.join(folder, f): open(os.path.join(folder, f), "rb").read() for f in files}
    return found


# ----------------------------------------------------------------------------- --dry-run against a real run

def test_a_dry_run_prints_the_config_a_real_run_writes_and_writes_nothing(tmp_path, capsys, monkeypatch):
    argv = [*TINY, "--epochs", "1", "--batch-size", "16", "--progress", "off", "--out", str(tmp_path / "run")]
    code, out, err = run_main([*argv, "--dry-run"], capsys)
    assert code == 0 and err == "" and not (tmp_path / "run").exists()
    printed = json.loads(out)

    class Trained(Exception):
        pass

    def run_epochs(*args):  # config.json is written before the first step: the real run can stop there
        raise Trained
    monkeypatch.setattr(train, "run_epochs", run_epochs)
    with pytest.raises(Trained):
        train.main(argv)
    written = json.load(open(tmp_path / "run" / "config.json"))
    assert printed["run"].pop("dry_run") is True and written["run"].pop("dry_run") is False
    assert {s: written[s] for s in train.SECTIONS} == printed


def finished_run(path):
    """A folder that holds a finished run, as far as the run-folder checks look."""
    os.makedirs(path)
    json.dump(dict(status="finished"), open(os.path.join(path, "final.json"), "w"))


def held_folder(path):
    """A folder whose .lock names a process on another host: taken as alive, so any run of train.py is refused."""
    os.makedirs(path)
    json.dump(dict(pid=os.getpid(), host=platform.node() + "-other"), open(os.path.join(path, ".lock"), "w"))


def unfinished_run(path):
    """A run folder without final.json, for --init and --teacher."""
    os.makedirs(path)
    json.dump({}, open(os.path.join(path, "config.json"), "w"))


# Refusals made late in main(), after the config is resolved, each by a later step of a real run: (what to make at
# {path}, whether --out is that folder, the flags, what the error says).
LATE = {
    "run folder": (finished_run, True, [], "already holds a finished run"),
    "model": (None, False, ["--patch-size", "3"], "patch size 3 does not divide the image size 16"),
    "data": (None, False, ["--dataset", "cifar10"], "cifar10 not found"),
    "starting weights": (unfinished_run, False, ["--init", "{path}"], "{path} is not a finished run folder"),
    "teacher": (unfinished_run, False, ["--teacher", "{path}", "--distill", "soft"], "{path} is not a finished run"),
    "lock": (held_folder, True, ["--overwrite"], "(its .lock); wait for it, or stop it"),
}


@pytest.mark.parametrize("step", LATE)
def test_a_dry_run_refuses_what_a_real_run_refuses(step, tmp_path, capsys):
    make, is_out, extra, message = LATE[step]
    path = str(tmp_path / "made")
    if make:
        make(path)
    dataset = [] if "--dataset" in extra else ["--dataset", "synthetic", *SYNTHETIC_SMALL]
    argv = ["--arch", "vit", *VIT_SMALL, *dataset, "--device", "cpu", "--epochs", "1", "--no-download", "--data-dir",
            str(tmp_path / "none"), "--out", path if is_out else str(tmp_path / "out")]
    argv += [word.format(path=path) for word in extra]
    before = tree(tmp_path)
    real = run_main(argv, capsys)
    dry = run_main([*argv, "--dry-run"], capsys)
    assert real[0] == dry[0] == 2 and real[2] == dry[2], (real, dry)
    assert message.format(path=path) in dry[2]
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- a bad command line, before torch

@pytest.fixture(scope="module")
def without_torch(tmp_path_factory):
    """An environment in which importing torch, torchvision, NumPy or tqdm raises ImportError."""
    root = tmp_path_factory.mktemp("without_torch")
    for name in ("torch", "torchvision", "numpy", "tqdm"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
    return dict(os.environ, PYTHONPATH=str(root))  # after the script's folder, before site-packages


def train_py(argv, env=None):
    """python3 train.py argv in a new process: the CompletedProcess, text output captured."""
    return subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), *argv], capture_output=True, text=True,
                          env=env)


@pytest.mark.parametrize("argv,message", [
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--arch", "vgg"], "argument --arch: invalid choice: 'vgg'"),
    (["--train-corruption", "fog"], "argument --train-corruption: invalid choice: 'fog'"),
    (["--recipe", "heavy"], "argument --recipe: invalid choice: 'heavy'"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["--lr"], "argument --lr: expected one argument"),
])
def test_a_bad_command_line_is_refused_without_importing_torch(argv, message, without_torch):
    proc = train_py(argv, without_torch)
    assert proc.returncode == 2 and proc.stderr.startswith(f"train.py: error: {message}")
    assert len(proc.stderr.splitlines()) == 1 and "was imported" not in proc.stderr


def test_a_good_command_line_goes_on_to_import_torch(without_torch):
    proc = train_py([*TINY, "--dry-run"], without_torch)
    assert proc.returncode == 1 and "ImportError: torch was imported" in proc.stderr  # past the check
    proc = train_py(["--help"], without_torch)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: train.py") and "--dry-run" in proc.stdout


def test_a_good_command_line_runs(tmp_path):
    proc = train_py([*TINY, "--dry-run", "--out", str(tmp_path / "run")])
    assert proc.returncode == 0 and json.loads(proc.stdout)["run"]["out"] == str(tmp_path / "run"), proc.stderr
    assert os.listdir(tmp_path) == []


def test_options_corruption_names_are_data_corruptions():
    # The one list kept twice: the names in options.py (no torch), the functions in data.py.
    assert options.CORRUPTION_NAMES == list(data.CORRUPTIONS)


# ----------------------------------------------------------------------------- the bugs the property tests found

@pytest.mark.parametrize("extra,message", [
    # Beyond 64 bits: an OverflowError traceback from NumPy (synthetic images), torch's C++ frames in the message.
    (["--synthetic-per-class", str(2 ** 63)], f"--synthetic-per-class {2 ** 63} is beyond the 64-bit integers"),
    (["--dim", str(2 ** 63)], f"--dim {2 ** 63} is beyond the 64-bit integers"),
    # nan passes every range check written as a comparison, inf the open-ended ones: accepted, written into
    # config.json as NaN or Infinity (not JSON), or an OverflowError traceback (--mlp-ratio inf).
    (["--mlp-ratio", "inf"], "--mlp-ratio inf is not a finite number"),
    (["--mlp-ratio", "nan"], "--mlp-ratio nan is not a finite number"),
    (["--weight-decay", "nan"], "--weight-decay nan is not a finite number"),
    (["--lr", "inf"], "--lr inf is not a finite number"),
    (["--time-budget", "nan"], "--time-budget nan is not a finite number"),
    (["--mixup", "inf"], "--mixup inf is not a finite number"),
    (["--regime", "imbalanced", "--imbalance-ratio", "nan"], "--imbalance-ratio nan is not a finite number"),
    (["--randaug", "inf,9"], "--randaug 'inf,9' is not N,M or N,M,STD"),  # was an OverflowError traceback
    (["--randaug", "2,9,inf"], "--randaug '2,9,inf' is not N,M or N,M,STD"),
    # A seed whose derived seeds (seed * 1000003 + ...) overflow torch's: a traceback at the first epoch.
    (["--seed", str(10 ** 15)], f"--seed {10 ** 15} is outside 0 to {2 ** 32 - 1}"),
    (["--seed", "-1"], f"--seed -1 is outside 0 to {2 ** 32 - 1}"),
    (["--mlp-ratio", "0.01"], "--mlp-ratio 0.01 gives the MLP of width 16 no hidden unit; allowed: at least 1/16"),
    # Sizes torch cannot allocate: a RuntimeError traceback, or a message of C++ frames that said "does not fit
    # this code".
    (["--mlp-ratio", "1e300"], "the model's sizes are too large to build: empty(): argument 'size' failed"),
    (["--dim", str(10 ** 12)], "the model's sizes are too large to build: "),
])
def test_numbers_no_range_check_refused_are_refused_in_one_line(extra, message, tmp_path, exits_2):
    err = exits_2([*TINY, *extra, "--out", str(tmp_path / "x")])
    assert message in err
    assert not (tmp_path / "x").exists()


def test_a_model_key_of_another_version_is_still_named_so():
    # build_run_model tells torch's errors about sizes apart from a key that this code does not know.
    cfg = dict(model=dict(arch="vit", depth=1, dim=16, heads=2, patch_size=4, binary=True),
               data=dict(dataset="synthetic", synthetic_size=16), run=dict(seed=0))
    with pytest.raises(ValueError, match="the model section of this config does not fit this code .*'binary'"):
        evaluate.build_run_model(cfg)


def test_the_largest_seed_allowed_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "finish_run", lambda *args: None)  # the epoch is what derives seeds from --seed
    argv = [*TINY, "--epochs", "1", "--batch-size", "16", "--progress", "off", "--seed", str(2 ** 32 - 1)]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert '"epoch": 1' in (tmp_path / "run" / "metrics.jsonl").read_text()
