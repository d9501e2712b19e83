"""analyze_attention.py on run folders and benchmark files with known numbers."""
import json
import os

import analyze
import analyze_attention
from helpers import bench_row, fake_run, section


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
    text = section(tmp_path, analyze_attention.section_attention_variants)
    assert "### sparse" not in text  # no variant ran on sparse data
    # Two seeds each: mean ± sample std, e.g. 0.85 and 0.89 -> 87.0 ± 2.8.
    assert ("| vit lsa +spt (SL-ViT) | standard (cifar10) | 2 | 87.0 ± 2.8 | 1,000 | 0.001 ± 0.000 | 3.00 ± 0.00 | - "
            "| 20 ± 0 |") in text
    assert "| vit | standard (cifar10) | 2 | 81.0 ± 1.4 | 1,000 | 0.001 ± 0.000 | 1.00 ± 0.00 | - | 20 ± 0 |" in text
    assert ("On standard (cifar10), vit reaches 81.0% test accuracy against 77.0% for vit local r=1, 4.0 points ahead; "
            "the gap exceeds the seed-to-seed spread") in text
    assert ("On standard (cifar10), vit lsa +spt (SL-ViT) reaches 87.0% test accuracy against 81.0% for vit, "
            "6.0 points "
            "ahead; the gap exceeds the seed-to-seed spread (std 2.8 and 1.4 points, 2 and 2 seeds)") in text
    assert ("Pareto front of test accuracy against latency (ms, batch 1): resnet18 (71.0%, 0.5), vit (81.0%, 1), "
            "vit lsa +spt (SL-ViT) (87.0%, 3).") in text
    # Equal FLOPs: the most accurate alone is on the front.
    assert ("Pareto front of test accuracy against forward FLOPs per image: vit lsa +spt (SL-ViT) "
            "(87.0%, 1e+06).") in text
    assert ("No peak training memory (MB) for resnet18, vit, vit local r=1, vit lsa +spt (SL-ViT) "
            "(it is measured on CUDA "
            "only; these runs were on CPU).") in text
    for png in ("attention_variants_standard_cifar10", "attention_cost_standard_cifar10"):
        assert os.path.getsize(tmp_path / "out" / "plots" / f"{png}.png") > 1000


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
                   versions=dict(torch="2.14.1"), git_commit="abc123", command="evaluate.py bench-attention",
                   results=rows),
              open(tmp_path / "bench" / "bench-attention.json", "w"))
    benches = analyze_attention.find_benches([str(tmp_path)])
    text = analyze_attention.section_attention_scaling(benches, str(tmp_path / "out"))
    assert ("bench-attention.json` on NVIDIA H100 (torch 2.14.1, commit abc123); settings: dim=256, "
            "grids=[8, 16, 32, 64], heads=8.") in text
    # 160 / 10 ms = 16.0x for 4097 / 1025 = 4.0x the tokens: log 16 / log 4.0 = 2.0.
    assert "| variant | 65 tokens | 257 tokens | 1,025 tokens | 4,097 tokens | growth 1,025→4,097 |" in text
    assert "| full | 1.00 | 2.50 | 10.00 | 160.00 | 16.0x |" in text
    assert "| performer | - | - | 3.00 | out of memory | - |" in text
    assert ("full: 10.00 ms at 1,025 tokens, 160.00 ms at 4,097 (16.0x for 4.0x the tokens): grows as T^2.0, "
            "about quadratic") in text
    assert ("local: 4.00 ms at 1,025 tokens, 16.00 ms at 4,097 (4.0x for 4.0x the tokens): grows as T^1.0, "
            "about linear") in text
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
        fake_run(tmp_path, f"sparse-{name}", 0, 0.5, regime="sparse", fraction=0.1,
                 final_extra=dict(attention_distance=far), **cfg)
    fake_run(tmp_path, "resnet18", 0, 0.8, arch="resnet18", final_extra=dict(attention_distance=None))
    text = section(tmp_path, analyze_attention.section_attention_distance)
    assert "| vit | standard (cifar10) | 2 | 1.50 | 3.50 |" in text  # (1+2+1+2)/4, (3+5+3+3)/4
    assert "| vit local r=1 | standard (cifar10) | 2 | 1.00 | 1.00 |" in text and "resnet18" not in text
    assert ("On standard (cifar10), in the last block the heads of vit attend farthest on average: 3.50 patches, "
            "against 1.00 for vit local r=1.") in text
    assert ("On sparse 10% (cifar10), in the last block the heads of vit local r=1 attend farthest on average: "
            "4.00 patches, "
            "against 2.00 for vit.") in text
    assert os.path.getsize(tmp_path / "out" / "plots" / "attention_distance.png") > 1000


def test_locality_plots_windows_against_data_fraction(tmp_path):
    for regime in (dict(), dict(regime="sparse", fraction=0.1)):
        prefix = regime.get("regime", "standard")
        fake_run(tmp_path, f"{prefix}-vit", 0, 0.7, **regime)
        fake_run(tmp_path, f"{prefix}-resnet18", 0, 0.75, arch="resnet18", **regime)
        fake_run(tmp_path, f"{prefix}-local", 0, 0.72, attention="local", radius=1, **regime)
        fake_run(tmp_path, f"{prefix}-dilated", 0, 0.6, attention="dilated", radius=1, dilation=2, **regime)
        fake_run(tmp_path, f"{prefix}-lsa", 0, 0.9, attention="lsa", **regime)  # not a window: not in locality
    text = section(tmp_path, analyze_attention.section_locality)
    assert ("On sparse 10% (cifar10), by mean test accuracy: vit local r=1 72.0 (n=1), vit 70.0 (n=1), "
            "vit dilated r=1 d=2 60.0 (n=1).") in text and "lsa" not in text
    assert "![locality against data fraction](plots/locality_fractions.png)" in text
    assert os.path.getsize(tmp_path / "out" / "plots" / "locality_fractions.png") > 1000
