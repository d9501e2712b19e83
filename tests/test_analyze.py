"""analyze.py and analyze_groups.py on run folders with known numbers: grouping, statistics, findings, sections."""
import json
import os

import pytest

import analyze
import analyze_groups
from helpers import fake_run, row_of


def test_seeds_are_aggregated_and_findings_state_the_measured_gap(tmp_path):
    for seed, acc in enumerate([0.80, 0.82, 0.84]):
        fake_run(tmp_path, "vit-standard", seed, acc)
    for seed in range(3):
        fake_run(tmp_path, "resnet18-standard", seed, 0.90, arch="resnet18")
    fake_run(tmp_path, "vit-standard", 3, 0.10, finished=False)  # killed run: must not enter the mean
    # A failed run (a nan loss) is listed apart and never averaged in, whatever its final.json holds besides.
    fake_run(tmp_path, "vit-standard", 4, 0.10, final_extra=dict(status="failed", reason="loss is nan or inf at "
                                                                  "epoch 2 step 4"))
    report, n, skipped = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert (n, skipped) == (6, 1)
    assert "6 finished runs in 2 groups" in report and "1 unfinished runs skipped; 1 failed runs" in report
    failed = report.split("## Failed runs\n\n")[1].strip()
    assert failed == f"- `{tmp_path}/vit-standard-s4`: loss is nan or inf at epoch 2 step 4"
    # test acc, top-5, macro-F1, best val, params, train s: mean ± sample std over 3 seeds, in percent.
    assert row_of(report, "vit", "standard (cifar10)") == \
        "| vit | standard (cifar10) | 3 | 82.0 ± 2.0 | 92.0 ± 2.0 | 81.0 ± 2.0 | 82.0 ± 2.0 | 1,000 | 20 ± 0 |"
    assert row_of(report, "resnet18", "standard (cifar10)").startswith(
        "| resnet18 | standard (cifar10) | 3 | 90.0 ± 0.0 |")
    groups = {g["model"]: g for g in analyze_groups.load_groups([str(tmp_path)])[0]}
    gap = analyze_groups.gap(groups["vit"], groups["resnet18"])
    assert (gap["better"]["model"], gap["worse"]["model"], gap["verdict"]) == ("resnet18", "vit", "separated")
    assert gap["means"] == pytest.approx((90.0, 82.0)) and gap["points"] == pytest.approx(8.0)
    assert gap["stds"] == pytest.approx((0.0, 2.0)) and gap["seeds"] == (3, 3)  # 8 > 0 + 2: separated
    assert ("resnet18 reaches 90.0% test accuracy against 82.0% for vit, 8.0 points ahead; the gap exceeds the "
            "seed-to-seed spread (std 0.0 and 2.0 points, 3 and 3 seeds)") in report  # the report says so
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
    groups = {g["model"]: g for g in analyze_groups.load_groups([str(tmp_path)])[0]}
    gap = analyze_groups.gap(groups["vit"], groups["resnet18"])
    # 85 against 86: 1 point, less than the stds 7.07 (0.80, 0.90) + 0 added.
    assert (gap["better"]["model"], gap["points"], gap["verdict"]) == ("resnet18", pytest.approx(1.0), "within")
    assert gap["stds"] == pytest.approx((0.0, 100 * 0.1 / 2 ** 0.5))
    assert ("1.0 points ahead; the gap is within the seed-to-seed spread (std 0.0 and 7.1 points), so they are not "
            "separated") in report
    fake_run(tmp_path / "one", "vit-standard", 0, 0.7)
    fake_run(tmp_path / "one", "resnet18-standard", 0, 0.6, arch="resnet18")
    report, _, _ = analyze.write_report([str(tmp_path / "one")], str(tmp_path / "out1"))
    one = {g["model"]: g for g in analyze_groups.load_groups([str(tmp_path / "one")])[0]}
    assert analyze_groups.gap(one["vit"], one["resnet18"])["verdict"] == "unknown"
    assert "with 1 seed(s) the seed-to-seed spread is unknown, so this is not yet a finding" in report
    # Lower is better (a drop): the smaller value is the better one; equal means are a tie.
    drop = analyze_groups.gap(one["vit"], one["resnet18"], lower_is_better=True)
    assert drop["better"]["model"] == "resnet18" and drop["points"] == pytest.approx(10.0)
    assert analyze_groups.gap(one["vit"], one["vit"])["verdict"] == "tie"


