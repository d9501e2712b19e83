"""Run folders into groups of seeds, and the pieces every section of the report is made of: statistics,
comparisons in words, tables and plots. analyze.py and analyze_attention.py build the report from them.

A run's config.json has model, data, optim and run sections (train.py since 2026-12). The runs of one group
share their model, data and optim sections: they differ only in their run section (seed, folder, device).
`sections_of` also reads the flat config.json that train.py wrote before: the compatibility reader.
"""
import json
import math
import os
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from attention import ATTENTION_OPTIONS, attention_options, shown_options  # noqa: E402
from data import class_list_text  # noqa: E402
from model import DEFAULT_WEIGHTS  # noqa: E402

GROUPED = ("model", "data", "optim")  # what was trained: runs that differ only in their run section are seeds
# A config.json written before sections was flat; these are its keys, by the section each belongs to now.
FLAT_KEYS = dict(
    model=["arch", "depth", "dim", "heads", "patch_size", "mlp_ratio", "pool", "spt", "dropout", "drop_path",
           "stages", "attention", *ATTENTION_OPTIONS],
    data=["dataset", "regime", "val_fraction", "max_per_class", "test_per_class", "synthetic_per_class",
          "synthetic_size", "fraction", "per_class", "imbalance_ratio", "imbalance_profile", "corruptions",
          "train_corruption", "train_severity", "train_corruption_fraction"],
    optim=["epochs", "batch_size", "opt", "lr", "weight_decay", "momentum", "warmup_epochs", "label_smoothing",
           "grad_clip", "time_budget", "amp"],
    run=["seed", "data_dir", "no_download", "device", "out", "resume", "overwrite", "thresholds", "progress",
         "stop_after_steps", "attention_backend"])
# Optimiser settings each family has its own defaults of: one data-efficiency curve may differ in them.
FAMILY_OPTIM_KEYS = {"opt", "lr", "weight_decay", "momentum", "warmup_epochs"}
# Optim keys train.py writes only where a training recipe acts (a preset's name, augmentation, EMA), and those of
# distillation: runs with any of them are reported in the Recipes and Distillation sections alone (analyze_recipes.py).
RECIPE_KEYS = ("recipe", "randaug", "mixup", "cutmix", "random_erasing", "repeated_aug", "ema")
RECIPE_SHORT = dict(randaug="randaug", mixup="mixup", cutmix="cutmix", random_erasing="erasing",
                    repeated_aug="repeats", ema="ema")  # how a recipe given without a preset is labelled
DISTILL_KEYS = ("teacher", "distill", "distill_alpha", "distill_tau")

BASE_ARCHS = ("vit", "resnet18")
COLORS = {"vit": "tab:blue", "resnet18": "tab:orange"}


def family_color(arch):
    """Blue for every ViT variant, orange for every ResNet."""
    return COLORS["vit"] if arch.startswith("vit") else COLORS["resnet18"]


def sections_of(config):
    """A run's config in sections: as written since 2026-12, or made from the flat config.json of an older run
    (the compatibility reader: keys that did not apply, such as a ResNet's pool, a full-attention run's radius or
    a clean run's corruption list, are dropped and attention options added since are filled in with the defaults
    the run used, as train.py writes them now, so old and new runs of one setting form one group)."""
    if all(isinstance(config.get(s), dict) for s in ("model", "data", "optim", "run")):
        return config
    sections = {s: {k: config[k] for k in keys if config.get(k) is not None} for s, keys in FLAT_KEYS.items()}
    taken = {k for keys in FLAT_KEYS.values() for k in keys} | {"no_amp"}
    sections["recorded"] = {k: v for k, v in config.items() if k not in taken}
    model, data, optim = sections["model"], sections["data"], sections["optim"]
    if model["arch"].startswith("resnet"):
        sections["model"] = {k: v for k, v in model.items() if k in ("arch", "stages")}
    else:  # runs before the attention kinds stored radius 1 for every ViT; later options took their defaults
        kind = model.setdefault("attention", "full")
        given = {k: model.pop(k) for k in ATTENTION_OPTIONS if k in model}
        head_dim = model["dim"] // model["heads"] if "dim" in model and "heads" in model else None
        model |= attention_options(kind, {k: v for k, v in given.items() if kind in ATTENTION_OPTIONS[k]["kinds"]},
                                   head_dim)
    drop = {"stages"} if "stages" not in sections["model"] else set()
    drop |= {"momentum"} if optim.get("opt") != "sgd" else set()
    drop |= {"corruptions"} if data.get("regime") != "corrupted" else set()
    drop |= {"train_severity", "train_corruption_fraction"} if not data.get("train_corruption") else set()
    drop |= {"synthetic_per_class", "synthetic_size"} if data.get("dataset") != "synthetic" else set()
    for section in (model, data, optim):
        for k in drop & set(section):
            del section[k]
    return sections


