"""The report's training-recipe sections: distillation of a teacher (the ResNet-18 of the same data) into the ViT
(DeiT's soft, hard and token), and AugReg's augmentation and regularisation presets and DeiT's recipe against data
fraction per family, with what each recipe is worth in data. analyze.py puts them in the report.
"""
import json
import math
import os

import matplotlib.pyplot as plt
import matplotlib.ticker

from analyze_groups import (DISTILL_KEYS, accuracy_line, attention_label, base_setting, bracket, default_recipe,
                            family_color, findings, fmt, gap, metric, recipe_label, save, slug, started,
                            teacher_label, trained)
from analyze_transfer import column_header, family, pivot, signed

DISTILL_KINDS = ("soft", "hard", "token")
HEADS = ("cls", "dist")  # a token student's two heads (final.json head_test_acc)
RECIPE_ORDER = ("default", "none", "light1", "light2", "medium1", "medium2", "strong1", "strong2", "deit")
REGULARISATION = ("dropout", "drop_path")  # model keys a preset sets: part of the recipe, not of the model
STAR = "(* = larger than the two stds added)"
ONE_SEED = " With one seed the spread is unknown, so the unstarred gaps are not yet findings."


# ----------------------------------------------------------------------------- pieces both sections use

def difference(a, b):
    """(a − b in points, analyze_groups.gap's dict) of two groups; None where either is missing."""
    d = gap(a, b) if a and b else None
    return None if d is None else (d["points"] if d["better"] is a else -d["points"], d)


def versus(a, b):
    """a − b in points for a table cell, '(beyond the seed spread)' where larger than the two stds added; '-' where
    either is missing."""
    found = difference(a, b)
    if found is None:
        return "-"
    return signed(found[0]) + (" (beyond the seed spread)" if found[1]["verdict"] == "separated" else "")


def starred(a, b):
    """(a − b in points with a * where larger than the two stds added, whether a group has one seed)."""
    points, d = difference(a, b)
    return signed(points) + ("*" if d["verdict"] == "separated" else ""), d["verdict"] == "unknown"


def spread(d):
    """How a gap (analyze_groups.gap) stands against the seed spread, in words."""
    (sw, sl), (nw, nl) = d["stds"], d["seeds"]
    return {"tie": "a tie", "unknown": f"with {min(nw, nl)} seed(s) the spread is unknown, so not yet a finding",
            "separated": f"larger than the two stds added ({sw:.1f} and {sl:.1f} points)",
            "within": f"within the seed spread (std {sw:.1f} and {sl:.1f} points), so not a finding"}[d["verdict"]]


def as_group(g, accuracies, model):
    """Accuracies (one per seed, None where missing) as a group of their own, so fmt, gap and the plots take them."""
    runs = [dict(final=dict(test_acc=a)) for a in accuracies if a is not None]
    return dict(g, runs=runs, model=model) if runs else None


# ----------------------------------------------------------------------------- distillation

def student(g):
    """A group distilled from a teacher (--teacher)."""
    return bool(g["sections"]["optim"].get("teacher"))


def no_teacher(g, groups):
    """The same student trained without a teacher: the group whose sections are g's without the distillation keys
    and the distillation token; None if it did not run."""
    target = trained(g["sections"])
    target["optim"] = {k: v for k, v in target["optim"].items() if k not in DISTILL_KEYS}
    target["model"] = {k: v for k, v in target["model"].items() if k != "distill_token"}
    return next((h for h in groups if not student(h) and trained(h["sections"]) == target), None)


