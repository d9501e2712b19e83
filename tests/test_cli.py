"""train.py's command line as a whole: --dry-run against a real run, the refusal of a bad command line before torch
loads, and property tests over generated command lines (hypothesis) with the bugs they found."""
import json
import os
import platform
import subprocess
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import data
import evaluate
import options
import train
from helpers import ROOT, write_cifar_folder

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
    cfg = dict(model=dict(arch="vit", depth=1, dim=16, heads=2, patch_size=4, ternary=True),
               data=dict(dataset="synthetic", synthetic_size=16), run=dict(seed=0))
    with pytest.raises(ValueError, match="the model section of this config does not fit this code .*'ternary'"):
        evaluate.build_run_model(cfg)


def test_the_largest_seed_allowed_trains(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "finish_run", lambda *args: None)  # the epoch is what derives seeds from --seed
    argv = [*TINY, "--epochs", "1", "--batch-size", "16", "--progress", "off", "--seed", str(2 ** 32 - 1)]
    assert train.main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert '"epoch": 1' in (tmp_path / "run" / "metrics.jsonl").read_text()


# ----------------------------------------------------------------------------- property tests (hypothesis)

# Values for the generated flags: in range, out of range, of the wrong type, not finite. Sizes stay small (ints up
# to 40, floats up to 100) or beyond 64 bits: a model or data set asked for is built, and one 10^9 wide would
# take the machine's memory. The run section sizes nothing, so its flags also get seeds and counts up to 10^15.
FLOATS = ["-1", "-0.5", "0", "-0.0", "1e-9", "0.1", "0.5", "0.99", "1", "1.5", "2", "3", "10", "100", "nan", "inf",
          "-inf", "1e400", "1e300"]
BEYOND_64_BITS = ["9223372036854775808", "-9223372036854775809", "100000000000000000000"]
LARGE = ["4294967296", "1000000000000000", "9223372036854775807"]
TEXTS = ["", "0", "1", "-1", "x", ",", "2,9", "2,9,0.5", "1,2,4", "2,2", "1,,2", "1,x", "0-4", "5-9", "0,2,4", "9-0",
         "3-12", "0.5", "0.5,0.9", "contrast", "gaussian_noise,contrast", "fog", "cpu", "cuda", "auto", "imagenet",
         "IMAGENET1K_V1", "run", "run/sub"]  # relative paths: each example runs in a folder of its own