def flat_view(sections):
    """The values the report reads, in one dict: the model, data and optim settings, the seed, the thresholds
    and what the run recorded (data counts, parameters, image size)."""
    return {**sections["model"], **sections["data"], **sections["optim"], **sections.get("recorded", {}),
            "seed": sections["run"].get("seed", 0), "thresholds": sections["run"].get("thresholds", [])}


def load_runs(roots, failed=None):
    """Every run folder under roots: (finished runs as dicts, number of unfinished ones skipped); runs whose
    final.json says failed (a nan loss) are never among them: their (folder, reason) go to the list `failed`."""
    runs, skipped = [], 0
    for root in roots:
        for folder, _, files in sorted(os.walk(root)):
            if "config.json" not in files:
                continue
            if "final.json" not in files:
                skipped += 1
                continue
            with open(os.path.join(folder, "config.json")) as f:
                sections = sections_of(json.load(f))
            with open(os.path.join(folder, "final.json")) as f:
                final = json.load(f)
            if final.get("status") == "failed":
                (failed if failed is not None else []).append((folder, final.get("reason", "no reason recorded")))
                continue
            rows = []
            if os.path.exists(os.path.join(folder, "metrics.jsonl")):
                with open(os.path.join(folder, "metrics.jsonl")) as f:
                    rows = [json.loads(line) for line in f if line.strip()]
            runs.append(dict(path=folder, sections=sections, cfg=flat_view(sections), final=final, rows=rows))
    return runs, skipped


def trained(sections):
    """What was trained: the model, data and optim sections, None and False values counting as absent, a
    fine-tuned model's init as the seed-free start_point and a distilled model's teacher as the seed-free
    teacher_point."""
    out = {s: {k: v for k, v in sections[s].items() if v is not None and v is not False} for s in GROUPED}
    if "init" in out["model"]:
        out["model"]["init"] = start_point(sections)
    if "teacher" in out["optim"]:
        out["optim"]["teacher"] = teacher_point(sections)
    return out


def start_point(sections):
    """A fine-tuned run's source without its seed: what the source trained (its model and data sections, as
    recorded.init holds them), or where that is not recorded, the source folder's name without -s<seed>."""
    # init is the source's path, and each seed fine-tunes the source of its own seed (run_all.sh's @SEED@), so
    # the path would split the seeds of one setting. What the source trained is what makes two fine-tunes alike:
    # its sections hold no seed and, unlike a folder name, every setting (a --out name may say nothing of them).
    init = sections.get("recorded", {}).get("init") or {}
    if init.get("source_model") is None:  # a checkpoint file without its run's config.json
        return seed_free(sections["model"]["init"])
    return source_sections(init["source_model"], init.get("source_data"))


def teacher_point(sections):
    """A distilled run's teacher without its seed: what the teacher trained (recorded.teacher's model and data
    sections), or where that is not recorded, the teacher folder's name without -s<seed>."""
    # As with init: each seed distils from the teacher of its own seed (run_all.sh's @SEED@), so the path would split
    # the seeds of one setting; what the teacher trained is what makes two students alike.
    teacher = sections.get("recorded", {}).get("teacher") or {}
    if teacher.get("model") is None:
        return seed_free(sections["optim"]["teacher"])
    return source_sections(teacher["model"], teacher.get("data"))


def source_sections(model, data):
    """Another run's model and data sections as groups compare them: None and False values dropped, and its own
    init (the source was fine-tuned too; that source is known only by name) without the seed."""
    model = {k: v for k, v in model.items() if v is not None and v is not False}
    if "init" in model:
        model["init"] = seed_free(model["init"])
    return dict(model=model, data={k: v for k, v in (data or {}).items() if v is not None and v is not False})