def teacher_of(g, groups):
    """The teacher of a student group: the group holding every seed's teacher run (found by its folder, or by the
    folder's name where only one loaded run has it), else the teachers' test accuracies recorded in the students'
    config.json as a group of their own; None where neither is known."""
    by_path, by_name = {}, {}
    for h in groups:
        for r in h["runs"]:
            by_path[os.path.abspath(r["path"])] = h
            by_name.setdefault(os.path.basename(os.path.normpath(r["path"])), []).append(h)
    found, recorded = [], []
    for r in g["runs"]:
        teacher = r["cfg"]["teacher"]  # flat_view: recorded.teacher (a dict) where recorded, else the path given
        path = os.path.normpath((teacher.get("source") or "") if isinstance(teacher, dict) else teacher)
        named = by_name.get(os.path.basename(path), [])
        found.append(by_path.get(os.path.abspath(path)) or (named[0] if len(named) == 1 else None))
        recorded.append(teacher.get("test_acc") if isinstance(teacher, dict) else None)
    if found[0] is not None and all(h is found[0] for h in found):
        return dict(found[0], model=f"{found[0]['model']} on {found[0]['cell']}")
    pseudo = as_group(g, recorded, teacher_label(g["cfg"]) + ", as recorded")
    arch = ((g["cfg"]["teacher"].get("model") or {}).get("arch") if isinstance(g["cfg"]["teacher"], dict) else None)
    return dict(pseudo, cfg=dict(arch=arch or "resnet")) if pseudo else None  # its colour in the plot


def kind_order(g):
    """soft, hard, token, then any other distillation."""
    kind = g["cfg"].get("distill")
    return DISTILL_KINDS.index(kind) if kind in DISTILL_KINDS else len(DISTILL_KINDS)


def short_name(g):
    """A student in a word: its distillation kind, with the brackets of its label where they tell it apart."""
    rest = g["model"].split(" [", 1)
    return g["cfg"].get("distill", "?") + (f" [{rest[1]}" if len(rest) > 1 else "")


def distill_rows(students, groups):
    """[(name, group, role)] of one data cell: the student without a teacher, each student (a token student's heads
    after it), and the teacher; role is 'base', 'student', 'head' or 'teacher'."""
    base = no_teacher(students[0], groups)
    rows = [("no teacher", base, "base")] if base else []
    for s in students:
        rows.append((short_name(s), s, "student"))
        for head in HEADS:
            h = as_group(s, [(r["final"].get("head_test_acc") or {}).get(head) for r in s["runs"]],
                         f"{s['model']}, {head} head")
            rows += [(f"{short_name(s)}: {head} head", h, "head")] if h else []
    teacher = teacher_of(students[0], groups)
    return rows + ([("teacher", teacher, "teacher")] if teacher else [])


def section_distillation(groups, out):
    """Per data cell, the student without a teacher, each distillation (a token student's heads too) and the
    teacher: a table, bars, and which distillation helps most and whether a student beats its teacher."""
    cells = {}
    for g in sorted((g for g in groups if student(g)), key=lambda g: (kind_order(g), g["model"])):
        cells.setdefault(g["cell"], []).append(g)
    if not cells:
        return None
    lines = ["| data | model | seeds | test acc % | cls head % | dist head % | teacher % | − no teacher (points) | "
             "− teacher (points) |", "|---|---|---|---|---|---|---|---|---|"]
    text, sentences = [], []
    for cell, students in sorted(cells.items()):
        rows = distill_rows(students, groups)
        base = next((g for _, g, role in rows if role == "base"), None)
        teacher = next((g for _, g, role in rows if role == "teacher"), None)
        if base:
            lines.append(f"| {cell} | {base['model']} (no teacher) | {len(base['runs'])} | {fmt(base, 'test_acc')} | - "
                         f"| - | {fmt(teacher, 'test_acc') if teacher else '-'} | reference | "
                         f"{versus(base, teacher)} |")
        for s in students:
            heads = [next((g for name, g, _ in rows if name == f"{short_name(s)}: {h} head"), None) for h in HEADS]
            lines.append(f"| {cell} | {s['model']} | {len(s['runs'])} | {fmt(s, 'test_acc')} | "
                         + " | ".join(fmt(h, "test_acc") if h else "-" for h in heads)
                         + f" | {fmt(teacher, 'test_acc') if teacher else '-'} | {versus(s, base)} | "
                         f"{versus(s, teacher)} |")
        text.append(f"![distillation {cell}]({distill_plot(rows, out, cell)})")
        sentences += distill_sentences(cell, students, rows, base, teacher)
    return "\n\n".join(["\n".join(lines), *text, findings(sentences)])


