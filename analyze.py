"""Turn run folders into the comparison plots and a written report.

    python analyze.py runs/full            # writes runs/full/report.md and runs/full/plots/*.png
    python analyze.py runs/quick --out results

Reads only run folders (config.json, metrics.jsonl, final.json) anywhere under the given folders. Unfinished
runs (no final.json) are skipped and counted. Runs whose configs differ only by seed form one group;
every number is that group's mean +- standard deviation over seeds (n = number of seeds).
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

# Config keys that do not define what was trained: runs that differ only in these are seeds of one group.
NOT_GROUP_KEYS = {"seed", "out", "command", "git_commit", "device", "resumes", "data_dir", "resume", "overwrite",
                  "progress", "stop_after_steps", "no_download", "versions", "amp_active", "normalization",
                  "counts_per_class", "sizes", "class_names", "params", "world_size"}
BASE_ARCHS = ("vit", "resnet18")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, as train.py (not imported: no torch needed here)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)
COLORS = {"vit": "tab:blue", "resnet18": "tab:orange"}


def family_color(arch):
    """Blue for every ViT variant, orange for every ResNet."""
    return COLORS["vit"] if arch.startswith("vit") else COLORS["resnet18"]


# ----------------------------------------------------------------------------- loading and grouping

def load_runs(roots):
    """Every run folder under roots: (finished runs as dicts, number of unfinished ones skipped)."""
    runs, skipped = [], 0
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if "config.json" not in files:
                continue
            if "final.json" not in files:
                skipped += 1
                continue
            with open(os.path.join(folder, "config.json")) as f:
                cfg = json.load(f)
            with open(os.path.join(folder, "final.json")) as f:
                final = json.load(f)
            rows = []
            if os.path.exists(os.path.join(folder, "metrics.jsonl")):
                with open(os.path.join(folder, "metrics.jsonl")) as f:
                    rows = [json.loads(line) for line in f if line.strip()]
            runs.append(dict(path=folder, cfg=cfg, final=final, rows=rows))
    return runs, skipped


def group_runs(runs):
    """Groups of runs that differ only by seed, each a dict with cfg (of its first run) and its runs."""
    groups = {}
    for run in runs:
        key = json.dumps({k: v for k, v in run["cfg"].items() if k not in NOT_GROUP_KEYS}, sort_keys=True)
        groups.setdefault(key, dict(cfg=run["cfg"], runs=[]))["runs"].append(run)
    for g in groups.values():
        g["runs"].sort(key=lambda r: r["cfg"].get("seed", 0))
        g["model"] = model_label(g["cfg"])
        g["cell"] = cell_label(g["cfg"])
    # Labels must tell apart what differs. First the data cell: where runs trained under different settings
    # (epochs, pool size, ...) share a cell label, the cell names the keys that differ, so no comparison pairs
    # runs of different settings. Then the model: what still looks alike differs in a model key, named likewise.
    for same in buckets(groups.values(), lambda g: g["cell"]):
        keys = differing([setting_dict(g["cfg"]) for g in same])
        for g in same:
            g["cell"] += " [" + ", ".join(f"{k}={setting_dict(g['cfg']).get(k)}" for k in keys) + "]" if keys else ""
    for same in buckets(groups.values(), lambda g: (g["cell"], g["model"])):
        keys = differing([{k: v for k, v in g["cfg"].items() if k not in NOT_GROUP_KEYS} for g in same])
        for g in same:
            g["model"] += " [" + ", ".join(f"{k}={g['cfg'].get(k)}" for k in keys) + "]" if keys else ""
    return list(groups.values())


def buckets(items, key):
    """Lists of the items that share key(item)."""
    out = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return list(out.values())


def differing(dicts):
    """The keys whose values differ between the dicts that have them (absent: not applicable), sorted."""
    return sorted({k for d in dicts for k in d if len({json.dumps(e[k], sort_keys=True) for e in dicts if k in e}) > 1})


def model_label(cfg):
    """What was trained: architecture, attention, and budget where they differ from the default."""
    label = cfg["arch"]
    if cfg.get("attention", "full") != "full":
        label += f" {cfg['attention']} r={cfg.get('radius')}"
    if cfg.get("time_budget"):
        label += f" {cfg['time_budget']:g}s"
    return label


def cell_label(cfg):
    """On what data: regime with its parameter, and dataset."""
    regime = cfg["regime"]
    if regime == "sparse":
        regime += f" n={cfg['per_class']}/class" if cfg.get("per_class") else f" {100 * cfg['fraction']:g}%"
    elif regime == "imbalanced":
        regime += f" R={cfg['imbalance_ratio']:g}"
    return f"{regime} ({cfg['dataset']})"


def stats(values):
    """(mean, sample standard deviation, n) of the non-None values; (None, None, 0) if there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std, len(values)


