"""The report's Binary networks section: one-bit ViTs up BinaryViT's ladder of changes (mean pool, multi-pool,
residual affine, pyramid, full-precision merging) against the one-bit ResNet-18 (ReActNet's), each beside its
full-precision twin trained with the same binary recipe, without and with a teacher; the binarisation drop per
family, how much of the ViT's extra drop each change closes, and accuracy against ops and model bits. Its own file:
the ladder, the twins and the paired drops are some 300 lines that share nothing with analyze.py's data-regime
sections. analyze.py puts it in the report; the experiment's runs appear in no other section.
"""
import matplotlib.pyplot as plt

from analyze_groups import family_color, findings, fmt, metric, save
from analyze_recipes import ONE_SEED, STAR, as_group, difference, spread, starred, teacher_of
from analyze_transfer import family, pivot, signed

# BinaryViT's changes in the order the ladder adds them: (model key, value, name); each rung keeps the ones before.
LADDER = (("pool", "mean", "+mean pool"), ("multi_pool", True, "+multi-pool"), ("residual_affine", True,
          "+residual-affine"), ("pyramid", True, "+pyramid"), ("fp_merge", True, "+fp-merge"))
RUNGS = ("ViT",) + tuple(name for _, _, name in LADDER)  # the binary ViT and each rung above it
NAMES = RUNGS + ("ResNet-18",)
FP_TOP = 4  # --fp-merge needs --binary: the +fp-merge rung's full-precision twin is the +pyramid one's
REGIME_ORDER = ("standard", "sparse", "imbalanced", "corrupted")
MEASURE_NOTE = ("Accuracy is test accuracy, except in the corrupted regime: there the mean accuracy over the "
                "corruptions and severities (its clean test accuracy is the standard regime's training again).")


def binary_member(g):
    """A group of the binary experiment: a binary model, or a full-precision one trained with the binary recipe."""
    return bool(g["sections"]["model"].get("binary")) or g["sections"]["optim"].get("recipe") == "binary"


def measure(g):
    """The final.json key a group is compared on: corruption_mean in the corrupted regime, else test_acc."""
    return "corruption_mean" if g["cfg"].get("regime") == "corrupted" else "test_acc"


def scored(g, notes, key=None):
    """The group with its measure (or key) as each run's test_acc, runs without it dropped and noted; None if none."""
    # As test_acc, the measure is what fmt, gap and the plots read: one code path for every regime.
    key = key or measure(g)
    runs = [dict(r, final=dict(r["final"], test_acc=r["final"][key])) for r in g["runs"]
            if r["final"].get(key) is not None]
    if len(runs) < len(g["runs"]):
        notes.append(f"{len(g['runs']) - len(runs)} of {len(g['runs'])} runs of {g['model']} on {g['cell']} have no "
                     f"`{key}` in final.json: left out.")
    return dict(g, runs=runs) if runs else None


def rung(model):
    """A ViT model section's rung: how many of the changes it has (0-5); None where one lacks those before it."""
    have = [model.get(k) == v for k, v, _ in LADDER]
    k = have.index(False) if False in have else len(have)
    return None if any(have[k:]) else k


def slot(g):
    """A group's place: (a ViT rung's name or 'ResNet-18', binary, with a teacher); None off the ladder."""
    model, optim = g["sections"]["model"], g["sections"]["optim"]
    where = rung(model) if family(g["cfg"]["arch"]) == "vit" else len(LADDER) + 1
    if where is None:
        return None
    return NAMES[where], bool(model.get("binary")), bool(optim.get("teacher"))


