"""Run folders, metrics and the benchmarks (attention cost, input pipeline, training step, binary layers):
what train.py and a re-evaluation share.

    python evaluate.py RUN_DIR                 # re-evaluate a run's checkpoint
    python evaluate.py bench-attention --out bench-attention.json
    python evaluate.py bench-data --data-dir data --out bench-data.json
    python evaluate.py bench-binary --out bench-binary.json

Imports run one way: model, attention, data and binary <- evaluate <- train.
"""
import contextlib
import errno
import functools
import itertools
import json
import os
import pickle
import platform
import re
import signal
import statistics
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, default_collate
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from attention import (ATTENTIONS, WINDOWED, Attention, attention_options, flex_attention, flex_block_mask,
                       local_attention_mask)
from augment import RECIPE_KEYS, recipe_batch, recipe_draws
from binary import (BinaryConv2d, BinaryLinear, binary_macs, binary_weight, is_binary, model_bits,
                    pack_signs, packed_conv2d, packed_linear)
from data import (augment, build_data, channel_stats, class_list_text, corrupt, dataset_shape, epoch_plan,
                  load_dataset, normalize, rank_batches)
from model import BINARY_ARCHS, RESNET_PRESETS, ViT, build_model, count_params, imagenet_state, transfer_state
from options import ARCHS, OPTIM_DEFAULTS, OPTIMIZERS, RECIPES, SECTIONS, VIT_DEFAULTS, VIT_PRESETS, Parser, fail

SOFTMAX_KINDS = WINDOWED | {"full", "lsa"}  # kinds with explicit attention weights, for attention_distance


# ----------------------------------------------------------------------------- the command line and run folders

PAUSE_AT = os.environ.get("LAB_PAUSE_AT")  # the tests' hook: see pause_point
PAUSES = {}


def pause_point(name):
    """With LAB_PAUSE_AT=name:k (tests of kill -9 and of failures mid-run; name:k@r: on torchrun's rank r only): the
    k-th time this process gets here, say so on stderr with its pid and wait, until killed or until SIGUSR1 lets it
    go on. Points: step, eval, and each run-folder file name, between its temp file and the check and rename."""
    if not PAUSE_AT or PAUSE_AT.partition(":")[0] != name:
        return
    count, _, rank = PAUSE_AT.partition(":")[2].partition("@")
    if rank and int(rank) != int(os.environ.get("RANK", 0)):
        return
    PAUSES[name] = PAUSES.get(name, 0) + 1
    if PAUSES[name] == int(count or 1):
        go_on = []
        signal.signal(signal.SIGUSR1, lambda *_: go_on.append(True))
        print(f"paused at {PAUSE_AT} (pid {os.getpid()})", file=sys.stderr, flush=True)
        until = time.time() + 600
        while not go_on and time.time() < until:  # short sleeps: the signal's handler runs between them
            time.sleep(0.01)
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)


class RunFolderError(OSError):
    """A run-folder file that could not be written whole (or a checkpoint that does not load back): its path and why;
    the file is as it was before and no temp file is left."""


def os_error(e):
    """An OSError in a few words: 'ENOSPC: No space left on device'."""
    return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}" if e.errno else str(e)


def first_line(e):
    """An exception's message up to its first line break ('' for none): one line of an error message."""
    return str(e).splitlines()[0] if str(e) else ""


def replace_with(path, tmp, write, check=None):
    """Write a run-folder file whole or not at all: write(f) into tmp, put it on the disk (fsync), check(tmp) (None,
    or why it is unusable), then rename it over path; RunFolderError naming path and why, tmp removed, path kept."""
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it the only copy
        pause_point(os.path.basename(path))
        problem = check and check(tmp)
        if not problem:
            os.replace(tmp, path)
            return
    except OSError as e:
        problem = f"cannot write {path} ({os_error(e)})"
    try:
        os.remove(tmp)
    except OSError:  # never made, or the folder refuses even this: the first error is the one to report
        pass
    raise RunFolderError(problem)


def write_atomic(path, text):
    """Write text to a temp file in the same folder, then rename it over path: never a truncated file (replace_with)."""
    replace_with(path, f"{path}.tmp{os.getpid()}", lambda f: f.write(text.encode()))


def write_json(path, obj):
    """Write JSON atomically."""
    write_atomic(path, json.dumps(obj, indent=1) + "\n")


def write_jsonl(path, rows):
    """Rewrite a JSON-lines file atomically (it is small: one line per epoch)."""
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


def read_json(path):
    """A JSON file of a run folder; ValueError saying why it cannot be read."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} ({type(e).__name__}: {e})")


def read_config(run_dir):
    """A run folder's config.json; ValueError for a missing one or one written before configs had sections."""
    config = read_json(os.path.join(run_dir, "config.json"))
    if not all(isinstance(config.get(s), dict) for s in SECTIONS):
        raise ValueError(f"{run_dir}/config.json has no model, data, optim and run sections: it was written by "
                         "train.py before 2026-12; resume or re-evaluate it with the commit in its git_commit")
    return config


def lock_run_folder(out):
    """Take out/.lock for this process (pid, host); ValueError naming the holder if a live process has it. A lock
    whose process is gone (on this host) or that cannot be read is stale: taken over, and said so on stderr."""
    path, me = os.path.join(out, ".lock"), dict(pid=os.getpid(), host=platform.node())
    try:  # the first write into the folder (check_out_dir tried it already: this is for a folder changed since)
        os.makedirs(out, exist_ok=True)
        write_atomic(f"{path}.{me['pid']}", json.dumps(me))  # whole before it is visible as .lock
    except OSError as e:
        raise ValueError(e if isinstance(e, RunFolderError) else f"cannot make {out} ({os_error(e)})")
    for _ in range(2):
        try:
            os.link(f"{path}.{me['pid']}", path)  # fails if .lock exists: one process wins
            os.remove(f"{path}.{me['pid']}")
            return
        except FileExistsError:
            try:
                holder = read_json(path)
                alive = holder["host"] != me["host"] or pid_alive(holder["pid"])  # another host's: assume alive
            except (ValueError, KeyError, TypeError):
                holder, alive = None, False
            if alive:
                os.remove(f"{path}.{me['pid']}")
                raise ValueError(f"{out} is in use by pid {holder['pid']} on {holder['host']} (its .lock); wait for "
                                 "it, or stop it")
            print(f"{out}: took over the stale lock of " + (f"pid {holder['pid']} (no longer running)" if holder
                                                             else "an unreadable .lock"), file=sys.stderr)
            os.remove(path)
    os.remove(f"{path}.{me['pid']}")
    raise ValueError(f"{out}/.lock was taken by another process while a stale one was replaced; try again")


def pid_alive(pid):
    """Whether a process with this pid runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def unlock_run_folder(out):
    """Remove out/.lock if this process holds it."""
    path = os.path.join(out, ".lock")
    try:
        if read_json(path).get("pid") == os.getpid():
            os.remove(path)
    except (ValueError, OSError):
        pass


def save_checkpoint(path, checkpoint):
    """torch.save to a temp file, loaded back, then renamed: a kill or a failed write or check leaves the previous
    checkpoint whole, and the one kept always loads. RunFolderError naming the file and why (replace_with)."""
    def loads(tmp):  # torch.load as --resume does, memory-mapped: the file's structure is read, not its tensors
        try:
            torch.load(tmp, map_location="cpu", mmap=True, weights_only=False)
        except Exception as e:  # a truncated or damaged file: zip, pickle or a tensor's record
            return f"{tmp} was written but does not load back ({type(e).__name__}: {first_line(e)})"
    replace_with(path, f"{path}.tmp", functools.partial(torch.save, checkpoint), loads)


def load_checkpoint(path, device, model, optimizer=None):
    """A run's checkpoint.pt (model and optimizer state, epoch, history, clocks), its states loaded into model
    and optimizer; ValueError if it cannot load or does not fit them."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(checkpoint["model"])
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
    except Exception as e:  # a truncated or foreign file, or another model's: the message says which and why
        raise ValueError(f"cannot load {path} ({type(e).__name__}: {first_line(e)})")
    return checkpoint