def seed_free(path):
    """A run folder's name (a checkpoint file's folder's) with a trailing -s<digits> removed."""
    parts = os.path.normpath(path).split(os.sep)
    name = parts[-2] if parts[-1].endswith((".pt", ".pth")) and len(parts) > 1 else parts[-1]
    return re.sub(r"-s\d+$", "", name)


def group_dict(sections):
    """What was trained as one dict, for labels (a key's name is unique across the sections train.py writes); a
    source's settings as init.<key> and a teacher's as teacher.<key>, so that fine-tunes of different sources and
    students of different teachers name what differs."""
    out = {}
    for section in trained(sections).values():
        for k, v in section.items():
            if k in ("init", "teacher") and isinstance(v, dict):
                out |= {f"{k}.{sk}": sv for sk, sv in {**v["model"], **v["data"]}.items()}
            else:
                out[k] = v
    return out


def group_key(sections):
    """The key that makes runs seeds of one group: what was trained, section by section."""
    return json.dumps(trained(sections), sort_keys=True)


def group_runs(runs):
    """Groups of runs that differ only by seed, each a dict with cfg (of its first run) and its runs."""
    groups = {}
    for run in runs:
        group = groups.setdefault(group_key(run["sections"]),
                                  dict(cfg=run["cfg"], sections=run["sections"], runs=[]))
        group["runs"].append(run)
    for g in groups.values():
        g["runs"].sort(key=lambda r: r["cfg"].get("seed", 0))
        g["model"] = model_label(g["cfg"])
        g["cell"] = cell_label(g["cfg"])
    # Labels must tell apart what differs. First the data cell: where runs trained under different settings
    # (epochs, pool size, ...) share a cell label, the cell names the keys that differ (a key some have and others
    # lack too), so no comparison pairs runs of different settings. Runs on a time budget are compared only with
    # each other (their epochs are a cap, left out of their setting). Runs with a recipe or a teacher are labelled
    # among themselves, by what their comparison holds fixed (the recipe is in the model label), so adding them to a
    # folder changes no label of a default-recipe run. Then the model: what still looks alike differs in a model key,
    # named likewise.
    for same in buckets(groups.values(), lambda g: (g["cell"], bool(g["cfg"].get("time_budget")), default_recipe(g))):
        setting_of = setting_dict if default_recipe(same[0]) else base_setting
        for g, text in zip(same, bracket([setting_of(g["sections"]) for g in same], absent_differs=True)):
            g["cell"] += text
    for same in buckets(groups.values(), lambda g: (g["cell"], g["model"])):
        # A setting some groups have and others lack splits them (the groups differ), so it must name them too.
        for g, text in zip(same, bracket([group_dict(g["sections"]) for g in same], absent_differs=True)):
            g["model"] += text
    return list(groups.values())


def bracket(dicts, absent_differs=False):
    """For each dict, ' [key=value, ...]' of the keys it has among those that differ between the dicts, or ''."""
    keys = differing(dicts, absent_differs)
    texts = [", ".join(f"{k}={d[k]}" for k in keys if k in d) for d in dicts]
    return [f" [{t}]" if t else "" for t in texts]


def buckets(items, key):
    """Lists of the items that share key(item)."""
    out = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return list(out.values())


def differing(dicts, absent_differs=False):
    """The keys whose values differ between the dicts that have them, sorted; with absent_differs, a key's
    absence counts as a value of its own."""
    values = lambda k: {json.dumps(d[k], sort_keys=True) if k in d else None for d in dicts
                        if absent_differs or k in d}
    return sorted({k for d in dicts for k in d if len(values(k)) > 1})


def model_label(cfg):
    """What was trained: architecture, attention, starting point, recipe, teacher and budget where they differ from
    the default."""
    label = cfg["arch"] + attention_label(cfg) + start_label(cfg) + recipe_label(cfg)
    if cfg.get("time_budget"):
        label += f" {cfg['time_budget']:g}s"
    return label