def ladder_blocks(groups, notes):
    """{data cell: {slot: scored group}} of the experiment, cells in REGIME_ORDER; what cannot be placed noted."""
    # Groups that share a slot differ in something else (depth, attn_quant...): which one is the ladder's is unknown,
    # so none is shown rather than one picked.
    found = {}
    for g in groups:
        if not binary_member(g):
            continue
        s = slot(g)
        if s is None:
            notes.append(f"{g['model']} on {g['cell']} is off the ladder (a change without those before it): left "
                         "out.")
            continue
        found.setdefault(g["cell"], {}).setdefault(s, []).append(g)
    blocks = {}
    for cell, slots in found.items():
        for s, gs in slots.items():
            if len(gs) > 1:
                notes.append(f"{', '.join(g['model'] for g in gs)} on {cell} all fill one place on the ladder: left "
                             "out.")
        kept = {s: scored(gs[0], notes) for s, gs in slots.items() if len(gs) == 1}
        blocks[cell] = {s: g for s, g in kept.items() if g}
    regime = lambda cell: next(iter(found[cell].values()))[0]["cfg"]["regime"]
    order = lambda cell: (REGIME_ORDER.index(regime(cell)) if regime(cell) in REGIME_ORDER else 9, cell)
    return {cell: blocks[cell] for cell in sorted(blocks, key=order) if blocks[cell]}


def twin(slots, name):
    """The full-precision twin (no teacher) of a binary model by name: the +fp-merge rung's is +pyramid's; or None."""
    k = NAMES.index(name)
    return slots.get((NAMES[min(k, FP_TOP)] if k <= len(LADDER) else name, False, False))


def by_seed(g):
    """{seed: measure} of a scored group's runs."""
    return {r["cfg"]["seed"]: r["final"]["test_acc"] for r in g["runs"]}


def paired(a, b):
    """{seed: a − b} over the seeds both ran: a seed is one data subset and one initialisation for both."""
    x, y = by_seed(a), by_seed(b)
    return {s: x[s] - y[s] for s in sorted(x.keys() & y.keys())}


def drops(slots, taught=False):
    """{name: {seed: full-precision twin − binary}} of one block, without or with a teacher, where both ran."""
    out = {}
    for name in NAMES:
        b, fp = slots.get((name, True, taught)), twin(slots, name)
        if b and fp and paired(fp, b):
            out[name] = paired(fp, b)
    return out


def values_group(like, by_seed_values, label):
    """Per-seed values (fractions) as a group of their own, so fmt, gap and difference take them; None if empty."""
    return as_group(like, list(by_seed_values.values()), label) if by_seed_values else None


# ----------------------------------------------------------------------------- tables

def accuracy_table(slots):
    """One block's table: per rung, binary without and with a teacher, and the full-precision twin (mean ± std)."""
    rows = []
    for name in NAMES:
        cells = {("binary",): slots.get((name, True, False)), ("binary with teacher",): slots.get((name, True, True)),
                 ("full precision",): twin(slots, name)}
        cells = {c: g for c, g in cells.items() if g}
        rows += [(name, cells)] if cells else []
    return pivot(rows, [("binary",), ("binary with teacher",), ("full precision",)])


def drop_table(blocks):
    """The drop (twin − binary, points, mean ± std over paired seeds) per rung (then with a teacher) and block."""
    cols = [(cell,) for cell in blocks]
    rows = []
    for taught in (False, True):
        per_block = {cell: drops(slots, taught) for cell, slots in blocks.items()}
        for name in NAMES:
            label = name + (" with teacher" if taught else "")
            cells = {(cell,): values_group(slots[name, True, taught], per_block[cell][name], label)
                     for cell, slots in blocks.items() if name in per_block[cell]}
            rows += [(label, cells)] if cells else []
    return pivot(rows, cols, "drop (points)") if rows else None


def gap_closed(d):
    """({change: {seed: drop before it − after}}, {seed: plain ViT's drop − ResNet-18's}) of one block's drops."""
    # A change is measured where the rungs on both sides of it have a drop; all of them together from the plain ViT
    # to the highest rung past +mean pool that has one.
    both = lambda a, b: {s: d[a][s] - d[b][s] for s in d[a].keys() & d[b].keys()} if a in d and b in d else {}
    closed = {after: both(before, after) for before, after in zip(RUNGS, RUNGS[1:]) if both(before, after)}
    top = [n for n in RUNGS[2:] if both("ViT", n)]
    if top:
        closed[f"all, to {top[-1]}"] = both("ViT", top[-1])
    return closed, both("ViT", "ResNet-18")


