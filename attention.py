"""Multi-head self-attention for the ViT, every variant behind one module: `Attention(dim, heads, kind, ...)`.

Every kind computes q, k, v with one linear layer and ends with one output projection; only the step in
between differs. What the cls token (index 0, when present) attends to, per kind:
  full       every token (scaled_dot_product_attention)
  local      every token; every patch attends to it (global token). Patches: a window of `radius` on the grid
  dilated    as local; patches: the atrous window, offsets dilation * (i, j) with |i|, |j| <= radius
  hybrid     as local in each branch; branches (windows at several dilations) mixed per token by a softmax gate
  linformer  itself, exactly, plus the k learned projections of the patch keys and values (as every token does)
  performer  every token, through the random-feature estimate of the softmax kernel (an ordinary token)
  nystrom    every token, through the landmark (segment-mean) approximation (an ordinary token)
  lsa        every token except itself: the diagonal is masked for all tokens, and a learned temperature per head
"""
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The kinds and the options table are in options.py, which imports no torch: train.py builds its command line
# from them before torch loads.
from options import ATTENTION_OPTIONS, ATTENTIONS, WINDOWED, option_flag

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # older torch: only the portable SDPA path
    create_block_mask = flex_attention = None


def attention_options(kind, given, head_dim):
    """The options of `kind`, defaults filled in under the `given` ones (the Performer's feature count from
    head_dim, when there is one); ValueError naming the flag for an option of another kind or a value out of
    range."""
    for name in given:
        if kind not in ATTENTION_OPTIONS[name]["kinds"]:
            kinds = ", ".join(sorted(ATTENTION_OPTIONS[name]["kinds"]))
            raise ValueError(f"{option_flag(name)} only applies to --attention {kinds} (got --attention {kind})")
    options = {name: given.get(name, o["default"]) for name, o in ATTENTION_OPTIONS.items() if kind in o["kinds"]}
    for name, value in options.items():
        low = ATTENTION_OPTIONS[name].get("low")
        if low is not None and value is not None and value < low:
            raise ValueError(f"{option_flag(name)} {value} must be at least {low}")
    conv = options.get("nystrom_conv")
    if conv and conv % 2 == 0:
        raise ValueError(f"--nystrom-conv {options['nystrom_conv']} must be odd (or 0 for no conv residual)")
    if isinstance(options.get("dilations"), str):
        try:
            options["dilations"] = [int(d) for d in options["dilations"].split(",")]
        except ValueError:
            raise ValueError(f"--dilations '{options['dilations']}' is not a comma-separated list of whole numbers")
    if "dilations" in options and (min(options["dilations"]) < 1 or len(set(options["dilations"])) < 2):
        raise ValueError(f"--dilations {','.join(map(str, options['dilations']))} needs at least two different "
                         "dilations, each at least 1")
    if kind == "performer" and options["performer_features"] is None and head_dim:
        options["performer_features"] = default_performer_features(head_dim)
    return options


def shown_options(model):
    """(name, value) of the attention options a run's name and label show, the main options first."""
    kind = model.get("attention", "full")
    shown = [(name, model[name]) for name, o in ATTENTION_OPTIONS.items()
             if kind in o["kinds"] and name in model and (o["main"] or model[name] != o["default"])]
    return sorted(shown, key=lambda item: not ATTENTION_OPTIONS[item[0]]["main"])


# ----------------------------------------------------------------------------- grid windows (local, dilated, hybrid)

