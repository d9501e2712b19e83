"""analyze_recipes.py and the recipe and teacher pieces of analyze_groups.py on run folders with known numbers."""
import math
import os

import pytest

import analyze
import analyze_groups
import analyze_recipes
from helpers import fake_run_in_sections as run, section

SPARSE = dict(regime="sparse", fraction=0.1, train_size=100)
TEACHER_MODEL = dict(arch="resnet18", stages=4)
DEFAULT = dict(label_smoothing=0.1)  # the lab's default optim keys that a preset changes
PRESETS = dict(none=dict(recipe="none", label_smoothing=0.0, weight_decay=0.1),
               strong2=dict(recipe="strong2", randaug=[2, 20.0, 0.0], mixup=0.8, mix_prob=1.0, label_smoothing=0.0,
                            weight_decay=0.1))


def student(root, kind, seed, acc, heads=None, cell="sparse-f0.1-cifar10", recorded=True, **kw):
    """A ViT distilled from the ResNet-18 of its own cell and seed (the folder run_all.sh names)."""
    source = os.path.join(str(root), f"resnet18-{cell}-s{seed}")
    teacher = dict(source=source, model=TEACHER_MODEL, commit="abc",
                   data=dict(dataset="cifar10", val_fraction=0.1, **({k: kw[k] for k in ("regime", "fraction",
                                                                                       "imbalance_ratio") if k in kw})),
                   test_acc=0.6 + 0.02 * seed)
    optim = dict(DEFAULT, teacher=f"runs/full/resnet18-{cell}-s{seed}", distill=kind, distill_alpha=0.5,
                 **(dict(distill_tau=1.0) if kind == "soft" else {}))
    run(root, f"vit-distill-{kind}-{cell}", seed, acc, optim=optim, teacher=teacher if recorded else None,
        model=dict(distill_token=True) if kind == "token" else None,
        final_extra=dict(head_test_acc=heads) if heads else None, **kw)


def distillation_runs(root):
    """Sparse 10%, two seeds: teacher 61.0, no teacher 41.0, soft 46.0, hard 51.0, token 56.0 (heads 54.0 and 57.0),
    every std 1.4; imbalanced R=100, one seed: teacher 30.0, no teacher 25.0, hard 35.0."""
    for seed in range(2):
        d = 0.02 * seed
        run(root, "resnet18-sparse-f0.1-cifar10", seed, 0.60 + d, arch="resnet18", stages=4, optim=DEFAULT, **SPARSE)
        run(root, "vit-sparse-f0.1-cifar10", seed, 0.40 + d, optim=DEFAULT, **SPARSE)
        student(root, "soft", seed, 0.45 + d, **SPARSE)
        student(root, "hard", seed, 0.50 + d, **SPARSE)
        student(root, "token", seed, 0.55 + d, heads=dict(cls=0.53 + d, dist=0.56 + d), **SPARSE)
    r100 = dict(regime="imbalanced", imbalance_ratio=100)
    run(root, "resnet18-imbalanced-r100-cifar10", 0, 0.30, arch="resnet18", stages=4, optim=DEFAULT, **r100)
    run(root, "vit-imbalanced-r100-cifar10", 0, 0.25, optim=DEFAULT, **r100)
    student(root, "hard", 0, 0.35, cell="imbalanced-r100-cifar10", **r100)


def test_seeds_of_one_distillation_group_and_the_teacher_is_named_by_what_it_trained(tmp_path):
    distillation_runs(tmp_path)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    by_model = {(g["model"], g["cell"]): g for g in groups}
    soft = by_model["vit distill=soft from resnet18 (sparse 10%)", "sparse 10% (cifar10)"]
    assert len(soft["runs"]) == 2 and analyze_groups.fmt(soft, "test_acc") == "46.0 ± 1.4"
    # Each seed's teacher path holds its seed; the group compares what the teacher trained instead.
    assert analyze_groups.trained(soft["sections"])["optim"]["teacher"] == dict(
        model=TEACHER_MODEL, data=dict(dataset="cifar10", val_fraction=0.1, regime="sparse", fraction=0.1))
    assert by_model["vit distill=hard from resnet18 (imbalanced R=100)", "imbalanced R=100 (cifar10)"]
    # The no-teacher student and the teacher are the plain runs of the cell, labelled as before.
    assert len(by_model["vit", "sparse 10% (cifar10)"]["runs"]) == 2
    assert len(by_model["resnet18", "sparse 10% (cifar10)"]["runs"]) == 2