def distill_plot(rows, out, cell):
    """Bars of test accuracy of one cell's rows (error bars: std over seeds); returns the plot's path."""
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows)), 4))
    color = dict(base="tab:gray", student="tab:blue", head="lightsteelblue")
    ax.bar(range(len(rows)), [100 * metric(g, "test_acc")[0] for _, g, _ in rows],
           yerr=[100 * metric(g, "test_acc")[1] for _, g, _ in rows], capsize=3,
           color=[color.get(role) or family_color(g["cfg"].get("arch", "resnet")) for _, g, role in rows])
    ax.set_xticks(range(len(rows)), [name for name, _, _ in rows], rotation=25, ha="right", fontsize=8)
    ax.set(ylabel="test accuracy (%)", title=f"Distillation: {cell}")
    return save(fig, out, f"distillation_{slug(cell)}")


def distill_sentences(cell, students, rows, base, teacher):
    """One cell's findings: the distillation that helps most over the student without a teacher and every gain,
    then each student against its teacher."""
    sentences = []
    if base is None:
        sentences.append(f"No {students[0]['cfg']['arch']} without a teacher ran on {cell}: no gain to state.")
    else:
        best = max(students, key=lambda s: metric(s, "test_acc")[0])
        points, d = difference(best, base)
        head = (f"On {cell}, the distillation that helps most is {short_name(best)}" if points > 0 else
                f"On {cell}, no distillation beats the student without a teacher by mean; the best is "
                f"{short_name(best)}")
        sentences.append(f"{head}: {100 * metric(best, 'test_acc')[0]:.1f}% test accuracy against "
                         f"{100 * metric(base, 'test_acc')[0]:.1f}% without a teacher, {signed(points)} points, "
                         f"{spread(d)}.")
        sentences.append(gains_sentence("Gain over the student without a teacher", rows, base))
    if teacher is None:
        sentences.append(f"On {cell}, the teacher's accuracy is unknown (no teacher run, none recorded).")
    else:
        beat = lambda s: difference(s, teacher)[0] > 0 and difference(s, teacher)[1]["verdict"] == "separated"
        ahead = [short_name(s) for s in students if beat(s)]
        verdict = (f"{', '.join(ahead)} beat{'s' if len(ahead) == 1 else ''} the teacher beyond the seed spread"
                   if ahead else "no student beats its teacher beyond the seed spread")
        sentences.append(gains_sentence(f"Against the teacher ({teacher['model']}: {fmt(teacher, 'test_acc')})",
                                        rows, teacher, verdict))
    return sentences


def gains_sentence(head, rows, reference, verdict=None):
    """'HEAD, in points (* = ...): soft +1.0, hard +5.0*, token +3.0 (cls head +2.0, dist head +4.0*)', then the
    verdict and a note where a group has one seed."""
    parts, unknown = [], False
    for name, g, role in rows:
        if role not in ("student", "head"):
            continue
        value, one_seed = starred(g, reference)
        unknown |= one_seed
        if role == "student":
            parts.append([f"{name} {value}", []])
        else:  # a head goes in brackets after its student
            parts[-1][1].append(f"{name.rsplit(': ', 1)[1]} {value}")
    texts = [text + (f" ({', '.join(heads)})" if heads else "") for text, heads in parts]
    return (f"{head}, in points {STAR}: {', '.join(texts)}" + (f"; {verdict}" if verdict else "") + "."
            + (ONE_SEED if unknown else ""))


# ----------------------------------------------------------------------------- recipes

