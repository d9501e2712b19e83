"""analyze_binary.py on run folders with known numbers: the ladder, the twins, the paired drops, the gap each change
closes, the cost table, and what is missing."""
import os

import analyze
import analyze_binary
import analyze_groups
from helpers import fake_run_in_sections as run, section

BINARY_OPTIM = dict(recipe="binary", lr=5e-4, weight_decay=0.0)
CHANGES = [("pool", "mean"), ("multi_pool", True), ("residual_affine", True), ("pyramid", True), ("fp_merge", True)]
# Seed 0's accuracies; seed 1 adds 4 points to a full-precision twin, 2 to a binary model (so every drop has std 1.4).
FP_VIT = [0.70, 0.72, 0.72, 0.73, 0.75]  # rungs 0-4: --fp-merge needs --binary
BINARY_VIT = [0.40, 0.47, 0.50, 0.55, 0.60, 0.66]
TAUGHT_VIT = {0: 0.45, 5: 0.68}
VIT_COST = dict(bops=64e6, flops=1e6, ops=2e6, model_bits=1e6, params=3.2e6)
FP_COST = dict(bops=0, flops=64e6, ops=64e6, model_bits=102.4e6, params=3.2e6)


def ladder_model(k, binary):
    """The model section keys of ViT rung k (the first k changes), binary or not."""
    model = dict(CHANGES[:k])
    return model | (dict(binary=True, attn_quant="binary") if binary else {})


def student_keys(seed, root, cell="standard-cifar10"):
    """The optim keys and recorded teacher of a run with the ResNet-18 of its own cell and seed as its teacher."""
    source = os.path.join(str(root), f"resnet18-{cell}-s{seed}")
    teacher = dict(source=source, model=dict(arch="resnet18", stages=4), data=dict(dataset="cifar10",
                                                                                   regime="standard"))
    return dict(BINARY_OPTIM, teacher=f"runs/full/resnet18-{cell}-s{seed}", distill="soft", distill_alpha=1.0,
                distill_tau=1.0), teacher


def ladder_runs(root):
    """Standard data, two seeds: every rung binary and full precision, the plain ViT, +fp-merge and the ResNet-18
    with a teacher too, and the teacher (the default-recipe ResNet-18, 85 + 2 x seed). Corrupted, one seed: the
    plain ViT and the ResNet-18 (corruption_mean 30 and 55, twins 50 and 60), and a +mean pool run without
    corruption_mean."""
    for seed in range(2):
        fp, b = 0.04 * seed, 0.02 * seed
        run(root, "resnet18-standard-cifar10", seed, 0.85 + b, arch="resnet18", stages=4)
        optim, teacher = student_keys(seed, root)
        for k, acc in enumerate(FP_VIT):
            run(root, f"vit-fp{k}", seed, acc + fp, optim=BINARY_OPTIM, model=ladder_model(k, False),
                final_extra=FP_COST)
        for k, acc in enumerate(BINARY_VIT):
            run(root, f"vit-bin{k}", seed, acc + b, optim=BINARY_OPTIM, model=ladder_model(k, True),
                final_extra=VIT_COST)
        for k, acc in TAUGHT_VIT.items():
            run(root, f"vit-bin{k}-kd", seed, acc + b, optim=optim, model=ladder_model(k, True), teacher=teacher,
                final_extra=VIT_COST)
        resnet = dict(arch="resnet18", stages=4)
        run(root, "resnet18-fp", seed, 0.80 + fp, optim=BINARY_OPTIM, final_extra=dict(
            bops=0, flops=512e6, ops=512e6, model_bits=358.4e6, params=11.2e6), **resnet)
        run(root, "resnet18-bin", seed, 0.70 + b, optim=BINARY_OPTIM, model=dict(binary=True), final_extra=dict(
            bops=512e6, flops=2e6, ops=10e6, model_bits=12e6, params=11.2e6), **resnet)
        run(root, "resnet18-bin-kd", seed, 0.75 + b, optim=optim, model=dict(binary=True), teacher=teacher, **resnet)
    corrupted = [("vit-fp0-c", 0.50, {}, "vit"), ("vit-bin0-c", 0.30, dict(binary=True), "vit"),
                 ("resnet18-fp-c", 0.60, {}, "resnet18"), ("resnet18-bin-c", 0.55, dict(binary=True), "resnet18")]
    for name, mean, model, arch in corrupted:  # clean test accuracy 40 for every one: not what is compared
        run(root, name, 0, 0.40, optim=BINARY_OPTIM, model=model, final_extra=dict(corruption_mean=mean), arch=arch,
            regime="corrupted")
    run(root, "vit-bin1-c", 0, 0.45, optim=BINARY_OPTIM, model=ladder_model(1, True), regime="corrupted")


