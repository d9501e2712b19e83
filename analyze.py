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
                  "counts_per_class", "sizes", "class_names", "params", "world_size",
                  "attention_backend", "attention_backend_used"}  # sdpa and flex compute the same attention
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


def group_dict(cfg):
    """The config keys that define what was trained; None and False count as absent (older runs lack those keys)."""
    return {k: v for k, v in cfg.items() if k not in NOT_GROUP_KEYS and v is not None and v is not False}


def group_runs(runs):
    """Groups of runs that differ only by seed, each a dict with cfg (of its first run) and its runs."""
    groups = {}
    for run in runs:
        key = json.dumps(group_dict(run["cfg"]), sort_keys=True)
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
        keys = differing([group_dict(g["cfg"]) for g in same])
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
    label = cfg["arch"] + attention_label(cfg)
    if cfg.get("time_budget"):
        label += f" {cfg['time_budget']:g}s"
    return label


def attention_label(cfg):
    """The attention part of a model label: '' for full attention, else e.g. ' dilated r=1 d=2' or ' lsa +spt (SL-ViT)'."""
    kind, get = cfg.get("attention") or "full", cfg.get
    text = {"full": "", "local": f" local r={get('radius')}", "dilated": f" dilated r={get('radius')} d={get('dilation')}",
            "hybrid": f" hybrid r={get('radius')} d={','.join(map(str, get('dilations') or []))}",
            "linformer": f" linformer k={get('linformer_k')}", "performer": f" performer m={get('performer_features')}",
            "nystrom": f" nystrom m={get('landmarks')}", "lsa": " lsa"}.get(kind, f" {kind}")
    if get("window_shape") == "circle":
        text += " circle"
    if kind == "linformer" and get("linformer_share") not in (None, "heads"):
        text += f" share={get('linformer_share')}"
    if get("spt"):
        text += " +spt (SL-ViT)" if kind == "lsa" else " +spt"
    return text


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


