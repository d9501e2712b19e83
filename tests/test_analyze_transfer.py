"""analyze_transfer.py and the transfer pieces of analyze_groups.py on run folders with known numbers."""
import analyze
import analyze_attention
import analyze_groups
import analyze_transfer
from helpers import fake_run, section

C04, C59 = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
SOURCE_MODEL = dict(vit=dict(arch="vit", depth=2, attention="full", patch_size=4), resnet18=dict(arch="resnet18",
                                                                                                 stages=4))
FINETUNE = dict(epochs=3, opt="sgd", lr=0.01)  # fine-tuning's own optimiser defaults and epochs


def own(arch, seed, source_data=None, before=0.2, attention_from="full"):
    """fake_run settings of a fine-tune from our own pretraining of the same seed (recorded.init as train.py writes
    it), on classes 5-9."""
    name = f"{arch}-standard-cifar10-c0-4-s{seed}"
    data = source_data or dict(dataset="cifar10", regime="standard", classes=C04)
    init = dict(source=f"/abs/runs/quick/{name}", source_model=SOURCE_MODEL[arch], source_data=data,
                source_commit="abc", attention_from=attention_from if arch == "vit" else None, new_head=True,
                resized=None, removed=[], created=[], left_behind=[],
                before=dict(val_loss=None, val_acc=None, test_acc=before))
    return dict(init=f"runs/quick/{name}", recorded_init=init, classes=C59, **FINETUNE, **sizes(arch))


def sizes(arch):
    """The model sizes fake_run writes for a scratch run of arch (the source's, so a fine-tune matches)."""
    return dict(depth=2) if arch == "vit" else dict(stages=4)


def scratch(arch):
    """fake_run settings of a run from scratch on classes 5-9."""
    return dict(arch=arch, classes=C59, **sizes(arch))


def test_seeds_fine_tuned_from_seeds_of_one_source_form_one_group(tmp_path):
    for seed, acc in enumerate((0.85, 0.89)):  # seed s starts from the source of seed s: -s0, -s1 in init
        fake_run(tmp_path, "vit-from-c0-4", seed, acc, **own("vit", seed))
    # Another source (CIFAR-100) is another setting, even with the same seed.
    fake_run(tmp_path, "vit-from-c100", 0, 0.5, **own("vit", 0, dict(dataset="cifar100", regime="many-classes")))
    groups, n, _ = analyze_groups.load_groups([str(tmp_path)])
    assert n == 3 and sorted((g["model"], len(g["runs"])) for g in groups) == [
        ("vit from vit many-classes cifar100", 1), ("vit from vit standard cifar10 c0-4", 2)]
    mean = next(g for g in groups if len(g["runs"]) == 2)
    assert analyze_groups.fmt(mean, "test_acc") == "87.0 ± 2.8"
    # The grouped init is what the source trained, with no seed in it.
    start = analyze_groups.trained(mean["sections"])["model"]["init"]
    assert start == dict(model=SOURCE_MODEL["vit"], data=dict(dataset="cifar10", regime="standard", classes=C04))


def test_without_the_source_config_the_folder_name_without_its_seed_groups(tmp_path):
    for seed in range(2):
        fake_run(tmp_path, "vit-from", seed, 0.8, init=f"runs/vit-standard-cifar10-c0-4-s{seed}/checkpoint.pt",
                 classes=C59)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    assert [(g["model"], len(g["runs"])) for g in groups] == [("vit from vit-standard-cifar10-c0-4", 2)]
    assert analyze_groups.seed_free("runs/quick/vit-s12/") == "vit" and analyze_groups.seed_free("a/b-s1x") == "b-s1x"


def test_labels_name_every_starting_point():
    label = analyze_groups.model_label
    assert label(dict(arch="resnet18", pretrained="imagenet", weights="IMAGENET1K_V1")) == "resnet18 imagenet"
    assert label(dict(arch="vit-b16", pretrained="imagenet", weights="IMAGENET1K_SWAG_E2E_V1", truncate=4,
                      freeze="backbone", layer_decay=0.75)) == \
        "vit-b16 imagenet IMAGENET1K_SWAG_E2E_V1 k=4 ld=0.75 +probe"
    init = own("vit", 0, attention_from="full")["recorded_init"]
    assert label(dict(arch="vit", attention="local", radius=1, init=init)) == \
        "vit local r=1 from vit standard cifar10 c0-4"