def test_the_ladder_its_twins_and_the_teacher_per_block(tmp_path):
    ladder_runs(tmp_path)
    text = section(tmp_path, analyze_binary.section_binary)
    assert text.index("### standard (cifar10)") < text.index("### corrupted (cifar10)")
    assert "| model | seeds | binary | binary with teacher | full precision |" in text
    # Binary 40 and 42, with a teacher 45 and 47, twin 70 and 74; +fp-merge's twin is +pyramid's (75 and 79).
    assert "| ViT | 2 | 41.0 ± 1.4 | 46.0 ± 1.4 | 72.0 ± 2.8 |" in text
    assert "| +mean pool | 2 | 48.0 ± 1.4 | - | 74.0 ± 2.8 |" in text
    assert "| +fp-merge | 2 | 67.0 ± 1.4 | 69.0 ± 1.4 | 77.0 ± 2.8 |" in text
    assert "| ResNet-18 | 2 | 71.0 ± 1.4 | 76.0 ± 1.4 | 82.0 ± 2.8 |" in text
    assert "The teacher: resnet18 on standard (cifar10), 86.0 ± 1.4." in text  # the default-recipe run
    # Corrupted: corruption_mean, not the clean test accuracy (40 for every run there).
    assert "| ViT | 1 | 30.0 (n=1) | - | 50.0 (n=1) |" in text
    assert "| ResNet-18 | 1 | 55.0 (n=1) | - | 60.0 (n=1) |" in text
    for name in ("binary_ladder", "binary_cost"):
        assert (tmp_path / "out" / "plots" / f"{name}.png").stat().st_size > 1000


def test_drops_are_paired_by_seed_and_each_change_closes_its_share_of_the_gap(tmp_path):
    ladder_runs(tmp_path)
    text = section(tmp_path, analyze_binary.section_binary)
    assert "| drop (points) | seeds | standard (cifar10) | corrupted (cifar10) |" in text
    # Per seed: twin − binary = 30 and 32 (ViT), 10 and 12 (ResNet-18); corrupted 50 − 30 and 60 − 55.
    assert "| ViT | 1-2 | 31.0 ± 1.4 | 20.0 (n=1) |" in text
    assert "| +multi-pool | 2 | 23.0 ± 1.4 | - |" in text
    assert "| +fp-merge | 2 | 10.0 ± 1.4 | - |" in text  # against +pyramid's twin: 75 − 66, 79 − 68
    assert "| ResNet-18 | 1-2 | 11.0 ± 1.4 | 5.0 (n=1) |" in text
    assert "| ViT with teacher | 2 | 26.0 ± 1.4 |" in text and "| ResNet-18 with teacher | 2 | 6.0 ± 1.4 |" in text
    # The plain ViT's drop gap is 20 on both seeds; +mean pool closes 30 − 25 = 5 of it, +fp-merge 15 − 9 = 6.
    closure = text.split("| change | standard (cifar10) | corrupted (cifar10) |\n|---|---|---|\n")[1].split("\n\n")[0]
    assert closure.splitlines() == [
        "| drop gap: plain ViT − ResNet-18 | 20.0 ± 0.0 | 15.0 (n=1) |",
        "| +mean pool | 5.0 ± 0.0 (25% of the gap) | - |",
        "| +multi-pool | 3.0 ± 0.0 (15% of the gap) | - |", "| +residual-affine | 4.0 ± 0.0 (20% of the gap) | - |",
        "| +pyramid | 3.0 ± 0.0 (15% of the gap) | - |", "| +fp-merge | 6.0 ± 0.0 (30% of the gap) | - |",
        "| all, to +fp-merge | 21.0 ± 0.0 (105% of the gap) | - |"]


