"""The report's transfer sections: accuracy against data fraction per starting point (scratch, our own pretraining,
ImageNet) for both families, accuracy against the number of blocks or stages kept (probe and fine-tune), and
attention variants swapped into a pretrained ViT. analyze.py puts them in the report.
"""
import json

import matplotlib.pyplot as plt
import matplotlib.ticker

from analyze_groups import (accuracy_errorbar, attention_label, bracket, compare, data_label, family_color, findings,
                            fmt, gap, metric, model_label, save, setting_dict, slug, started, stats,
                            trained)
from model import TRANSFER_KEYS

SUBSET_KEYS = ("regime", "fraction", "per_class", "imbalance_ratio", "imbalance_profile")  # a table's columns
INPUT_KEYS = ("img_size", "resize")  # the same images at another size: one target (ImageNet weights need 224 px)
KIND_STYLE = {"scratch": "-", "own": "--", "imagenet": ":"}
MINUS = "\u2212"


def signed(points):
    """+3.0 or −3.0 (a true minus sign)."""
    return f"{points:+.1f}".replace("-", MINUS)


def family(arch):
    """'vit' for every ViT preset, 'resnet' for every ResNet."""
    return "vit" if arch.startswith("vit") else "resnet"


def start_kind(g):
    """Where a group's weights started: 'scratch', 'own' (a run of this lab) or 'imagenet'."""
    model = g["sections"]["model"]
    return "imagenet" if model.get("pretrained") else "own" if model.get("init") else "scratch"


def swapped(g):
    """A ViT fine-tuned with another attention than its source's (attention-swap)."""
    init = g["cfg"].get("init")
    source = init.get("attention_from") if isinstance(init, dict) else None
    return source is not None and (g["cfg"].get("attention") or "full") != source


def partial(g):
    """A truncated model or a linear probe (the truncation section's)."""
    return bool(g["cfg"].get("truncate")) or g["cfg"].get("freeze") == "backbone"


def target(g):
    """The target data of a group without its subset (regime, fraction, ratio) or input size, as a key."""
    data = g["sections"]["data"]
    return json.dumps({k: v for k, v in data.items() if k not in SUBSET_KEYS + INPUT_KEYS}, sort_keys=True)


def target_name(g):
    """The target data in words: 'cifar10 classes 5-9'."""
    return model_free_cell(g).split("(", 1)[1].rstrip(")")


def model_free_cell(g):
    """The data cell without the brackets group_runs adds: 'sparse 10% (cifar10 classes 5-9)'."""
    return g["cell"].split(" [", 1)[0]


def column(g):
    """A group's column in a transfer table: ('f', fraction) (standard = 1.0), ('n', per class), ('R', ratio) or
    (regime,)."""
    cfg = g["cfg"]
    if cfg["regime"] == "standard":
        return ("f", 1.0)
    if cfg["regime"] == "sparse":
        return ("n", cfg["per_class"]) if cfg.get("per_class") else ("f", cfg["fraction"])
    if cfg["regime"] == "imbalanced":
        return ("R", cfg["imbalance_ratio"])
    return (cfg["regime"],)


def column_header(col):
    """'10%', 'n=5/class', 'R=100', 'K=3' (blocks kept) or the regime."""
    kind = col[0]
    return (f"{100 * col[1]:g}%" if kind == "f" else f"n={col[1]}/class" if kind == "n" else
            f"R={col[1]:g}" if kind == "R" else f"K={col[1]}" if kind == "K" else kind)


def column_order(col):
    """Fractions first (ascending), then per-class counts, ratios, other regimes."""
    return ("fnR".find(col[0]) if col[0] in "fnR" else 3, col[1] if len(col) > 1 else 0)


def rows_of(gs):
    """[(row label, {column: group})] of a target's groups: one row per model and setting (the subset aside)."""
    rows = {}
    for g in gs:
        setting = {k: v for k, v in setting_dict(g["sections"]).items() if k not in SUBSET_KEYS + INPUT_KEYS}
        key = (g["model"], json.dumps(setting, sort_keys=True))
        rows.setdefault(key, dict(setting=setting, cols={}))["cols"][column(g)] = g
    keys = sorted(rows, key=lambda k: (family(k[0]), list(KIND_STYLE).index(row_kind(rows[k])), k))
    # Two settings of one model (3 epochs and 200, say) are two rows: their labels name what differs.
    labels = {k: k[0] for k in keys}
    for name in {k[0] for k in keys}:
        same = [k for k in keys if k[0] == name]
        for k, text in zip(same, bracket([rows[k]["setting"] for k in same], absent_differs=True)):
            labels[k] += text
    return [(labels[k], rows[k]["cols"]) for k in keys]