def start_label(cfg):
    """The starting point part of a model label: '' from scratch, else e.g. ' from vit standard cifar10 c0-4',
    ' imagenet', then ' k=3' (truncated), ' ld=0.75' (layer decay), ' +probe' (frozen backbone)."""
    text = ""
    init = cfg.get("init")  # flat_view: recorded.init (a dict) where recorded, else the model section's path
    if isinstance(init, dict) and init.get("source_model"):
        source = [model_label(init["source_model"]), data_label(init.get("source_data") or {})]
        text += " from " + " ".join(t for t in source if t)
    elif isinstance(init, dict):
        text += f" from {seed_free(init['source'])}"
    elif init:
        text += f" from {seed_free(init)}"
    if cfg.get("pretrained"):
        weights = cfg.get("weights") or DEFAULT_WEIGHTS
        text += f" {cfg['pretrained']}" + ("" if weights == DEFAULT_WEIGHTS else f" {weights}")
    text += f" k={cfg['truncate']}" if cfg.get("truncate") else ""
    text += f" ld={cfg['layer_decay']:g}" if cfg.get("layer_decay") else ""
    return text + (" +probe" if cfg.get("freeze") == "backbone" else "")


def recipe_label(cfg):
    """The recipe part of a model label: '' for the lab's default, ' recipe=light1' (a preset; what differs from it
    goes in brackets where it matters) or the recipe keys given without a preset (' randaug=2,9 mixup=0.8'), then
    ' distill=soft from resnet18 (sparse 10%)' for a student of a teacher."""
    if cfg.get("recipe"):
        text = f" recipe={cfg['recipe']}"
    else:
        text = "".join(f" {short}={number_list(cfg[k])}" for k, short in RECIPE_SHORT.items()
                       if cfg.get(k) is not None and cfg[k] is not False)
    if cfg.get("teacher"):
        text += f" distill={cfg.get('distill')} from {teacher_label(cfg)}"
    return text


def number_list(value):
    """'0.8', or a list as '2,9,0.5' (RandAugment's magnitude std left out where it is 0)."""
    if not isinstance(value, list):
        return f"{value:g}"
    return ",".join(f"{v:g}" for v in (value[:2] if len(value) == 3 and value[2] == 0 else value))


def teacher_label(cfg):
    """A student's teacher in a few words: 'resnet18 (sparse 10%)' from recorded.teacher (its dataset named too
    where it is not the student's), or where that is not recorded, its folder's name without the seed."""
    teacher = cfg["teacher"]  # flat_view: recorded.teacher (a dict) where recorded, else the optim section's path
    if not isinstance(teacher, dict):
        return seed_free(teacher)
    if not teacher.get("model"):
        return seed_free(teacher["source"])
    data = teacher.get("data") or {}
    same = data.get("dataset") == cfg.get("dataset") and data.get("classes") == cfg.get("classes")
    where = (regime_label(data) if same else data_label(data)) if "regime" in data else ""
    return model_label(teacher["model"]) + (f" ({where})" if where else "")


def default_recipe(g):
    """A group trained with the lab's default recipe: no teacher and none of the recipe keys."""
    optim = g["sections"]["optim"]
    return not any(optim.get(k) is not None and optim[k] is not False for k in RECIPE_KEYS + ("teacher",))


def started(g):
    """A group that started from trained weights (--init or --pretrained)."""
    model = g["sections"]["model"]
    return bool(model.get("init") or model.get("pretrained"))


def from_scratch_all_classes(g):
    """A group trained from random weights on every class of its dataset with the lab's default recipe: what the
    data-regime sections compare."""
    return not started(g) and not g["sections"]["data"].get("classes") and default_recipe(g)


def attention_label(cfg):
    """The attention part of a model label: '' for full attention, else e.g. ' dilated r=1 d=2' or
    ' lsa +spt (SL-ViT)'; the options shown and their short names come from attention.py's table."""
    kind = cfg.get("attention") or "full"
    text = "" if kind == "full" else f" {kind}"
    for name, value in shown_options(cfg):
        short = ATTENTION_OPTIONS[name]["short"]
        value = ",".join(map(str, value)) if isinstance(value, list) else value
        text += f" {short}={value}" if short else f" {value}"
    if cfg.get("spt"):
        text += " +spt (SL-ViT)" if kind == "lsa" else " +spt"
    return text