def metric(group, key):
    """stats() of final.json's `key` over the group's seeds."""
    return stats([r["final"].get(key) for r in group["runs"]])


def fmt(group, key, scale=100, digits=1):
    """'mean ± std' of a final.json metric (accuracies shown in percent), or '-'."""
    mean, std, n = metric(group, key)
    if mean is None:
        return "-"
    if n < 2:
        return f"{mean * scale:.{digits}f} (n=1)"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def table(groups, columns):
    """A markdown table: one row per group, columns = [(header, fn(group) -> text)]."""
    lines = ["| model | data | seeds | " + " | ".join(h for h, _ in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for g in groups:
        lines.append(f"| {g['model']} | {g['cell']} | {len(g['runs'])} | " + " | ".join(fn(g) for _, fn in columns) + " |")
    return "\n".join(lines)


ACC_COLUMNS = [("test acc %", lambda g: fmt(g, "test_acc")), ("top-5 %", lambda g: fmt(g, "test_top5")),
               ("macro-F1 %", lambda g: fmt(g, "macro_f1")), ("best val %", lambda g: fmt(g, "best_val_acc")),
               ("params", lambda g: f"{g['runs'][0]['final']['params']:,}"),
               ("train s", lambda g: fmt(g, "train_time_s", scale=1, digits=0))]


def compare(a, b, key="test_acc", what="test accuracy", lower_is_better=False):
    """One sentence comparing two groups on a metric: who is better, by how much, and against the seed spread."""
    (ma, sa, na), (mb, sb, nb) = metric(a, key), metric(b, key)
    if ma is None or mb is None:
        return f"{a['model']} or {b['model']} has no {what} on {a['cell']}."
    a_better = ma <= mb if lower_is_better else ma >= mb
    win, lose, mw, ml, sw, sl, nw, nl = (a, b, ma, mb, sa, sb, na, nb) if a_better else (b, a, mb, ma, sb, sa, nb, na)
    gap = 100 * abs(mw - ml)
    if round(gap, 1) == 0:
        return f"On {a['cell']}, {a['model']} and {b['model']} tie at {100 * ma:.1f}% {what}."
    text = f"On {a['cell']}, {win['model']} reaches {100 * mw:.1f}% {what} against {100 * ml:.1f}% for {lose['model']}"
    text += f", {gap:.1f} points {'lower' if lower_is_better else 'ahead'}"
    if nw < 2 or nl < 2:
        return text + f"; with {min(nw, nl)} seed(s) the seed-to-seed spread is unknown, so this is not yet a finding."
    spread = 100 * (sw + sl)
    if gap > spread:
        return text + f"; the gap exceeds the seed-to-seed spread (std {100 * sw:.1f} and {100 * sl:.1f} points, {nw} and {nl} seeds)."
    return text + f"; the gap is within the seed-to-seed spread (std {100 * sw:.1f} and {100 * sl:.1f} points), so they are not separated."


def findings(sentences):
    """The findings paragraph; says so when there was nothing to compare."""
    sentences = [s for s in sentences if s]
    return "**Findings.** " + (" ".join(sentences) if sentences else "Only one architecture ran on these cells: nothing to compare yet.")


def pairs(groups):
    """(vit group, resnet18 group) for every data cell where both base models ran."""
    by_cell = {}
    for g in groups:
        if g["model"] in BASE_ARCHS:
            by_cell.setdefault(g["cell"], {})[g["model"]] = g
    return [(c["vit"], c["resnet18"]) for c in by_cell.values() if len(c) == 2]


# ----------------------------------------------------------------------------- plots

def save(fig, out, name):
    """Save a figure as out/plots/name.png and return its path relative to out."""
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "plots", name + ".png"), dpi=120)
    plt.close(fig)
    return f"plots/{name}.png"