def row_kind(row):
    """The start kind of a row's groups."""
    return start_kind(next(iter(row["cols"].values())))


def seeds_text(groups):
    """The seed counts of the groups: '3' or '1-3'."""
    counts = sorted({len(g["runs"]) for g in groups})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def pivot(rows, cols, first="model"):
    """A markdown table: one row per (label, {column: group}), one column per col, test accuracy mean ± std."""
    lines = [f"| {first} | seeds | " + " | ".join(column_header(c) for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for label, by_col in rows:
        cells = " | ".join(fmt(by_col[c], "test_acc") if c in by_col else "-" for c in cols)
        lines.append(f"| {label} | {seeds_text(by_col.values())} | {cells} |")
    return "\n".join(lines)


def transfer_member(g):
    """A group of the transfer comparison: started from trained weights or trained on a class subset, neither
    truncated, probed nor attention-swapped (those have their own sections)."""
    return (started(g) or bool(g["sections"]["data"].get("classes"))) and not partial(g) and not swapped(g)


def section_transfer(groups, out):
    """Per target data, test accuracy against data fraction for each family and starting point; the ViT-ResNet gap
    from scratch and from pretraining."""
    gs = [g for g in groups if transfer_member(g)]
    if not gs:
        return None
    text = []
    for key in sorted({target(g) for g in gs}):
        tg = [g for g in gs if target(g) == key]
        rows = rows_of(tg)
        cols = sorted({column(g) for g in tg}, key=column_order)
        name = target_name(tg[0])
        text += [f"### {name}", pivot(rows, cols), transfer_plot(rows, out, name)]
        text.append(findings(transfer_sentences(rows, cols, tg, groups)))
    return "\n\n".join(t for t in text if t)


def transfer_plot(rows, out, name):
    """Markdown image of test accuracy against data fraction (log x), one line per row; '' with no fractions."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    fractions = set()
    for i, (label, by_col) in enumerate(rows):
        pts = sorted((c[1], g) for c, g in by_col.items() if c[0] == "f")
        if not pts:
            continue
        fractions |= {f for f, _ in pts}
        g0 = pts[0][1]
        accuracy_errorbar(ax, [f for f, _ in pts], [g for _, g in pts], marker="os^vDP*X"[i % 8],
                          ls=KIND_STYLE[start_kind(g0)], color=family_color(g0["cfg"]["arch"]), label=label)
    if not fractions:
        plt.close(fig)
        return ""
    ax.set(xscale="log", xlabel="share of the target training set (log scale; 100% = standard)",
           ylabel="test accuracy (%)", title=f"Transfer to {name} (solid: scratch, dashed: own, dotted: ImageNet)")
    ax.set_xticks(sorted(fractions), [f"{100 * f:g}%" for f in sorted(fractions)], fontsize=8)
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.legend(fontsize=7)
    return f"![transfer to {name}]({save(fig, out, 'transfer_' + slug(name))})"


def transfer_sentences(rows, cols, tg, groups):
    """The findings of one target: the ViT-ResNet-18 gap per column and starting point, where a pretrained ViT
    reaches the scratch ResNet-18, and each pretraining's gain over the same model from scratch."""
    pairs = family_pairs(rows)
    if not any(start_kind(g) != "scratch" for g in tg):  # a class subset nobody fine-tuned on yet: plain comparisons
        return [compare(v, r) for v, r in column_pairs(pairs.get(("scratch",)), cols)]
    sentences = [gap_sentence(c, pairs) for c in cols]
    scratch_resnet = pairs.get(("scratch",), (None, None))[1]
    for (kind, *_), (vit, _) in pairs.items():
        if kind != "scratch" and vit and scratch_resnet:
            sentences.append(reach_sentence(vit, scratch_resnet, cols))
    sentences += [gain_sentence(label, by_col, cols, groups) for label, by_col in rows
                  if start_kind(next(iter(by_col.values()))) != "scratch"]
    return sentences


def start_key(g):
    """What a starting point is, the architecture aside: ('scratch',), ('imagenet', weights) or ('own', source
    data in words)."""
    kind, cfg = start_kind(g), g["cfg"]
    if kind == "imagenet":
        return (kind, cfg.get("weights"))
    if kind == "own":
        init = cfg.get("init")
        return (kind, data_label(init.get("source_data") or {}) if isinstance(init, dict) else "")
    return (kind,)


def family_pairs(rows):
    """{start key: ((label, {col: group}) of the ViT, the same of ResNet-18)} where each family has one such row
    (layer-decay rows aside: they are a variant of the fine-tune)."""
    found = {}
    for label, by_col in rows:
        g = next(iter(by_col.values()))
        arch = g["cfg"]["arch"]
        if g["cfg"].get("layer_decay") or not (family(arch) == "vit" or arch == "resnet18"):
            continue
        found.setdefault(start_key(g), {}).setdefault(family(arch), []).append((label, by_col))
    return {k: (v["vit"][0] if len(v.get("vit", [])) == 1 else None,
                v["resnet"][0] if len(v.get("resnet", [])) == 1 else None) for k, v in found.items()}


def column_pairs(pair, cols):
    """(vit group, resnet group) at every column where both rows of the pair have one."""
    if not pair or None in pair:
        return []
    (_, vit), (_, res) = pair
    return [(vit[c], res[c]) for c in cols if c in vit and c in res]


KIND_WORDS = dict(scratch="from scratch", own="from own pretraining", imagenet="from ImageNet")


def start_words(key):
    """'from scratch', 'from own pretraining (standard cifar10 c0-4)', 'from ImageNet'."""
    extra = f" ({key[1]})" if key[0] == "own" and key[1] else ""
    return KIND_WORDS[key[0]] + extra


def gap_sentence(col, pairs):
    """'ViT gap to ResNet-18 at 10%: −12.0 points from scratch, ...': the gaps larger than the two stds added, then
    the starting points whose gap is not (or whose spread is unknown); None if no pair ran at col."""
    shown, not_shown = [], []
    for key, pair in pairs.items():
        both = column_pairs(pair, [col])
        if not both:
            continue
        g = gap(*both[0])
        if g is None:
            continue
        vit_first = g["better"] is both[0][0]
        if g["verdict"] == "separated":
            shown.append(f"{signed(g['points'] if vit_first else -g['points'])} points {start_words(key)}")
        else:
            not_shown.append(start_words(key) + (" (one seed)" if g["verdict"] == "unknown" else ""))
    if not shown and not not_shown:
        return None
    head = f"ViT gap to ResNet-18 at {column_header(col)}: "
    rest = (f"; not larger than the seed spread: {', '.join(not_shown)}" if shown else
            f"not larger than the seed spread {', '.join(not_shown)}") if not_shown else ""
    return head + ", ".join(shown) + rest + "."


def reach_sentence(vit, resnet, cols):
    """Where a pretrained ViT row first comes level with (no gap beyond the spread) and first overtakes (beyond the
    spread) the scratch ResNet-18 row, over the data fractions."""
    (vit_label, v), (res_label, r) = vit, resnet
    level, ahead = None, None
    for c in [c for c in cols if c[0] == "f" and c in v and c in r]:
        g = gap(v[c], r[c])
        vit_better = g["better"] is v[c]
        if level is None and (vit_better or g["verdict"] in ("tie", "within")):
            level = c
        if ahead is None and vit_better and g["verdict"] == "separated":
            ahead = c
    text = f"{vit_label} against {res_label} from scratch: "
    if level is None:
        return text + "behind at every data fraction measured."
    text += f"level or ahead by mean from {column_header(level)}"
    return text + (f", ahead beyond the seed spread from {column_header(ahead)}." if ahead else
                   ", never ahead beyond the seed spread.")


def baseline(g, groups):
    """The same model from scratch on the same data: the group with g's data section, family and model sizes (its
    model section without the starting point) and no starting weights; optim may differ (fine-tuning defaults)."""
    sizes = lambda h: {k: v for k, v in trained(h["sections"])["model"].items() if k not in TRANSFER_KEYS}
    data = lambda h: trained(h["sections"])["data"]
    return next((h for h in groups if not started(h) and not h["cfg"].get("time_budget") and data(h) == data(g)
                 and sizes(h) == sizes(g)), None)


def gain_sentence(label, by_col, cols, groups):
    """A pretrained row's gain over its scratch baseline per column, in points (* = larger than the stds added);
    None without a baseline."""
    parts = []
    for c in cols:
        base = baseline(by_col[c], groups) if c in by_col else None
        g = gap(by_col[c], base) if base else None
        if g is None:
            continue
        points = g["points"] if g["better"] is by_col[c] else -g["points"]
        parts.append(f"{column_header(c)} {signed(points)}" + ("*" if g["verdict"] == "separated" else ""))
    if not parts:
        return None
    return (f"Gain of {label} over the same model from scratch, in points (* = larger than the two stds added): "
            + ", ".join(parts) + ".")


def depth_of(g):
    """The blocks (ViT) or residual stages (ResNet) kept: truncate K, or the model's whole depth (None where the
    model section does not say)."""
    model = g["sections"]["model"]
    return model.get("truncate") or model.get("depth" if family(model["arch"]) == "vit" else "stages")


def line_label(g):
    """A group's model label without its truncation and probe: the line it belongs to."""
    return model_label({k: v for k, v in g["cfg"].items() if k not in ("truncate", "freeze")})


def truncation_lines(groups):
    """{(target cell, line label, probe): {K: group}} for every start point where some run was truncated or probed."""
    lines = {}
    for g in groups:
        if started(g) and not swapped(g) and depth_of(g):
            key = (model_free_cell(g), line_label(g), g["cfg"].get("freeze") == "backbone")
            lines.setdefault(key, {})[depth_of(g)] = g
    with_partial = {(c, m) for (c, m, _), by_k in lines.items() if any(partial(g) for g in by_k.values())}
    return {k: v for k, v in sorted(lines.items()) if k[:2] in with_partial}


def section_truncation(groups, out):
    """Test accuracy against the blocks or stages kept, linear probe and full fine-tune, per family; where in depth
    the probe is best."""
    lines = truncation_lines(groups)
    if not lines:
        return None
    text, sentences = [], []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, ((cell, label, probe), by_k) in enumerate(lines.items()):
        ks = sorted(by_k)
        g0 = by_k[ks[0]]
        accuracy_errorbar(ax, ks, [by_k[k] for k in ks], marker="os^vD"[i // 2 % 5], ls="--" if probe else "-",
                          color=family_color(g0["cfg"]["arch"]), label=f"{label} {'probe' if probe else 'fine-tune'}")
        if probe:
            sentences.append(best_probe_sentence(label, cell, by_k))
    cells = sorted({c for c, _, _ in lines})
    for cell in cells:
        rows = [(f"{label} {'probe' if probe else 'fine-tune'}", {("K", k): g for k, g in by_k.items()})
                for (c, label, probe), by_k in lines.items() if c == cell]
        cols = sorted({c for _, by in rows for c in by}, key=lambda c: c[1])
        text += [f"### {cell}", pivot(rows, cols)]
    ax.set(xlabel="blocks (ViT) or residual stages (ResNet) kept, K", ylabel="test accuracy (%)",
           title="Truncated models (solid: fine-tune, dashed: linear probe)")
    ax.legend(fontsize=7)
    text += [f"![truncation]({save(fig, out, 'truncation')})", findings(sentences)]
    return "\n\n".join(text)


def best_probe_sentence(label, cell, by_k):
    """Where in depth a probe line is best: the K of the highest mean, against the whole model's probe."""
    ks = sorted(by_k)
    best = max(ks, key=lambda k: metric(by_k[k], "test_acc")[0])
    full = ks[-1]
    text = (f"On {cell}, the linear probe of {label} is best at K={best} of {full} (test accuracy "
            f"{fmt(by_k[best], 'test_acc')})")
    if best == full:
        return text + ": the whole model's features probe best."
    g = gap(by_k[best], by_k[full])
    spread = {"separated": "larger than the seed spread", "unknown": "with one seed the spread is unknown",
              "tie": "a tie", "within": "within the seed spread"}[g["verdict"]]
    return text + f", {g['points']:.1f} points above the whole model's probe (K={full}; {spread})."


def swap_reference(g, groups):
    """The unswapped fine-tune of g's source: its start point, data and training, the source's attention."""
    source_attention = g["cfg"]["init"]["attention_from"]
    same = lambda h: all(trained(h["sections"])[s] == trained(g["sections"])[s] for s in ("data", "optim"))
    start = lambda h: {k: trained(h["sections"])["model"].get(k) for k in TRANSFER_KEYS}  # seed-free
    return next((h for h in groups if started(h) and not swapped(h) and not partial(h) and same(h)
                 and start(h) == start(g) and (h["cfg"].get("attention") or "full") == source_attention
                 and h["cfg"]["arch"] == g["cfg"]["arch"]), None)


def before_stats(g):
    """stats() of the test accuracy of the starting weights, before fine-tuning (recorded.init.before)."""
    return stats([((r["cfg"].get("init") or {}).get("before") or {}).get("test_acc") for r in g["runs"]])


def percent(mean, std, n):
    """A mean ± std of fractions in percent, as fmt writes them."""
    if mean is None:
        return "-"
    return f"{100 * mean:.1f} (n=1)" if n < 2 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def section_attention_swap(groups, out):
    """Each attention variant swapped into a pretrained ViT: accuracy before and after fine-tuning, beside the
    unswapped fine-tune of the same source."""
    swaps = [g for g in groups if swapped(g) and family(g["cfg"]["arch"]) == "vit"]
    if not swaps:
        return None
    blocks = {}  # reference group's id (None: no reference) -> (reference, [swapped groups])
    for g in swaps:
        ref = swap_reference(g, groups)
        blocks.setdefault(id(ref), (ref, []))[1].append(g)
    text, sentences = [], []
    for i, (ref, gs) in enumerate(blocks.values()):
        head = f"### {ref['model']} on {model_free_cell(ref)}" if ref else f"### {gs[0]['cell']} (no unswapped run)"
        rows = ([ref] if ref else []) + sorted(gs, key=lambda g: attention_label(g["cfg"]))
        text += [head, swap_table(rows, ref), f"![attention swap]({swap_plot(rows, ref, out, i)})"]
        sentences += [compare(g, ref) for g in gs] if ref else [f"No unswapped fine-tune of {gs[0]['model']}."]
    return "\n\n".join(text + [findings(sentences)])


def variant_name(g, ref):
    """The attention of a row: 'local r=1', or 'full (unswapped)' for the reference."""
    name = attention_label(g["cfg"]).strip() or "full"
    return name + " (unswapped)" if g is ref else name


def swap_table(rows, ref):
    """variant | seeds | before | after | after − unswapped reference."""
    lines = ["| variant | seeds | before % | after % | after − unswapped (points) |", "|---|---|---|---|---|"]
    for g in rows:
        diff = "reference" if g is ref else "-"
        if ref is not None and g is not ref:
            d = gap(g, ref)
            points = d["points"] if d["better"] is g else -d["points"]
            diff = signed(points) + ("" if d["verdict"] != "separated" else " (beyond the seed spread)")
        lines.append(f"| {variant_name(g, ref)} | {len(g['runs'])} | {percent(*before_stats(g))} | "
                     f"{fmt(g, 'test_acc')} | {diff} |")
    return "\n".join(lines)


def swap_plot(rows, ref, out, i):
    """Bars before (light) and after fine-tuning per variant, error bars = std over seeds; returns its path."""
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4))
    xs = range(len(rows))
    for shift, values, name, alpha in ((-0.2, [before_stats(g) for g in rows], "before fine-tuning", 0.4),
                                       (0.2, [metric(g, "test_acc") for g in rows], "after fine-tuning", 1.0)):
        ax.bar([x + shift for x in xs], [100 * (m or 0) for m, _, _ in values], 0.4,
               yerr=[100 * (s or 0) for _, s, _ in values], capsize=3, color="tab:blue", alpha=alpha, label=name)
    ax.set_xticks(list(xs), [variant_name(g, ref) for g in rows], rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title="Attention swapped into the pretrained ViT")
    ax.legend(fontsize=8)
    return save(fig, out, f"attention_swap_{i}")