def fraction(g):
    """A group's share of the training set: its sparse fraction, 1.0 for standard, else None (per-class counts,
    other regimes)."""
    data = g["sections"]["data"]
    return 1.0 if data["regime"] == "standard" else data.get("fraction") if data["regime"] == "sparse" else None


def recipe_member(g):
    """A group of the recipe comparison: from scratch, no teacher, no time budget, at a data fraction."""
    return not started(g) and not student(g) and not g["cfg"].get("time_budget") and fraction(g) is not None


def recipe_name(cfg):
    """'default' (the lab's own), the preset's name, or the recipe keys given without a preset."""
    return cfg.get("recipe") or recipe_label(cfg).strip() or "default"


def identities(g):
    """(the model apart from a preset's regularisation, the recipe: the optim section apart from the epochs, with the
    regularisation), each as a dict."""
    t = trained(g["sections"])
    model = {k: v for k, v in t["model"].items() if k not in REGULARISATION}
    recipe = {k: v for k, v in t["optim"].items() if k not in ("epochs", "time_budget")}
    return model, recipe | {k: v for k, v in t["model"].items() if k in REGULARISATION}


def recipe_lines(gs):
    """{model identity: [line]} of one block's groups, a line being dict(model=label, recipe=name, by_f={fraction:
    group}), sorted by recipe; lines of one model and recipe name that differ name what differs."""
    lines = {}
    for g in gs:
        model, recipe = identities(g)
        key = (json.dumps(model, sort_keys=True), json.dumps(recipe, sort_keys=True))
        line = lines.setdefault(key, dict(model=g["cfg"]["arch"] + attention_label(g["cfg"]),
                                          recipe=recipe_name(g["cfg"]), setting=recipe, by_f={}))
        line["by_f"][fraction(g)] = g
    out = {}
    for (model, _), line in sorted(lines.items(), key=lambda kv: recipe_rank(kv[1]["recipe"])):
        out.setdefault(model, []).append(line)
    # A model that ran only the default recipe here (a shallow or windowed ViT, say) is another experiment's.
    out = {m: lines for m, lines in out.items() if any(line["recipe"] != "default" for line in lines)}
    for same_model in out.values():
        for name in {line["recipe"] for line in same_model}:
            same = [line for line in same_model if line["recipe"] == name]
            for line, text in zip(same, bracket([line["setting"] for line in same], absent_differs=True)):
                line["recipe"] += text
    return dict(sorted(out.items(), key=lambda kv: (family(json.loads(kv[0])["arch"]) != "vit", kv[0])))


def recipe_rank(name):
    """A recipe's place: default, none, AugReg's levels, deit, then recipes given without a preset."""
    return (RECIPE_ORDER.index(name) if name in RECIPE_ORDER else len(RECIPE_ORDER), name)


def recipe_blocks(groups):
    """[(block name, {model identity: [line]})] for every training setting (data apart from the subset, epochs)
    where some recipe ran; its default-recipe runs join it as the lab's baseline."""
    members = [g for g in groups if recipe_member(g)]
    keys = {json.dumps(base_setting(g["sections"]), sort_keys=True) for g in members if not default_recipe(g)}
    keys = sorted(keys)
    names = [json.loads(k)["dataset"] + t for k, t in zip(keys, bracket([json.loads(k) for k in keys]))]
    return [(name, recipe_lines([g for g in members if json.dumps(base_setting(g["sections"]), sort_keys=True) == k]))
            for name, k in zip(names, keys)]


def section_recipes(groups, out):
    """Per training setting and family, test accuracy against data fraction for each recipe and the default one; what
    each recipe is worth in data against `none` (AugReg's view); the best recipe per fraction and the ViT-ResNet
    gap with each family's best."""
    blocks = recipe_blocks(groups)
    if not blocks:
        return None
    text = []
    for name, by_model in blocks:
        lines = [line for model_lines in by_model.values() for line in model_lines]
        cols = sorted({("f", f) for line in lines for f in line["by_f"]})
        rows = [(f"{line['model']} {line['recipe']}", {("f", f): g for f, g in line["by_f"].items()}) for line in lines]
        rows = [row for label, by_col in rows for row in [(label, by_col), (f"{label} (EMA weights)", ema_row(by_col))]
                if row[1]]  # a line's EMA weights right below it, where it kept them
        text += [f"### {name}", pivot(rows, cols), recipes_plot(by_model, out, name), worth_table(by_model, cols),
                 findings(recipe_sentences(by_model, cols))]
    return "\n\n".join(text)