def slug(text):
    """A file-name-safe version of a cell label."""
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text.replace(" (", "_").replace(")", "")).strip("_")


def curves(groups, out, prefix):
    """Markdown images of training/validation curves, one plot per data cell holding these groups."""
    cells = list(dict.fromkeys(g["cell"] for g in groups))
    return [f"![curves {c}]({plot_curves([g for g in groups if g['cell'] == c], out, f'curves_{prefix}_{slug(c)}', 'Accuracy per epoch: ' + c)})"
            for c in cells]


def plot_curves(groups, out, name, title):
    """Training and validation accuracy against epoch, mean over seeds, one colour per model."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, g in enumerate(groups):
        epochs = min(len(r["rows"]) for r in g["runs"])
        if not epochs:
            continue
        x = list(range(1, epochs + 1))
        for key, style in (("train_acc", "--"), ("val_acc", "-")):
            ys = [stats([r["rows"][e][key] for r in g["runs"]])[0] for e in range(epochs)]
            if any(y is None for y in ys):
                continue
            ax.plot(x, [100 * y for y in ys], style, color=COLORS.get(g["model"], f"C{i + 2}"),
                    label=f"{g['model']} {key.split('_')[0]}")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.legend(fontsize=8)
    return save(fig, out, name)


def plot_bars(groups, out, name, title, key="test_acc", ylabel="test accuracy (%)"):
    """Grouped bars: one group of bars per data cell, one bar per model, error bars = std over seeds."""
    cells = list(dict.fromkeys(g["cell"] for g in groups))
    models = list(dict.fromkeys(g["model"] for g in groups))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(cells)), 4))
    for j, m in enumerate(models):
        xs, ys, es = [], [], []
        for i, c in enumerate(cells):
            g = next((g for g in groups if g["cell"] == c and g["model"] == m), None)
            if g is not None and metric(g, key)[0] is not None:
                mean, std, _ = metric(g, key)
                xs.append(i + (j - (len(models) - 1) / 2) * width)
                ys.append(100 * mean)
                es.append(100 * std)
        ax.bar(xs, ys, width, yerr=es, capsize=3, label=m, color=COLORS.get(m, f"C{j + 2}"))
    ax.set_xticks(range(len(cells)), cells, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return save(fig, out, name)


def crossings(xs, ya, yb):
    """x positions (log-linear interpolation) where curve a - b changes sign between neighbouring points."""
    found = []
    for i in range(len(xs) - 1):
        d0, d1 = ya[i] - yb[i], ya[i + 1] - yb[i + 1]
        if d0 * d1 < 0:  # a touch without a change of sign is no crossing
            t = d0 / (d0 - d1)
            found.append(math.exp(math.log(xs[i]) + t * (math.log(xs[i + 1]) - math.log(xs[i]))))
    return found


# ----------------------------------------------------------------------------- experiments

# Config keys of the model and its optimiser: what stays the same across one data-efficiency curve is the rest.
MODEL_KEYS = {"arch", "depth", "dim", "heads", "patch_size", "mlp_ratio", "pool", "attention", "radius", "dropout",
              "drop_path", "stages", "opt", "lr", "weight_decay", "momentum", "warmup_epochs", "no_amp", "amp"}


def setting_dict(cfg):
    """A run's training setting apart from the model, its budget and the sparse subset (one data-efficiency curve)."""
    skip = NOT_GROUP_KEYS | MODEL_KEYS | {"regime", "fraction", "per_class", "time_budget"}
    if cfg.get("time_budget"):
        skip = skip | {"epochs"}  # only a cap under a time budget
    return {k: v for k, v in cfg.items() if k not in skip}