def curve_runs(root, points, seeds=(0, 1)):
    """ViT and ResNet-18 runs at each (training images, vit accs, resnet18 accs), one acc per seed: sparse below
    10,000 images, standard at 10,000."""
    for n, vit, res in points:
        regime = dict(regime="sparse", fraction=n / 10000) if n < 10000 else {}
        for seed, v, r in zip(seeds, vit, res):
            fake_run(root, f"vit-{n}", seed, v, train_size=n, **regime)
            fake_run(root, f"resnet18-{n}", seed, r, arch="resnet18", train_size=n, **regime)


def test_data_efficiency_marks_where_the_curves_cross(tmp_path):
    # Two seeds 2 points apart (std 1.4 each, 2.8 added): differences -10, -5 then +10 points, each beyond it.
    curve_runs(tmp_path, ((100, (0.30, 0.32), (0.40, 0.42)), (1000, (0.50, 0.52), (0.55, 0.57)),
                          (10000, (0.80, 0.82), (0.70, 0.72))))
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert ("On cifar10, at the smallest training set (100 images): On standard (cifar10), resnet18 reaches 41.0% "
            "test accuracy against 31.0% for vit") not in report  # the smallest set is sparse, not standard
    assert ("On cifar10, at the smallest training set (100 images): On sparse 1% (cifar10), resnet18 reaches "
            "41.0%") in report
    assert ("At the largest (10,000): On standard (cifar10), vit reaches 81.0% test accuracy against 71.0% for "
            "resnet18") in report
    # -5 at 1,000 and +10 at 10,000: the crossing is a third of the way in log x.
    assert ("The curves cross near 2,154 training images: on both sides the gap exceeds the seed-to-seed spread "
            "(the two stds added).") in report
    assert os.path.exists(tmp_path / "out" / "plots" / "data_efficiency.png")


def efficiency_groups(root):
    """The training sizes and the {size: group} of vit and of resnet18 among the runs under root."""
    groups = analyze_groups.load_groups([str(root)])[0]
    by = lambda m: {g["runs"][0]["cfg"]["sizes"]["train"]: g for g in groups if g["model"] == m}
    return sorted(by("vit")), by("vit"), by("resnet18")


def test_a_crossing_inside_the_seed_spread_or_of_one_seed_is_not_marked(tmp_path):
    # At 1,000 images vit 50 ± 7.1 against 55 ± 0: 5 points, inside the spread; at 10,000 10 points, beyond it.
    curve_runs(tmp_path / "noisy", ((1000, (0.45, 0.55), (0.55, 0.55)), (10000, (0.80, 0.82), (0.70, 0.72))))
    cross, note = analyze.crossing_note(*efficiency_groups(tmp_path / "noisy"))
    assert cross == [] and note == ("The mean curves change order near 2,154 training images, but the gap does not "
                                    "exceed the seed-to-seed spread on both sides, so no crossing is marked.")
    # The same means with one seed: the spread is unknown, so nothing is marked either.
    curve_runs(tmp_path / "one", ((1000, (0.45,), (0.50,)), (10000, (0.80,), (0.70,))), seeds=(0,))
    cross, note = analyze.crossing_note(*efficiency_groups(tmp_path / "one"))
    assert cross == [] and note == ("The mean curves change order near 2,154 training images, but with 1 seed the "
                                    "spread is unknown, so no crossing is marked.")
    curve_runs(tmp_path / "flat", ((1000, (0.45, 0.47), (0.55, 0.57)), (10000, (0.60, 0.62), (0.70, 0.72))))
    assert analyze.crossing_note(*efficiency_groups(tmp_path / "flat")) == (
        [], "The mean curves do not cross in the measured range.")