def ema_row(by_col):
    """{column: the EMA weights' test accuracy as a group} of a row with --ema (final.json ema), or {}."""
    out = {c: as_group(g, [(r["final"].get("ema") or {}).get("test_acc") for r in g["runs"]], g["model"])
           for c, g in by_col.items()}
    return {c: g for c, g in out.items() if g}


def recipes_plot(by_model, out, name):
    """Markdown image: one panel per model, test accuracy against data fraction (log x) per recipe, ± std bands."""
    fig, axes = plt.subplots(1, len(by_model), figsize=(6 * len(by_model), 4.2), squeeze=False)
    for ax, lines in zip(axes.flat, by_model.values()):
        for line in lines:  # a recipe has one colour in every panel
            default = line["recipe"] == "default"
            accuracy_line(ax, sorted(line["by_f"].items()), "s--" if default else "o-",
                          "k" if default else f"C{recipe_rank(line['recipe'])[0] % 10}", line["recipe"])
        fractions = sorted({f for line in lines for f in line["by_f"]})
        ax.set(xscale="log", xlabel="share of the training set (log scale; 100% = standard)",
               ylabel="test accuracy (%)", title=f"{lines[0]['model']}: recipes ({name})")
        ax.set_xticks(fractions, [f"{100 * f:g}%" for f in fractions], fontsize=8)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.legend(fontsize=7)
    return f"![recipes {name}]({save(fig, out, 'recipes_' + slug(name))})"


def data_worth(curve, f, acc):
    """Where the curve [(fraction, accuracy)] first reaches acc (linear in accuracy, in log fraction, between
    neighbouring points), as a multiple of f; 'beyond' if it never does, 'below' if it starts above acc."""
    curve = sorted(curve)
    if curve[0][1] >= acc:
        return curve[0][0] / f if curve[0][1] == acc else "below"
    for (f0, a0), (f1, a1) in zip(curve, curve[1:]):
        if a0 < acc <= a1:
            t = (acc - a0) / (a1 - a0)
            return math.exp(math.log(f0) + t * (math.log(f1) - math.log(f0))) / f
    return "beyond"


def worth_text(worth):
    """'3.2x the data', or where `none` does not reach it in the fractions measured, which way it falls outside."""
    return {"beyond": "beyond the measured range", "below": "below the measured range"}.get(worth) or \
        f"{worth:.1f}x the data"


def none_line(lines):
    """The model's one line of the `none` recipe, else None."""
    found = [line for line in lines if line["recipe"] == "none"]
    return found[0] if len(found) == 1 else None


def worth_table(by_model, cols):
    """What each recipe is worth in data: where `none`'s mean curve reaches the recipe's mean accuracy, as a multiple
    of the recipe's own fraction (AugReg's view)."""
    lines = ["What a recipe is worth in data: the share of the training set at which the `none` recipe's mean curve "
             "(linear in accuracy, in log fraction; its first crossing) reaches the recipe's mean test accuracy, as a "
             "multiple of the recipe's own share.", "",
             "| model | " + " | ".join(column_header(c) for c in cols) + " |", "|---|" + "---|" * len(cols)]
    rows, missing = [], []
    for model_lines in by_model.values():
        none = none_line(model_lines)
        if none is None:
            missing.append(model_lines[0]["model"])
            continue
        curve = [(f, metric(g, "test_acc")[0]) for f, g in none["by_f"].items()]
        for line in model_lines:
            cells = [worth_text(data_worth(curve, c[1], metric(line["by_f"][c[1]], "test_acc")[0]))
                     if c[1] in line["by_f"] else "-" for c in cols]
            rows.append(f"| {line['model']} {line['recipe']} | " + " | ".join(cells) + " |")
    note = [f"No `none` recipe ran for {', '.join(missing)}: no data worth to measure."] if missing else []
    return "\n\n".join((["\n".join(lines + rows)] if rows else []) + note)


