"""analyze.py on run folders with known numbers; run_all.sh's commands, skipping, resuming and a tiny real run."""
import json
import os
import subprocess

import pytest

import analyze
from conftest import ROOT


def fake_run(root, name, seed, test_acc, arch="vit", regime="standard", train_size=1000, finished=True, final_extra=None,
             **cfg_extra):
    """Write a run folder with the given numbers (and plausible others) as train.py would; final_extra updates final.json."""
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
        final.update(final_extra or {})
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


def section(tmp_path, fn):
    """One report section's text on the runs under tmp_path (plots in tmp_path/out), without the rest of the report."""
    groups, _, _ = analyze.load_groups([str(tmp_path)])
    return fn(groups, str(tmp_path / "out"))


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
    assert analyze.model_label({"arch": "vit", **cfg}) == label


def test_attention_variants_against_full_attention_and_their_cost_fronts(tmp_path):
    # (accuracies of two seeds, latency ms): vit local r=1 is slower and less accurate than vit, so off the front.
    models = {"vit": ({}, (0.80, 0.82), 1.0), "resnet18": (dict(arch="resnet18"), (0.70, 0.72), 0.5),
              "local": (dict(attention="local", radius=1), (0.76, 0.78), 2.0),
              "slvit": (dict(attention="lsa", spt=True, radius=None), (0.85, 0.89), 3.0)}
    for name, (cfg, accs, latency) in models.items():
        for seed, acc in enumerate(accs):
            fake_run(tmp_path, name, seed, acc, final_extra=dict(latency_ms=latency), **cfg)
            if name in ("vit", "resnet18"):
                fake_run(tmp_path, f"sparse-{name}", seed, acc, regime="sparse", fraction=0.1, **cfg)
    text = section(tmp_path, analyze.section_attention_variants)
    assert "### sparse" not in text  # no variant ran on sparse data
    # Two seeds each: mean ± sample std, e.g. 0.85 and 0.89 -> 87.0 ± 2.8.
    assert "| vit lsa +spt (SL-ViT) | standard (cifar10) | 2 | 87.0 ± 2.8 | 1,000 | 0.001 ± 0.000 | 3.00 ± 0.00 | - | 20 ± 0 |" in text
    assert "| vit | standard (cifar10) | 2 | 81.0 ± 1.4 | 1,000 | 0.001 ± 0.000 | 1.00 ± 0.00 | - | 20 ± 0 |" in text
    assert ("On standard (cifar10), vit reaches 81.0% test accuracy against 77.0% for vit local r=1, 4.0 points ahead; "
            "the gap exceeds the seed-to-seed spread") in text
    assert ("On standard (cifar10), vit lsa +spt (SL-ViT) reaches 87.0% test accuracy against 81.0% for vit, 6.0 points "
            "ahead; the gap exceeds the seed-to-seed spread (std 2.8 and 1.4 points, 2 and 2 seeds)") in text
    assert ("Pareto front of test accuracy against latency (ms, batch 1): resnet18 (71.0%, 0.5), vit (81.0%, 1), "
            "vit lsa +spt (SL-ViT) (87.0%, 3).") in text
    assert "Pareto front of test accuracy against forward FLOPs per image: vit lsa +spt (SL-ViT) (87.0%, 1e+06)." in text  # equal FLOPs
    assert ("No peak training memory (MB) for resnet18, vit, vit local r=1, vit lsa +spt (SL-ViT) (it is measured on CUDA "
            "only; these runs were on CPU).") in text
    for png in ("attention_variants_standard_cifar10", "attention_cost_standard_cifar10"):
        assert os.path.getsize(tmp_path / "out" / "plots" / f"{png}.png") > 1000


def bench_row(variant, tokens, ms, scope="layer", error=None):
    """A bench-attention.json result row: ms median with min/max 10% around it, memory 2 MB per ms."""
    row = dict(variant=variant, scope=scope, grid=int((tokens - 1) ** 0.5), tokens=tokens, backend="sdpa", error=error)
    if error is None:
        row.update(forward_ms=dict(median=ms / 3, min=ms / 3, max=ms / 3, repeats=3), forward_peak_memory_mb=ms,
                   forward_backward_ms=dict(median=ms, min=0.9 * ms, max=1.1 * ms, repeats=3),
                   forward_backward_peak_memory_mb=2 * ms, flops=1000 * tokens)
    return row