def test_crossings_interpolate_in_log_x():
    assert analyze_groups.crossings([10, 1000], [0, 2], [1, 1]) == [pytest.approx(100)]
    assert analyze_groups.crossings([1, 10, 100], [1, 2, 3], [0, 0, 0]) == []
    assert analyze_groups.crossings([1, 10, 100], [1, 0, 1], [0, 0, 0]) == []  # touching is not crossing
    assert analyze_groups.crossings([1, 10, 100], [1, 0, -1], [0, 0, 0]) == [pytest.approx(10)]  # through a touch
    # Only clear points count: the change of sign between 1 and 100 is placed between them, over the unclear 10;
    # with the last point unclear too, there is none.
    assert analyze_groups.crossings([1, 10, 100], [0, 1.5, 2], [1, 1, 1], [True, False, True]) == [pytest.approx(10)]
    assert analyze_groups.crossings([1, 10, 100], [0, 1.5, 2], [1, 1, 1], [True, False, False]) == []
    assert analyze_groups.crossings([10, 1000], [0, 2], [1, 1], [True, True]) == [pytest.approx(100)]


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
    assert "| vit | standard (cifar10) [epochs=3] | 2 |" in report
    assert "| vit | standard (cifar10) [epochs=200] | 1 |" in report
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
    assert ("On standard (cifar10), by mean test accuracy: vit local r=2 65.0 (n=1), vit 62.0 (n=1), "
            "vit local r=1 60.0 (n=1). "
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


@pytest.mark.parametrize("cfg,label", [
    (dict(attention="full"), "vit"),
    (dict(attention="full", spt=True), "vit +spt"),
    (dict(attention="local", radius=2, window_shape="square"), "vit local r=2"),
    (dict(attention="local", radius=2, window_shape="circle"), "vit local r=2 circle"),
    (dict(attention="dilated", radius=1, dilation=2), "vit dilated r=1 d=2"),
    (dict(attention="hybrid", radius=1, dilations=[1, 2, 4]), "vit hybrid r=1 d=1,2,4"),
    (dict(attention="linformer", linformer_k=64, linformer_share="heads"), "vit linformer k=64"),
    (dict(attention="linformer", linformer_k=16, linformer_share="kv"), "vit linformer k=16 share=kv"),
    (dict(attention="performer", performer_features=111), "vit performer m=111"),
    (dict(attention="nystrom", landmarks=16), "vit nystrom m=16"),
    (dict(attention="lsa"), "vit lsa"),
    (dict(attention="lsa", spt=True), "vit lsa +spt (SL-ViT)"),
    (dict(attention="local", radius=1, time_budget=20.0), "vit local r=1 20s"),
    (dict(arch="resnet18", attention="full", spt=False, radius=None), "resnet18"),
])
def test_model_label_names_every_attention_variant(cfg, label):
    assert analyze_groups.model_label({"arch": "vit", **cfg}) == label


def test_backend_and_keys_missing_in_older_runs_do_not_split_groups(tmp_path):
    fake_run(tmp_path, "local-sdpa", 0, 0.6, attention="local", radius=1, attention_backend="auto",
             attention_backend_used="sdpa")
    fake_run(tmp_path, "local-flex", 1, 0.7, attention="local", radius=1, attention_backend="flex",
             attention_backend_used="flex")
    fake_run(tmp_path, "vit-old", 0, 0.8, flat=True, radius=None)  # flat, before spt, dilation and the backends
    fake_run(tmp_path, "vit-new", 1, 0.9, spt=False, dilation=None, linformer_k=None, attention_backend_used="sdpa")
    fake_run(tmp_path, "resnet18", 0, 0.7, arch="resnet18", spt=False, attention_backend_used=None)
    groups, n, _ = analyze_groups.load_groups([str(tmp_path)])
    # Sorted by model; the cell label names no differing key, so the backend is no setting either.
    rows = analyze_groups.table(groups, analyze_groups.ACC_COLUMNS[:1]).splitlines()[2:]
    assert (n, len(groups)) == (5, 3) and rows == [
        "| resnet18 | standard (cifar10) | 1 | 70.0 (n=1) |", "| vit | standard (cifar10) | 2 | 85.0 ± 7.1 |",
        "| vit local r=1 | standard (cifar10) | 2 | 65.0 ± 7.1 |"]


def test_training_speed_section_tables_each_bench_train_row_and_the_ratio_to_timm(tmp_path):
    row = lambda model, compiled, ips, mfu: dict(
        model=model, compile=compiled, images_per_s=ips, step_ms=128000 / ips, tflops=ips * 1e9 / 1e12, mfu=mfu,
        split_share=dict(data=0.1, forward=0.3, backward=0.5, optimizer=0.1))
    bench = dict(benchmark="train", device="NVIDIA H100", versions=dict(torch="2.11"), git_commit="abc",
                 settings=dict(batch_size=128, img_size=32), matmul_tflops=400.0,
                 results=[row("vit", False, 8000, 0.05), row("timm-vit", False, 10000, None),
                          row("vit", True, 12000, 0.3)])
    os.makedirs(tmp_path / "bench")
    (tmp_path / "bench" / "bench-train.json").write_text(json.dumps(bench))
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path))
    speed = report.split("## Training speed")[1].split("##")[0]
    assert "| vit | off | 8,000 | 16.0 | 10 | 30 | 50 | 10 | 8.000 | 5.0 |" in speed
    assert "| timm-vit | off | 10,000 | 12.8 | 10 | 30 | 50 | 10 | 10.000 | - |" in speed
    assert "| vit | on | 12,000 |" in speed and "30.0 |" in speed
    assert "(compile off): 0.80x timm's images/s" in speed and speed.count("timm's images/s") == 1  # no compiled timm
    assert (tmp_path / "plots" / "train_speed.png").stat().st_size > 0