def test_without_a_recorded_teacher_the_folder_name_without_its_seed_groups(tmp_path):
    for seed in range(2):
        student(tmp_path, "soft", seed, 0.5, cell="standard-cifar10", recorded=False)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    assert [(g["model"], len(g["runs"])) for g in groups] == [("vit distill=soft from resnet18-standard-cifar10", 2)]
    text = section(tmp_path, analyze_recipes.section_distillation)
    assert "No vit without a teacher ran on standard (cifar10): no gain to state." in text
    assert "On standard (cifar10), the teacher's accuracy is unknown (no teacher run, none recorded)." in text


def test_distillation_table_heads_gains_and_the_teacher_beside_the_students(tmp_path):
    distillation_runs(tmp_path)
    text = section(tmp_path, analyze_recipes.section_distillation)
    cell = "sparse 10% (cifar10)"
    assert f"| {cell} | vit (no teacher) | 2 | 41.0 ± 1.4 | - | - | 61.0 ± 1.4 | reference | " \
           "\u221220.0 (beyond the seed spread) |" in text
    assert (f"| {cell} | vit distill=token from resnet18 (sparse 10%) | 2 | 56.0 ± 1.4 | 54.0 ± 1.4 | 57.0 ± 1.4 | "
            "61.0 ± 1.4 | +15.0 (beyond the seed spread) | \u22125.0 (beyond the seed spread) |") in text
    assert (f"| {cell} | vit distill=soft from resnet18 (sparse 10%) | 2 | 46.0 ± 1.4 | - | - | 61.0 ± 1.4 | "
            "+5.0 (beyond the seed spread) | \u221215.0 (beyond the seed spread) |") in text
    assert ("On sparse 10% (cifar10), the distillation that helps most is token: 56.0% test accuracy against 41.0% "
            "without a teacher, +15.0 points, larger than the two stds added (1.4 and 1.4 points).") in text
    assert ("Gain over the student without a teacher, in points (* = larger than the two stds added): soft +5.0*, "
            "hard +10.0*, token +15.0* (cls head +13.0*, dist head +16.0*).") in text
    # The teacher is its own run's group (found by folder name; the recorded path is this tmp folder).
    assert ("Against the teacher (resnet18 on sparse 10% (cifar10): 61.0 ± 1.4), in points (* = larger than the two "
            "stds added): soft \u221215.0*, hard \u221210.0*, token \u22125.0* (cls head \u22127.0*, dist head "
            "\u22124.0*); no student beats its teacher beyond the seed spread.") in text
    # One seed: the student is ahead of its teacher by mean, which is not yet a finding.
    assert ("Against the teacher (resnet18 on imbalanced R=100 (cifar10): 30.0 (n=1)), in points (* = larger than the "
            "two stds added): hard +5.0; no student beats its teacher beyond the seed spread. With one seed the "
            "spread is unknown") in text
    assert "+10.0 points, with 1 seed(s) the spread is unknown, so not yet a finding." in text
    for name in (cell, "imbalanced R=100 (cifar10)"):
        assert (tmp_path / "out" / "plots" / f"distillation_{analyze_groups.slug(name)}.png").stat().st_size > 1000