def transfer_runs(root, own_vit, own_resnet):
    """Scratch and own-pretrained ViT and ResNet-18 on classes 5-9 at 10% and 100% (two seeds), scratch and
    fine-tuned ViT at R=100, and the pretraining runs on classes 0-4; own_*: {fraction: (acc seed 0, seed 1)}."""
    accs = {("vit", "scratch"): {0.1: (0.40, 0.42), 1.0: (0.70, 0.72)},
            ("resnet18", "scratch"): {0.1: (0.60, 0.62), 1.0: (0.80, 0.82)},
            ("vit", "own"): own_vit, ("resnet18", "own"): own_resnet}
    for (arch, start), by_fraction in accs.items():
        for f, pair in by_fraction.items():
            regime = dict(regime="sparse", fraction=f) if f < 1 else {}
            for seed, acc in enumerate(pair):
                cfg = scratch(arch) if start == "scratch" else own(arch, seed)
                fake_run(root, f"{arch}-{start}-f{f}", seed, acc, **dict(cfg, arch=arch, **regime))
    for seed, acc in enumerate((0.30, 0.32)):
        fake_run(root, "vit-r100", seed, acc, regime="imbalanced", imbalance_ratio=100, **scratch("vit"))
    fake_run(root, "vit-own-r100", 0, 0.6, regime="imbalanced", imbalance_ratio=100, **own("vit", 0))
    for arch, acc in (("vit", 0.7), ("resnet18", 0.8)):
        fake_run(root, f"{arch}-c0-4", 0, acc, arch=arch, classes=C04, **sizes(arch))


def test_transfer_table_gaps_and_where_the_pretrained_vit_overtakes(tmp_path):
    transfer_runs(tmp_path, own_vit={0.1: (0.85, 0.89), 1.0: (0.90, 0.92)},
                  own_resnet={0.1: (0.86, 0.88), 1.0: (0.92, 0.94)})
    text = section(tmp_path, analyze_transfer.section_transfer)
    assert "### cifar10 classes 5-9" in text and "### cifar10 classes 0-4" in text
    assert "| model | seeds | 10% | 100% | R=100 |" in text
    assert "| resnet18 | 2 | 61.0 ± 1.4 | 81.0 ± 1.4 | - |" in text
    assert "| resnet18 from resnet18 standard cifar10 c0-4 | 2 | 87.0 ± 1.4 | 93.0 ± 1.4 | - |" in text
    assert "| vit | 2 | 41.0 ± 1.4 | 71.0 ± 1.4 | 31.0 ± 1.4 |" in text
    assert "| vit from vit standard cifar10 c0-4 | 1-2 | 87.0 ± 2.8 | 91.0 ± 1.4 | 60.0 (n=1) |" in text
    # 10%: 41 - 61 = -20 > 1.4 + 1.4 from scratch; 87 - 87 pretrained is a tie. 100%: 91 - 93 = -2 < 1.4 + 1.4.
    assert ("ViT gap to ResNet-18 at 10%: \u221220.0 points from scratch; not larger than the seed spread: from own "
            "pretraining (standard cifar10 c0-4).") in text
    assert ("ViT gap to ResNet-18 at 100%: \u221210.0 points from scratch; not larger than the seed spread: from "
            "own pretraining (standard cifar10 c0-4).") in text
    assert ("vit from vit standard cifar10 c0-4 against resnet18 from scratch: level or ahead by mean from 10%, "
            "ahead beyond the seed spread from 10%.") in text
    # Against the same model from scratch on the same data: 87 - 41, 91 - 71, 60 - 31 (one seed: no star).
    assert ("Gain of vit from vit standard cifar10 c0-4 over the same model from scratch, in points (* = larger "
            "than the two stds added): 10% +46.0*, 100% +20.0*, R=100 +29.0.") in text
    # The pretraining target, with nothing fine-tuned on it, keeps the plain comparison.
    assert "On standard (cifar10 classes 0-4), resnet18 reaches 80.0% test accuracy against 70.0% for vit" in text
    assert (tmp_path / "out" / "plots" / "transfer_cifar10_classes_5-9.png").stat().st_size > 1000