def test_cli_help_and_bad_folder(capsys):
    # In this process: a subprocess would spend seconds importing torch for two lines of output.
    for argv, code in ((["--help"], 0), (["/nonexistent"], 2)):
        with pytest.raises(SystemExit) as e:
            analyze.main(argv)
        assert e.value.code == code
    out, err = capsys.readouterr()
    assert "Runs whose configs differ only by seed form one group" in out
    assert err.strip() == "analyze.py: error: /nonexistent is not a folder"


def test_flat_configs_of_older_runs_join_the_groups_of_their_setting(tmp_path):
    # A flat config.json as train.py wrote it before sections: every flag at the top level, those that did not
    # apply included (a ResNet's pool and drop-path, a clean run's corruption list, adamw's momentum).
    old = dict(pool="cls", dropout=0.0, drop_path=0.1, spt=False, stages=None, radius=None, momentum=0.9,
               corruptions=["contrast"], train_severity=3, train_corruption_fraction=0.5, synthetic_per_class=500,
               synthetic_size=32, no_amp=False, amp=True, device="cpu (x86_64, 2 threads)", world_size=1)
    fake_run(tmp_path, "resnet18-old", 0, 0.70, arch="resnet18", flat=True, opt="sgd", **old)
    fake_run(tmp_path, "resnet18-new", 1, 0.72, arch="resnet18", opt="sgd", momentum=0.9, amp=True)
    fake_run(tmp_path, "vit-old", 0, 0.60, flat=True, **dict(old, momentum=None))
    fake_run(tmp_path, "vit-new", 1, 0.62, pool="cls", spt=False, dropout=0.0, drop_path=0.1, amp=True)
    # Before the attention kinds (275d491) every ViT stored radius 1, and a local run had no window_shape yet.
    fake_run(tmp_path, "vit-older", 2, 0.64, flat=True, **dict(old, momentum=None, radius=1))
    fake_run(tmp_path, "local-older", 0, 0.50, flat=True, **dict(old, momentum=None, attention="local", radius=2))
    fake_run(tmp_path, "local-new", 1, 0.52, pool="cls", spt=False, dropout=0.0, drop_path=0.1, amp=True,
             attention="local", radius=2, window_shape="square")
    groups, n, _ = analyze_groups.load_groups([str(tmp_path)])
    assert n == 7 and sorted((g["model"], len(g["runs"])) for g in groups) == [
        ("resnet18", 2), ("vit", 3), ("vit local r=2", 2)]
    old_resnet = analyze_groups.sections_of(json.load(open(tmp_path / "resnet18-old-s0" / "config.json")))
    assert old_resnet["model"] == dict(arch="resnet18") and "momentum" in old_resnet["optim"]
    assert "corruptions" not in old_resnet["data"] and old_resnet["run"]["seed"] == 0
    assert old_resnet["recorded"]["world_size"] == 1


