"""The report's attention sections: locality (radius and data fraction), the attention variants beside full
attention with their cost fronts, attention cost against token count (from bench-attention.json files) and the
attention distance each head learned. analyze.py puts them in the report.
"""
import json
import math
import os

import matplotlib.pyplot as plt
import matplotlib.ticker

from analyze_groups import (ACC_COLUMNS, BASE_ARCHS, COLORS, accuracy_errorbar, accuracy_line, compare, curves,
                            family_color, findings, fmt, from_scratch_all_classes, metric, pareto_front,
                            plot_model_bars, save, setting, slug, stats, table)


def windowed(g):
    """A ViT with a local or dilated window (no SPT, no time budget), from scratch on every class: the runs of the
    locality experiment (a window swapped into a pretrained ViT is the attention-swap section's)."""
    cfg = g["cfg"]
    return (cfg["arch"] == "vit" and cfg.get("attention") in ("local", "dilated") and not cfg.get("spt")
            and not cfg.get("time_budget") and from_scratch_all_classes(g))


def section_locality(groups, out):
    """ViT accuracy against attention radius per data cell (full attention as the widest radius), and against data
    fraction."""
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
        order = ", ".join(f"{g['model']} {fmt(g, 'test_acc')}" for g in ranked)
        top_two = " Top two: " + compare(ranked[0], ranked[1]) if len(ranked) > 1 else ""
        sentences.append(f"On {c}, by mean test accuracy: {order}.{top_two}")
    ax.set(xlabel=f"attention radius (patches; {grid - 1} = whole grid = full attention)", ylabel="test accuracy (%)",
           title="ViT accuracy against attention locality")
    ax.legend(fontsize=8)
    text = [table(sorted(gs, key=lambda g: (g["cell"], g["model"])), ACC_COLUMNS),
            f"![locality]({save(fig, out, 'locality')})"]
    text += [locality_fractions(groups, out) or "", *curves(gs, out, "locality"), findings(sentences)]
    return "\n\n".join(t for t in text if t)


def locality_fractions(groups, out):
    """Markdown image of accuracy against data fraction per window, beside vit and resnet18; None if no window ran
    at two fractions."""
    fraction = lambda g: {"standard": 1.0, "sparse": g["cfg"].get("fraction")}.get(g["cfg"]["regime"])
    lines = {}  # (training setting, model) -> [(fraction, group)]
    for g in groups:
        if fraction(g) and (windowed(g) or g["model"] in BASE_ARCHS):
            lines.setdefault((setting(g["sections"]), g["model"]), []).append((fraction(g), g))
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
    """A ViT with an attention other than full, or with SPT (no time budget), from scratch on every class."""
    cfg = g["cfg"]
    other = (cfg.get("attention") or "full") != "full" or bool(cfg.get("spt"))
    return cfg["arch"] == "vit" and not cfg.get("time_budget") and other and from_scratch_all_classes(g)


VARIANT_COLUMNS = [("test acc %", ACC_COLUMNS[0][1]), ("params", ACC_COLUMNS[4][1]),
                   ("GFLOPs", lambda g: fmt(g, "flops_per_image", 1e-9, 3)),
                   ("latency ms", lambda g: fmt(g, "latency_ms", 1, 2)),
                   ("peak memory MB", lambda g: fmt(g, "peak_memory_mb", 1, 0)), ("train s", ACC_COLUMNS[5][1])]


COST_AXES = [("latency_ms", "latency (ms, batch 1)"), ("flops_per_image", "forward FLOPs per image"),
             ("peak_memory_mb", "peak training memory (MB)")]


def section_attention_variants(groups, out):
    """Per data cell, every attention variant beside full attention and resnet18: accuracy, then accuracy against
    cost."""
    cells = sorted({g["cell"] for g in groups if is_variant(g)})
    if not cells:
        return None
    text = []
    for c in cells:
        gs = sorted((g for g in groups if g["cell"] == c and (is_variant(g) or g["model"] in BASE_ARCHS)),
                    key=lambda g: (g["model"] not in BASE_ARCHS, g["model"]))
        full = next((g for g in gs if g["model"] == "vit"), None)
        bars = plot_model_bars(gs, out, f"attention_variants_{slug(c)}", f"Test accuracy by attention: {c}")
        text += [f"### {c}", table(gs, VARIANT_COLUMNS), f"![attention variants {c}]({bars})",
                 findings([compare(g, full) for g in gs if is_variant(g)] if full else
                          [f"No full-attention vit ran on {c}: nothing to compare the variants with."]),
                 cost_fronts(gs, out, c)]
    return "\n\n".join(text)