def recipe_sentences(by_model, cols):
    """The best recipe per model and fraction against the default recipe, and the ViT-ResNet gap with the default
    recipe and with each family's best at every fraction below 100%."""
    sentences, best = [], {}
    for model, lines in by_model.items():
        default = next((line for line in lines if line["recipe"] == "default"), None)
        parts, unknown = [], False
        for c in cols:
            at = [line for line in lines if c[1] in line["by_f"]]
            if not at:
                continue
            top = max(at, key=lambda line: metric(line["by_f"][c[1]], "test_acc")[0])
            best[model, c] = top
            if default is None or c[1] not in default["by_f"]:
                parts.append(f"{column_header(c)} {top['recipe']} {fmt(top['by_f'][c[1]], 'test_acc')}")
            elif top is default:
                parts.append(f"{column_header(c)} default")
            else:
                value, one_seed = starred(top["by_f"][c[1]], default["by_f"][c[1]])
                unknown |= one_seed
                parts.append(f"{column_header(c)} {top['recipe']} {value}")
        sentences.append(f"Best {lines[0]['model']} recipe per share of the training set, against the default recipe "
                         f"in points {STAR}: {', '.join(parts)}." + (ONE_SEED if unknown else ""))
    by_family = {}
    for model, lines in by_model.items():
        by_family.setdefault(family(json.loads(model)["arch"]), []).append(model)
    if len(by_family.get("vit", [])) == 1 and len(by_family.get("resnet", [])) == 1:
        vit, res = by_family["vit"][0], by_family["resnet"][0]
        sentences += [gap_sentence(c, by_model[vit], by_model[res], best.get((vit, c)), best.get((res, c)))
                      for c in cols if c[1] < 1]
    return [s for s in sentences if s]


def gap_sentence(col, vit_lines, res_lines, vit_best, res_best):
    """Whether the recipes close the ViT − ResNet gap at one fraction: the gap with the default recipe and with each
    family's best recipe; None where a family lacks either there."""
    f = col[1]
    default = [next((line["by_f"].get(f) for line in lines if line["recipe"] == "default"), None)
               for lines in (vit_lines, res_lines)]
    if None in default or not vit_best or not res_best:
        return None
    (dv, dr), (bv, br) = default, (vit_best["by_f"][f], res_best["by_f"][f])
    with_default, with_best = gap(dv, dr), gap(bv, br)
    points = lambda d, v: d["points"] if d["better"] is v else -d["points"]
    pd, pb = points(with_default, dv), points(with_best, bv)
    if with_best["verdict"] == "unknown":
        verdict = "with one seed the spread is unknown, so whether the recipes close the gap is not yet a finding"
    elif with_best["verdict"] != "separated":
        verdict = ("the recipes close the gap to within the seed spread" if with_default["verdict"] == "separated"
                   and pd < 0 else "the gap stays within the seed spread")
    elif pb > 0:
        verdict = "with each family's best recipe the ViT is ahead beyond the seed spread"
    else:
        verdict = (f"the recipes narrow the gap by {pb - pd:.1f} points but do not close it" if pb > pd else
                   "the recipes do not narrow the gap")
    return (f"{vit_lines[0]['model']} − {res_lines[0]['model']} at {column_header(col)}: {signed(pd)} points with the "
            f"default recipe, {spread(with_default)}; {signed(pb)} with each family's best recipe "
            f"({vit_best['recipe']}, {res_best['recipe']}), {spread(with_best)}: {verdict}.")