def test_a_teacher_without_its_run_is_its_recorded_accuracy(tmp_path):
    for seed in range(2):
        run(tmp_path, "vit", seed, 0.40 + 0.02 * seed, optim=DEFAULT, **SPARSE)
        student(tmp_path, "hard", seed, 0.70 + 0.02 * seed, **SPARSE)  # recorded teacher: 0.60, 0.62; no folder
    text = section(tmp_path, analyze_recipes.section_distillation)
    assert ("Against the teacher (resnet18 (sparse 10%), as recorded: 61.0 ± 1.4), in points (* = larger than the two "
            "stds added): hard +10.0*; hard beats the teacher beyond the seed spread.") in text


def test_data_worth_interpolates_in_log_fraction():
    curve = [(0.02, 0.30), (0.1, 0.50), (0.5, 0.70), (1.0, 0.80)]
    # 0.6 is halfway from 0.5 (at 10%) to 0.7 (at 50%): log f halfway, f = sqrt(0.1 * 0.5).
    assert analyze_recipes.data_worth(curve, 0.1, 0.60) == pytest.approx(math.sqrt(0.05) / 0.1)
    assert analyze_recipes.data_worth(curve, 0.02, 0.50) == pytest.approx(5.0)  # reached exactly at 10%
    assert analyze_recipes.data_worth(curve, 0.5, 0.75) == pytest.approx(math.sqrt(0.5) / 0.5)
    assert analyze_recipes.data_worth(curve, 1.0, 0.85) == "beyond"
    assert analyze_recipes.data_worth(curve, 0.02, 0.20) == "below"
    assert analyze_recipes.worth_text(math.sqrt(0.05) / 0.1) == "2.2x the data"
    assert analyze_recipes.worth_text("beyond") == "beyond the measured range"


ACCS = {("vit", "default"): {0.1: 0.40, 1.0: 0.70}, ("vit", "none"): {0.1: 0.30, 1.0: 0.60},
        ("vit", "strong2"): {0.1: 0.50, 1.0: 0.75}, ("resnet18", "default"): {0.1: 0.60, 1.0: 0.85},
        ("resnet18", "none"): {0.1: 0.55, 1.0: 0.80}, ("resnet18", "strong2"): {0.1: 0.58, 1.0: 0.88}}


def recipe_runs(root):
    """vit and resnet18 at 10% and 100%, the default recipe, none and strong2, two seeds (+0, +2 points: std 1.4);
    vit strong2 with EMA weights one point above."""
    for (arch, recipe), by_f in ACCS.items():
        for f, acc in by_f.items():
            data = SPARSE if f < 1 else {}
            for seed in range(2):
                optim = DEFAULT if recipe == "default" else dict(PRESETS[recipe])
                model = {} if recipe == "default" else dict(dropout=0.1 * (recipe == "strong2"),
                                                             drop_path=0.1 * (recipe == "strong2"))
                if arch == "resnet18":
                    optim.pop("weight_decay", None)
                    model = dict(stages=4)
                ema = dict(ema=dict(test_acc=acc + 0.01 + 0.02 * seed)) if (arch, recipe) == ("vit", "strong2") else {}
                run(root, f"{arch}-{recipe}-{f}", seed, acc + 0.02 * seed, arch=arch, optim=optim, model=model,
                    final_extra=ema, **data)