def cost_fronts(gs, out, cell):
    """Accuracy against latency, FLOPs and (where measured) peak memory for one cell's groups, each Pareto front
    drawn and listed."""
    panels, sentences = [], []
    for key, label in COST_AXES:
        measured = [g for g in gs if metric(g, "test_acc")[0] is not None]
        pts = [(metric(g, key)[0], 100 * metric(g, "test_acc")[0], g) for g in measured]
        unmeasured = [g["model"] for x, _, g in pts if x is None]
        if unmeasured:
            why = " (it is measured on CUDA only; these runs were on CPU)." if key == "peak_memory_mb" else "."
            sentences.append(f"No {label} for {', '.join(unmeasured)}{why}")
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
        # Linear axes: one cell's models span little.
        ax.set(xlabel=label, ylabel="test accuracy (%)", title=f"Accuracy vs {label.split(' (')[0]}")
        ax.legend(fontsize=8)
    fig.suptitle(cell, fontsize=9)
    path = save(fig, out, f"attention_cost_{slug(cell)}")
    return f"![accuracy against cost {cell}]({path})\n\n**Accuracy against cost.** " + " ".join(sentences)


def find_benches(roots, name="bench-attention.json"):
    """Every benchmark file of this name under roots as (path, contents), in path order."""
    found = []
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if name in files:
                with open(os.path.join(folder, name)) as f:
                    found.append((os.path.join(folder, name), json.load(f)))
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
    """Log-log forward+backward time (and peak memory where measured) against tokens, one line per variant, with
    T and T^2 references."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    panels = [("forward_backward_ms", "forward+backward ms (median; bars: min-max)"),
              ("forward_backward_peak_memory_mb", "forward+backward peak memory (MB)")]
    panels = [p for p in panels if any(bench_value(r, p[0]) is not None for r in rows)]
    n = max(1, len(panels))  # one empty panel when every size failed
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        lines = {v: sorted((r for r in rows if r["variant"] == v and bench_value(r, key) is not None),
                           key=lambda r: r["tokens"]) for v in variants}
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
    """Markdown table variant x tokens of forward+backward median ms with a growth column, and a sentence per
    variant."""
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    tokens = sorted({r["tokens"] for r in rows})
    pair = growth_pair(tokens)
    growth = f" | growth {pair[0]:,}→{pair[1]:,} |" if pair else " |"
    lines = ["| variant | " + " | ".join(f"{t:,} tokens" for t in tokens) + growth,
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
            sentences.append(f"{v}: {small:.2f} ms at {pair[0]:,} tokens, {large:.2f} ms at {pair[1]:,} ({ratio:.1f}x "
                             f"for {pair[1] / pair[0]:.1f}x the tokens): grows as T^{exponent:.1f}, "
                             f"{growth_words(exponent)}.")
        elif pair:
            cells.append("-")
            missing = [f"{t:,} tokens" + (f" ({errors[t]})" if t in errors else "") for t in pair if ms.get(t) is None]
            sentences.append(f"{v}: no growth figure, no time at {' and '.join(missing)}.")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    one = "One token count only: no growth to measure."
    return ["\n".join(lines), "**Findings.** " + " ".join(sentences) if sentences else one]


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
    columns = [(f"block {b + 1}", lambda g, b=b: f"{per_block(g)[b]:.2f}" if b < len(per_block(g)) else "-")
               for b in range(depth)]
    sentences = []
    for c in dict.fromkeys(g["cell"] for g in gs):
        ranked = sorted((g for g in gs if g["cell"] == c), key=lambda g: -per_block(g)[-1])
        others = ", ".join(f"{per_block(g)[-1]:.2f} for {g['model']}" for g in ranked[1:])
        sentences.append(f"On {c}, in the last block the heads of {ranked[0]['model']} attend farthest on average: "
                         f"{per_block(ranked[0])[-1]:.2f} patches" +
                         (f", against {others}" if others else " (the only model measured there)") + ".")
    intro = "Mean attention distance in patches (mean over seeds and heads; dots in the plot: single heads):\n\n"
    return "\n\n".join([intro + table(gs, columns), f"![attention distance]({save(fig, out, 'attention_distance')})",
                         findings(sentences)])