def regime_label(cfg):
    """The regime with its parameter: 'standard', 'sparse 10%', 'sparse n=5/class', 'imbalanced R=100'."""
    regime = cfg["regime"]
    if regime == "sparse":
        regime += f" n={cfg['per_class']}/class" if cfg.get("per_class") else f" {100 * cfg['fraction']:g}%"
    elif regime == "imbalanced":
        regime += f" R={cfg['imbalance_ratio']:g}"
    return regime


def cell_label(cfg):
    """On what data: regime with its parameter, and dataset."""
    classes = f" classes {class_list_text(cfg['classes'])}" if cfg.get("classes") else ""
    return f"{regime_label(cfg)} ({cfg['dataset']}{classes})"


def data_label(data):
    """A data section in a few words, for a source in a model label: 'standard cifar10 c0-4'."""
    if "regime" not in data:
        return ""
    classes = f" c{class_list_text(data['classes'])}" if data.get("classes") else ""
    return f"{regime_label(data)} {data['dataset']}{classes}"


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
        cells = " | ".join(fn(g) for _, fn in columns)
        lines.append(f"| {g['model']} | {g['cell']} | {len(g['runs'])} | {cells} |")
    return "\n".join(lines)


ACC_COLUMNS = [("test acc %", lambda g: fmt(g, "test_acc")), ("top-5 %", lambda g: fmt(g, "test_top5")),
               ("macro-F1 %", lambda g: fmt(g, "macro_f1")), ("best val %", lambda g: fmt(g, "best_val_acc")),
               ("params", lambda g: f"{g['runs'][0]['final']['params']:,}"),
               ("train s", lambda g: fmt(g, "train_time_s", scale=1, digits=0))]


def gap(a, b, key="test_acc", lower_is_better=False):
    """The numbers behind a comparison of two groups on a metric, in points (100 x the metric): the better and
    the worse group, their means and stds, the gap, and `verdict`: 'tie' (gap rounds to 0.0), 'unknown' (a group
    has fewer than 2 seeds), 'separated' (gap larger than the two stds added) or 'within' (not separated);
    None when a group has no value."""
    (ma, sa, na), (mb, sb, nb) = metric(a, key), metric(b, key)
    if ma is None or mb is None:
        return None
    a_better = ma <= mb if lower_is_better else ma >= mb
    first, second = (a, ma, sa, na), (b, mb, sb, nb)
    (win, mw, sw, nw), (lose, ml, sl, nl) = (first, second) if a_better else (second, first)
    points = 100 * abs(mw - ml)
    verdict = ("tie" if round(points, 1) == 0 else "unknown" if min(nw, nl) < 2 else
               "separated" if points > 100 * (sw + sl) else "within")
    return dict(better=win, worse=lose, means=(100 * mw, 100 * ml), stds=(100 * sw, 100 * sl), seeds=(nw, nl),
                points=points, verdict=verdict)


def compare(a, b, key="test_acc", what="test accuracy", lower_is_better=False):
    """One sentence comparing two groups on a metric: who is better, by how much, and against the seed spread."""
    g = gap(a, b, key, lower_is_better)
    if g is None:
        return f"{a['model']} or {b['model']} has no {what} on {a['cell']}."
    if g["verdict"] == "tie":
        return f"On {a['cell']}, {a['model']} and {b['model']} tie at {g['means'][0]:.1f}% {what}."
    (mw, ml), (sw, sl), (nw, nl) = g["means"], g["stds"], g["seeds"]
    text = (f"On {a['cell']}, {g['better']['model']} reaches {mw:.1f}% {what} against {ml:.1f}% for "
            f"{g['worse']['model']}, {g['points']:.1f} points {'lower' if lower_is_better else 'ahead'}")
    if g["verdict"] == "unknown":
        return text + f"; with {min(nw, nl)} seed(s) the seed-to-seed spread is unknown, so this is not yet a finding."
    if g["verdict"] == "separated":
        return text + (f"; the gap exceeds the seed-to-seed spread (std {sw:.1f} and {sl:.1f} points, {nw} and {nl} "
                       "seeds).")
    return text + (f"; the gap is within the seed-to-seed spread (std {sw:.1f} and {sl:.1f} points), so they are "
                   "not separated.")