def test_a_pretrained_gap_is_stated_only_beyond_the_seed_spread(tmp_path):
    # 10%: ViT 87.0 ± 2.8 against ResNet 82.0 ± 1.4: 5.0 > 4.2, a finding; 100%: 91 - 93 = -2 within 2.8.
    transfer_runs(tmp_path, own_vit={0.1: (0.85, 0.89), 1.0: (0.90, 0.92)},
                  own_resnet={0.1: (0.81, 0.83), 1.0: (0.92, 0.94)})
    text = section(tmp_path, analyze_transfer.section_transfer)
    assert ("ViT gap to ResNet-18 at 10%: \u221220.0 points from scratch, +5.0 points from own pretraining "
            "(standard cifar10 c0-4).") in text
    assert "\u22122.0 points from own" not in text and "+2.0 points from own" not in text


def truncation_runs(root):
    """Own-pretrained ViT (depth 2) and ResNet-18 (4 stages) on classes 5-9 at 10%, probed and fine-tuned at K."""
    sparse = dict(regime="sparse", fraction=0.1)
    for k, tuned, probe in ((1, 0.70, 0.60), (None, 0.80, 0.50)):
        fake_run(root, f"vit-k{k}", 0, tuned, truncate=k, **own("vit", 0), **sparse)
        fake_run(root, f"vit-k{k}-probe", 0, probe, truncate=k, freeze="backbone", **own("vit", 0), **sparse)
    for k, probe in ((1, 0.40), (2, 0.65), (None, 0.55)):
        for seed, acc in enumerate((probe, probe + 0.02)):
            fake_run(root, f"resnet18-k{k}-probe", seed, acc, truncate=k, freeze="backbone",
                     **dict(own("resnet18", seed), arch="resnet18"), **sparse)


def test_truncation_counts_an_untruncated_model_at_its_depth(tmp_path):
    truncation_runs(tmp_path)
    groups, _, _ = analyze_groups.load_groups([str(tmp_path)])
    depth = {(g["model"]): analyze_transfer.depth_of(g) for g in groups}
    assert depth["vit from vit standard cifar10 c0-4"] == 2 and depth["vit from vit standard cifar10 c0-4 k=1"] == 1
    assert depth["resnet18 from resnet18 standard cifar10 c0-4 +probe"] == 4
    text = analyze_transfer.section_truncation(groups, str(tmp_path / "out"))
    assert "| model | seeds | K=1 | K=2 | K=4 |" in text
    assert "| vit from vit standard cifar10 c0-4 fine-tune | 1 | 70.0 (n=1) | 80.0 (n=1) | - |" in text
    assert "| vit from vit standard cifar10 c0-4 probe | 1 | 60.0 (n=1) | 50.0 (n=1) | - |" in text
    assert ("| resnet18 from resnet18 standard cifar10 c0-4 probe | 2 | 41.0 ± 1.4 | 66.0 ± 1.4 | 56.0 ± 1.4 |"
            in text)
    # ResNet: best at K=2, 66 - 56 = 10 points above the whole model's probe, beyond 1.4 + 1.4.
    assert ("the linear probe of resnet18 from resnet18 standard cifar10 c0-4 is best at K=2 of 4 (test accuracy "
            "66.0 ± 1.4), 10.0 points above the whole model's probe (K=4; larger than the seed spread).") in text
    assert ("the linear probe of vit from vit standard cifar10 c0-4 is best at K=1 of 2 (test accuracy "
            "60.0 (n=1)), 10.0 points above the whole model's probe (K=2; with one seed the spread is "
            "unknown).") in text
    assert (tmp_path / "out" / "plots" / "truncation.png").stat().st_size > 1000
    # Truncated and probed runs are not rows of the transfer table; the untruncated fine-tune is.
    transfer = analyze_transfer.section_transfer(groups, str(tmp_path / "out"))
    assert "k=1" not in transfer and "+probe" not in transfer
    assert "| vit from vit standard cifar10 c0-4 | 1 | 80.0 (n=1) |" in transfer