def setting(cfg):
    """setting_dict as a hashable string."""
    return json.dumps(setting_dict(cfg), sort_keys=True)


def base(groups):
    """Groups of the two base models with full attention and no time budget."""
    return [g for g in groups if g["model"] in BASE_ARCHS]


def section_regimes(groups, out):
    """Test accuracy of ViT and ResNet-18 per regime."""
    # The corrupted cell's test accuracy is on clean images; its corrupted accuracy is in "Corruptions".
    gs = [g for g in base(groups) if g["cfg"]["regime"] in ("standard", "many-classes", "imbalanced")]
    if not gs:
        return None
    text = [table(gs, ACC_COLUMNS), f"![test accuracy per regime]({plot_bars(gs, out, 'regimes', 'Test accuracy per regime (mean ± std over seeds)')})"]
    text += curves(gs, out, "regimes")
    text.append(findings(compare(v, r) for v, r in pairs(gs)))
    return "\n\n".join(text)


def section_data_efficiency(groups, out):
    """Test accuracy against training-set size for both families, with crossing points."""
    gs = [g for g in base(groups) if g["cfg"]["regime"] in ("sparse", "standard")]
    lines = {}  # (training setting, model) -> [(training images, group)]
    for g in gs:
        lines.setdefault((setting(g["cfg"]), g["model"]), []).append((g["runs"][0]["cfg"]["sizes"]["train"], g))
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
            xs = [n for n, _ in pts]
            mean = [100 * metric(g, "test_acc")[0] for _, g in pts]
            std = [100 * metric(g, "test_acc")[1] for _, g in pts]
            ax.plot(xs, mean, "o-" if i == 0 else "s--", color=COLORS[m], label=f"{m} ({name})")
            ax.fill_between(xs, [a - s for a, s in zip(mean, std)], [a + s for a, s in zip(mean, std)], color=COLORS[m], alpha=0.2)
            by_arch[m] = {n: g for n, g in pts}
        common = sorted(set(by_arch.get("vit", {})) & set(by_arch.get("resnet18", {})))
        if not common:
            continue
        acc = lambda m: [metric(by_arch[m][n], "test_acc")[0] for n in common]
        cross = crossings(common, acc("vit"), acc("resnet18"))
        for x in cross:
            ax.axvline(x, color="grey", linestyle=":")
        sentences.append(f"On {name}, at the smallest training set ({common[0]:,} images): "
                         f"{compare(by_arch['vit'][common[0]], by_arch['resnet18'][common[0]])} At the largest ({common[-1]:,}): "
                         f"{compare(by_arch['vit'][common[-1]], by_arch['resnet18'][common[-1]])} " +
                         (f"The mean curves cross near {', '.join(f'{x:,.0f}' for x in cross)} training images (a crossing "
                          "of means: it is only as firm as the gaps on either side)." if cross else
                          "The mean curves do not cross in the measured range."))
    ax.set(xscale="log", xlabel="training images (log scale)", ylabel="test accuracy (%)",
           title="Data efficiency (shaded: ± std over seeds; dotted: crossings)")
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