def findings(sentences):
    """The findings paragraph; says so when there was nothing to compare."""
    sentences = [s for s in sentences if s]
    nothing = "Only one architecture ran on these cells: nothing to compare yet."
    return "**Findings.** " + (" ".join(sentences) if sentences else nothing)


def pairs(groups):
    """(vit group, resnet18 group) for every data cell where both base models ran."""
    by_cell = {}
    for g in groups:
        if g["model"] in BASE_ARCHS:
            by_cell.setdefault(g["cell"], {})[g["model"]] = g
    return [(c["vit"], c["resnet18"]) for c in by_cell.values() if len(c) == 2]


def setting_dict(sections):
    """A run's training setting apart from the model, its optimiser defaults, its time budget and the sparse
    subset: what one data-efficiency curve holds fixed."""
    optim = sections["optim"]
    skip = FAMILY_OPTIM_KEYS | {"time_budget"} | ({"epochs"} if optim.get("time_budget") else set())  # epochs: a cap
    setting = {k: v for k, v in sections["data"].items() if k not in ("regime", "fraction", "per_class")}
    return setting | {k: v for k, v in optim.items() if k not in skip}


def base_setting(sections):
    """What a recipe or distillation comparison holds fixed: the data apart from the subset, and the epochs (the rest
    of the optim section, with a preset's dropout and drop-path, is the recipe, which the model label names)."""
    data = {k: v for k, v in sections["data"].items() if k not in ("regime", "fraction", "per_class")}
    return data | ({} if sections["optim"].get("time_budget") else {"epochs": sections["optim"].get("epochs")})


def setting(sections):
    """setting_dict as a hashable string."""
    return json.dumps(setting_dict(sections), sort_keys=True)


def base(groups):
    """Groups of the two base models with full attention and no time budget, from scratch on every class."""
    return [g for g in groups if g["model"] in BASE_ARCHS and from_scratch_all_classes(g)]


def load_groups(roots, failed=None):
    """(groups sorted by data cell and model, finished runs, unfinished runs skipped) of every run under roots;
    failed runs go to the list `failed` as (folder, reason)."""
    runs, skipped = load_runs(roots, failed)
    return sorted(group_runs(runs), key=lambda g: (g["cell"], g["model"])), len(runs), skipped


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
    plot = lambda c: plot_curves([g for g in groups if g["cell"] == c], out, f"curves_{prefix}_{slug(c)}",
                                 "Accuracy per epoch: " + c)
    return [f"![curves {c}]({plot(c)})" for c in cells]


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
    """Test accuracy of one data cell's models side by side (error bars: std over seeds), a dashed line at vit's."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(groups)), 4.5))
    ax.bar(range(len(groups)), [100 * metric(g, "test_acc")[0] for g in groups],
           yerr=[100 * metric(g, "test_acc")[1] for g in groups],
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
    ax.errorbar(xs, [100 * metric(g, "test_acc")[0] for g in groups],
                yerr=[100 * metric(g, "test_acc")[1] for g in groups],
                capsize=3, **style)


def pareto_front(pts):
    """The (cost, accuracy, ...) points no other beats (as cheap and more accurate, or cheaper and as accurate),
    sorted by cost."""
    front = [p for p in pts if not any(q[0] <= p[0] and q[1] > p[1] or q[0] < p[0] and q[1] >= p[1] for q in pts)]
    return sorted(front, key=lambda p: p[0])


def crossings(xs, ya, yb, clear=None):
    """x positions where curve a - b changes sign, interpolated log-linearly between the two points around it;
    with `clear` (per point: the curves differ by more than their spread there), only changes of sign between
    consecutive clear points, interpolated between those: a change inside the seed noise is no crossing."""
    d = [a - b for a, b in zip(ya, yb)]
    kept = [i for i in range(len(xs)) if d[i] != 0 and (clear is None or clear[i])]  # a touch is no crossing
    found = []
    for i, j in zip(kept, kept[1:]):
        if d[i] * d[j] < 0:
            t = d[i] / (d[i] - d[j])
            found.append(math.exp(math.log(xs[i]) + t * (math.log(xs[j]) - math.log(xs[i]))))
    return found