def test_attention_swap_before_and_after_beside_the_unswapped_fine_tune(tmp_path):
    sparse = dict(regime="sparse", fraction=0.1)
    for seed, (before, after) in enumerate(((0.2, 0.80), (0.2, 0.82))):
        fake_run(tmp_path, "vit-from", seed, after, **own("vit", seed, before=before), **sparse)
    for seed, (before, after) in enumerate(((0.10, 0.70), (0.12, 0.72))):
        fake_run(tmp_path, "vit-swap-local1", seed, after, attention="local", radius=1,
                 **own("vit", seed, before=before), **sparse)
    fake_run(tmp_path, "vit-swap-lsa", 0, 0.81, attention="lsa", **own("vit", 0, before=0.3), **sparse)
    text = section(tmp_path, analyze_transfer.section_attention_swap)
    assert "### vit from vit standard cifar10 c0-4 on sparse 10% (cifar10 classes 5-9)" in text
    assert "| full (unswapped) | 2 | 20.0 ± 0.0 | 81.0 ± 1.4 | reference |" in text
    assert "| local r=1 | 2 | 11.0 ± 1.4 | 71.0 ± 1.4 | \u221210.0 (beyond the seed spread) |" in text
    assert "| lsa | 1 | 30.0 (n=1) | 81.0 (n=1) | +0.0 |" in text
    assert ("vit from vit standard cifar10 c0-4 reaches 81.0% test accuracy against 71.0% for vit local r=1 from vit "
            "standard cifar10 c0-4, 10.0 points ahead; the gap exceeds the seed-to-seed spread") in text
    assert (tmp_path / "out" / "plots" / "attention_swap_0.png").stat().st_size > 1000
    # A window swapped into a pretrained ViT is neither a locality nor an attention-variant run.
    assert section(tmp_path, analyze_attention.section_locality) is None
    assert section(tmp_path, analyze_attention.section_attention_variants) is None
    transfer = section(tmp_path, analyze_transfer.section_transfer)
    assert "local" not in transfer and "lsa" not in transfer
    assert "| vit from vit standard cifar10 c0-4 | 2 |" in transfer


def test_data_regime_sections_keep_to_scratch_runs_on_every_class(tmp_path):
    for arch, accs in (("vit", (0.5, 0.3)), ("resnet18", (0.6, 0.4))):
        fake_run(tmp_path, f"{arch}-standard", 0, accs[0], arch=arch, train_size=1000)
        fake_run(tmp_path, f"{arch}-sparse", 0, accs[1], arch=arch, regime="sparse", fraction=0.1, train_size=100)
    transfer_runs(tmp_path, own_vit={0.1: (0.85, 0.89), 1.0: (0.90, 0.92)},
                  own_resnet={0.1: (0.86, 0.88), 1.0: (0.92, 0.94)})
    fake_run(tmp_path, "resnet18-in1k", 0, 0.95, arch="resnet18", stages=4, pretrained="imagenet",
             weights="IMAGENET1K_V1", img_size=224, classes=C59, **FINETUNE)
    report, _, _ = analyze.write_report([str(tmp_path)], str(tmp_path / "out"))
    regimes = report.split("## Regimes")[1].split("## Data efficiency")[0]
    efficiency = report.split("## Data efficiency")[1].split("## Shallow networks")[0]
    for text in (regimes, efficiency):
        assert "classes" not in text and " from " not in text and "imagenet" not in text
    assert "| vit | standard (cifar10) | 1 | 50.0 (n=1) |" in regimes
    assert "| resnet18 | sparse 10% (cifar10) | 1 | 40.0 (n=1) | 100 |" in efficiency
    transfer = report.split("## Transfer")[1].split("## Truncation")[0]
    assert "| resnet18 imagenet | 1 | - | 95.0 (n=1) | - |" in transfer
    assert "## Truncation\n\nNo runs for this section yet" in report
    assert "## Attention swap\n\nNo runs for this section yet" in report
