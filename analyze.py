"""Turn run folders into the comparison plots and a written report.

    python analyze.py runs/full            # writes runs/full/report.md and runs/full/plots/*.png
    python analyze.py runs/quick --out results

Reads only run folders (config.json, metrics.jsonl, final.json) anywhere under the given folders. Unfinished
runs (no final.json) are skipped and counted; failed runs (final.json status "failed": a nan loss) are listed
under Failed runs and left out of every number. Runs whose configs differ only by seed form one group;
every number is that group's mean +- standard deviation over seeds (n = number of seeds). This file holds the
command line, the report and the data-regime sections; analyze_attention.py the attention sections,
analyze_transfer.py the transfer sections (pretraining, truncation, attention swap), analyze_recipes.py the training
recipe sections (distillation, augmentation and regularisation presets), analyze_binary.py the binary networks
section and analyze_groups.py the grouping, statistics and plot pieces they share. Runs with a teacher or a recipe
appear in the recipe sections alone; runs of the binary experiment (a binary model, or the binary recipe) in the
binary networks section alone.
"""
import argparse
import json
import math
import os
import sys

import matplotlib.pyplot as plt
import matplotlib.ticker

from analyze_attention import (section_attention_distance, section_attention_scaling, section_attention_variants,
                               section_locality, find_benches)
from analyze_binary import binary_member, section_binary
from analyze_recipes import section_distillation, section_recipes
from analyze_transfer import section_attention_swap, section_transfer, section_truncation
from analyze_groups import (ACC_COLUMNS, BASE_ARCHS, COLORS, accuracy_line, base, compare, crossings, curves,
                            default_recipe, family_color, findings, fmt, from_scratch_all_classes, gap, load_groups,
                            metric, pairs, pareto_front, plot_bars, save, setting, stats, table)
from evaluate import Parser, fail, write_atomic


def section_regimes(groups, out):
    """Test accuracy of ViT and ResNet-18 per regime."""
    # The corrupted cell's test accuracy is on clean images; its corrupted accuracy is in "Corruptions".
    gs = [g for g in base(groups) if g["cfg"]["regime"] in ("standard", "many-classes", "imbalanced")]
    if not gs:
        return None
    bars = plot_bars(gs, out, "regimes", "Test accuracy per regime (mean ± std over seeds)")
    text = [table(gs, ACC_COLUMNS), f"![test accuracy per regime]({bars})"]
    text += curves(gs, out, "regimes")
    text.append(findings(compare(v, r) for v, r in pairs(gs)))
    return "\n\n".join(text)


def section_data_efficiency(groups, out):
    """Test accuracy against training-set size for both families, with crossing points."""
    gs = [g for g in base(groups) if g["cfg"]["regime"] in ("sparse", "standard")]
    lines = {}  # (training setting, model) -> [(training images, group)]
    for g in gs:
        lines.setdefault((setting(g["sections"]), g["model"]), []).append((g["runs"][0]["cfg"]["sizes"]["train"], g))
    settings = sorted({k for k, _ in lines})
    if not any(len(v) > 1 for v in lines.values()):
        return None
    text, sentences = [], []
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, key in enumerate(settings):
        name = json.loads(key)["dataset"] + (f" #{i + 1}" if len(settings) > 1 else "")
        by_arch = {}
        for m in BASE_ARCHS:
            pts = sorted(lines.get((key, m), []), key=lambda p: p[0])
            if not pts:
                continue
            accuracy_line(ax, pts, "o-" if i == 0 else "s--", COLORS[m], f"{m} ({name})")
            by_arch[m] = {n: g for n, g in pts}
        common = sorted(set(by_arch.get("vit", {})) & set(by_arch.get("resnet18", {})))
        if not common:
            continue
        cross, note = crossing_note(common, by_arch["vit"], by_arch["resnet18"])
        for x in cross:
            ax.axvline(x, color="grey", linestyle=":")
        at = lambda n: compare(by_arch["vit"][n], by_arch["resnet18"][n])
        sentences.append(f"On {name}, at the smallest training set ({common[0]:,} images): {at(common[0])} "
                         f"At the largest ({common[-1]:,}): {at(common[-1])} {note}")
    ax.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy (%)",
           title="Data efficiency (shaded: ± std over seeds; dotted: crossings beyond it)")
    sizes = sorted({n for pts in lines.values() for n, _ in pts})
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes], fontsize=8)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=8)
    text.append(table(sorted(gs, key=lambda g: (g["model"], g["runs"][0]["cfg"]["sizes"]["train"])), ACC_COLUMNS[:1] + [
        ("train images", lambda g: f"{g['runs'][0]['cfg']['sizes']['train']:,}")]))
    text.append(f"![data efficiency]({save(fig, out, 'data_efficiency')})")
    text += curves(gs, out, "data_efficiency")
    text.append(findings(sentences))
    return "\n\n".join(text)