def test_attention_cost_scaling_growth_from_a_benchmark_file(tmp_path):
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    assert ("## Attention cost scaling\n\nNo runs for this section yet (see run_all.sh, or run "
            "`python evaluate.py bench-attention`).") in report
    rows = [bench_row("full", t, ms) for t, ms in ((65, 1.0), (257, 2.5), (1025, 10.0), (4097, 160.0))]
    rows += [bench_row("local", t, ms) for t, ms in ((65, 1.0), (257, 2.0), (1025, 4.0), (4097, 16.0))]
    rows += [bench_row("performer", 1025, 3.0), bench_row("performer", 4097, None, error="out of memory")]
    rows += [bench_row("full", 65, 2.0, "model"), bench_row("full", 257, 8.0, "model")]
    os.makedirs(tmp_path / "bench")
    json.dump(dict(benchmark="attention", device="NVIDIA H100", settings=dict(grids=[8, 16, 32, 64], dim=256, heads=8),
                   versions=dict(torch="2.14.1"), git_commit="abc123", command="evaluate.py bench-attention", results=rows),
              open(tmp_path / "bench" / "bench-attention.json", "w"))
    text = analyze.section_attention_scaling(analyze.find_benches([str(tmp_path)]), str(tmp_path / "out"))
    assert "bench-attention.json` on NVIDIA H100 (torch 2.14.1, commit abc123); settings: dim=256, grids=[8, 16, 32, 64], heads=8." in text
    # 160 / 10 ms = 16.0x for 4097 / 1025 = 4.0x the tokens: log 16 / log 4.0 = 2.0.
    assert "| variant | 65 tokens | 257 tokens | 1,025 tokens | 4,097 tokens | growth 1,025→4,097 |" in text
    assert "| full | 1.00 | 2.50 | 10.00 | 160.00 | 16.0x |" in text
    assert "| performer | - | - | 3.00 | out of memory | - |" in text
    assert "full: 10.00 ms at 1,025 tokens, 160.00 ms at 4,097 (16.0x for 4.0x the tokens): grows as T^2.0, about quadratic" in text
    assert "local: 4.00 ms at 1,025 tokens, 16.00 ms at 4,097 (4.0x for 4.0x the tokens): grows as T^1.0, about linear" in text
    assert "performer: no growth figure, no time at 4,097 tokens (out of memory)." in text
    # Without 1,025 and 4,097 tokens the growth compares the two largest counts: 8 / 2 ms over 257 / 65 tokens.
    assert "| variant | 65 tokens | 257 tokens | growth 65→257 |" in text and "| full | 2.00 | 8.00 | 4.0x |" in text
    for png in ("attention_scaling_layer", "attention_scaling_model"):
        assert os.path.getsize(tmp_path / "out" / "plots" / f"{png}.png") > 1000


def test_attention_distance_per_block_and_the_farthest_model(tmp_path):
    # Per seed, per block, per head: the table shows the mean over seeds and heads.
    maps = {"vit": ([[1, 2], [3, 5]], [[1, 2], [3, 3]]), "local": ([[0.5, 1.5], [1, 1]], [[0.5, 1.5], [1, 1]])}
    for name, cfg in (("vit", {}), ("local", dict(attention="local", radius=1))):
        for seed, m in enumerate(maps[name]):
            fake_run(tmp_path, name, seed, 0.8, final_extra=dict(attention_distance=m), **cfg)
        # On sparse data the local model attends farther.
        far = [[2, 2], [4, 4]] if name == "local" else [[1, 1], [2, 2]]
        fake_run(tmp_path, f"sparse-{name}", 0, 0.5, regime="sparse", fraction=0.1, final_extra=dict(attention_distance=far), **cfg)
    fake_run(tmp_path, "resnet18", 0, 0.8, arch="resnet18", final_extra=dict(attention_distance=None))
    text = section(tmp_path, analyze.section_attention_distance)
    assert "| vit | standard (cifar10) | 2 | 1.50 | 3.50 |" in text  # (1+2+1+2)/4, (3+5+3+3)/4
    assert "| vit local r=1 | standard (cifar10) | 2 | 1.00 | 1.00 |" in text and "resnet18" not in text
    assert ("On standard (cifar10), in the last block the heads of vit attend farthest on average: 3.50 patches, "
            "against 1.00 for vit local r=1.") in text
    assert ("On sparse 10% (cifar10), in the last block the heads of vit local r=1 attend farthest on average: 4.00 patches, "
            "against 2.00 for vit.") in text
    assert os.path.getsize(tmp_path / "out" / "plots" / "attention_distance.png") > 1000


def test_backend_and_keys_missing_in_older_runs_do_not_split_groups(tmp_path):
    fake_run(tmp_path, "local-sdpa", 0, 0.6, attention="local", attention_backend="auto", attention_backend_used="sdpa")
    fake_run(tmp_path, "local-flex", 1, 0.7, attention="local", attention_backend="flex", attention_backend_used="flex")
    fake_run(tmp_path, "vit-old", 0, 0.8)  # written before spt, dilation and the backend keys existed
    fake_run(tmp_path, "vit-new", 1, 0.9, spt=False, dilation=None, linformer_k=None, attention_backend_used="sdpa")
    fake_run(tmp_path, "resnet18", 0, 0.7, arch="resnet18", spt=False, attention_backend_used=None)
    groups, n, _ = analyze.load_groups([str(tmp_path)])
    # Sorted by model; the cell label names no differing key, so the backend is no setting either.
    assert (n, len(groups)) == (5, 3) and analyze.table(groups, analyze.ACC_COLUMNS[:1]).splitlines()[2:] == [
        "| resnet18 | standard (cifar10) | 1 | 70.0 (n=1) |", "| vit | standard (cifar10) | 2 | 85.0 ± 7.1 |",
        "| vit local r=1 | standard (cifar10) | 2 | 65.0 ± 7.1 |"]