def window_rule(grid_w, radius, dilation=1, shape="square", num_prefix_tokens=1):
    """f(query_index, key_index) -> bool tensor, True where the query token may attend to the key token.

    Patches (row-major on a grid `grid_w` wide, after `num_prefix_tokens` tokens such as cls) see each other
    when their row and column offsets are both multiples of `dilation` and, counted in dilated steps, within
    `radius`: Chebyshev (square) or Euclidean (circle) distance. Prefix tokens see and are seen by everything.
    One rule serves the dense boolean mask and flex_attention's mask_mod, so the two paths cannot disagree.
    """
    c = num_prefix_tokens
    reach = radius * dilation

    def allowed(q, k):
        dr = ((q - c) // grid_w - (k - c) // grid_w).abs()
        dc = ((q - c) % grid_w - (k - c) % grid_w).abs()
        near = torch.maximum(dr, dc) <= reach if shape == "square" else dr * dr + dc * dc <= reach * reach
        ok = near & (dr % dilation == 0) & (dc % dilation == 0)
        return ok | (q < c) | (k < c) if c else ok
    return allowed


@functools.lru_cache(maxsize=64)
def local_attention_mask(grid_h, grid_w, radius, num_prefix_tokens=1, shape="square", dilation=1, device="cpu"):
    """Boolean (T, T) mask of window_rule: True where query token i may attend to key token j (cached, shared
    by the layers).

    With a cls token a radius covering the grid equals full attention, and information can still cross the
    grid through the cls token; use mean pooling (no cls token) for strictly local patch features.
    """
    i = torch.arange(grid_h * grid_w + num_prefix_tokens, device=device)
    return window_rule(grid_w, radius, dilation, shape, num_prefix_tokens)(i[:, None], i[None, :])


@functools.lru_cache(maxsize=64)
def not_self_mask(n, device):
    """Boolean (n, n) mask, False on the diagonal: LSA's rule that no token attends to itself (cached)."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


@functools.lru_cache(maxsize=64)
def flex_block_mask(grid_h, grid_w, radius, num_prefix_tokens, shape, dilation, device):
    """flex_attention's BlockMask for the same window: only blocks with an allowed pair are computed (cached)."""
    rule = window_rule(grid_w, radius, dilation, shape, num_prefix_tokens)
    n = grid_h * grid_w + num_prefix_tokens
    return create_block_mask(lambda b, h, q, k: rule(q, k), None, None, n, n, device=device)


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """flex_attention compiled once: uncompiled it materialises the scores and is slow."""
    # Each window is a new compilation of the same function (batch sizes become dynamic after the first change);
    # past dynamo's recompile limit (8) it would silently run eagerly, materialising the scores. Allow more,
    # and past them fail loudly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    return torch.compile(flex_attention)


# ----------------------------------------------------------------------------- performer (FAVOR+)

def orthogonal_features(m, d, seed):
    """(m, d) random features: rows orthogonal within each block of d, with the lengths of Gaussian vectors."""
    g = torch.Generator().manual_seed(seed)
    blocks = [torch.linalg.qr(torch.randn(d, d, generator=g))[0].T for _ in range(-(-m // d))]
    return torch.cat(blocks)[:m] * torch.randn(m, d, generator=g).norm(dim=1, keepdim=True)


def default_performer_features(head_dim):
    """The Performer paper's feature count for head width d: d ln d (at least 1)."""
    return max(1, round(head_dim * math.log(head_dim)))


def positive_features(x, w, is_query):
    """phi(x) = exp(w x - |x|^2 / 2) / sqrt(m) on x scaled by d^-1/4: phi(q) . phi(k) estimates exp(q . k / sqrt(d)).

    A maximum is subtracted inside exp against overflow: per query row (it cancels in that row's normaliser),
    and over all keys of a head (a common factor that cancels too).
    """
    x = x * x.shape[-1] ** -0.25
    proj = x @ w.T
    stabiliser = proj.amax(-1, keepdim=True) if is_query else proj.amax((-2, -1), keepdim=True)
    return (torch.exp(proj - (x * x).sum(-1, keepdim=True) / 2 - stabiliser.detach()) + 1e-6) / math.sqrt(w.shape[0])


def performer_attention(q, k, v, w):
    """FAVOR+ estimate of softmax attention, linear in the sequence length: phi(Q) (phi(K)^T V) / phi(Q) phi(K)^T 1."""
    qf, kf = positive_features(q, w, True), positive_features(k, w, False)
    return (qf @ (kf.transpose(-2, -1) @ v)) / (qf @ kf.sum(-2).unsqueeze(-1))


# ----------------------------------------------------------------------------- nystromformer

def segment_means(n, m, device=None):
    """(m, n) matrix averaging n tokens over m contiguous segments whose sizes differ by at most one."""
    segment = torch.arange(n, device=device) * m // n
    a = F.one_hot(segment, m).T.float()
    return a / a.sum(1, keepdim=True)


def iterative_pinv(a, iters=6):
    """Moore-Penrose pseudo-inverse by Razavi et al.'s cubic iteration, started per matrix at A^T / (|A|_1 |A|_inf)."""
    col = a.abs().sum(-2).amax(-1)  # largest column sum of each matrix, not of the whole batch
    row = a.abs().sum(-1).amax(-1)
    z = a.transpose(-2, -1) / (col * row)[..., None, None]
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(q, k, v, landmarks, pinv_iters=6):
    """Nystromformer: softmax(Q Kl^T) pinv(softmax(Ql Kl^T)) softmax(Ql K^T) V with segment-mean landmarks Ql, Kl."""
    q = q * q.shape[-1] ** -0.5
    means = segment_means(q.shape[-2], min(landmarks, q.shape[-2]), q.device).to(q.dtype)
    ql, kl = means @ q, means @ k
    f = (q @ kl.transpose(-2, -1)).softmax(-1)
    a = (ql @ kl.transpose(-2, -1)).softmax(-1)
    b = (ql @ k.transpose(-2, -1)).softmax(-1)
    return f @ (iterative_pinv(a, pinv_iters) @ (b @ v))


# ----------------------------------------------------------------------------- the module

def at_least_fp32(x):
    """x in float32, or float64 if it already is (bf16 / fp16 under autocast would break exp and the pseudo-inverse)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class Attention(nn.Module):
    """Multi-head self-attention of any kind in ATTENTIONS, on a ViT's tokens (`num_prefix_tokens` such as the cls
    token first, then the patches of `grid`, (rows, cols), row by row).

    options: the kind's ATTENTION_OPTIONS (defaults from that table). shared_projection: the first layer's
    Linformer matrix, for sharing across layers. backend: "sdpa" (dense boolean masks, runs anywhere) or "flex"
    (flex_attention block masks, CUDA).
    """

    def __init__(self, dim, heads, kind="full", grid=(8, 8), num_prefix_tokens=1, backend="sdpa",
                 shared_projection=None, **options):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        if kind not in ATTENTIONS:
            raise ValueError(f"unknown attention '{kind}'; choose from {', '.join(ATTENTIONS)}")
        unknown = sorted(set(options) - set(ATTENTION_OPTIONS))
        if unknown:
            raise TypeError(f"unknown attention option '{unknown[0]}'; choose from {', '.join(ATTENTION_OPTIONS)}")
        o = {name: option["default"] for name, option in ATTENTION_OPTIONS.items()} | options
        self.kind, self.heads, self.grid, self.backend = kind, heads, tuple(grid), backend
        self.num_prefix_tokens = num_prefix_tokens
        head_dim = dim // heads
        n_patches = grid[0] * grid[1]
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if kind in WINDOWED:
            d = {"local": [1], "dilated": [o["dilation"]], "hybrid": list(o["dilations"])}[kind]
            self.windows = [(o["radius"], o["window_shape"], di) for di in d]
        if kind == "hybrid":
            self.gate = nn.Linear(dim, len(self.windows))  # per token, a softmax over the branches
        if kind == "linformer":
            k = o["linformer_k"]
            if k > n_patches:
                raise ValueError(f"linformer k {k} exceeds the {n_patches} patch tokens; allowed: 1 to {n_patches}")
            self.n_patches, self.linformer_share = n_patches, o["linformer_share"]
            shape = (heads, k, n_patches) if self.linformer_share == "none" else (k, n_patches)
            init = lambda: nn.Parameter(torch.randn(shape) / math.sqrt(n_patches))  # keeps keys' scale
            # "layers": the ViT hands the first layer's matrix to the others as shared_projection
            self.proj_k = shared_projection if shared_projection is not None else init()
            self.proj_v = self.proj_k if self.linformer_share in ("kv", "layers") else init()
        if kind == "performer":
            m = o["performer_features"] or default_performer_features(head_dim)
            self.redraw_interval = o["redraw_interval"]
            # Buffers, so the features in use are saved in the checkpoint and evaluation is deterministic.
            self.register_buffer("feature_seed", torch.randint(0, 2 ** 31 - 1, ()))  # drawn from the model seed
            self.register_buffer("train_calls", torch.zeros((), dtype=torch.long))
            self.register_buffer("features", orthogonal_features(m, head_dim, int(self.feature_seed) * 1000003))
            self.host_calls = None  # train_calls mirrored on the host: reading a CUDA buffer every step would sync
        if kind == "nystrom":
            tokens = n_patches + num_prefix_tokens
            if o["landmarks"] > tokens:
                raise ValueError(f"{o['landmarks']} landmarks exceed the {tokens} tokens; allowed: 1 to {tokens}")
            self.landmarks, self.pinv_iters = o["landmarks"], o["pinv_iters"]
            self.value_conv = None
            if o["nystrom_conv"]:  # depthwise over the sequence, one kernel per head, as in the paper
                size = o["nystrom_conv"]
                self.value_conv = nn.Conv2d(heads, heads, (size, 1), padding=(size // 2, 0), groups=heads, bias=False)
        if kind == "lsa":
            self.temperature = nn.Parameter(torch.full((heads,), head_dim ** -0.5))

    def windowed(self, q, k, v, window):
        """Attention restricted to one grid window: flex block mask on the flex backend, else a dense boolean mask."""
        radius, shape, dilation = window
        h, w = self.grid
        if self.backend == "flex":
            block_mask = flex_block_mask(h, w, radius, self.num_prefix_tokens, shape, dilation, q.device)
            return compiled_flex_attention()(q, k, v, block_mask=block_mask)
        mask = local_attention_mask(h, w, radius, self.num_prefix_tokens, shape, dilation, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self.host_calls = None  # a loaded train_calls is read again at the next training call

    def redraw_features(self):
        """Performer: new random features for this many training calls; the same on every process (seeded)."""
        draw = self.host_calls // self.redraw_interval
        w = orthogonal_features(*self.features.shape, int(self.feature_seed) * 1000003 + draw)
        self.features.copy_(w)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)  # each B, H, T, hd
        if self.kind == "full":
            y = F.scaled_dot_product_attention(q, k, v)
        elif self.kind in ("local", "dilated"):
            y = self.windowed(q, k, v, self.windows[0])
        elif self.kind == "hybrid":
            gate = self.gate(x).softmax(-1).transpose(1, 2).unsqueeze(-1)  # B, branches, T, 1
            y = sum(gate[:, i, None] * self.windowed(q, k, v, win) for i, win in enumerate(self.windows))
        elif self.kind == "linformer":
            y = self.linformer(q, k, v)
        elif self.kind == "performer":
            if self.training and self.redraw_interval:
                if self.host_calls is None:
                    self.host_calls = int(self.train_calls)
                if self.host_calls and self.host_calls % self.redraw_interval == 0:
                    self.redraw_features()
                self.host_calls += 1
                self.train_calls += 1
            with torch.autocast(x.device.type, enabled=False):  # exp of features needs float32
                y = performer_attention(at_least_fp32(q), at_least_fp32(k), at_least_fp32(v), self.features)
            y = y.to(v.dtype)
        elif self.kind == "nystrom":
            with torch.autocast(x.device.type, enabled=False):  # the pseudo-inverse iteration needs float32
                y = nystrom_attention(at_least_fp32(q), at_least_fp32(k), at_least_fp32(v), self.landmarks,
                                      self.pinv_iters).to(v.dtype)
            if self.value_conv is not None:
                y = y + self.value_conv(v)
        else:  # lsa: q scaled by the learned temperature, a token never attends to itself
            y = F.scaled_dot_product_attention(q * self.temperature.view(1, -1, 1, 1), k, v,
                                               attn_mask=not_self_mask(T, x.device), scale=1.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, D))

    def linformer(self, q, k, v):
        """Keys and values of the patches projected along the sequence to k rows; prefix tokens keep their own."""
        c = self.num_prefix_tokens
        n = k.shape[-2] - c
        if n > self.n_patches:
            raise ValueError(f"linformer was built for {self.n_patches} patch tokens, got {n}")
        pk, pv = self.proj_k[..., :n], self.proj_v[..., :n]  # a shorter sequence uses the first n columns
        if self.linformer_share == "none":
            pk, pv = pk.unsqueeze(0), pv.unsqueeze(0)  # 1, H, k, n: a matrix per head
        keys = torch.cat([k[..., :c, :], pk.to(k.dtype) @ k[..., c:, :]], -2)
        values = torch.cat([v[..., :c, :], pv.to(v.dtype) @ v[..., c:, :]], -2)
        return F.scaled_dot_product_attention(q, keys, values)

    def weights(self, x):
        """Explicit (B, H, T, T) attention weights for the softmax kinds (full, local, dilated, hybrid, lsa)."""
        B, T, D = x.shape
        q, k, _ = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if self.kind == "lsa":
            scores = q @ k.transpose(-2, -1) * self.temperature.view(1, -1, 1, 1)
            return scores.masked_fill(~not_self_mask(T, x.device), float("-inf")).softmax(-1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.heads)
        if self.kind == "full":
            return scores.softmax(-1)
        if self.kind not in WINDOWED:
            raise ValueError(f"attention '{self.kind}' has no explicit softmax weights")
        h, w = self.grid
        masks = [local_attention_mask(h, w, r, self.num_prefix_tokens, s, d, x.device) for r, s, d in self.windows]
        per_window = [scores.masked_fill(~mask, float("-inf")).softmax(-1) for mask in masks]
        if self.kind != "hybrid":
            return per_window[0]
        gate = self.gate(x).softmax(-1)  # B, T, branches: each query's mix of its branches' weights
        return sum(gate[:, None, :, i, None] * a for i, a in enumerate(per_window))