UNKNOWN = ["--no-such-flag", "--arc", "--epoch", "--dry", "--d", "-x", "--", "junk", "--lr=0.1", "--depth=-1"]
EXAMPLES = int(os.environ.get("LAB_CLI_EXAMPLES", 120))  # LAB_CLI_EXAMPLES=2000: a deeper, randomised search
SEARCH = dict(deadline=None, derandomize="LAB_CLI_EXAMPLES" not in os.environ, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
PARSER = train.get_parser()
RUN_FLAGS = set(PARSER.sections["run"])



def not_json(constant):
    """json.loads' hook for NaN and Infinity, which Python writes but JSON has not: config.json must be JSON."""
    raise AssertionError(f"{constant} in a config")


def assert_exit_0_or_one_line_2(code, out, err):
    """The property: exit 0 with the resolved config on stdout, or exit 2 with one line `train.py: error: ...`."""
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("train.py: error: "), err
    else:
        assert set(json.loads(out, parse_constant=not_json)) == {"model", "data", "optim", "run"}


def numbers(action):
    """Strategy for the number text of an int or float flag: small, special, beyond 64 bits, large (run section)."""
    if action.type is float:  # mostly the listed ones: nan, inf and 0 are where range checks go wrong
        return st.sampled_from(FLOATS) | st.sampled_from(FLOATS) | st.floats(-2, 100).map(repr)
    return st.integers(-3, 40).map(str) | st.sampled_from(BEYOND_64_BITS + (LARGE if action.dest in RUN_FLAGS else []))


def flag_values(action):
    """Strategy for one flag of the parser and what follows it, from the flag's own choices and type: a good value
    mostly, else a value of another kind, or none (the next flag, or the end of the line, comes instead)."""
    flag = st.sampled_from(action.option_strings)
    if action.nargs == 0:  # store_true
        return flag.map(lambda f: [f])
    if action.choices is not None:
        good = st.sampled_from([str(c) for c in action.choices])
    elif action.type in (int, float):
        good = numbers(action)
    else:  # text: names, paths, lists (--classes, --randaug, --dilations, --thresholds, --corruptions)
        listed = st.lists(st.sampled_from(FLOATS) | st.integers(-1, 12).map(str), min_size=1, max_size=3)
        good = st.sampled_from(TEXTS) | listed.map(",".join) | st.text(alphabet="0123456789,.-x", max_size=8)
    wild = st.sampled_from(FLOATS + TEXTS)
    value = st.sampled_from(["good"] * 6 + ["wild", "none"]).flatmap(
        lambda kind: {"good": good, "wild": wild}[kind].map(lambda v: [v]) if kind != "none" else st.just([]))
    return st.tuples(flag, value).map(lambda fv: [fv[0], *fv[1]])


# Every flag of train.py (but --help), so a flag added later is generated too; and flags it has not.
FRAGMENT = st.one_of(*[flag_values(a) for a in PARSER._actions if a.option_strings and a.dest != "help"],
                     st.sampled_from(UNKNOWN).map(lambda u: [u]))


@st.composite
def command_lines(draw):
    """A whole command line: a small model and data set (whose flags the rest may override), then up to 6 flags."""
    arch, dataset = draw(st.sampled_from(options.ARCHS)), draw(st.sampled_from(options.DATASETS))
    head = ["--arch", arch, *(RESNET_SMALL if arch in options.RESNET_PRESETS else VIT_SMALL), "--dataset", dataset]
    head += SYNTHETIC_SMALL if dataset == "synthetic" else []
    return head + [word for fragment in draw(st.lists(FRAGMENT, max_size=6)) for word in fragment]


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    """Tiny CIFAR-10 and CIFAR-100 folders, so generated --dataset cifar10/cifar100 lines load real-format data."""
    root = tmp_path_factory.mktemp("cifar")
    write_cifar_folder(root, "cifar10", 6, 2)
    write_cifar_folder(root, "cifar100", 6, 1)
    return str(root)


def in_folder_of_its_own(argv, capsys):
    """run_main(argv) in a new empty working folder: (exit code, stdout, stderr, what it left there)."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as here:
        os.chdir(here)
        try:
            code, out, err = run_main(argv, capsys)
            return code, out, err, tree(here)
        finally:
            os.chdir(cwd)


@settings(max_examples=EXAMPLES, **SEARCH)
@given(argv=command_lines())
def test_every_command_line_starts_or_exits_2_in_one_line_writing_nothing(argv, cifar_dir, capsys):
    base = ["--device", "cpu", "--no-download", "--data-dir", cifar_dir, "--out", "out", "--progress", "off",
            "--dry-run"]  # first: a generated flag overrides these (--out relative: inside the example's folder)
    cifar_before = tree(cifar_dir)
    code, out, err, written = in_folder_of_its_own([*base, *argv], capsys)
    event(f"exit {code}" + (f": {err.split(':')[2].strip()}" if code == 2 else ""))  # --hypothesis-show-statistics
    assert_exit_0_or_one_line_2(code, out, err)
    assert written == {} and tree(cifar_dir) == cifar_before  # refused or dry, nothing is written anywhere


@settings(max_examples=max(EXAMPLES // 10, 10), **SEARCH)
@given(argv=command_lines())
def test_a_real_run_refuses_what_a_dry_run_refuses_and_trains_what_it_accepts(argv, cifar_dir, capsys, monkeypatch):
    # At most one epoch and 0.2 s of steps, with no final evaluation (seconds of the test's time; training
    # has started by then): a generated --stop-after-steps must not end this process (os._exit), so the kill points
    # do nothing.
    monkeypatch.setattr(train, "kill_points", lambda clock, run: None)
    monkeypatch.setattr(train, "finish_run", lambda *args: None)
    argv = ["--device", "cpu", "--no-download", "--data-dir", cifar_dir, "--out", "out", "--progress", "off", *argv,
            "--epochs", "1", "--time-budget", "0.2"]
    dry = in_folder_of_its_own(["--dry-run", *argv], capsys)  # first: a generated "--" makes what follows text
    code, out, err, written = in_folder_of_its_own(argv, capsys)
    event(f"dry exit {dry[0]}, real exit {code}")
    if dry[0] == 2:
        assert (code, err, written) == (2, dry[2], {})
    else:
        assert code in (0, 1) and "Traceback" not in err, err  # 1: a nan loss, the run failed (final.json says so)
        configs = [text for path, text in written.items() if path.endswith("config.json")]
        config = json.loads(configs[0] if configs else out)  # none written: a generated --dry-run printed it
        config["run"]["dry_run"] = True
        assert {s: config[s] for s in train.SECTIONS} == json.loads(dry[1])