def test_locality_plots_windows_against_data_fraction(tmp_path):
    for regime in (dict(), dict(regime="sparse", fraction=0.1)):
        prefix = regime.get("regime", "standard")
        fake_run(tmp_path, f"{prefix}-vit", 0, 0.7, **regime)
        fake_run(tmp_path, f"{prefix}-resnet18", 0, 0.75, arch="resnet18", **regime)
        fake_run(tmp_path, f"{prefix}-local", 0, 0.72, attention="local", radius=1, **regime)
        fake_run(tmp_path, f"{prefix}-dilated", 0, 0.6, attention="dilated", radius=1, dilation=2, **regime)
        fake_run(tmp_path, f"{prefix}-lsa", 0, 0.9, attention="lsa", radius=None, **regime)  # not a window: not in locality
    text = section(tmp_path, analyze.section_locality)
    assert ("On sparse 10% (cifar10), by mean test accuracy: vit local r=1 72.0 (n=1), vit 70.0 (n=1), "
            "vit dilated r=1 d=2 60.0 (n=1).") in text and "lsa" not in text
    assert "![locality against data fraction](plots/locality_fractions.png)" in text
    assert os.path.getsize(tmp_path / "out" / "plots" / "locality_fractions.png") > 1000


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
    lines = proc.stdout.splitlines()
    cmds = [line for line in lines if " train.py " in line]
    # 73 cells x 3 seeds, shared cells once: regimes 10, data efficiency 12, shallow 4, locality 4 cells x 6,
    # attention 6 + 6 + 8 (local1 and dilated1d2 shared with locality), vit-11m 1, matched time 2
    assert len(cmds) == len(set(cmds)) == 219
    r = str(tmp_path)
    assert f"python3 evaluate.py bench-attention --out {r}/bench/bench-attention.json" in lines and len(lines) == 220
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --regime many-classes --attention lsa --spt --seed 2 --out {r}/vit-lsa-spt-many-classes-cifar100-s2" in cmds
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --regime sparse --fraction 0.02 --attention dilated --radius 1 --dilation 3 --seed 0 --out {r}/vit-dilated1d3-sparse-f0.02-cifar10-s0" in cmds
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --regime sparse --fraction 0.01 --seed 2 --out {r}/vit-sparse-f0.01-cifar10-s2" in cmds
    assert f"python3 train.py --arch resnet18 --epochs 200 --data-dir data --regime many-classes --seed 0 --out {r}/resnet18-many-classes-cifar100-s0" in cmds
    assert f"python3 train.py --arch vit-11m --epochs 200 --data-dir data --dataset cifar10 --seed 1 --out {r}/vit-11m-standard-cifar10-s1" in cmds
    assert f"python3 train.py --arch vit --epochs 200 --data-dir data --dataset cifar10 --attention local --radius 3 --seed 0 --out {r}/vit-local3-standard-cifar10-s0" in cmds
    assert sum("--imbalance-ratio 100 " in c for c in cmds) == 6 and sum("--regime corrupted" in c for c in cmds) == 6
    timed = [c for c in cmds if "--time-budget 1200" in c]
    assert len(timed) == 6 and all("--epochs 1000 --warmup-epochs 50" in c for c in timed)
    gpus = [c for c in run_all("--dry-run", "--runs", r, "--gpus", "2", "--seeds", "5").stdout.splitlines() if "train.py" in c]
    assert len(gpus) == 73 and all(c.endswith("-s5") for c in gpus)
    assert all(c.startswith("torchrun --standalone --nproc_per_node=2 train.py") for c in gpus if "--time-budget" not in c)
    assert all(c.startswith("python3 train.py") for c in gpus if "--time-budget" in c)


def test_quick_dry_run_shrinks_the_grid_and_says_which_data(tmp_path):
    proc = run_all("--dry-run", "--profile", "quick", "--runs", str(tmp_path), "--data-dir", str(tmp_path / "none"))
    lines = proc.stdout.splitlines()
    assert lines[0] == f"quick profile: no CIFAR-10 at {tmp_path}/none/cifar-10-batches-py, using the synthetic dataset"
    assert f"regimes: many-classes skipped, no CIFAR-100 at {tmp_path}/none/cifar-100-python" in lines
    cmds = [line for line in lines if "train.py" in line]
    # regimes 8 (no many-classes) + sparse 4x2 + shallow 4 + locality 2x3 + attention 2x6 + vit-11m 1 + time 2 = 41
    assert "attention: CIFAR-100 cells skipped, no CIFAR-100 at " + f"{tmp_path}/none/cifar-100-python" in lines
    assert sum(line.startswith("python3 evaluate.py bench-attention --depth 1 --dim 64 --heads 4 ") for line in lines) == 1
    assert len(cmds) == 41 and all("--dataset synthetic" in c and "--max-per-class 50" in c and c.endswith("-s0") for c in cmds)
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