def test_findings_cost_and_what_is_missing(tmp_path):
    ladder_runs(tmp_path)
    text = section(tmp_path, analyze_binary.section_binary)
    assert ("On standard (cifar10), binarising costs the plain binary ViT 31.0 ± 1.4 points and the ResNet-18 "
            "11.0 ± 1.4: the ViT loses 20.0 points more than the ResNet-18, larger than the two stds added (1.4 and "
            "1.4 points).") in text
    assert ("binarising costs the binary ViT with every change up to +fp-merge 10.0 ± 1.4 points and the ResNet-18 "
            "11.0 ± 1.4: the ViT loses 1.0 points less than the ResNet-18, within the seed spread (std 1.4 and 1.4 "
            "points), so not a finding.") in text
    assert ("The best binary ViT on standard (cifar10) (+fp-merge: 67.0 ± 1.4) against the binary ResNet-18 "
            "(71.0 ± 1.4): \u22124.0 points, larger than the two stds added (1.4 and 1.4 points).") in text
    assert ("What the teacher adds on standard (cifar10), in points (* = larger than the two stds added): ViT +5.0*, "
            "+fp-merge +2.0, ResNet-18 +5.0*.") in text
    assert "the ViT loses 15.0 points more than the ResNet-18, with 1 seed(s) the spread is unknown" in text
    assert "| model | precision | BOPs (M) | FLOPs (M) | OPs (M) | model (Mbit) | params (M) |" in text
    assert "| ViT | binary | 64.00 | 1.00 | 2.00 | 1.00 | 3.20 |" in text
    assert "| ViT | full precision | 0.00 | 64.00 | 64.00 | 102.40 | 3.20 |" in text
    assert "| ResNet-18 | binary | 512.00 | 2.00 | 10.00 | 12.00 | 11.20 |" in text
    missing = text.split("**Missing.**\n\n")[1].splitlines()
    assert "- On standard (cifar10): no run with a teacher of +mean pool, +multi-pool, +residual-affine, +pyramid." \
        in missing
    assert ("- On corrupted (cifar10): no binary run of +mean pool, +multi-pool, +residual-affine, +pyramid, "
            "+fp-merge.") in missing
    assert "- On corrupted (cifar10): no run with a teacher of ViT, ResNet-18." in missing
    assert any(line.startswith("- 1 of 1 runs of vit recipe=binary") and line.endswith(
        "on corrupted (cifar10) have no `corruption_mean` in final.json: left out.") for line in missing)
    assert sum("on corrupted (cifar10) has no `bops`, `flops`, `ops`, `model_bits` in final.json" in line
               for line in missing) == 4
    assert not any("standard" in line and "final.json" in line for line in missing)


def test_off_the_ladder_and_crowded_places_are_left_out_with_a_line(tmp_path):
    run(tmp_path, "vit-mp-only", 0, 0.5, optim=BINARY_OPTIM, model=dict(binary=True, multi_pool=True))
    for depth in (2, 4):
        run(tmp_path, f"vit-bin-d{depth}", 0, 0.5, optim=BINARY_OPTIM, model=dict(binary=True), depth=depth)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    rungs = [analyze_binary.rung(g["sections"]["model"]) for g in groups]
    assert rungs.count(None) == 1 and rungs.count(0) == 2
    assert analyze_binary.section_binary(groups, str(tmp_path / "out")) is None  # nothing left to show
    notes = []
    assert analyze_binary.ladder_blocks(groups, notes) == {}
    assert any("is off the ladder (a change without those before it): left out." in n for n in notes)
    assert any(n.endswith("on standard (cifar10) all fill one place on the ladder: left out.") for n in notes)


def test_binary_runs_are_the_binary_sections_alone_and_the_teacher_stays_a_regimes_run(tmp_path):
    ladder_runs(tmp_path)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    cost = report.split("\n## Cost\n\n")[1].split("\n## ")[0]
    assert "binary" not in cost and "| resnet18 | standard (cifar10) | 2 |" in cost
    assert "## Recipes\n\nNo runs for this section yet" in report
    assert "## Distillation\n\nNo runs for this section yet" in report
    assert "| resnet18 | standard (cifar10) | 2 | 86.0 ± 1.4 |" in report  # the teacher, in Regimes
    assert "## Binary networks\n\nAccuracy is test accuracy, except in the corrupted regime" in report