def plot_model_bars(groups, out, name, title):
    """Test accuracy of one data cell's models side by side, error bars = std over seeds, a dashed line at vit's mean."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 4.5))
    ax.bar(range(len(groups)), [100 * metric(g, "test_acc")[0] for g in groups], yerr=[100 * metric(g, "test_acc")[1] for g in groups],
           capsize=3, color=[family_color(g["cfg"]["arch"]) for g in groups])
    full = next((g for g in groups if g["model"] == "vit"), None)
    if full:
        ax.axhline(100 * metric(full, "test_acc")[0], ls="--", color="grey", lw=1, label="vit (full attention)")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(groups)), [g["model"] for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title=title)
    return save(fig, out, name)


def accuracy_line(ax, pts, style, color, label):
    """Mean test accuracy of [(x, group)] against x, with a ± std band over seeds."""
    xs = [x for x, _ in pts]
    mean = [100 * metric(g, "test_acc")[0] for _, g in pts]
    std = [100 * metric(g, "test_acc")[1] for _, g in pts]
    ax.plot(xs, mean, style, color=color, label=label)
    ax.fill_between(xs, [a - s for a, s in zip(mean, std)], [a + s for a, s in zip(mean, std)], color=color, alpha=0.2)


def accuracy_errorbar(ax, xs, groups, **style):
    """Mean test accuracy of the groups at xs, error bars = std over seeds."""
    ax.errorbar(xs, [100 * metric(g, "test_acc")[0] for g in groups], yerr=[100 * metric(g, "test_acc")[1] for g in groups],
                capsize=3, **style)


def pareto_front(pts):
    """The (cost, accuracy, ...) points no other point beats (as cheap and more accurate, or cheaper and as accurate), by cost."""
    front = [p for p in pts if not any(q[0] <= p[0] and q[1] > p[1] or q[0] < p[0] and q[1] >= p[1] for q in pts)]
    return sorted(front, key=lambda p: p[0])


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
              "drop_path", "stages", "opt", "lr", "weight_decay", "momentum", "warmup_epochs", "no_amp", "amp",
              "spt", "window_shape", "dilation", "dilations", "linformer_k", "linformer_share", "performer_features",
              "redraw_interval", "landmarks", "pinv_iters", "nystrom_conv"}


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
            accuracy_line(ax, pts, "o-" if i == 0 else "s--", COLORS[m], f"{m} ({name})")
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


def windowed(g):
    """A ViT with a local or dilated window (no SPT, no time budget): the runs of the locality experiment."""
    cfg = g["cfg"]
    return cfg["arch"] == "vit" and cfg.get("attention") in ("local", "dilated") and not cfg.get("spt") and not cfg.get("time_budget")


def section_locality(groups, out):
    """ViT accuracy against attention radius per data cell (full attention as the widest radius), and against data fraction."""
    cells = {g["cell"] for g in groups if windowed(g)}
    if not cells:
        return None
    gs = [g for g in groups if g["cell"] in cells and (windowed(g) or g["model"] == "vit")]
    fig, ax = plt.subplots(figsize=(6, 4))
    sentences = []
    for i, c in enumerate(sorted(cells)):
        cg = [g for g in gs if g["cell"] == c]
        grid = cg[0]["cfg"]["image_size"] // cg[0]["cfg"]["patch_size"]
        # A dilated window reaches radius x dilation patches, though it sees fewer of them.
        reach = lambda g: g["cfg"]["radius"] * (g["cfg"].get("dilation") or 1) if windowed(g) else grid - 1
        line = sorted([g for g in cg if g["cfg"].get("attention") != "dilated"], key=reach)
        accuracy_errorbar(ax, [reach(g) for g in line], line, marker="o", label=c, color=f"C{i}")
        dilated = [g for g in cg if g["cfg"].get("attention") == "dilated"]
        if dilated:
            accuracy_errorbar(ax, [reach(g) for g in dilated], dilated, marker="s", ls="none", color=f"C{i}",
                              label=f"{c}, dilated (at radius x dilation)")
        ranked = sorted(cg, key=lambda g: -metric(g, "test_acc")[0])
        sentences.append(f"On {c}, by mean test accuracy: " + ", ".join(f"{g['model']} {fmt(g, 'test_acc')}" for g in ranked) +
                         "." + (" Top two: " + compare(ranked[0], ranked[1]) if len(ranked) > 1 else ""))
    ax.set(xlabel=f"attention radius (patches; {grid - 1} = whole grid = full attention)", ylabel="test accuracy (%)",
           title="ViT accuracy against attention locality")
    ax.legend(fontsize=8)
    text = [table(sorted(gs, key=lambda g: (g["cell"], g["model"])), ACC_COLUMNS), f"![locality]({save(fig, out, 'locality')})"]
    text += [locality_fractions(groups, out) or "", *curves(gs, out, "locality"), findings(sentences)]
    return "\n\n".join(t for t in text if t)


def locality_fractions(groups, out):
    """Markdown image of accuracy against data fraction per window, beside vit and resnet18; None if no window ran at two fractions."""
    fraction = lambda g: {"standard": 1.0, "sparse": g["cfg"].get("fraction")}.get(g["cfg"]["regime"])
    lines = {}  # (training setting, model) -> [(fraction, group)]
    for g in groups:
        if fraction(g) and (windowed(g) or g["model"] in BASE_ARCHS):
            lines.setdefault((setting(g["cfg"]), g["model"]), []).append((fraction(g), g))
    if not any(len(pts) > 1 for (_, m), pts in lines.items() if m not in BASE_ARCHS):
        return None
    settings = sorted({k for (k, m), pts in lines.items() if m not in BASE_ARCHS and len(pts) > 1})
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, key in enumerate(settings):
        models = sorted((m for k, m in lines if k == key), key=lambda m: (m not in BASE_ARCHS, m))
        for j, m in enumerate(models):
            name = m + (f" ({json.loads(key)['dataset']} #{i + 1})" if len(settings) > 1 else "")
            accuracy_line(ax, sorted(lines[key, m], key=lambda p: p[0]), "o-" if m in BASE_ARCHS else "s--",
                          COLORS.get(m, f"C{j + 2}"), name)
    fractions = sorted({f for (k, _), pts in lines.items() if k in settings for f, _ in pts})
    ax.set(xscale="log", xlabel="share of the training set (log scale; 100% = standard)", ylabel="test accuracy (%)",
           title="Windowed attention against data fraction (± std over seeds)")
    ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions], fontsize=8)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    return f"![locality against data fraction]({save(fig, out, 'locality_fractions')})"


def is_variant(g):
    """A ViT with an attention other than full, or with SPT (no time budget)."""
    cfg = g["cfg"]
    return cfg["arch"] == "vit" and not cfg.get("time_budget") and ((cfg.get("attention") or "full") != "full" or bool(cfg.get("spt")))


VARIANT_COLUMNS = [("test acc %", ACC_COLUMNS[0][1]), ("params", ACC_COLUMNS[4][1]),
                   ("GFLOPs", lambda g: fmt(g, "flops_per_image", 1e-9, 3)), ("latency ms", lambda g: fmt(g, "latency_ms", 1, 2)),
                   ("peak memory MB", lambda g: fmt(g, "peak_memory_mb", 1, 0)), ("train s", ACC_COLUMNS[5][1])]
COST_AXES = [("latency_ms", "latency (ms, batch 1)"), ("flops_per_image", "forward FLOPs per image"),
             ("peak_memory_mb", "peak training memory (MB)")]


def section_attention_variants(groups, out):
    """Per data cell, every attention variant beside full attention and resnet18: accuracy, then accuracy against cost."""
    cells = sorted({g["cell"] for g in groups if is_variant(g)})
    if not cells:
        return None
    text = []
    for c in cells:
        gs = sorted((g for g in groups if g["cell"] == c and (is_variant(g) or g["model"] in BASE_ARCHS)),
                    key=lambda g: (g["model"] not in BASE_ARCHS, g["model"]))
        full = next((g for g in gs if g["model"] == "vit"), None)
        text += [f"### {c}", table(gs, VARIANT_COLUMNS),
                 f"![attention variants {c}]({plot_model_bars(gs, out, f'attention_variants_{slug(c)}', f'Test accuracy by attention: {c}')})",
                 findings([compare(g, full) for g in gs if is_variant(g)] if full else
                          [f"No full-attention vit ran on {c}: nothing to compare the variants with."]),
                 cost_fronts(gs, out, c)]
    return "\n\n".join(text)


def cost_fronts(gs, out, cell):
    """Accuracy against latency, FLOPs and (where measured) peak memory for one cell's groups, each Pareto front drawn and listed."""
    panels, sentences = [], []
    for key, label in COST_AXES:
        pts = [(metric(g, key)[0], 100 * metric(g, "test_acc")[0], g) for g in gs if metric(g, "test_acc")[0] is not None]
        unmeasured = [g["model"] for x, _, g in pts if x is None]
        if unmeasured:
            sentences.append(f"No {label} for {', '.join(unmeasured)}" +
                             (" (it is measured on CUDA only; these runs were on CPU)." if key == "peak_memory_mb" else "."))
        pts = [p for p in pts if p[0] is not None]
        if pts:
            panels.append((label, pts))
            sentences.append(f"Pareto front of test accuracy against {label}: " +
                             ", ".join(f"{g['model']} ({y:.1f}%, {x:.3g})" for x, y, g in pareto_front(pts)) + ".")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (label, pts) in zip(axes[0], panels):
        for x, y, g in pts:
            ax.scatter(x, y, color=family_color(g["cfg"]["arch"]), s=18)
            ax.annotate(g["model"], (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
        front = pareto_front(pts)
        ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
        ax.set(xlabel=label, ylabel="test accuracy (%)", title=f"Accuracy vs {label.split(' (')[0]}")  # linear: one cell spans little
        ax.legend(fontsize=8)
    fig.suptitle(cell, fontsize=9)
    path = save(fig, out, f"attention_cost_{slug(cell)}")
    return f"![accuracy against cost {cell}]({path})\n\n**Accuracy against cost.** " + " ".join(sentences)


def find_benches(roots):
    """Every bench-attention.json under roots as (path, contents), in path order."""
    found = []
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if "bench-attention.json" in files:
                with open(os.path.join(folder, "bench-attention.json")) as f:
                    found.append((os.path.join(folder, "bench-attention.json"), json.load(f)))
    return found


def bench_value(row, key):
    """A benchmark row's median (for the *_ms timings) or value; None where it failed or was not measured."""
    value = None if row.get("error") else row.get(key)
    return value["median"] if isinstance(value, dict) else value


def growth_pair(tokens):
    """The token counts the growth column compares: 1025 and 4097 when both ran (a 4x step), else the two largest."""
    if 1025 in tokens and 4097 in tokens:
        return 1025, 4097
    return tuple(sorted(tokens)[-2:]) if len(tokens) > 1 else None


def growth_words(exponent):
    """How a cost that grows as T^exponent scales, in words."""
    if exponent < 0.5:
        return "nearly flat: fixed overheads dominate at these sizes"
    if exponent < 1.5:
        return "about linear in the token count"
    return "about quadratic in the token count" if exponent < 2.5 else "faster than quadratic"


def section_attention_scaling(benches, out):
    """Time and peak memory of every attention variant against token count, from bench-attention.json files."""
    if not benches:
        return None
    text = []
    for i, (path, bench) in enumerate(benches):
        settings = ", ".join(f"{k}={v}" for k, v in sorted(bench.get("settings", {}).items()))
        text.append(f"`{path}` on {bench.get('device')} (torch {bench.get('versions', {}).get('torch')}, commit "
                    f"{bench.get('git_commit')}); settings: {settings}.")
        for scope in dict.fromkeys(r["scope"] for r in bench["results"]):
            rows = [r for r in bench["results"] if r["scope"] == scope]
            name = f"attention_scaling_{scope}" + (f"_{i + 1}" if len(benches) > 1 else "")
            what = "one attention layer" if scope == "layer" else "the whole ViT"
            path_png = plot_scaling(rows, out, name, f"Attention cost, {what} ({bench.get('device')})")
            text += [f"Scope `{scope}` ({what}):", f"![attention cost {scope}]({path_png})", *scaling_summary(rows)]
    return "\n\n".join(text)


def plot_scaling(rows, out, name, title):
    """Log-log forward+backward time (and peak memory where measured) against tokens, one line per variant, T and T^2 references."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    panels = [("forward_backward_ms", "forward+backward ms (median; bars: min-max)"),
              ("forward_backward_peak_memory_mb", "forward+backward peak memory (MB)")]
    panels = [p for p in panels if any(bench_value(r, p[0]) is not None for r in rows)]
    n = max(1, len(panels))  # one empty panel when every size failed
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        lines = {v: sorted((r for r in rows if r["variant"] == v and bench_value(r, key) is not None), key=lambda r: r["tokens"])
                 for v in variants}
        for j, (v, pts) in enumerate(lines.items()):
            xs, ys = [r["tokens"] for r in pts], [bench_value(r, key) for r in pts]
            spread = None if not key.endswith("_ms") else [[y - r[key]["min"] for y, r in zip(ys, pts)],
                                                           [r[key]["max"] - y for y, r in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=spread, marker="o", ms=4, capsize=2, color=f"C{j}", label=v)
        # References through the first point of full attention (else of the first variant that ran).
        first = next(pts for pts in ([lines.get("full", [])] + list(lines.values())) if pts)[0]
        x0, y0 = first["tokens"], bench_value(first, key)
        tokens = sorted({r["tokens"] for pts in lines.values() for r in pts})
        ax.plot(tokens, [y0 * (t / x0) ** 2 for t in tokens], "--", color="black", lw=1, label="∝ T²")
        ax.plot(tokens, [y0 * t / x0 for t in tokens], "--", color="grey", lw=1, label="∝ T")
        ax.set(xscale="log", yscale="log", xlabel="tokens (log scale)", ylabel=label, title=title)
        ax.legend(fontsize=7)
    return save(fig, out, name)


def scaling_summary(rows):
    """Markdown table variant x tokens of forward+backward median ms with a growth column, and one sentence per variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    tokens = sorted({r["tokens"] for r in rows})
    pair = growth_pair(tokens)
    lines = ["| variant | " + " | ".join(f"{t:,} tokens" for t in tokens) + (f" | growth {pair[0]:,}→{pair[1]:,} |" if pair else " |"),
             "|---|" + "---|" * (len(tokens) + bool(pair))]
    sentences = []
    for v in variants:
        ms = {r["tokens"]: bench_value(r, "forward_backward_ms") for r in rows if r["variant"] == v}
        errors = {r["tokens"]: r["error"] for r in rows if r["variant"] == v and r.get("error")}
        cells = [errors.get(t) or ("-" if ms.get(t) is None else f"{ms[t]:.2f}") for t in tokens]
        small, large = (ms.get(pair[0]), ms.get(pair[1])) if pair else (None, None)
        if small and large:
            ratio, exponent = large / small, math.log(large / small) / math.log(pair[1] / pair[0])
            cells.append(f"{ratio:.1f}x")
            sentences.append(f"{v}: {small:.2f} ms at {pair[0]:,} tokens, {large:.2f} ms at {pair[1]:,} ({ratio:.1f}x for "
                             f"{pair[1] / pair[0]:.1f}x the tokens): grows as T^{exponent:.1f}, {growth_words(exponent)}.")
        elif pair:
            cells.append("-")
            missing = [f"{t:,} tokens" + (f" ({errors[t]})" if t in errors else "") for t in pair if ms.get(t) is None]
            sentences.append(f"{v}: no growth figure, no time at {' and '.join(missing)}.")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return ["\n".join(lines), "**Findings.** " + " ".join(sentences) if sentences else "One token count only: no growth to measure."]


def head_distances(g):
    """Per block, per head: mean attention distance (patches) over the group's seeds; None if no seed measured it."""
    maps = [r["final"].get("attention_distance") for r in g["runs"]]
    maps = [m for m in maps if m]
    if not maps:
        return None
    return [[stats([m[b][h] for m in maps])[0] for h in range(len(maps[0][b]))] for b in range(len(maps[0]))]


def section_attention_distance(groups, out):
    """Mean attention distance per block and head, for the models with explicit softmax weights."""
    gs = sorted((g for g in groups if head_distances(g)), key=lambda g: (g["cell"], g["model"]))
    if not gs:
        return None
    per_block = lambda g: [stats(heads)[0] for heads in head_distances(g)]  # mean over heads
    cols = min(4, len(gs))
    fig, axes = plt.subplots(math.ceil(len(gs) / cols), cols, figsize=(3.2 * cols, 2.8 * math.ceil(len(gs) / cols)),
                             squeeze=False, sharey=True)
    for ax, g in zip(axes.flat, gs):
        for b, heads in enumerate(head_distances(g)):
            ax.scatter([b + 1] * len(heads), heads, s=10, alpha=0.6, color=family_color(g["cfg"]["arch"]))
        blocks = range(1, len(per_block(g)) + 1)
        ax.plot(blocks, per_block(g), "k-", lw=1, label="mean over heads")
        ax.set(xlabel="block", ylabel="distance (patches)", xticks=blocks)
        ax.set_title(f"{g['model']}\n{g['cell']}", fontsize=8)
    for ax in list(axes.flat)[len(gs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    depth = max(len(per_block(g)) for g in gs)
    columns = [(f"block {b + 1}", lambda g, b=b: f"{per_block(g)[b]:.2f}" if b < len(per_block(g)) else "-") for b in range(depth)]
    sentences = []
    for c in dict.fromkeys(g["cell"] for g in gs):
        ranked = sorted((g for g in gs if g["cell"] == c), key=lambda g: -per_block(g)[-1])
        sentences.append(f"On {c}, in the last block the heads of {ranked[0]['model']} attend farthest on average: "
                         f"{per_block(ranked[0])[-1]:.2f} patches" +
                         (", against " + ", ".join(f"{per_block(g)[-1]:.2f} for {g['model']}" for g in ranked[1:]) if ranked[1:] else
                          " (the only model measured there)") + ".")
    return "\n\n".join(["Mean attention distance in patches (mean over seeds and heads; dots in the plot: single heads):\n\n" +
                         table(gs, columns), f"![attention distance]({save(fig, out, 'attention_distance')})", findings(sentences)])


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
        front = pareto_front(pts)
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
            ("Attention locality", section_locality), ("Attention variants", section_attention_variants),
            ("Attention cost scaling", section_attention_scaling), ("Attention distance", section_attention_distance),
            ("Imbalanced data", section_imbalanced),
            ("Corruptions", section_corruption), ("Matched budgets", section_matched), ("Cost", section_cost),
            ("Convergence", section_convergence)]


def load_groups(roots):
    """(groups sorted by data cell and model, finished runs, unfinished runs skipped) of every run under roots."""
    runs, skipped = load_runs(roots)
    return sorted(group_runs(runs), key=lambda g: (g["cell"], g["model"])), len(runs), skipped


def write_report(roots, out):
    """Load, group, plot and write out/report.md; returns the report text."""
    groups, n_runs, skipped = load_groups(roots)
    parts = ["# ViT vs CNN: report", f"{n_runs} finished runs in {len(groups)} groups (runs that differ only by "
             f"seed); {skipped} unfinished runs skipped. Numbers are mean ± standard deviation over seeds, accuracies "
             "in percent. A gap counts as a finding only when it is larger than the two groups' standard deviations "
             "added together."]
    for title, section in SECTIONS:
        if section is section_attention_scaling:  # the one section built from benchmark files, not run folders
            body = section(find_benches(roots), out)
            missing = "No runs for this section yet (see run_all.sh, or run `python evaluate.py bench-attention`)."
        else:
            body = section(groups, out) if groups else None
            missing = "No runs for this section yet (see run_all.sh)."
        parts.append(f"## {title}\n\n" + (body or missing))
    text = "\n\n".join(parts) + "\n"
    os.makedirs(out, exist_ok=True)
    tmp = os.path.join(out, f"report.md.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, "report.md"))
    return text, n_runs, skipped


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