def closed_text(values, base):
    """'5.0 ± 1.0 (25% of the gap)': a change's closure and its share of the plain ViT's gap, where there is one."""
    g, base_mean = values_group({}, values, ""), sum(base.values()) / len(base)
    if g is None:
        return "-"
    return fmt(g, "test_acc") + (f" ({100 * metric(g, 'test_acc')[0] / base_mean:.0f}% of the gap)" if base_mean > 0
                                 else "")


def closure_table(blocks):
    """Per change (rows) and block (columns): the points of the ViT − ResNet-18 drop gap it closes, and the share."""
    per_block = {cell: gap_closed(drops(slots)) for cell, slots in blocks.items()}
    per_block = {cell: found for cell, found in per_block.items() if found[1]}
    if not per_block:
        return None
    lines = ["| change | " + " | ".join(per_block) + " |", "|---|" + "---|" * len(per_block),
             "| drop gap: plain ViT − ResNet-18 | " + " | ".join(fmt(values_group({}, base, ""), "test_acc")
                                                               for _, base in per_block.values()) + " |"]
    changes = list(dict.fromkeys(n for closed, _ in per_block.values() for n in closed))
    for n in changes:
        lines.append(f"| {n} | " + " | ".join(closed_text(closed.get(n, {}), base)
                                            for closed, base in per_block.values()) + " |")
    return "\n".join(lines)


COST_KEYS = (("bops", "BOPs (M)", 1e-6), ("flops", "FLOPs (M)", 1e-6), ("ops", "OPs (M)", 1e-6),
             ("model_bits", "model (Mbit)", 1e-6), ("params", "params (M)", 1e-6))


def cost_table(blocks, notes):
    """Each model's cost per image and size, from the first block that ran it; missing keys noted."""
    first = {}  # the cost does not depend on the data
    for slots in blocks.values():
        for (name, binary, taught), g in slots.items():
            if taught:  # a student costs what the same model without a teacher costs
                continue
            missing = [f"`{k}`" for k, _, _ in COST_KEYS if metric(g, k)[0] is None]
            if missing:
                notes.append(f"{g['model']} on {g['cell']} has no {', '.join(missing)} in final.json: left out "
                             "where they are needed.")
            first.setdefault((name, binary), g)
    lines = ["| model | precision | " + " | ".join(h for _, h, _ in COST_KEYS) + " |",
             "|---|---|" + "---|" * len(COST_KEYS)]
    for name, binary in sorted(first, key=lambda s: (NAMES.index(s[0]), not s[1])):
        g = first[name, binary]
        means = [(metric(g, k)[0], scale) for k, _, scale in COST_KEYS]
        cells = [f"{mean * scale:,.2f}" if mean is not None else "-" for mean, scale in means]
        lines.append(f"| {name} | {'binary' if binary else 'full precision'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- plots

def ladder_plot(blocks, teachers, out):
    """Markdown image: per block, each rung's binary accuracy bars (and with a teacher), twins and reference lines."""
    # The twin of each rung is a black tick on its bars; lines: the full-precision ViT and ResNet-18, the binary
    # ResNet-18 and the teacher.
    fig, axes = plt.subplots(1, len(blocks), figsize=(7.5 * len(blocks), 4.5), squeeze=False)
    for ax, (cell, slots) in zip(axes.flat, blocks.items()):
        for dx, taught, hatch in ((-0.2, False, ""), (0.2, True, "//")):
            pts = [(i + dx, slots[n, True, taught]) for i, n in enumerate(NAMES) if (n, True, taught) in slots]
            if not pts:
                continue
            ax.bar([x for x, _ in pts], [100 * metric(g, "test_acc")[0] for _, g in pts], 0.4,
                   yerr=[100 * metric(g, "test_acc")[1] for _, g in pts], capsize=3, hatch=hatch, edgecolor="white",
                   color=[family_color(g["cfg"]["arch"]) for _, g in pts],
                   label="binary with teacher" if taught else "binary")
        fp = [(i, twin(slots, n)) for i, n in enumerate(NAMES) if twin(slots, n)]
        ax.scatter([i for i, _ in fp], [100 * metric(g, "test_acc")[0] for _, g in fp], marker="_", s=400,
                   color="k", zorder=3, label="its full-precision twin")
        refs = (("ViT", False, False, "full-precision ViT", "tab:blue", "--"),
                ("ResNet-18", False, False, "full-precision ResNet-18", "tab:orange", "--"),
                ("ResNet-18", True, False, "binary ResNet-18", "tab:orange", ":"))
        for name, binary, taught, label, color, ls in refs:
            if (name, binary, taught) in slots:
                ax.axhline(100 * metric(slots[name, binary, taught], "test_acc")[0], color=color, ls=ls, lw=1,
                           label=label)
        if teachers.get(cell):
            ax.axhline(100 * metric(teachers[cell], "test_acc")[0], color="grey", ls="-.", lw=1, label="teacher")
        ax.set_xticks(range(len(NAMES)), NAMES, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel="accuracy (%)", title=f"Binary ladder: {cell}", ylim=(0, 1.1 * ax.get_ylim()[1]))
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))  # beside the panel: bars fill it
    return f"![binary ladder]({save(fig, out, 'binary_ladder')})"