def git_commit():
    """The commit of the code that runs, with '-dirty' when it has uncommitted changes, or None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    run = lambda *cmd: subprocess.run(cmd, cwd=here, capture_output=True, text=True, check=True).stdout.strip()
    try:
        return run("git", "rev-parse", "HEAD") + ("-dirty" if run("git", "status", "--porcelain", "-uno") else "")
    except Exception:
        return None


def versions():
    """Python, torch and torchvision versions, for the record."""
    return dict(python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__)


def make_device(name, local_rank=0):
    """torch.device for --device (TF32 matmuls and convolutions on for CUDA); ValueError for CUDA where there is
    none (never a quiet CPU run)."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device '{name}' is not one of auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    # float32 matmuls (--no-amp, the loss, the optimizer's math) on the tensor cores: 10 mantissa bits, as timm
    # and airbench train; bf16 autocast is unaffected.
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return torch.device("cuda", local_rank)


def device_layout(model, arch, device):
    """The model in the memory layout training uses: channels-last for a ResNet on CUDA (cuDNN's fastest, NHWC;
    the first convolution converts the images)."""
    if device.type == "cuda" and arch in RESNET_PRESETS:
        return model.to(memory_format=torch.channels_last)
    return model


def device_name(device):
    """The GPU's name, or the CPU's architecture and thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def attention_backend(kind, asked, device):
    """The backend a run uses: flex_attention for windowed kinds on CUDA (auto, or asked), else sdpa."""
    windowed = kind in WINDOWED
    if asked == "flex":
        if not windowed:
            raise ValueError(f"--attention-backend flex applies to --attention {', '.join(sorted(WINDOWED))}, "
                             f"not {kind}")
        if device.type != "cuda" or flex_attention is None:
            raise ValueError("--attention-backend flex needs CUDA and torch.nn.attention.flex_attention; "
                             "use sdpa or auto")
    flex = asked == "flex" or (asked == "auto" and windowed and device.type == "cuda" and flex_attention is not None)
    return "flex" if flex else "sdpa"


def build_run_data(cfg, data_dir=None):
    """A run's data from its config (split and regime applied), from `data_dir` instead of its own if given."""
    run = cfg["run"]
    try:
        return build_data(**cfg["data"], seed=run["seed"], data_dir=data_dir or run["data_dir"],
                          download=not run["no_download"])
    except TypeError as e:  # a key of another version of this code
        raise ValueError(f"the data section of this config does not fit this code ({e})")


def build_run_model(cfg, backend="sdpa"):
    """A run's model from its config, initialised from its seed (the same weights for the same seed); the
    model's own checks (patch size, heads, Linformer k, landmarks) raise ValueError before any data is loaded."""
    data = cfg["data"]
    classes, image_size = dataset_shape(data["dataset"], data.get("synthetic_size"), data.get("classes"))
    image_size = data.get("img_size", image_size)  # --img-size: the images are resized to it on the device
    torch.manual_seed(cfg["run"]["seed"])
    try:
        return build_model(**cfg["model"], num_classes=classes, image_size=image_size, backend=backend)
    except TypeError as e:
        if "keyword argument" in str(e) or "positional argument" in str(e):  # a key of another version of this code
            raise ValueError(f"the model section of this config does not fit this code ({e})")
        why = str(e)  # torch's: a tensor size beyond its 64-bit integers
    except (RuntimeError, MemoryError) as e:  # torch's allocator, or a tensor whose byte count overflows
        why = str(e) or type(e).__name__
    # torch's message can run over several lines (C++ frames): its first line says why
    raise ValueError(f"the model's sizes are too large to build: {why.splitlines()[0]}")