def section_locality(groups, out):
    """ViT accuracy against attention radius, one line per data cell; full attention as the widest radius."""
    gs = [g for g in groups if g["cfg"]["arch"] == "vit" and not g["cfg"].get("time_budget")]
    local_cells = {g["cell"] for g in gs if g["cfg"].get("attention") == "local"}
    if not local_cells:
        return None
    gs = [g for g in gs if g["cell"] in local_cells]
    fig, ax = plt.subplots(figsize=(6, 4))
    sentences = []
    for i, c in enumerate(sorted(local_cells)):
        cg = [g for g in gs if g["cell"] == c]
        grid = cg[0]["cfg"]["image_size"] // cg[0]["cfg"]["patch_size"]
        radius = lambda g: g["cfg"]["radius"] if g["cfg"].get("attention") == "local" else grid - 1
        cg.sort(key=radius)
        mean = [100 * metric(g, "test_acc")[0] for g in cg]
        std = [100 * metric(g, "test_acc")[1] for g in cg]
        ax.errorbar([radius(g) for g in cg], mean, yerr=std, marker="o", capsize=3, label=c, color=f"C{i}")
        ranked = sorted(cg, key=lambda g: -metric(g, "test_acc")[0])
        sentences.append(f"On {c}, by mean test accuracy: " + ", ".join(f"{g['model']} {fmt(g, 'test_acc')}" for g in ranked) +
                         "." + (" Top two: " + compare(ranked[0], ranked[1]) if len(ranked) > 1 else ""))
    ax.set(xlabel=f"attention radius (patches; {grid - 1} = whole grid = full attention)", ylabel="test accuracy (%)",
           title="ViT accuracy against attention locality")
    ax.legend(fontsize=8)
    return "\n\n".join([table(sorted(gs, key=lambda g: (g["cell"], g["model"])), ACC_COLUMNS),
                        f"![locality]({save(fig, out, 'locality')})", *curves(gs, out, "locality"), findings(sentences)])


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
    return "\n\n".join([table(gs, ACC_COLUMNS[:3]), f"![recall]({save(fig, out, 'imbalanced_recall')})",
                        f"![macro-F1]({plot_bars(gs, out, 'imbalanced_macro_f1', 'Macro-F1 under long-tailed training', 'macro_f1', 'macro-F1 (%)')})",
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
    fig, axes = plt.subplots(math.ceil(panels / cols), cols, figsize=(3 * cols, 2.6 * math.ceil(panels / cols)), squeeze=False)
    drop_ax = axes.flat[len(names) + 1]
    for g in gs:
        per = [stats([1 - sum(r["final"]["corruption"][n][str(s)] for n in names) / len(names) / max(r["final"]["test_acc"], 1e-12)
                      for r in g["runs"]]) for s in range(1, 6)]
        drop_ax.errorbar(range(1, 6), [100 * m for m, _, _ in per], yerr=[100 * s for _, s, _ in per], marker="o",
                         capsize=2, color=COLORS[g["model"]])
    drop_ax.set(title="relative drop from clean", xlabel="severity", ylabel="drop (% of clean accuracy)", xticks=range(1, 6))
    for ax, name in zip(axes.flat, names + ["mean"]):
        for g in gs:
            per = [stats([(r["final"]["corruption"][name][str(s)] if name != "mean" else
                           sum(r["final"]["corruption"][n][str(s)] for n in names) / len(names)) for r in g["runs"]]) for s in range(1, 6)]
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
    for ax, (key, label, scale) in zip(axes, (("params", "parameters", 1), ("flops_per_image", "forward FLOPs per image", 1),
                                              ("train_time_s", "training time, s", 1))):
        pts = [(metric(g, key)[0] * scale, 100 * metric(g, "test_acc")[0], g) for g in groups if g["cfg"]["regime"] == "standard"]
        for x, y, g in pts:
            ax.scatter(x, y, color=family_color(g["cfg"]["arch"]), s=18)
        front = [p for p in pts if not any(q[0] <= p[0] and q[1] > p[1] or q[0] < p[0] and q[1] >= p[1] for q in pts)]
        front.sort(key=lambda p: p[0])
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.set(xscale="log", xlabel=f"{label} (log scale)", ylabel="test accuracy (%)", title=f"Accuracy vs {label} (standard data)")
        ax.legend(fontsize=8, handles=[plt.Line2D([], [], color=c, marker="o", ls="", label=f"{a} variants") for a, c in COLORS.items()] +
                  [plt.Line2D([], [], color="k", ls="--", label="Pareto front")])
    columns = [("test acc %", ACC_COLUMNS[0][1]), ("params", ACC_COLUMNS[4][1]),
               ("GFLOPs", lambda g: f"{metric(g, 'flops_per_image')[0] / 1e9:.3f}"),
               ("train s", ACC_COLUMNS[5][1]), ("inference img/s", lambda g: fmt(g, "throughput_images_per_s", 1, 0)),
               ("latency ms", lambda g: fmt(g, "latency_ms", 1, 2))]
    return "\n\n".join([table(groups, columns), f"![cost]({save(fig, out, 'cost')})"])


def section_convergence(groups, out):
    """Epochs and seconds until validation accuracy first reached each threshold."""
    thresholds = sorted({t for g in groups for t in g["cfg"].get("thresholds", [])})
    reached = lambda g, field, t: stats([r["final"][field].get(str(t)) for r in g["runs"]])

    def cell(field, t):
        def text(g):
            mean, std, n = reached(g, field, t)
            return "-" if mean is None else f"{mean:.0f} ± {std:.0f}" + ("" if n == len(g["runs"]) else f" ({n}/{len(g['runs'])})")
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
            pts = [(100 * t, reached(g, field, t)) for t in thresholds]
            pts = [(t, m, s) for t, (m, s, _) in pts if m is not None]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=2,
                            color=COLORS[cfg["arch"]], ls="--" if cfg.get("time_budget") else "-",
                            label=f"{g['model']} ({g['cell']})")
        ax.set(xlabel="validation accuracy threshold (%)", ylabel=f"{unit} to reach it", title=f"{unit.capitalize()} to accuracy, standard data")
        if ax.lines:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no standard run reached a threshold (or none had a validation set)", ha="center",
                    transform=ax.transAxes)
    text.append(f"![convergence]({save(fig, out, 'convergence')})")
    return "\n\n".join(text)