def cost_plot(blocks, out):
    """Markdown image: per block, accuracy against ops and against model bits (log x), binary filled, FP hollow."""
    fig, axes = plt.subplots(len(blocks), 2, figsize=(11, 4 * len(blocks)), squeeze=False)
    for row, (cell, slots) in zip(axes, blocks.items()):
        for ax, key, label in zip(row, ("ops", "model_bits"), ("ops per image (bops / 64 + flops)", "model bits")):
            for (name, binary, taught), g in slots.items():
                x = metric(g, key)[0]
                if taught or x is None:  # a student costs what its model without a teacher costs: one point
                    continue
                color = family_color(g["cfg"]["arch"])
                ax.scatter(x, 100 * metric(g, "test_acc")[0], color=color, facecolors=color if binary else "none",
                           marker="o" if binary else "s")
                ax.annotate(name, (x, 100 * metric(g, "test_acc")[0]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
            ax.set(xscale="log", xlabel=f"{label} (log scale)", ylabel="accuracy (%)", title=cell)
            ax.tick_params(axis="x", which="minor", labelsize=6)  # a range under a decade labels its minor ticks
            if not ax.collections:
                ax.text(0.5, 0.5, f"no run here recorded {key}", ha="center", transform=ax.transAxes)
    handles = [plt.Line2D([], [], color="k", marker="o", ls="", label="binary"),
               plt.Line2D([], [], color="k", marker="s", ls="", markerfacecolor="none", label="full precision")]
    axes[0][0].legend(handles=handles, fontsize=8)
    return f"![binary cost]({save(fig, out, 'binary_cost')})"


# ----------------------------------------------------------------------------- the section

def block_teacher(slots, groups, notes):
    """The teacher of a block's students (its run's group, else as recorded), scored on their measure; or None."""
    student = next((g for (_, _, taught), g in slots.items() if taught), None)
    found = teacher_of(student, groups) if student else None
    return scored(found, notes, measure(student)) if found else None


def missing_notes(cell, slots):
    """One line per kind of run the block lacks: binary rungs, full-precision twins, runs with a teacher."""
    binary = [n for n in NAMES if (n, True, False) in slots]
    lacks = [("no binary run of", [n for n in NAMES if n not in binary]),
             ("no full-precision twin of", [n for n in binary if not twin(slots, n)]),
             ("no run with a teacher of", [n for n in binary if (n, True, True) not in slots])]
    return [f"On {cell}: {what} {', '.join(names)}." for what, names in lacks if names]


def drop_sentence(cell, what, vit, resnet):
    """How a ViT's drop compares with the ResNet-18's on one block, against the seed spread."""
    points, d = difference(vit, resnet)
    more = "more" if points > 0 else "less"
    than = "as much as" if d["verdict"] == "tie" else f"{abs(points):.1f} points {more} than"
    return (f"On {cell}, binarising costs {what} {fmt(vit, 'test_acc')} points and the ResNet-18 "
            f"{fmt(resnet, 'test_acc')}: the ViT loses {than} the ResNet-18, {spread(d)}.")


def block_sentences(cell, slots):
    """One block's findings: ViT drops against the ResNet-18's, the best binary ViT against it, the teacher's gain."""
    d, sentences = drops(slots), []
    resnet = values_group({}, d.get("ResNet-18", {}), "ResNet-18")
    top = [n for n in RUNGS if n in d]
    for n in dict.fromkeys(top[:1] + top[-1:]):
        what = "the plain binary ViT" if n == "ViT" else f"the binary ViT with every change up to {n}"
        sentences += [drop_sentence(cell, what, values_group({}, d[n], n), resnet)] if resnet else []
    vits = [slots[n, True, False] for n in RUNGS if (n, True, False) in slots]
    best = max(vits, key=lambda g: metric(g, "test_acc")[0], default=None)
    binary_resnet = slots.get(("ResNet-18", True, False))
    if best and binary_resnet:
        points, gap_d = difference(best, binary_resnet)
        name = NAMES[rung(best["sections"]["model"])]
        sentences.append(f"The best binary ViT on {cell} ({name}: {fmt(best, 'test_acc')}) against the binary "
                         f"ResNet-18 ({fmt(binary_resnet, 'test_acc')}): {signed(points)} points, {spread(gap_d)}.")
    taught = [(n, starred(slots[n, True, True], slots[n, True, False])) for n in NAMES
              if (n, True, True) in slots and (n, True, False) in slots]
    if taught:
        sentences.append(f"What the teacher adds on {cell}, in points {STAR}: "
                         + ", ".join(f"{n} {text}" for n, (text, _) in taught) + "."
                         + (ONE_SEED if any(one for _, (_, one) in taught) else ""))
    return sentences


def section_binary(groups, out):
    """Binary ViT rungs and ResNet-18 beside their twins: accuracy, drops, the gap each change closes, cost."""
    notes = []
    blocks = ladder_blocks(groups, notes)
    if not blocks:
        return None
    teachers = {cell: block_teacher(slots, groups, notes) for cell, slots in blocks.items()}
    text = [MEASURE_NOTE]
    for cell, slots in blocks.items():
        text += [f"### {cell}", accuracy_table(slots)]
        if teachers[cell]:
            text.append(f"The teacher: {teachers[cell]['model']}, {fmt(teachers[cell], 'test_acc')}.")
    text.append(ladder_plot(blocks, teachers, out))
    drop, closure = drop_table(blocks), closure_table(blocks)
    text += ["### Binarisation drop", "The full-precision twin's accuracy minus the binary model's, in points, per "
             "seed (a seed is one data subset and one initialisation for both), mean ± std over the seeds both ran; "
             "with a teacher, the twin trained without one.", drop or "No binary model has its twin yet."]
    text += ["How much of the ViT − ResNet-18 drop gap each change closes: the drop before it minus after it, and "
             "that as a share of the plain binary ViT's gap (only where the ViT loses more).", closure or
             "No block has both the plain binary ViT's and the binary ResNet-18's drop: no gap to close."]
    text += ["### Cost", cost_table(blocks, notes), cost_plot(blocks, out)]
    text.append(findings(s for cell, slots in blocks.items() for s in block_sentences(cell, slots)))
    notes += [n for cell, slots in blocks.items() for n in missing_notes(cell, slots)]
    return "\n\n".join(text + (["**Missing.**\n\n" + "\n".join(f"- {n}" for n in notes)] if notes else []))