def test_recipes_table_data_worth_and_findings(tmp_path):
    recipe_runs(tmp_path)
    text = section(tmp_path, analyze_recipes.section_recipes)
    assert "### cifar10" in text and "| model | seeds | 10% | 100% |" in text
    assert "| vit default | 2 | 41.0 ± 1.4 | 71.0 ± 1.4 |" in text
    assert "| vit strong2 | 2 | 51.0 ± 1.4 | 76.0 ± 1.4 |" in text
    assert "| resnet18 none | 2 | 56.0 ± 1.4 | 81.0 ± 1.4 |" in text
    assert ("| vit strong2 | 2 | 51.0 ± 1.4 | 76.0 ± 1.4 |\n| vit strong2 (EMA weights) | 2 | 52.0 ± 1.4 | 77.0 ± 1.4 |"
            in text)
    # vit none: 31 at 10%, 61 at 100%. strong2's 51 at 10% is 2/3 of the way: 10^(2/3) = 4.6x; its 76 at 100% is
    # beyond 61. The default's 41 is 1/3 of the way: 10^(1/3) = 2.2x. resnet18 none: 56 and 81; 61 is 10^0.2.
    assert "| vit default | 2.2x the data | beyond the measured range |" in text
    assert "| vit none | 1.0x the data | 1.0x the data |" in text
    assert "| vit strong2 | 4.6x the data | beyond the measured range |" in text
    assert "| resnet18 default | 1.6x the data | beyond the measured range |" in text
    assert ("Best vit recipe per share of the training set, against the default recipe in points (* = larger than the "
            "two stds added): 10% strong2 +10.0*, 100% strong2 +5.0*.") in text
    assert "Best resnet18 recipe per share of the training set, against the default recipe in points" in text
    assert "10% default, 100% strong2 +3.0*." in text
    # 10%: 41 - 61 with the default recipe; 51 (vit strong2) - 61 (resnet18 default) with each family's best.
    assert ("vit \u2212 resnet18 at 10%: \u221220.0 points with the default recipe, larger than the two stds added "
            "(1.4 and 1.4 points); \u221210.0 with each family's best recipe (strong2, default), larger than the two "
            "stds added (1.4 and 1.4 points): the recipes narrow the gap by 10.0 points but do not close it.") in text
    assert "at 100%:" not in text  # only fractions below 100%
    assert (tmp_path / "out" / "plots" / "recipes_cifar10.png").stat().st_size > 1000


def test_without_none_there_is_no_data_worth_and_one_seed_is_not_a_finding(tmp_path):
    for arch, default, strong2 in (("vit", 0.4, 0.5), ("resnet18", 0.6, 0.62)):
        run(tmp_path, f"{arch}-default", 0, default, arch=arch, optim=DEFAULT, **SPARSE)
        run(tmp_path, f"{arch}-strong2", 0, strong2, arch=arch, optim=PRESETS["strong2"], **SPARSE)
    text = section(tmp_path, analyze_recipes.section_recipes)
    assert "No `none` recipe ran for vit, resnet18: no data worth to measure." in text
    assert "10% strong2 +10.0. With one seed the spread is unknown" in text
    assert "with one seed the spread is unknown, so whether the recipes close the gap is not yet a finding" in text


def test_recipe_and_teacher_runs_stay_out_of_the_default_recipe_sections(tmp_path):
    distillation_runs(tmp_path)
    recipe_runs(tmp_path / "recipes")
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    distillation = report.split("## Distillation")[1].split("## Recipes")[0]
    recipes = report.split("## Recipes")[1].split("## Cost")[0]
    others = report.replace(distillation, "").replace(recipes, "")
    assert "distill=" in distillation and "| vit strong2 | 2 |" in recipes
    assert "distill=" not in others and "recipe=" not in others and "strong2" not in others
    # The default runs keep their labels: no bracket names label_smoothing, which only the presets change.
    regimes = report.split("## Regimes")[1].split("## Data efficiency")[0]
    efficiency = report.split("## Data efficiency")[1].split("## Shallow networks")[0]
    assert "| vit | imbalanced R=100 (cifar10) | 1 | 25.0 (n=1) |" in regimes
    assert "| vit | sparse 10% (cifar10) | 4 | 41.0 ± 1.2 | 100 |" in efficiency  # the two folders' seeds 0, 1
    assert "label_smoothing" not in others


def test_without_students_or_recipes_the_sections_say_so(tmp_path):
    run(tmp_path, "vit", 0, 0.5, optim=DEFAULT, **SPARSE)
    run(tmp_path, "resnet18", 0, 0.6, arch="resnet18", optim=DEFAULT, **SPARSE)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "## Distillation\n\nNo runs for this section yet" in report
    assert "## Recipes\n\nNo runs for this section yet" in report