SECTIONS = [("Regimes", section_regimes), ("Data efficiency", section_data_efficiency), ("Shallow networks", section_shallow),
            ("Attention locality", section_locality), ("Imbalanced data", section_imbalanced),
            ("Corruptions", section_corruption), ("Matched budgets", section_matched), ("Cost", section_cost),
            ("Convergence", section_convergence)]


def write_report(roots, out):
    """Load, group, plot and write out/report.md; returns the report text."""
    runs, skipped = load_runs(roots)
    groups = sorted(group_runs(runs), key=lambda g: (g["cell"], g["model"]))
    parts = ["# ViT vs CNN: report", f"{len(runs)} finished runs in {len(groups)} groups (runs that differ only by "
             f"seed); {skipped} unfinished runs skipped. Numbers are mean ± standard deviation over seeds, accuracies "
             "in percent. A gap counts as a finding only when it is larger than the two groups' standard deviations "
             "added together."]
    for title, section in SECTIONS:
        body = section(groups, out) if groups else None
        parts.append(f"## {title}\n\n" + (body or "No runs for this section yet (see run_all.sh)."))
    text = "\n\n".join(parts) + "\n"
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"report.md.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, "report.md"))
    return text, len(runs), skipped


def main(argv=None):
    """Command line: analyze.py RUNS_DIR [...] [--out DIR]."""
    p = Parser(prog="analyze.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="folders to search for run folders")
    p.add_argument("--out", default=None, help="where report.md and plots/ go (default: the first runs folder)")
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not os.path.isdir(r)]
    if missing:
        print(f"analyze.py: error: {missing[0]} is not a folder", file=sys.stderr)
        return 2
    out = a.out or a.runs[0]
    _, n, skipped = write_report(a.runs, out)
    print(f"{n} finished runs, {skipped} unfinished skipped: wrote {os.path.join(out, 'report.md')} and {os.path.join(out, 'plots')}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