def source_state(path, device="cpu"):
    """--init: a finished run folder of this lab (its checkpoint.pt) or a checkpoint file -> (model state dict,
    the source's config or None); ValueError saying why it cannot be used."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    file = os.path.join(path, "checkpoint.pt") if os.path.isdir(path) else path
    if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "final.json")):
        raise ValueError(f"--init {path} is not a finished run folder (no final.json)")
    if not os.path.isfile(file):
        raise ValueError(f"--init {path}: no such file or run folder")
    try:
        checkpoint = torch.load(file, map_location=device, weights_only=False)
    except Exception as e:
        raise ValueError(f"--init {path}: cannot load {file} ({type(e).__name__})")
    state = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"--init {path}: {file} holds no model state dict")
    has_config = os.path.isfile(os.path.join(folder, "config.json"))
    return state, read_config(folder) if has_config else None


def start_weights(cfg, model, download=True):
    """Load the model section's starting point (--init or --pretrained) into model: what was done, for
    config.json, and the normalisation its features were learned with ((mean, std), or None: the data's own)."""
    m = cfg["model"]
    if "init" in m:
        state, source = source_state(m["init"])
        if source is not None:
            kind = lambda arch: "resnet" if arch in RESNET_PRESETS else "vit"
            if kind(source["model"]["arch"]) != kind(m["arch"]):
                raise ValueError(f"--init {m['init']}: a {source['model']['arch']} run cannot start "
                                 f"--arch {m['arch']}")
        record = dict(source=os.path.abspath(m["init"]), source_model=source and source["model"],
                      source_data=source and source["data"],
                      source_commit=source and source["recorded"].get("git_commit"),
                      attention_from=(source["model"].get("attention") if source else None))
        norm = source and source["recorded"]["normalization"]
        norm = norm and (norm["mean"], norm["std"])
        # Other classes (CIFAR-10 0-4 -> 5-9) get a new head even when their count is the same.
        same_classes = source is None or all(source["data"].get(k) == cfg["data"].get(k)
                                             for k in ("dataset", "classes"))
    else:
        state, entry = imagenet_state(m["arch"], m["weights"], m.get("weights_file"), download)
        record = dict(source=m.get("weights_file") or entry.url, weights=f"{type(entry).__name__}.{m['weights']}",
                      attention_from="full" if isinstance(model, ViT) else None)
        norm = (entry.transforms().mean, entry.transforms().std)  # the normalisation the weights were trained with
        same_classes = False  # ImageNet's 1000 are no dataset's of this lab
    try:
        if ("dist_token" in state) != (getattr(model, "dist_token", None) is not None):
            raise ValueError(f"only {'the source' if 'dist_token' in state else 'this model'} has a distillation "
                             "token (--distill token); weights do not move between models with and without one")
        # A ResNet's --stages (or shallow preset) states the stages it keeps; a ViT's depth must be the source's.
        record |= transfer_state(model, state, fresh_head="truncate" in m or not same_classes,
                                 truncated="truncate" in m or m["arch"] in RESNET_PRESETS)
    except ValueError as e:
        raise ValueError(f"{'--init ' + m['init'] if 'init' in m else '--pretrained imagenet'}: {e}")
    return record, norm


def load_teacher(cfg, device):
    """--teacher: the finished run's model on `device` in eval mode with no gradients, its config, and what it is
    (for config.json); ValueError if it is not a finished run or was trained on other classes."""
    path = cfg["optim"]["teacher"]
    if not os.path.isfile(os.path.join(path, "final.json")):
        raise ValueError(f"--teacher {path} is not a finished run folder (no final.json)")
    source = read_config(path)
    classes, _ = dataset_shape(cfg["data"]["dataset"], cfg["data"].get("synthetic_size"), cfg["data"].get("classes"))
    if source["recorded"]["num_classes"] != classes or any(source["data"].get(k) != cfg["data"].get(k)
                                                           for k in ("dataset", "classes")):
        what = lambda d, n: f"{d['dataset']}" + (f" classes {class_list_text(d['classes'])}" if d.get("classes")
                                                 else "") + f" ({n} classes)"
        raise ValueError(f"--teacher {path} was trained on {what(source['data'], source['recorded']['num_classes'])}, "
                         f"this run trains on {what(cfg['data'], classes)}; a teacher must predict the same classes")
    split = lambda c: f"--seed {c['run']['seed']} --val-fraction {c['data']['val_fraction']:g}"
    if split(source) != split(cfg):  # another split: the teacher may have trained on this run's validation images
        raise ValueError(f"--teacher {path} was trained with {split(source)}, this run has {split(cfg)}: "
                         "its training images may hold this run's validation images; the split must be the same")
    if "input_size" not in source["recorded"]:
        raise ValueError(f"--teacher {path} was written before runs recorded their input size; retrain it")
    backend = attention_backend(source["model"].get("attention", "full"), "auto", device)
    teacher = build_run_model(source, backend).to(device)
    load_checkpoint(os.path.join(path, "checkpoint.pt"), device, teacher)
    teacher.eval().requires_grad_(False)
    record = dict(source=os.path.abspath(path), model=source["model"], data=source["data"],
                  test_acc=read_json(os.path.join(path, "final.json"))["test_acc"],
                  commit=source["recorded"].get("git_commit"))
    return teacher, source, record


def ema_pairs(ema, model):
    """(averaged, copied) lists of (EMA tensor, model tensor): parameters and BatchNorm statistics are averaged;
    other buffers (Performer features, step counters) are copied, since an average of random features is none."""
    averaged, copied, seen = [], [], set()
    model_state = model.state_dict(keep_vars=True)
    for name, e in ema.state_dict(keep_vars=True).items():
        m = model_state[name]
        if id(m) in seen:  # a tensor under two names (Linformer's shared projections) moves once a step
            continue
        seen.add(id(m))
        is_average = e.is_floating_point() and (isinstance(m, torch.nn.Parameter) or name.endswith(("running_mean",
                                                                                                 "running_var")))
        (averaged if is_average else copied).append((e.data, m.data))
    return averaged, copied


@torch.no_grad()
def ema_update(pairs, decay):
    """One EMA step after an optimizer step: each averaged tensor moves 1 - decay of the way to the model's."""
    averaged, copied = pairs
    if averaged:
        torch._foreach_lerp_([e for e, _ in averaged], [m for _, m in averaged], 1 - decay)
    if copied:
        torch._foreach_copy_([e for e, _ in copied], [m for _, m in copied])


# ----------------------------------------------------------------------------- metrics

def autocast(device, amp):
    """bf16 autocast on CUDA when amp is on; a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def predict(model, images, labels, mean, std, device, amp=False, batch_size=1024, size=None, resize="bilinear"):
    """The one evaluation loop: float32 logits of uint8 images (N, 3, H, W) in eval mode, batch by batch on
    `device` (standardised, and resized to `size` if given), and their summed cross-entropy against labels."""
    model.eval()
    mean, std = (torch.tensor(v, device=device) for v in (mean, std))
    logits, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size].to(device), mean, std, size, resize)
        with autocast(device, amp):
            out = model(x).float()
        loss_sum += F.cross_entropy(out, labels[i:i + batch_size].to(device), reduction="sum")
        logits.append(out)
    return (torch.cat(logits) if logits else torch.zeros(0, device=device)), loss_sum


def evaluate_split(model, images, labels, data, device, amp, rank=0, world=1):
    """Mean cross-entropy and accuracy on a split, each process taking every world-th image; (None, None) if empty."""
    logits, loss_sum = predict(model, images[rank::world], labels[rank::world], data["mean"], data["std"], device, amp,
                               size=data["input_size"], resize=data["resize"])
    hits = logits.argmax(1) == labels[rank::world].to(device) if len(logits) else torch.zeros(0, device=device)
    totals = torch.stack([loss_sum, hits.sum().double(), torch.tensor(len(hits), dtype=torch.float64, device=device)])
    if world > 1:
        dist.all_reduce(totals)
    loss, correct, n = totals.tolist()
    return (loss / n, correct / n) if n else (None, None)


def classification_metrics(logits, labels, num_classes):
    """Top-1, top-5, macro-F1, per-class recall and confusion matrix (rows: true class, columns: predicted)."""
    logits, labels = logits.cpu(), labels.cpu()
    pred = logits.argmax(1)
    confusion = torch.bincount(labels * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    f1_denominator = support + predicted
    f1 = torch.where(f1_denominator > 0, 2 * tp / f1_denominator.clamp_min(1), torch.zeros_like(tp))
    top5 = logits.topk(min(5, num_classes), 1).indices.eq(labels[:, None]).any(1)
    return dict(test_acc=pred.eq(labels).double().mean().item(), test_top5=top5.double().mean().item(),
                macro_f1=f1.mean().item(), per_class_recall=recall.tolist(), confusion=confusion.tolist())


def threshold_crossings(history, thresholds):
    """For each accuracy threshold, the first epoch (1-based) and wall time at which val_acc reached it, else None."""
    epochs_to, seconds_to = {}, {}
    for t in thresholds:
        hit = next((m for m in history if m.get("val_acc") is not None and m["val_acc"] >= t), None)
        epochs_to[str(t)] = hit["epoch"] if hit else None
        seconds_to[str(t)] = hit["time_s"] if hit else None
    return epochs_to, seconds_to


@contextlib.contextmanager
def model_kept(model):
    """For a throwaway forward and backward (counting FLOPs, compiling): afterwards the model's buffers (BatchNorm
    statistics) are as they were and its gradients are dropped."""
    buffers = [b.clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)
        model.zero_grad(set_to_none=True)


def outputs_sum(outputs):
    """The float32 sum of a model's outputs (both heads' with a distillation token): a throwaway loss."""
    return sum(o.float().sum() for o in (outputs if isinstance(outputs, tuple) else (outputs,)))


def count_flops(net, x, backward=False):
    """FLOPs of net(x) (a multiply-add counts 2) by torch.utils.flop_counter, with backward=True those of a training
    step's forward and backward (the gradients are dropped afterwards); a window counts only the pairs it allows."""
    training = net.training
    net.train(backward)  # a step's forward runs in training mode (dropout's masks are elementwise: no FLOPs)
    layers = [m for m in net.modules() if isinstance(m, Attention)]
    backends = [m.backend for m in layers]
    for m in layers:  # the counter cannot run flex_attention; SDPA computes the same attention
        m.backend = "sdpa"
    # The count leaves no trace: dropout's draws come from a forked generator, BatchNorm's statistics and the
    # gradients are put back as they were.
    try:  # the math backend runs attention as matmuls the counter sees (it has no formula for the fused kernels)
        with (torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []), model_kept(net),
              torch.set_grad_enabled(backward), sdpa_kernel(SDPBackend.MATH),
              FlopCounterMode(display=False) as counter):
            out = net(x)
            if backward:
                outputs_sum(out).backward()
    finally:
        for m, backend in zip(layers, backends):
            m.backend = backend
        net.train(training)
    # The math path scores every (query, key) pair of a windowed kind; only the allowed pairs are its work (what
    # a block-sparse kernel approaches): Q K^T and the weighted sum of V take 2 * 2 * width FLOPs per pair
    # forward, and each of their two gradients as much again.
    masked_out = 0
    for m in layers:
        for radius, shape, dilation in getattr(m, "windows", []):
            mask = local_attention_mask(*m.grid, radius, m.num_prefix_tokens, shape, dilation)
            masked_out += int((~mask).sum()) * 4 * m.proj.in_features * len(x) * (3 if backward else 1)
    return counter.get_total_flops() - masked_out


