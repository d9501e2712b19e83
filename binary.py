"""One-bit networks (BinaryViT, ReActNet, Bi-Real): weights and activations binarised, simulated in float for
training; the binary ViT's attention and MLP, the binary ResNet-18; the model's bit-level cost (bops, model_bits);
the bit-packed XNOR-popcount layers that show what a binary op costs on a CPU.

A binary layer computes scale * (sign(x) . sign(W)): the sum of +-1 products is an integer (exact in float32 below
2^24 terms), so the packed integer layer and the float simulation agree to the last bit.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- binarisers

def sign_pm1(x):
    """+1 or -1 by x's sign bit (+1 at 0, -1 at -0): torch.sign gives 0 at 0, a third value no bit can hold.
    copysign is one vectorised op; torch.where is several times slower on CPU."""
    return torch.copysign(torch.ones((), dtype=x.dtype, device=x.device), x)


class ApproxSign(torch.autograd.Function):
    """sign(x + shift) (the shift per channel, last dim: ReActNet's RSign) with Bi-Real's ApproxSign gradient,
    2 - 2|x + shift| on [-1, 1] and 0 outside. One function, not a chain of ops: the derivative is made in the
    forward pass in place of x + shift, so a step allocates and sweeps far fewer activation-sized tensors."""

    @staticmethod
    def forward(ctx, x, shift):
        u = x + shift
        out = sign_pm1(u)
        slope = u.abs_().mul_(-2).add_(2).clamp_min_(0)
        ctx.save_for_backward(slope)
        ctx.shift_shape = shift.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        slope, = ctx.saved_tensors
        grad_x = grad * slope
        return grad_x, grad_x.sum_to_size(ctx.shift_shape)


class WeightSign(torch.autograd.Function):
    """Signs of the centred weights; gradient straight through a clamp to [-1, 1], divided by the scale that the
    layer multiplies its output by, so that the weights get the gradient of scale * sign (BinaryViT's, ReActNet's)."""

    @staticmethod
    def forward(ctx, centred, scale):
        ctx.save_for_backward(centred, scale)
        return sign_pm1(centred)

    @staticmethod
    def backward(ctx, grad):
        centred, scale = ctx.saved_tensors
        return grad * (centred.abs() <= 1).to(grad.dtype) / scale.clamp_min(1e-12), None


def binary_weight(w):
    """(signs, scale) of a weight (out, ...): signs of w minus its per-output-channel mean, scale the per-channel
    mean |w| (detached; BinaryViT's code takes it before centring). The binarised weight is scale * signs."""
    dims = tuple(range(1, w.ndim))
    scale = w.detach().abs().mean(dims, keepdim=True)
    return WeightSign.apply(w - w.mean(dims, keepdim=True), scale), scale


class AttentionProbQuant(torch.autograd.Function):
    """BiT's {0, a} quantiser of attention probabilities: round(p / a) clamped to [0, 1], times a; p's gradient passes
    where p / a is in [0, 1], a's is the rounding error there plus 1 above (in place where it can: these tensors are
    batch x heads x tokens^2)."""

    @staticmethod
    def forward(ctx, p, a):
        ctx.save_for_backward(p, a)
        return torch.div(p, a).round_().clamp_(0, 1).mul_(a)

    @staticmethod
    def backward(ctx, grad):
        p, a = ctx.saved_tensors
        q = p / a
        inside = q.clamp(0, 1)
        off = (q - inside).sign_()  # 1 above [0, 1], -1 below, 0 inside: arithmetic, not masks (slow on CPU)
        error = torch.round(inside).sub_(inside).add_(off.clamp_min(0))
        return grad * off.abs_().neg_().add_(1), error.mul_(grad).sum().reshape(a.shape)


# ----------------------------------------------------------------------------- binary layers

class BinaryLinear(nn.Linear):
    """Linear layer on binarised inputs and weights (no bias): scale * (sign(x + shift) . sign(W_centred)), with
    ReActNet's learned per-channel shift (RSign's threshold)."""

    def __init__(self, d_in, d_out):
        super().__init__(d_in, d_out, bias=False)
        self.shift = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        signs, scale = binary_weight(self.weight)
        return F.linear(ApproxSign.apply(x, self.shift), signs).mul_(scale.view(-1))


class BinaryConv2d(nn.Conv2d):
    """Convolution on binarised inputs and weights (no bias), the input shifted per channel first (RSign); zero
    padding, as Bi-Real's and ReActNet's."""

    def __init__(self, c_in, c_out, kernel_size, stride=1, padding=0):
        super().__init__(c_in, c_out, kernel_size, stride, padding, bias=False)
        self.shift = nn.Parameter(torch.zeros(c_in))  # a vector, as every per-channel parameter: no weight decay

    def forward(self, x):
        signs, scale = binary_weight(self.weight)
        x = ApproxSign.apply(x, self.shift.view(-1, 1, 1))
        return F.conv2d(x, signs, None, self.stride, self.padding).mul_(scale.view(1, -1, 1, 1))


class ShiftedPReLU(torch.autograd.Function):
    """prelu(x - shift_in, slope) + shift_out, channels broadcast as the parameters' shapes say. One function: torch's
    PReLU backward is slow on CPU (a third of a binary ViT's elementwise time); this one is x + (slope - 1) * min(x, 0)
    with a two-op backward, equal to F.prelu's gradients."""

    @staticmethod
    def forward(ctx, x, shift_in, slope, shift_out):
        u = x - shift_in
        negative = u.clamp_max(0)
        ctx.save_for_backward(negative, slope)
        ctx.shapes = shift_in.shape, shift_out.shape
        return u.addcmul_(negative, slope - 1).add_(shift_out)

    @staticmethod
    def backward(ctx, grad):
        negative, slope = ctx.saved_tensors
        below = negative.sign().neg_()  # 1 where x - shift_in < 0, else 0
        grad_x = torch.addcmul(grad, grad * below, slope - 1)
        return (grad_x, -grad_x.sum_to_size(ctx.shapes[0]), (grad * negative).sum_to_size(slope.shape),
                grad.sum_to_size(ctx.shapes[1]))


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift, PReLU with a slope per channel (0.25 at first), shift; channels last (tokens) or
    on dim 1 (image maps, dim=1)."""

    def __init__(self, channels, dim=-1):
        super().__init__()
        self.shape = (-1,) if dim == -1 else (-1, 1, 1)  # vectors viewed per layout: never weight-decayed
        self.shift_in, self.shift_out = nn.Parameter(torch.zeros(channels)), nn.Parameter(torch.zeros(channels))
        self.slope = nn.Parameter(torch.full((channels,), 0.25))

    def forward(self, x):
        s = self.shape
        return ShiftedPReLU.apply(x, self.shift_in.view(s), self.slope.view(s), self.shift_out.view(s))


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over batch and tokens for (B, T, C): the binary ViT's norm (BinaryViT's --replace-ln-bn). Tokens as
    rows (B*T, C): the same statistics as on (B, C, T), and a contiguous layout its CPU kernel runs several times
    faster on."""

    def forward(self, x):
        return super().forward(x.reshape(-1, x.shape[-1])).view(x.shape)


def channel_residual(x, width):
    """The real-valued shortcut of a layer from x's channels to `width`: x itself, its channels repeated (wider,
    BinaryViT's MLP widening) or averaged in consecutive groups (narrower, its narrowing)."""
    c = x.shape[-1]
    if width >= c:
        return x.repeat(*[1] * (x.ndim - 1), width // c) if width > c else x
    return x.unflatten(-1, (width, c // width)).mean(-1)


class BinaryUnit(nn.Module):
    """BinaryViT's binary linear: binary linear (its input shifted: RSign), norm, real-valued shortcut, RPReLU."""

    def __init__(self, d_in, d_out, norm):
        super().__init__()
        self.linear = BinaryLinear(d_in, d_out)
        self.norm = norm(d_out)
        self.act = RPReLU(d_out)

    def forward(self, x):
        return self.act(self.norm(self.linear(x)) + channel_residual(x, self.linear.out_features))


class BinaryAttention(nn.Module):
    """BinaryViT's attention: q, k, v from binary units, binarised after a learned shift; softmax probabilities
    quantised to {0, a} (attn_quant binary); the context normalised plus q, k and v before the RPReLU; a binary
    output projection. Binary matmuls: q k^T and p v (counted as bops). The quantiser's a starts at 1 / tokens, the
    mean probability: the authors' 0.005 is that for their 196 tokens (on a few dozen tokens 0.005 would round every
    probability up to a, a uniform attention)."""

    def __init__(self, dim, heads, norm, attn_quant="binary", tokens=196):
        super().__init__()
        if dim % heads:
            raise ValueError(f"--heads {heads} does not divide --dim {dim}")
        self.heads = heads
        self.q, self.k, self.v = BinaryUnit(dim, dim, norm), BinaryUnit(dim, dim, norm), BinaryUnit(dim, dim, norm)
        self.shift_qkv = nn.ParameterList(torch.zeros(dim) for _ in range(3))  # vectors: no weight decay
        self.prob_scale = nn.Parameter(torch.tensor(1 / tokens)) if attn_quant == "binary" else None
        self.norm_context = norm(dim)
        self.act_context = RPReLU(dim)
        self.proj = BinaryUnit(dim, dim, norm)

    def forward(self, x):
        B, T, D = x.shape
        mixed = [self.q(x), self.k(x), self.v(x)]
        q, k, v = (ApproxSign.apply(m, s).view(B, T, self.heads, -1).transpose(1, 2)
                   for m, s in zip(mixed, self.shift_qkv))
        p = torch.softmax(q @ k.transpose(-2, -1) * (D // self.heads) ** -0.5, -1)
        if self.prob_scale is not None:
            p = AttentionProbQuant.apply(p, self.prob_scale)
        context = (p @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(self.act_context(self.norm_context(context) + sum(mixed)))


class BinaryMLP(nn.Module):
    """BinaryViT's MLP: a widening binary unit (shortcut: channels repeated) and a narrowing one (channels averaged);
    RPReLU is its activation (no GELU)."""

    def __init__(self, dim, hidden, norm, dropout=0.0):
        super().__init__()
        self.fc1, self.fc2 = BinaryUnit(dim, hidden, norm), BinaryUnit(hidden, dim, norm)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.fc2(self.fc1(x)))


class BinaryMerge(nn.Module):
    """A binary pyramid's patch merging (BinaryViT's): norm, binary 2x2 stride-2 conv (its input shifted), norm,
    plus the 2x2-averaged input with its channels repeated, RPReLU. Tokens (B, h*w, C) -> (B, h/2*w/2, C_out)."""

    def __init__(self, c_in, c_out, grid, norm):
        super().__init__()
        self.grid = grid
        self.norm_in = norm(c_in)
        self.conv = BinaryConv2d(c_in, c_out, 2, stride=2)
        self.norm = norm(c_out)
        self.act = RPReLU(c_out)

    def forward(self, x):
        x = self.norm_in(x)
        image = lambda t: t.transpose(1, 2).unflatten(2, self.grid)  # B, C, h, w
        y = self.conv(image(x)).flatten(2).transpose(1, 2)
        shortcut = F.avg_pool2d(image(x), 2).flatten(2).transpose(1, 2)
        return self.act(self.norm(y) + channel_residual(shortcut, self.conv.out_channels))


# ----------------------------------------------------------------------------- binary ResNet-18

class BinaryConvUnit(nn.Module):
    """Bi-Real / ReActNet: binary 3x3 conv (its input shifted: RSign), BatchNorm, plus a real-valued shortcut
    (identity, or average pool, 1x1 conv and BatchNorm where the shape changes), RPReLU."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv = BinaryConv2d(c_in, c_out, 3, stride, padding=1)
        self.bn = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.AvgPool2d(stride) if stride > 1 else nn.Identity(),
                                          nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.act = RPReLU(c_out, dim=1)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + self.shortcut(x))


class BinaryResNet(nn.Module):
    """ResNet-18 with every 3x3 conv of its residual stages binary, each with its own shortcut (Bi-Real); full-
    precision stem (3x3 for 64 px or less, else ImageNet's 7x7 and max-pool), downsampling shortcuts and fc.
    `stages` keeps the first residual stages, as model.resnet does."""

    def __init__(self, num_classes, image_size=32, stages=4):
        super().__init__()
        small = image_size <= 64
        self.conv1 = nn.Conv2d(3, 64, 3 if small else 7, 1 if small else 2, 1 if small else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)  # no ReLU: the first block binarises its input (ReActNet's first conv)
        self.maxpool = nn.Identity() if small else nn.MaxPool2d(3, 2, 1)
        widths = [64, 128, 256, 512]
        for i, width in enumerate(widths):
            c_in = widths[i - 1] if i else 64
            stage = nn.Sequential(BinaryConvUnit(c_in, width, 1 if i == 0 else 2), BinaryConvUnit(width, width, 1),
                                  BinaryConvUnit(width, width, 1), BinaryConvUnit(width, width, 1))
            setattr(self, f"layer{i + 1}", stage if i < stages else nn.Identity())
        self.fc = nn.Linear(widths[stages - 1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ----------------------------------------------------------------------------- cost

def binary_macs(module, inputs, output):
    """Binary multiply-accumulates of one forward of a binary module (a forward hook's arguments): a binary linear
    or conv's output elements times its fan-in; binary attention's q k^T and p v, T * T * width each."""
    if isinstance(module, BinaryLinear):
        return output.numel() * module.in_features
    if isinstance(module, BinaryConv2d):
        return output.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
    B, T, D = inputs[0].shape
    return 2 * B * T * T * D


def is_binary(module):
    """A module whose forward does binary multiply-accumulates of its own (binary_macs)."""
    return isinstance(module, (BinaryLinear, BinaryConv2d, BinaryAttention))


def binary_weights(model):
    """The weights of the model's binary linears and convs (stored at one bit; never weight-decayed)."""
    return [m.weight for m in model.modules() if isinstance(m, (BinaryLinear, BinaryConv2d))]


def model_bits(model):
    """Bits to store the model: binary weights at 1 bit, their per-channel scales and every other parameter at 32
    (BatchNorm's running statistics fold into its affine at inference: not counted)."""
    binary = binary_weights(model)
    binary_ids = {id(w) for w in binary}
    real = sum(p.numel() for p in model.parameters() if id(p) not in binary_ids)
    return sum(w.numel() for w in binary) + 32 * (real + sum(w.shape[0] for w in binary))


# ----------------------------------------------------------------------------- bit-packed XNOR-popcount layers

# A +-1 dot product of k terms is k - 2 * (the places where the signs differ): with signs as bits (1 for +1), that
# is k - 2 * popcount(x XOR w). torch has no popcount, so a byte table looks it up (two bytes at a time, a
# 65536-entry table, where a row's byte count is even: half the lookups). Only integer ops until the scale.
BIT_VALUES = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)  # first element in the high bit
POPCOUNT = sum((torch.arange(256) >> b) & 1 for b in range(8)).to(torch.uint8)  # set bits of each byte
POPCOUNT16 = (POPCOUNT[:, None] + POPCOUNT[None, :]).flatten()  # of each 16-bit word, whatever the byte order
CHUNK_BYTES = 2 ** 22  # the (rows, out, bytes) XOR of one chunk: its int64 lookup indices take 8x this


def pack_bits(bits):
    """A bool tensor's last dim packed 8 to a uint8 byte, first element in the high bit (numpy.packbits' order),
    padded with zero bits to a multiple of 8."""
    bits = F.pad(bits.to(torch.uint8), (0, -bits.shape[-1] % 8))
    return (bits.unflatten(-1, (-1, 8)) * BIT_VALUES).sum(-1, dtype=torch.uint8)


def pack_signs(x):
    """x's last dim as sign bits, 1 where sign_pm1 gives +1 (the sign bit clear: +0 yes, -0 no), packed to uint8."""
    return pack_bits(~torch.signbit(x))


def popcount(v):
    """Set bits of each row of uint8 bytes (last dim), as int32."""
    if v.shape[-1] % 2 == 0:
        return POPCOUNT16.take(v.view(torch.uint16).long()).sum(-1, dtype=torch.int32)
    return POPCOUNT.take(v.long()).sum(-1, dtype=torch.int32)


def xor_popcount(a, w, valid=None):
    """popcount(a_i XOR w_j), AND valid_i where given, for every row i of a and j of w (uint8 rows of one width):
    int32 (rows of a, rows of w), in chunks of a's rows so the memory stays near CHUNK_BYTES whatever the batch."""
    step = max(1, CHUNK_BYTES // w.numel())
    counts = []
    for i in range(0, a.shape[0], step):
        x = a[i:i + step, None] ^ w
        if valid is not None:
            x &= valid[i:i + step, None]
        counts.append(popcount(x))
    return torch.cat(counts)


def packed_linear(x_bits, w_bits, k, scale):
    """BinaryLinear's output from packed signs: x_bits (..., bytes) = pack_signs(x), w_bits (out, bytes) =
    pack_signs(signs), k the features, scale (out,): scale * (k - 2 * popcount(x XOR w)). Padding bits are 0 in both
    operands, so their XOR adds nothing."""
    dots = k - 2 * xor_popcount(x_bits.reshape(-1, x_bits.shape[-1]), w_bits)
    return (dots.to(scale.dtype) * scale.view(-1)).view(*x_bits.shape[:-1], -1)


def packed_conv2d(x, w_bits, scale, kernel_size=3, stride=1, padding=0):
    """BinaryConv2d's output from packed weight signs (w_bits = pack_signs(signs.flatten(1)), scale (out,)): x's
    patches unfolded and packed. Zero padding is a third value no bit holds, so a packed mask of the taps inside the
    image drops it: scale * (taps inside - 2 * popcount((x XOR w) AND inside)), F.conv2d's result exactly."""
    B, C, H, W = x.shape
    # pack_signs binarises: the unfolded zeros of the padding become +1 bits, which the mask then drops
    patches = F.unfold(x, kernel_size, padding=padding, stride=stride).transpose(1, 2)  # B, L, C*k*k (channel-major)
    inside = F.unfold(x.new_ones(1, 1, H, W), kernel_size, padding=padding, stride=stride)[0].T.repeat(1, C) > 0
    L = inside.shape[0]
    taps = inside.sum(1, dtype=torch.int32).repeat(B)
    dots = taps[:, None] - 2 * xor_popcount(pack_signs(patches).flatten(0, 1), w_bits, pack_bits(inside).repeat(B, 1))
    out = (dots.to(scale.dtype) * scale.view(-1)).view(B, L, -1).transpose(1, 2)
    side = lambda n: (n + 2 * padding - kernel_size) // stride + 1
    return out.reshape(B, -1, side(H), side(W))