def crossing_note(sizes, vit, resnet):
    """(crossings, sentence) of the ViT and ResNet-18 curves over training-set sizes ({size: group} each): a
    crossing counts only where the gap on both sides exceeds the seed spread as the findings judge it (the two
    stds added), so no finding on either side contradicts it; with one seed the spread is unknown: none counts."""
    acc = lambda groups: [metric(groups[n], "test_acc")[0] for n in sizes]
    verdicts = [gap(vit[n], resnet[n])["verdict"] for n in sizes]
    cross = crossings(sizes, acc(vit), acc(resnet), [v == "separated" for v in verdicts])
    if cross:
        return cross, (f"The curves cross near {', '.join(f'{x:,.0f}' for x in cross)} training images: on both "
                       "sides the gap exceeds the seed-to-seed spread (the two stds added).")
    means = crossings(sizes, acc(vit), acc(resnet))
    if not means:
        return [], "The mean curves do not cross in the measured range."
    why = ("with 1 seed the spread is unknown" if "unknown" in verdicts else
           "the gap does not exceed the seed-to-seed spread on both sides")
    return [], (f"The mean curves change order near {', '.join(f'{x:,.0f}' for x in means)} training images, but "
                f"{why}, so no crossing is marked.")


def section_shallow(groups, out):
    """Shallow presets beside their full-depth siblings on the same data."""
    shallow = [g for g in groups if "shallow" in g["model"]]
    if not shallow:
        return None
    cells = {g["cell"] for g in shallow}
    gs = [g for g in groups if g["cell"] in cells and (g in shallow or g["model"] in BASE_ARCHS)]
    sentences = []
    for c in sorted(cells):
        get = lambda m: next((g for g in gs if g["cell"] == c and g["model"] == m), None)
        for deep, shal in (("vit", "vit-shallow"), ("resnet18", "resnet18-shallow")):
            if get(deep) and get(shal):
                sentences.append(compare(get(shal), get(deep)))
        if get("vit-shallow") and get("resnet18-shallow"):
            sentences.append(compare(get("vit-shallow"), get("resnet18-shallow")))
    return "\n\n".join([table(gs, ACC_COLUMNS), f"![shallow]({plot_bars(gs, out, 'shallow', 'Shallow vs full depth')})",
                        *curves(gs, out, "shallow"), findings(sentences)])