def bit_costs(model, image_size, device):
    """final.json's cost per image, from one counted forward pass of the model's own modules: flops_per_image
    (count_flops), and as the binary-network papers count it bops (binary multiply-accumulates, binary.binary_macs),
    flops (the full-precision multiply-accumulates of its matmuls and convs: count_flops / 2 less the bops),
    ops = bops / 64 + flops, and model_bits."""
    counted = []
    hooks = [m.register_forward_hook(lambda m, i, o: counted.append(binary_macs(m, i, o)))
             for m in model.modules() if is_binary(m)]
    try:
        total = count_flops(model, torch.zeros(1, 3, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    bops, macs = sum(counted), total // 2
    return dict(flops_per_image=total, bops=bops, flops=macs - bops, ops=bops / 64 + macs - bops,
                model_bits=model_bits(model))


# Dense tensor-core peaks in TFLOP/s from NVIDIA's data sheets, by a name torch.cuda.get_device_name contains (the
# first that matches): bf16 for autocast, tf32 for float32 (TF32 is on). A GPU not listed, or a CPU: give
# --peak-tflops, else MFU is null.
PEAK_TFLOPS = {"H100 PCIe": dict(bf16=756, tf32=378), "H100 NVL": dict(bf16=835, tf32=418),
               "H100": dict(bf16=989, tf32=495), "H200": dict(bf16=989, tf32=495), "GH200": dict(bf16=989, tf32=495),
               "A100": dict(bf16=312, tf32=156), "L40S": dict(bf16=362, tf32=183), "L4": dict(bf16=121, tf32=60),
               "RTX 4090": dict(bf16=165, tf32=82.6)}


def peak_tflops(device, amp, given=None):
    """The device's peak TFLOP/s for the dtype its matmuls use (given: --peak-tflops), or None when unknown."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    peaks = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return peaks and peaks["bf16" if amp else "tf32"]


def mfu(flops, seconds, peak):
    """Model FLOPs utilisation: counted FLOPs per second over the peak (TFLOP/s); None without a peak or time."""
    return flops / seconds / (peak * 1e12) if peak and seconds else None


def _sync(device):
    """Wait for the GPU, so a clock read afterwards times what was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_speed(model, image_size, device, amp=False, batch_size=256, repeats=10, max_seconds=2.0):
    """Inference throughput (images/s at batch_size) and median latency (ms at batch size 1), after warm-up.

    Up to `repeats` timed calls after 3 warm-up calls, but no more once `max_seconds` are spent (at least 3):
    a slow CPU model would otherwise spend half a minute here.
    """
    model.eval()
    results = {}
    for bs in (batch_size, 1):
        x = torch.randn(bs, 3, image_size, image_size, device=device)
        times = []
        for i in range(repeats + 3):  # the first three are warm-up
            _sync(device)
            t = time.perf_counter()
            with autocast(device, amp):
                model(x)
            _sync(device)
            if i >= 3:
                times.append(time.perf_counter() - t)
                if len(times) >= 3 and sum(times) > max_seconds:
                    break
        results[bs] = statistics.median(times)
    return dict(throughput_images_per_s=batch_size / results[batch_size], latency_ms=1000 * results[1])


def corruption_sweep(model, images, labels, data, device, amp, names, seed=0):
    """Top-1 accuracy on corrupted copies of the test set: {name: {severity: acc}} and the mean over all cells."""
    table = {}
    for name in names:
        table[name] = {}
        for severity in range(1, 6):
            bad = corrupt(images, name, severity, seed=seed)  # same seed for every model: identical images
            logits, _ = predict(model, bad, labels, data["mean"], data["std"], device, amp, size=data["input_size"],
                                resize=data["resize"])
            table[name][str(severity)] = logits.argmax(1).cpu().eq(labels).double().mean().item()
    cells = [a for per in table.values() for a in per.values()]
    return table, sum(cells) / len(cells)


@torch.no_grad()
def attention_distance(model, images, mean, std, device, batch_size=64, size=None, resize="bilinear"):
    """Per block and head, the mean grid distance (in patches) from a patch to the patches it attends to.

    Each patch query's weights on patch keys (prefix keys such as cls left out, the rest renormalised) weight the
    Euclidean distances between patch centres; averaged over queries and images (as Dosovitskiy et al.'s
    mean attention distance, in patches instead of pixels). None for a model without explicit softmax weights, a
    binary ViT (its attention is binary.py's) or a pyramid (its grid changes between stages).
    """
    if (not isinstance(model, ViT) or len(model.merges) or not isinstance(model.blocks[0].attn, Attention)
            or model.blocks[0].attn.kind not in SOFTMAX_KINDS):
        return None
    model.eval()
    h, w = model.blocks[0].attn.grid
    c = model.num_prefix_tokens
    rows, cols = torch.arange(h * w, device=device) // w, torch.arange(h * w, device=device) % w
    dist = ((rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2).float().sqrt()
    mean, std = (torch.tensor(v, device=device) for v in (mean, std))
    sums = torch.zeros(len(model.blocks), model.blocks[0].attn.heads, dtype=torch.float64, device=device)
    for i in range(0, len(images), batch_size):
        x = model.embed(normalize(images[i:i + batch_size].to(device), mean, std, size, resize))
        for n, block in enumerate(model.blocks):
            a = block.attn.weights(block.norm1(x))[:, :, c:, c:].float()  # patch queries on patch keys
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
            sums[n] += (a * dist).sum(-1).mean(-1).sum(0)  # per head: mean over queries, summed over images
            x = block(x)
    return (sums / len(images)).tolist()


def test_metrics(model, data, device, amp):
    """classification_metrics of a model on the run's test set."""
    logits, _ = predict(model, data["x_test"], data["y_test"], data["mean"], data["std"], device, amp,
                        size=data["input_size"], resize=data["resize"])
    return classification_metrics(logits, data["y_test"], data["num_classes"])


def head_accuracies(model, data, device, amp):
    """A ViT with a distillation token: each head's test accuracy alone (its test_acc is the two heads' mean)."""
    out = {}
    for head in ("cls", "dist"):
        model.output = head
        try:
            out[head] = test_metrics(model, data, device, amp)["test_acc"]
        finally:
            model.output = "mean"
    return out


def final_metrics(model, data, device, amp, history, thresholds):
    """Every number of final.json that depends on the model and data (train.py adds timing and memory)."""
    image_size = data["input_size"]
    out = test_metrics(model, data, device, amp)
    if getattr(model, "dist_token", None) is not None:
        out["head_test_acc"] = head_accuracies(model, data, device, amp)
    out["params"] = count_params(model)  # all of them, frozen or not
    out |= bit_costs(model, image_size, device)  # flops_per_image and the bit-level cost, from one counted pass
    out.update(measure_speed(model, image_size, device, amp))
    out["epochs_to"], out["seconds_to"] = threshold_crossings(history, thresholds)
    vals = [m["val_acc"] for m in history if m.get("val_acc") is not None]
    out["best_val_acc"] = max(vals) if vals else None
    # On a fixed first 256 test images: the same for every model of a comparison.
    out["attention_distance"] = attention_distance(model, data["x_test"][:256], data["mean"], data["std"], device,
                                                   size=image_size, resize=data["resize"])
    if data["corruptions"]:  # the corrupted regime: the test set under every corruption and severity
        out["corruption"], out["corruption_mean"] = corruption_sweep(
            model, data["x_test"], data["y_test"], data, device, amp, data["corruptions"])
        out["corruption_relative_drop"] = 1 - out["corruption_mean"] / max(out["test_acc"], 1e-12)
    return out


def time_call(fn, device, warmup, repeats):
    """Median, min and max ms of fn() over `repeats` calls after `warmup` calls, and peak CUDA memory (MB)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None
    return dict(median=statistics.median(times), min=min(times), max=max(times), repeats=repeats), peak


def bench_model(variant, grid, a, backend):
    """The benchmark's ViT for one variant (sl-vit: lsa with SPT) at one grid side, each kind at its defaults."""
    kind, spt = ("lsa", True) if variant == "sl-vit" else (variant, False)
    options = dict(attention_options(kind, {}, a.dim // a.heads), backend=backend)
    return ViT(10, grid * a.patch_size, a.patch_size, a.depth, a.dim, a.heads, attention=kind,
               attention_options=options, spt=spt)


def bench_one(variant, grid, scope, a, device, backend):
    """Forward and forward+backward cost of one attention layer or the whole ViT at one grid size."""
    # Each row starts clean: no masks of earlier rows held in GPU memory, no compilations counted against
    # dynamo's recompile limit.
    local_attention_mask.cache_clear()
    flex_block_mask.cache_clear()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = bench_model(variant, grid, a, backend).to(device).eval()
    image_size, tokens = grid * a.patch_size, grid * grid + model.num_prefix_tokens
    row = dict(variant=variant, scope=scope, grid=grid, tokens=tokens, image_size=image_size, backend=backend,
               error=None)
    if scope == "layer":
        net, x = model.blocks[0].attn, torch.randn(a.batch_size, tokens, a.dim, device=device)
    else:
        net, x = model, torch.randn(a.batch_size, 3, image_size, image_size, device=device)
    amp = device.type == "cuda" and not a.no_amp

    def forward():
        with torch.no_grad(), autocast(device, amp):
            net(x)

    def forward_backward():
        with autocast(device, amp):
            out = net(x)
        out.float().sum().backward()

    try:
        row["forward_ms"], row["forward_peak_memory_mb"] = time_call(forward, device, a.warmup, a.repeats)
        row["forward_backward_ms"], row["forward_backward_peak_memory_mb"] = time_call(
            forward_backward, device, a.warmup, a.repeats)
        row["flops"] = count_flops(net, x[:1])  # per image
    except Exception as e:  # one configuration failing (out of memory, a kernel limit) must not lose the others
        first_line = str(e).splitlines()[0] if str(e) else ""
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        row["error"] = "out of memory" if oom else f"{type(e).__name__}: {first_line}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


def bench_parser(variants):
    """The command line of evaluate.py bench-attention."""
    p = Parser(prog="evaluate.py bench-attention",
               description="Time, memory and FLOPs of one attention layer and of the whole ViT against token count.")
    p.add_argument("--variants", default=",".join(variants),
                   help=f"comma-separated: {', '.join(variants)} (default: all)")
    p.add_argument("--grids", default="8,16,32,64",
                   help="patch-grid sides; tokens = side^2 + 1 (default 8,16,32,64: 65 to 4097)")
    p.add_argument("--patch-size", type=int, default=4, help="image size = grid side x patch size (default 4)")
    p.add_argument("--scopes", default="layer,model",
                   help="layer (one attention layer), model (the whole ViT), or both")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "sdpa", "flex"],
                   help="for local, dilated, hybrid (auto: flex on CUDA when available)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--out", default="bench-attention.json", help="JSON file to write (default: bench-attention.json)")
    return p


def bench_list(flag, text, allowed):
    """A benchmark's comma-separated list flag, checked; ValueError naming the first unknown value."""
    chosen = [v for v in text.split(",") if v]
    bad = [v for v in chosen if v not in allowed]
    if bad or not chosen:
        raise ValueError(f"{flag}: unknown '{bad[0] if bad else ''}'; choose from {', '.join(allowed)}")
    return chosen


def bench_settings(a, variants):
    """The checked lists of the benchmark's command line: (variants, scopes, grids); ValueError for a bad one."""
    lists = {flag: bench_list(flag, text, allowed) for flag, text, allowed in (
        ("--variants", a.variants, variants), ("--scopes", a.scopes, ["layer", "model"]))}
    try:
        grids = [int(g) for g in a.grids.split(",")]
    except ValueError:
        raise ValueError(f"--grids '{a.grids}' is not a comma-separated list of whole numbers")
    for flag, value in (("--grids", min(grids)), ("--patch-size", a.patch_size), ("--depth", a.depth),
                        ("--dim", a.dim), ("--heads", a.heads), ("--batch-size", a.batch_size),
                        ("--repeats", a.repeats)):
        if value < 1:
            raise ValueError(f"{flag} {value} must be at least 1")
    if a.warmup < 0:
        raise ValueError(f"--warmup {a.warmup} must be 0 or more")
    for variant in lists["--variants"]:  # the model's own checks (heads divide the width, linformer k, landmarks)
        try:
            bench_model(variant, min(grids), a, "sdpa")
        except ValueError as e:
            raise ValueError(f"--grids {min(grids)} with --variants {variant}: {e}")
    return lists["--variants"], lists["--scopes"], grids


def bench_attention(argv):
    """python evaluate.py bench-attention: attention cost against token count for every variant; writes JSON."""
    variants = ATTENTIONS + ["sl-vit"]
    a = bench_parser(variants).parse_args(argv)
    try:
        chosen, scopes, grids = bench_settings(a, variants)
        device = make_device(a.device)
        backends = {v: attention_backend(v, a.attention_backend if v in WINDOWED else "auto", device) for v in chosen}
    except ValueError as e:
        fail(e, "evaluate.py bench-attention")
    settings = {k: v for k, v in vars(a).items() if k != "out"} | dict(grids=grids, variants=chosen, scopes=scopes)
    report = dict(benchmark="attention", device=device_name(device), settings=settings, versions=versions(),
                  git_commit=git_commit(), command=" ".join(sys.argv), results=[])
    for variant in chosen:
        for scope in scopes:
            for grid in grids:
                row = bench_one(variant, grid, scope, a, device, backends[variant])
                report["results"].append(row)
                write_json(a.out, report)  # after every row: an interrupted benchmark keeps what it measured
                fb = row.get("forward_backward_ms")
                print(f"{variant:10s} {scope:5s} {row['tokens']:6d} tokens  " + (
                    f"forward {row['forward_ms']['median']:9.2f} ms  forward+backward {fb['median']:9.2f} ms"
                    if fb else row["error"]), flush=True)
    print(f"wrote {a.out}")
    return 0


# ----------------------------------------------------------------------------- the input pipeline's speed

class CIFAR10Unchecked(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 (its reading and __getitem__) without its md5 checks, for CIFAR folders rebuilt from
    another source: the same arrays, not byte-identical files."""

    def _check_integrity(self):
        return True

    def _load_meta(self):
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


def mixed_collate(batch, mix):
    """default_collate, then a MixUp / CutMix transform on the batch (a module-level function: workers pickle it)."""
    return mix(*default_collate(batch))


def torchvision_loader(recipe, data_dir, mean, std, batch_size, workers):
    """torchvision's CIFAR10 + DataLoader with a recipe as per-image v2 transforms (RandAugment at bin 3M of 31),
    MixUp / CutMix on the collated batch in the workers, as torchvision's reference scripts do."""
    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if "randaug" in recipe:  # torchvision's bins stop at its maxima (our 10): AugReg's 15 and 20 run at bin 30,
        # the same work per image
        steps.append(v2.RandAugment(num_ops=recipe["randaug"][0], magnitude=min(30, round(3 * recipe["randaug"][1])),
                                    num_magnitude_bins=31, fill=128))
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if "random_erasing" in recipe:
        steps.append(v2.RandomErasing(p=recipe["random_erasing"], value="random"))
    mixers = [(v2.CutMix(alpha=recipe["cutmix"], num_classes=10), recipe.get("switch_prob", 1.0))] \
        if "cutmix" in recipe else []
    mixers += [(v2.MixUp(alpha=recipe["mixup"], num_classes=10), 1 - (mixers[0][1] if mixers else 0.0))] \
        if "mixup" in recipe else []
    collate = default_collate
    if mixers:
        mix = v2.RandomChoice([m for m, _ in mixers], p=[p for _, p in mixers])
        mix = v2.RandomApply([mix], p=recipe["mix_prob"]) if recipe["mix_prob"] < 1 else mix
        collate = functools.partial(mixed_collate, mix=mix)
    dataset = CIFAR10Unchecked(data_dir, train=True, transform=v2.Compose(steps))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                      drop_last=True, pin_memory=torch.cuda.is_available())


def time_ours(recipe, x_train, y_train, mean, std, a, device):
    """Seconds of a.batches of our pipeline (train.py's training_batch) after a.warmup, the epoch's draws prorated."""
    t0 = time.perf_counter()
    perm, shifts, flips = (t.to(device) for t in epoch_plan(len(x_train), epoch=0, seed=0))
    batches = rank_batches(len(perm), a.batch_size)
    draws = recipe_draws(len(perm), batches, recipe, 32, 32, seed=0, epoch=0)
    draws = {k: v.to(device) if k in ("levels", "boxes") else v for k, v in draws.items()}
    _sync(device)
    per_epoch = time.perf_counter() - t0  # once an epoch: each batch bears 1 / len(batches) of it

    def batch(b):
        idx = perm[batches[b]]
        images = augment(x_train[idx], shifts[batches[b]], flips[batches[b]])
        if not recipe:
            return normalize(images, mean, std)
        return recipe_batch(images, y_train[idx], draws, batches[b], b, recipe, mean, std, 10, 0.1)

    for b in range(a.warmup):
        batch(b)
    _sync(device)
    t0 = time.perf_counter()
    for b in range(a.warmup, a.warmup + a.batches):
        batch(b)
    _sync(device)
    return time.perf_counter() - t0 + per_epoch * a.batches / len(batches)


def time_torchvision(recipe, mean, std, a, device):
    """Seconds of a.batches of torchvision's loader, moved to the device, after a.warmup (the workers' start)."""
    batches = iter(torchvision_loader(recipe, a.data_dir, mean, std, a.batch_size, a.workers))
    for _ in range(a.warmup):
        next(batches)
    t0 = time.perf_counter()
    for _ in range(a.batches):
        images, targets = next(batches)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    _sync(device)
    return time.perf_counter() - t0


def bench_data(argv):
    """python evaluate.py bench-data: images/s of our input pipeline and of torchvision's DataLoader for each recipe,
    in one run on one machine; writes JSON."""
    prog = "evaluate.py bench-data"
    p = Parser(prog=prog, description="Images/s of our input pipeline against torchvision's, per recipe.")
    p.add_argument("--data-dir", default="data", help="the folder holding cifar-10-batches-py (default: data)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated presets (default: all; none is "
                                                                "crop and flip only)")
    p.add_argument("--batches", type=int, default=50, help="batches timed per pipeline and recipe (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="batches run before timing (default 5)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="torchvision DataLoader workers (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", default="bench-data.json", help="JSON file to write (default: bench-data.json)")
    a = p.parse_args(argv)
    try:
        chosen = bench_list("--recipes", a.recipes, list(RECIPES))
        if min(a.batches, a.batch_size, a.workers + 1, a.warmup + 1) < 1:
            raise ValueError("--batches and --batch-size must be at least 1, --warmup and --workers at least 0")
        device = make_device(a.device)
        raw = load_dataset("cifar10", a.data_dir, download=False)
        if (a.warmup + a.batches) * a.batch_size > len(raw["x_train"]):
            raise ValueError(f"--warmup + --batches ({a.warmup + a.batches}) batches of {a.batch_size} exceed an epoch")
    except ValueError as e:
        fail(e, prog)
    mean, std = channel_stats(raw["x_train"])
    x_train, y_train = raw["x_train"].to(device), raw["y_train"].to(device)
    ours_mean, ours_std = torch.tensor(mean, device=device), torch.tensor(std, device=device)  # as train.py holds them
    recipes = {name: {k: RECIPES[name][k] for k in RECIPE_KEYS if RECIPES[name].get(k)} for name in chosen}
    for r in recipes.values():  # as train.py resolves them: mixing probabilities where something mixes
        if "mixup" in r or "cutmix" in r:
            r.setdefault("mix_prob", 1.0)
    report = dict(benchmark="data", device=device_name(device), settings=vars(a) | dict(recipes=recipes),
                  versions=versions(), git_commit=git_commit(), command=" ".join(sys.argv), results=[], ratios={})
    report["ratios_every_op"] = {}
    for name, recipe in recipes.items():
        # ours-every-op: RandAugment applying all N ops, as torchvision's does (ours and timm's apply each at p 0.5).
        every_op = dict(recipe, randaug=[*recipe["randaug"][:3], 1.0]) if "randaug" in recipe else None
        rates = {}
        for pipeline in ("ours", "ours-every-op", "torchvision"):
            if pipeline == "ours-every-op" and every_op is None:
                continue
            timed = every_op if pipeline == "ours-every-op" else recipe
            seconds = (time_torchvision(recipe, mean, std, a, device) if pipeline == "torchvision" else
                       time_ours(timed, x_train, y_train, ours_mean, ours_std, a, device))
            rates[pipeline] = a.batches * a.batch_size / seconds
            report["results"].append(dict(pipeline=pipeline, recipe=name, images_per_s=rates[pipeline],
                                          batches=a.batches, seconds=seconds))
            print(f"{name:8s} {pipeline:13s} {rates[pipeline]:10.0f} images/s", flush=True)
        report["ratios"][name] = rates["ours"] / rates["torchvision"]
        if every_op is not None:
            report["ratios_every_op"][name] = rates["ours-every-op"] / rates["torchvision"]
        write_json(a.out, report)  # after every recipe: an interrupted benchmark keeps what it measured
    return 0


# ----------------------------------------------------------------------------- the training step's speed

def timm_vit(preset, image_size):
    """timm's VisionTransformer with a ViT preset's dims (the speed peer), or None when timm is not installed."""
    try:
        import timm  # only this benchmark's peer: not a dependency of the lab
    except ImportError:
        return None
    p = VIT_PRESETS[preset]
    return timm.models.vision_transformer.VisionTransformer(
        img_size=image_size, patch_size=p["patch_size"], num_classes=10, embed_dim=p["dim"], depth=p["depth"],
        num_heads=p["heads"], mlp_ratio=p["mlp_ratio"], drop_path_rate=VIT_DEFAULTS["drop_path"])


def train_step_parts(model, arch, a, device):
    """The default recipe's training step cut into its parts (data, forward, backward, optimizer), as train.py
    runs them: crop and flip on the device, bf16 autocast on CUDA, label-smoothed loss, clipping, fused update."""
    g = torch.Generator().manual_seed(0)
    n, side = a.batch_size, a.img_size
    x = torch.randint(0, 256, (4 * n, 3, side, side), dtype=torch.uint8, generator=g).to(device)
    y = torch.randint(0, 10, (4 * n,), generator=g).to(device)
    shifts, flips = torch.randint(0, 9, (4 * n, 2), generator=g).to(device), (torch.rand(4 * n, generator=g) < 0.5)
    flips, mean, std = flips.to(device), torch.full((3,), 0.5, device=device), torch.full((3,), 0.25, device=device)
    amp = device.type == "cuda" and not a.no_amp
    if arch in RESNET_PRESETS:  # train.py's optimiser defaults per family
        opt = torch.optim.SGD(model.parameters(), **OPTIMIZERS["sgd"], nesterov=True, fused=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), **OPTIMIZERS["adamw"], fused=True)
    state = {}

    def data(i):
        part = slice(i % 4 * n, (i % 4 + 1) * n)
        state["images"] = normalize(augment(x[part], shifts[part], flips[part]), mean, std)
        state["targets"] = y[part]

    def forward(i):
        with autocast(device, amp):
            out = model(state["images"])
        state["loss"] = F.cross_entropy(out.float(), state["targets"],
                                        label_smoothing=OPTIM_DEFAULTS["label_smoothing"])

    def backward(i):
        opt.zero_grad(set_to_none=True)
        state["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM_DEFAULTS["grad_clip"])

    def optimizer(i):
        opt.step()
    return dict(data=data, forward=forward, backward=backward, optimizer=optimizer)


def bench_train_one(arch, compiled, a, device, binary=False):
    """One model's training step (binary: its --binary twin): images/s over whole steps, the median ms of each part
    (timed apart, with a synchronisation between parts), the counted training FLOPs and the MFU."""
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = timm_vit("vit", a.img_size) if arch == "timm-vit" else build_model(arch=arch, num_classes=10,
                                                                                image_size=a.img_size, binary=binary)
    model = device_layout(model.to(device), arch, device).train()
    flops = count_flops(model, torch.zeros(2, 3, a.img_size, a.img_size, device=device), backward=True) / 2
    net = torch.compile(model) if compiled else model
    parts = train_step_parts(net, arch, a, device)
    step = lambda i: [fn(i) for fn in parts.values()]
    for i in range(a.warmup):  # compiling happens here, outside every timing
        step(i)
    whole = time_call(lambda: [step(i) for i in range(a.steps)], device, 0, 3)[0]["median"] / a.steps
    split = {name: [] for name in parts}
    for i in range(a.steps):
        for name, fn in parts.items():
            _sync(device)
            t = time.perf_counter()
            fn(i)
            _sync(device)
            split[name].append(1000 * (time.perf_counter() - t))
    split = {name: statistics.median(ms) for name, ms in split.items()}
    images_per_s = a.batch_size / whole * 1000
    peak = peak_tflops(device, device.type == "cuda" and not a.no_amp, a.peak_tflops)
    return dict(model=arch, compile=compiled, binary=binary, params=count_params(model), batch_size=a.batch_size,
                images_per_s=images_per_s, step_ms=whole, split_ms=split,
                split_share={k: v / sum(split.values()) for k, v in split.items()}, train_flops_per_image=flops,
                tflops=flops * images_per_s / 1e12, peak_tflops=peak, mfu=mfu(flops * images_per_s, 1.0, peak))


def matmul_tflops(device, n=1024, repeats=10):
    """The device's own float32 matmul rate (TFLOP/s, an n x n product): what a CPU step can hope for."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ms = time_call(lambda: a @ b, device, 3, repeats)[0]["median"]
    return 2 * n ** 3 / (ms / 1000) / 1e12


def bench_train(argv):
    """python evaluate.py bench-train: images/s, the step's split and MFU of the default recipe's training step
    for ViT presets and ResNets, with and without torch.compile; writes JSON."""
    prog, models = "evaluate.py bench-train", ARCHS + ["timm-vit"]
    p = Parser(prog=prog, description="Images/s, step split and MFU of the training step per model.")
    p.add_argument("--models", default="vit,timm-vit,vit-11m,resnet18",
                   help=f"comma-separated: {', '.join(models)} (timm-vit: timm's ViT with the vit preset's dims; "
                        "default vit,timm-vit,vit-11m,resnet18)")
    p.add_argument("--compile", default="off,on", help="off, on, or both (default off,on)")
    p.add_argument("--binary", default="off", help="off, on, or both: each model in full precision and/or as its "
                                                   "--binary twin (ViTs, ResNet-18s), and the step ratio (default off)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing, compilation included (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--no-amp", action="store_true", help="float32 (TF32) instead of bf16 autocast on CUDA")
    p.add_argument("--peak-tflops", type=float, help="the device's peak TFLOP/s (default: the table for known "
                                                     "GPUs; none on CPU)")
    p.add_argument("--out", default="bench-train.json", help="JSON file to write (default: bench-train.json)")
    a = p.parse_args(argv)
    try:
        chosen = bench_list("--models", a.models, models)
        modes = [m == "on" for m in bench_list("--compile", a.compile, ["off", "on"])]
        binaries = [m == "on" for m in bench_list("--binary", a.binary, ["off", "on"])]
        cannot = [m for m in chosen if True in binaries and m not in BINARY_ARCHS]
        if cannot:
            raise ValueError(f"--binary on: {', '.join(cannot)} has no binary twin (the ViTs and ResNet-18s do)")
        if min(a.batch_size, a.img_size, a.steps, a.warmup + 1) < 1 or (a.peak_tflops or 1) <= 0:
            raise ValueError("--batch-size, --img-size and --steps must be at least 1, --warmup at least 0, "
                             "--peak-tflops positive")
        device = make_device(a.device)
    except ValueError as e:
        fail(e, prog)
    report = dict(benchmark="train", device=device_name(device), settings=vars(a), versions=versions(),
                  git_commit=git_commit(), command=" ".join(sys.argv), matmul_tflops=matmul_tflops(device),
                  results=[])
    for arch in chosen:
        if arch == "timm-vit" and timm_vit("vit", a.img_size) is None:
            print("timm-vit skipped: timm is not installed (pip install timm)", flush=True)
            continue
        for compiled, binary in itertools.product(modes, binaries):
            row = bench_train_one(arch, compiled, a, device, binary)
            twin = [r for r in report["results"] if (r["model"], r["compile"], r["binary"]) == (arch, compiled, False)]
            if binary and twin:  # the issue's bound: a binary step costs at most 2x its full-precision twin's
                row["step_vs_full_precision"] = row["step_ms"] / twin[0]["step_ms"]
            report["results"].append(row)
            write_json(a.out, report)  # after every row: an interrupted benchmark keeps what it measured
            split = " ".join(f"{k} {100 * v:.0f}%" for k, v in row["split_share"].items())
            ratio = f"  {row['step_vs_full_precision']:.2f}x its twin's step" if "step_vs_full_precision" in row else ""
            print(f"{arch:10s} compile {'on ' if compiled else 'off'} binary {'on ' if binary else 'off'} "
                  f"{row['images_per_s']:9.0f} images/s  {row['tflops']:.3f} TFLOP/s  {split}{ratio}", flush=True)
    print(f"wrote {a.out}")
    return 0


# ----------------------------------------------------------------------------- binary layers' CPU latency

BINARY_SIZES = "linear256,linear512,linear1024,linear2048,conv64@32,conv128@16,conv256@8"  # ResNet-18's stages


def binary_sizes(text):
    """bench-binary's --sizes: [(kind, width, side)] from linear<features> and conv<channels>@<side>; ValueError."""
    sizes = []
    for item in text.split(","):
        m = re.fullmatch(r"linear([0-9]+)|conv([0-9]+)@([0-9]+)", item)
        if not m or min(int(g) for g in m.groups() if g) < 1:
            raise ValueError(f"--sizes: bad '{item}'; each is linear<features> (e.g. linear512) or "
                             f"conv<channels>@<side> (e.g. conv128@16), numbers at least 1")
        sizes.append(("linear", int(m[1]), None) if m[1] else ("conv", int(m[2]), int(m[3])))
    return sizes


def binary_layer(kind, width, side, a):
    """One size's three forwards on the same weights and input: the float layer, the binary layer's float
    simulation and the packed path (weights packed here, once; the input packed inside the call)."""
    torch.manual_seed(0)
    if kind == "linear":  # width -> width on a.tokens rows
        layer, x = BinaryLinear(width, width), torch.randn(a.tokens, width)
        float_layer = lambda: F.linear(x, layer.weight)
    else:  # 3x3, stride 1, zero padding 1: a ResNet-18 stage's conv
        layer, x = BinaryConv2d(width, width, 3, padding=1), torch.randn(a.batch_size, width, side, side)
        float_layer = lambda: F.conv2d(x, layer.weight, None, 1, 1)
    signs, scale = binary_weight(layer.weight)
    shift = layer.shift.detach().view(-1, *[1] * (x.ndim - 2))  # the layer's input shift (RSign), per channel
    w_bits = pack_signs(signs.flatten(1))
    if kind == "linear":
        packed = lambda: packed_linear(pack_signs(x + shift), w_bits, width, scale)
    else:
        packed = lambda: packed_conv2d(x + shift, w_bits, scale, 3, 1, 1)
    return layer, x, {"float": float_layer, "binary_sim": lambda: layer(x), "packed": packed}


@torch.no_grad()
def bench_binary_one(kind, width, side, a):
    """One size: exactness of the packed result against the simulation, then each forward's CPU ms and the ratios."""
    layer, x, forwards = binary_layer(kind, width, side, a)
    simulated = forwards["binary_sim"]()
    cpu = torch.device("cpu")
    row = dict(layer=f"{kind}{width}" + (f"@{side}" if side else ""), kind=kind, input_shape=list(x.shape),
               bops=binary_macs(layer, (x,), simulated), exact=torch.equal(forwards["packed"](), simulated))
    if row["exact"]:
        for name, fn in forwards.items():
            row[f"{name}_ms"] = time_call(fn, cpu, a.warmup, a.repeats)[0]
        ms = {name: row[f"{name}_ms"]["median"] for name in forwards}
        row |= dict(packed_over_float=ms["packed"] / ms["float"], packed_over_sim=ms["packed"] / ms["binary_sim"],
                    float_gmacs=row["bops"] / ms["float"] / 1e6, packed_gbops=row["bops"] / ms["packed"] / 1e6)
    return row


def binary_rows(sizes, a, prog):
    """bench-binary's rows, each printed and written as it comes; 1 at the first row whose packed result is not
    the simulation's."""
    report = dict(benchmark="binary", device=device_name(torch.device("cpu")), threads=torch.get_num_threads(),
                  settings=vars(a), versions=versions(), git_commit=git_commit(), command=" ".join(sys.argv),
                  results=[])
    print(f"{'layer':12s} {'input':>16s} {'bops':>10s} {'float ms':>9s} {'sim ms':>9s} {'packed ms':>10s} "
          f"{'packed/float':>12s} {'packed/sim':>10s}  exact", flush=True)
    for size in sizes:
        row = bench_binary_one(*size, a)
        report["results"].append(row)
        write_json(a.out, report)  # after every row: an interrupted benchmark keeps what it measured
        if not row["exact"]:
            print(f"{prog}: {row['layer']}: the packed result differs from the float simulation", file=sys.stderr)
            return 1
        print(f"{row['layer']:12s} {'x'.join(map(str, row['input_shape'])):>16s} {row['bops']:10.3g} "
              f"{row['float_ms']['median']:9.2f} {row['binary_sim_ms']['median']:9.2f} "
              f"{row['packed_ms']['median']:10.2f} {row['packed_over_float']:12.1f} {row['packed_over_sim']:10.1f}  "
              "true", flush=True)
    print(f"wrote {a.out}")
    return 0


def bench_binary(argv):
    """python evaluate.py bench-binary: CPU ms of bit-packed XNOR-popcount layers against the float layer and the
    binary layer's float simulation of the same shape, after checking the packed result exact; writes JSON."""
    prog, threads = "evaluate.py bench-binary", torch.get_num_threads()
    p = Parser(prog=prog, description="CPU latency of bit-packed binary layers against float layers.")
    p.add_argument("--sizes", default=BINARY_SIZES, help="comma-separated linear<features> (features -> features) "
                                                         f"and conv<channels>@<side> (3x3) (default {BINARY_SIZES})")
    p.add_argument("--tokens", type=int, default=256, help="rows of a linear layer's input (default 256)")
    p.add_argument("--batch-size", type=int, default=4, help="images of a conv layer's input (default 4)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=threads, help=f"torch's CPU threads (default {threads}, its own)")
    p.add_argument("--out", default="bench-binary.json", help="JSON file to write (default: bench-binary.json)")
    a = p.parse_args(argv)
    try:
        sizes = binary_sizes(a.sizes)
        for flag, value, low in (("--tokens", a.tokens, 1), ("--batch-size", a.batch_size, 1),
                                 ("--repeats", a.repeats, 1), ("--threads", a.threads, 1), ("--warmup", a.warmup, 0)):
            if value < low:
                raise ValueError(f"{flag} {value} must be at least {low}")
    except ValueError as e:
        fail(e, prog)
    torch.set_num_threads(a.threads)
    try:
        return binary_rows(sizes, a, prog)
    finally:
        torch.set_num_threads(threads)  # a caller in this process (the tests) keeps its own

def evaluate_run(run_dir, device_flag, data_dir):
    """final.json's numbers for a run folder's checkpoint, on its own data; ValueError for a bad folder or flag."""
    ckpt_path = os.path.join(run_dir, "checkpoint.pt")
    if not (os.path.isfile(os.path.join(run_dir, "config.json")) and os.path.isfile(ckpt_path)):
        raise ValueError(f"{run_dir} is not a run folder with a checkpoint (need config.json and checkpoint.pt)")
    cfg = read_config(run_dir)
    device = make_device(device_flag)
    # The backend is not part of what was trained: pick the one this device runs (flex and sdpa agree).
    model = build_run_model(cfg, attention_backend(cfg["model"].get("attention"), "auto", device)).to(device)
    data = build_run_data(cfg, data_dir)
    norm = cfg["recorded"]["normalization"]  # what it was trained with (a transfer's: its source's)
    data["mean"], data["std"] = norm["mean"], norm["std"]
    ckpt = load_checkpoint(ckpt_path, device, model)
    amp = cfg["optim"]["amp"] and device.type == "cuda"
    out = final_metrics(model, data, device, amp, ckpt["history"], cfg["run"]["thresholds"])
    return out | dict(epoch=ckpt["epoch"])


def main(argv=None):
    """Re-evaluate a run folder's checkpoint on its own data and print the metrics as JSON (or: bench-attention,
    bench-data, bench-train, bench-binary)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench-attention"]:
        return bench_attention(argv[1:])
    if argv[:1] == ["bench-data"]:
        return bench_data(argv[1:])
    if argv[:1] == ["bench-train"]:
        return bench_train(argv[1:])
    if argv[:1] == ["bench-binary"]:
        return bench_binary(argv[1:])
    p = Parser(prog="evaluate.py", description="Evaluate a run folder's checkpoint (test metrics, cost, corruptions).")
    p.add_argument("run_dir", help="a run folder written by train.py (config.json + checkpoint.pt)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--data-dir", default=None, help="where the dataset is (default: the run's own --data-dir)")
    a = p.parse_args(argv)
    try:
        out = evaluate_run(a.run_dir, a.device, a.data_dir)
    except ValueError as e:
        fail(e, "evaluate.py")
    print(json.dumps(out, indent=1))
    if a.out:
        write_json(a.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