def test_a_new_setting_splits_groups_with_no_edit_of_the_analysis(tmp_path):
    # A key analyze_groups has never heard of, in any grouped section, separates runs and names itself in the label.
    for seed in range(2):
        fake_run(tmp_path, "vit", seed, 0.6)
    for seed, section in enumerate(("model", "model", "optim")):
        fake_run(tmp_path, f"vit-{section}", seed + 2, 0.8)
        path = tmp_path / f"vit-{section}-s{seed + 2}" / "config.json"
        config = json.load(open(path))
        config[section]["frobnicate"] = 3
        json.dump(config, open(path, "w"))
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    # The same key in another section is another setting: three groups. A model key names itself in the model's
    # label; an optim key (a training setting every family shares, unless analyze_groups says otherwise) in the
    # data cell's, so that run is compared with nothing trained without it.
    assert sorted((g["model"], g["cell"], len(g["runs"])) for g in groups) == [
        ("vit", "standard (cifar10)", 2), ("vit", "standard (cifar10) [frobnicate=3]", 1),
        ("vit [frobnicate=3]", "standard (cifar10)", 2)]
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "| vit [frobnicate=3] | standard (cifar10) | 2 | 80.0 ± 0.0 |" in report
    assert "| vit | standard (cifar10) | 2 | 60.0 ± 0.0 |" in report


def test_a_setting_only_one_model_has_keeps_them_apart(tmp_path):
    # A ViT trained on a capped pool and a ResNet on the full one share neither a cell nor a finding.
    fake_run(tmp_path, "vit-capped", 0, 0.6, max_per_class=50)
    fake_run(tmp_path, "resnet18", 0, 0.9, arch="resnet18")
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    assert sorted(g["cell"] for g in groups) == ["standard (cifar10)", "standard (cifar10) [max_per_class=50]"]
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "resnet18 reaches 90.0%" not in report


def test_a_subset_of_classes_is_a_data_cell_of_its_own(tmp_path):
    fake_run(tmp_path, "vit-c5-9", 0, 0.7, classes=[5, 6, 7, 8, 9])
    fake_run(tmp_path, "resnet18-c5-9", 0, 0.8, arch="resnet18", classes=[5, 6, 7, 8, 9])
    fake_run(tmp_path, "vit", 0, 0.5)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    assert sorted((g["model"], g["cell"]) for g in groups) == [
        ("resnet18", "standard (cifar10 classes 5-9)"), ("vit", "standard (cifar10 classes 5-9)"),
        ("vit", "standard (cifar10)")]
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert "On standard (cifar10 classes 5-9), resnet18 reaches 80.0% test accuracy against 70.0% for vit" in report