def section_imbalanced(groups, out):
    """Per-class recall against class size, and macro-F1, under long-tailed training."""
    gs = [g for g in base(groups) if g["cfg"]["regime"] == "imbalanced"]
    if not gs:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, g in enumerate(gs):
        sizes = g["runs"][0]["cfg"]["counts_per_class"]["train"]
        recall = [stats([r["final"]["per_class_recall"][c] for r in g["runs"]])[0] for c in range(len(sizes))]
        ax.scatter(sizes, [100 * r for r in recall], color=COLORS[g["model"]], marker="os^v"[i // 2 % 4],
                   label=f"{g['model']}, {g['cell']}", alpha=0.8)
    ax.set(xscale="log", xlabel="training images of the class (log scale)", ylabel="test recall of the class (%)",
           title="Per-class recall under long-tailed training")
    ax.legend(fontsize=7)
    macro_f1 = plot_bars(gs, out, "imbalanced_macro_f1", "Macro-F1 under long-tailed training", "macro_f1",
                         "macro-F1 (%)")
    return "\n\n".join([table(gs, ACC_COLUMNS[:3]), f"![recall]({save(fig, out, 'imbalanced_recall')})",
                        f"![macro-F1]({macro_f1})",
                        findings(compare(v, r, "macro_f1", "macro-F1") for v, r in pairs(gs))])


def section_corruption(groups, out):
    """Accuracy against severity per corruption (small multiples), its mean, and the drop from clean accuracy."""
    gs = [g for g in base(groups) if g["runs"][0]["final"].get("corruption")]
    if not gs:
        return None
    names = sorted(set.intersection(*(set(r["final"]["corruption"]) for g in gs for r in g["runs"])))
    if not names:
        return "The corrupted runs share no corruption, so there is no common plot; see each run's final.json."
    cols = 4
    panels = len(names) + 2  # one per corruption, their mean, and the relative drop from clean accuracy
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    drop_ax = axes.flat[len(names) + 1]
    mean_at = lambda run, s: sum(run["final"]["corruption"][n][str(s)] for n in names) / len(names)
    for g in gs:
        per = [stats([1 - mean_at(r, s) / max(r["final"]["test_acc"], 1e-12) for r in g["runs"]]) for s in range(1, 6)]
        drop_ax.errorbar(range(1, 6), [100 * m for m, _, _ in per], yerr=[100 * s for _, s, _ in per], marker="o",
                         capsize=2, color=COLORS[g["model"]])
    drop_ax.set(title="relative drop from clean", xlabel="severity", ylabel="drop (% of clean accuracy)",
                xticks=range(1, 6))
    for ax, name in zip(axes.flat, names + ["mean"]):
        for g in gs:
            acc = lambda r, s: r["final"]["corruption"][name][str(s)] if name != "mean" else mean_at(r, s)
            per = [stats([acc(r, s) for r in g["runs"]]) for s in range(1, 6)]
            ax.errorbar(range(1, 6), [100 * m for m, _, _ in per], yerr=[100 * s for _, s, _ in per], marker="o",
                        capsize=2, color=COLORS[g["model"]], label=f"{g['model']} ({g['cfg']['dataset']})")
        ax.set(title=name, xlabel="severity", ylabel="accuracy (%)", xticks=range(1, 6))
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    path = save(fig, out, "corruption")
    columns = [("clean %", lambda g: fmt(g, "test_acc")), ("corrupted mean %", lambda g: fmt(g, "corruption_mean")),
               ("relative drop %", lambda g: fmt(g, "corruption_relative_drop"))]
    return "\n\n".join([table(gs, columns), f"![corruption]({path})", *curves(gs, out, "corruption"), findings(
        compare(v, r, "corruption_mean", "mean corrupted accuracy") + " " +
        compare(v, r, "corruption_relative_drop", "relative drop from clean accuracy", lower_is_better=True)
        for v, r in pairs(gs))])


def section_matched(groups, out):
    """Equal parameter counts (vit-11m vs resnet18) and equal wall-clock training time."""
    text = []
    params = [g for g in groups if g["model"] in ("vit-11m", "resnet18", "vit") and g["cfg"]["regime"] == "standard"]
    cells = sorted({g["cell"] for g in params if g["model"] == "vit-11m"})
    params = [g for g in params if g["cell"] in cells]
    if params:
        text.append("Equal parameter counts:\n\n" + table(params, ACC_COLUMNS))
        text += curves(params, out, "matched_params")
        get = lambda c, m: next((g for g in params if g["cell"] == c and g["model"] == m), None)
        text.append(findings(compare(get(c, "vit-11m"), get(c, "resnet18")) for c in cells if get(c, "resnet18")))
    timed = [g for g in groups if g["cfg"].get("time_budget")]
    if timed:
        text.append("Equal wall-clock training time (training steps only):\n\n" + table(timed, ACC_COLUMNS[:1] + [
            ("budget s", lambda g: f"{g['cfg']['time_budget']:g}"), ("epochs run", lambda g: fmt(g, "epochs", 1, 1))]))
        text += curves(timed, out, "matched_time")
        same = lambda v, r: v["cell"] == r["cell"] and v["cfg"]["time_budget"] == r["cfg"]["time_budget"]
        text.append(findings(compare(v, r) for v in timed if v["cfg"]["arch"] == "vit"
                             for r in timed if r["cfg"]["arch"] == "resnet18" and same(v, r)))
    return "\n\n".join(text) or None


def section_cost(groups, out):
    """Accuracy against parameters, FLOPs and training time, with the Pareto front marked."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    axis_names = (("params", "parameters"), ("flops_per_image", "forward FLOPs per image"),
                  ("train_time_s", "training time, s"))
    legend = [plt.Line2D([], [], color=c, marker="o", ls="", label=f"{a} variants") for a, c in COLORS.items()]
    legend.append(plt.Line2D([], [], color="k", ls="--", label="Pareto front"))
    for ax, (key, label) in zip(axes, axis_names):
        # Fine-tunes and class subsets are other tasks (another head, ImageNet's compute): not on one front.
        standard = [g for g in groups if g["cfg"]["regime"] == "standard" and from_scratch_all_classes(g)]
        pts = [(metric(g, key)[0], 100 * metric(g, "test_acc")[0], g) for g in standard]
        for x, y, g in pts:
            ax.scatter(x, y, color=family_color(g["cfg"]["arch"]), s=18)
        front = pareto_front(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.set(xscale="log", xlabel=f"{label} (log scale)", ylabel="test accuracy (%)",
               title=f"Accuracy vs {label} (standard data)")
        ax.legend(fontsize=8, handles=legend)
    columns = [("test acc %", ACC_COLUMNS[0][1]), ("params", ACC_COLUMNS[4][1]),
               ("GFLOPs", lambda g: f"{metric(g, 'flops_per_image')[0] / 1e9:.3f}"),
               ("train s", ACC_COLUMNS[5][1]), ("inference img/s", lambda g: fmt(g, "throughput_images_per_s", 1, 0)),
               ("latency ms", lambda g: fmt(g, "latency_ms", 1, 2)),
               ("train PFLOPs", lambda g: fmt(g, "train_flops", 1e-15, 2)), ("MFU %", lambda g: fmt(g, "mfu"))]
    return "\n\n".join([table(groups, columns), f"![cost]({save(fig, out, 'cost')})"])


def section_train_speed(benches, out):
    """Images/s, the step's split and MFU per model with and without compile, from bench-train.json files."""
    if not benches:
        return None
    text = []
    for i, (path, bench) in enumerate(benches):
        rows = bench["results"]
        text.append(f"`{path}` on {bench['device']} (torch {bench['versions']['torch']}, commit "
                    f"{bench['git_commit']}, batch {bench['settings']['batch_size']}, {bench['settings']['img_size']} "
                    f"px); the device's own float32 matmul rate: {bench['matmul_tflops']:.2f} TFLOP/s.")
        lines = ["| model | compile | images/s | step ms | data % | forward % | backward % | optimizer % | TFLOP/s | "
                 "MFU % |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            share = " | ".join(f"{100 * r['split_share'][k]:.0f}" for k in ("data", "forward", "backward", "optimizer"))
            lines.append(f"| {r['model']} | {'on' if r['compile'] else 'off'} | {r['images_per_s']:,.0f} | "
                         f"{r['step_ms']:.1f} | {share} | {r['tflops']:.3f} | "
                         f"{'-' if r['mfu'] is None else format(100 * r['mfu'], '.1f')} |")
        text.append("\n".join(lines))
        rate = {(r["model"], r["compile"]): r["images_per_s"] for r in rows}
        for compiled in (False, True):
            if ("vit", compiled) in rate and ("timm-vit", compiled) in rate:
                text.append(f"Our ViT's step against timm's of the same dims (compile {'on' if compiled else 'off'}): "
                            f"{rate[('vit', compiled)] / rate[('timm-vit', compiled)]:.2f}x timm's images/s.")
        text.append(f"![training speed]({plot_train_speed(rows, out, 'train_speed' + (f'_{i + 1}' if i else ''))})")
    return "\n\n".join(text)


def plot_train_speed(rows, out, name):
    """Images/s per model (compile off and on side by side) and each step's split into its parts."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['model']}{' (compiled)' if r['compile'] else ''}" for r in rows]
    ax.barh(labels, [r["images_per_s"] for r in rows], color=["C1" if r["compile"] else "C0" for r in rows])
    ax.set(xlabel="training images/s", title="Training step speed")
    left = [0.0] * len(rows)
    for j, part in enumerate(("data", "forward", "backward", "optimizer")):
        shares = [100 * r["split_share"][part] for r in rows]
        ax2.barh(labels, shares, left=left, color=f"C{j + 2}", label=part)
        left = [a + b for a, b in zip(left, shares)]
    ax2.set(xlabel="share of the step (%)", title="Where a step's time goes")
    ax2.legend(fontsize=8)
    return save(fig, out, name)


def section_convergence(groups, out):
    """Epochs and seconds until validation accuracy first reached each threshold."""
    thresholds = sorted({t for g in groups for t in g["cfg"].get("thresholds", [])})
    reached = lambda g, field, t: stats([r["final"][field].get(str(t)) for r in g["runs"]])

    def cell(field, t):
        def text(g):
            mean, std, n = reached(g, field, t)
            if mean is None:
                return "-"
            return f"{mean:.0f} ± {std:.0f}" + ("" if n == len(g["runs"]) else f" ({n}/{len(g['runs'])})")
        return text
    text = ["Epochs to threshold (mean ± std over the seeds that reached it; '-': none reached it, or the run had no "
            "validation set):\n\n" +
            table(groups, [(f"{100 * t:g}%", cell("epochs_to", t)) for t in thresholds]),
            "Seconds to threshold:\n\n" + table(groups, [(f"{100 * t:g}%", cell("seconds_to", t)) for t in thresholds])]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, field, unit in zip(axes, ("epochs_to", "seconds_to"), ("epochs", "seconds")):
        for g in groups:
            cfg = g["cfg"]
            if cfg["arch"] not in BASE_ARCHS or cfg["regime"] != "standard" or cfg.get("attention", "full") != "full":
                continue
            if not from_scratch_all_classes(g):  # a fine-tune starts high: its epochs to a threshold are another race
                continue
            pts = [(100 * t, reached(g, field, t)) for t in thresholds]
            pts = [(t, m, s) for t, (m, s, _) in pts if m is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=2,
                            color=COLORS[cfg["arch"]], ls="--" if cfg.get("time_budget") else "-",
                            label=f"{g['model']} ({g['cell']})")
        ax.set(xlabel="validation accuracy threshold (%)", ylabel=f"{unit} to reach it",
               title=f"{unit.capitalize()} to accuracy, standard data")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no standard run reached a threshold (or none had a validation set)", ha="center",
                    transform=ax.transAxes)
    text.append(f"![convergence]({save(fig, out, 'convergence')})")
    return "\n\n".join(text)


SECTIONS = [("Regimes", section_regimes), ("Data efficiency", section_data_efficiency),
            ("Shallow networks", section_shallow), ("Attention locality", section_locality),
            ("Attention variants", section_attention_variants), ("Attention cost scaling", section_attention_scaling),
            ("Attention distance", section_attention_distance), ("Imbalanced data", section_imbalanced),
            ("Corruptions", section_corruption), ("Matched budgets", section_matched), ("Transfer", section_transfer),
            ("Truncation", section_truncation), ("Attention swap", section_attention_swap),
            ("Distillation", section_distillation), ("Recipes", section_recipes),
            ("Binary networks", section_binary), ("Cost", section_cost),
            ("Training speed", section_train_speed), ("Convergence", section_convergence)]
RECIPE_SECTIONS = (section_distillation, section_recipes)  # the only sections that see runs with a recipe or teacher
BENCH_SECTIONS = {section_attention_scaling: "bench-attention.json", section_train_speed: "bench-train.json"}


def write_report(roots, out):
    """Load, group, plot and write out/report.md; returns the report text."""
    failed = []
    groups, n_runs, skipped = load_groups(roots, failed)
    parts = ["# ViT vs CNN: report", f"{n_runs} finished runs in {len(groups)} groups (runs that differ only by "
             f"seed); {skipped} unfinished runs skipped; {len(failed)} failed runs left out of every number (listed "
             "under Failed runs). Numbers are mean ± standard deviation over seeds, accuracies in percent. A gap "
             "counts as a finding only when it is larger than the two groups' standard deviations added together."]
    for title, section in SECTIONS:
        if section in BENCH_SECTIONS:  # built from benchmark files, not run folders
            body = section(find_benches(roots, BENCH_SECTIONS[section]), out)
            missing = (f"No runs for this section yet (see run_all.sh, or run `python evaluate.py "
                       f"{BENCH_SECTIONS[section][:-5]}`).")
        else:
            # Every other section compares the lab's default recipe (the recipe sections take their baselines too).
            # The binary experiment's runs are the Binary networks section's alone (their recipe is no AugReg preset,
            # their students no DeiT distillation); it finds their teachers among all runs.
            if section is section_binary:
                gs = groups
            elif section in RECIPE_SECTIONS:
                gs = [g for g in groups if not binary_member(g)]
            else:
                gs = [g for g in groups if default_recipe(g)]
            body = section(gs, out) if gs else None
            missing = "No runs for this section yet (see run_all.sh)."
        parts.append(f"## {title}\n\n" + (body or missing))
    parts.append("## Failed runs\n\n" + ("\n".join(f"- `{path}`: {reason}" for path, reason in failed) if failed else
                                           "None: no run's final.json says failed."))
    text = "\n\n".join(parts) + "\n"
    os.makedirs(out, exist_ok=True)
    write_atomic(os.path.join(out, "report.md"), text)
    return text, n_runs, skipped


def main(argv=None):
    """Command line: analyze.py RUNS_DIR [...] [--out DIR]."""
    p = Parser(prog="analyze.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="folders to search for run folders")
    p.add_argument("--out", default=None, help="where report.md and plots/ go (default: the first runs folder)")
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not os.path.isdir(r)]
    if missing:
        fail(f"{missing[0]} is not a folder", "analyze.py")
    out = a.out or a.runs[0]
    _, n, skipped = write_report(a.runs, out)
    report, plots = os.path.join(out, "report.md"), os.path.join(out, "plots")
    print(f"{n} finished runs, {skipped} unfinished skipped: wrote {report} and {plots}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
