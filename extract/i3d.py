"""I3D (Inception-v1 inflated to 3D, Carreira & Zisserman 2017) in PyTorch, matching DeepMind's network.

The network follows the original TensorFlow/Sonnet definition (kinetics-i3d) operation for operation, so
that the Kinetics-400 weights give the same numbers as the original (checked against the Flax port of
it in `tests/test_extract_i3d.py`, relative error < 1e-4):

- **'SAME' padding** is computed from the input size at run time, as TensorFlow does: the output size is
  ceil(size / stride), the total padding is max((out - 1) * stride + kernel - size, 0), and when that total
  is odd the extra element goes at the *end*. This holds for convolutions (zero padding) and max-pools
  (padding with -inf, so a padded element never wins the max). For 16x224x224 clips every layer happens
  to pad symmetrically or by an even amount except the stride-2 layers, where it matters; at sizes that
  do not divide by the strides (e.g. 13x100x90) it matters everywhere.
- **Batch norm** has epsilon 1e-3 and no scale (gamma = 1); only beta (`bias`) and the moving statistics
  are stored. Convolutions have no bias, except the final Logits convolution (bias, no batch norm, no relu).
- **Logits** (`forward`): average pool of Mixed_5c with kernel (2, 7, 7), stride 1, 'VALID'; dropout
  (identity in eval); 1x1x1 convolution with bias; squeeze the spatial axes; mean over time -> [N, 400].
  As in the original, the spatial squeeze needs Mixed_5c to be 7x7 spatially (224x224 frames) and at
  least 2 steps long (>= 9 frames); other sizes raise ValueError.
- **Features** (`forward_features`): Mixed_5c averaged over time and space -> [N, 1024]. For 16x224x224
  clips this equals the reference pipeline's (2, 7, 7) average pool; unlike it, any frame size works
  (64, 112, ...).

No input normalisation happens inside the model: callers feed RGB already normalised the way the weights
expect (see `extract.weights`).

Module names (state dict keys) mirror the TensorFlow scopes, shortened inside Inception blocks:

    Conv3d_1a_7x7.conv.weight, Conv3d_1a_7x7.bn.{bias,running_mean,running_var}
    Conv3d_2b_1x1, Conv3d_2c_3x3                                   (same form)
    Mixed_3b.b0   = Mixed_3b/Branch_0/Conv3d_0a_1x1
    Mixed_3b.b1a  = Mixed_3b/Branch_1/Conv3d_0a_1x1,  Mixed_3b.b1b = Branch_1/Conv3d_0b_3x3
    Mixed_3b.b2a  = Mixed_3b/Branch_2/Conv3d_0a_1x1,  Mixed_3b.b2b = Branch_2/Conv3d_0b_3x3
    Mixed_3b.b3b  = Mixed_3b/Branch_3/Conv3d_0b_1x1   (after the 3x3x3 stride-1 max-pool "b3a")
    Mixed_3c, Mixed_4b..Mixed_4f, Mixed_5b, Mixed_5c   (same form)
    Logits.conv.{weight,bias}                         = Logits/Conv3d_0c_1x1

`I3D.fuse_bn()` folds every batch norm into its convolution (the unit then holds `conv.weight` and
`conv.bias` and no `bn`); it is an inference-only form, equal within float rounding (~2e-6 relative on
the Kinetics weights). `fuse_bn(channels_last=True)` also stores the weights channels_last_3d, which is
what makes it clearly faster on CPU (about 1.5-2x, see bench/bench_i3d.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["I3D", "Unit3D", "InceptionBlock", "same_padding", "BN_EPS", "ENDPOINTS", "INCEPTION_CHANNELS"]

BN_EPS = 1e-3
# Sonnet's batch norm decay 0.999 -> PyTorch momentum 0.001 (only matters when training the backbone).
BN_MOMENTUM = 1e-3

# Output channels of each Inception block: (b0, b1a, b1b, b2a, b2b, b3b).
INCEPTION_CHANNELS: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)


def _split_total(total: int) -> tuple[int, int]:
    """TensorFlow puts the odd element of 'SAME' padding at the end."""
    before = total // 2
    return before, total - before


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one axis under TensorFlow's 'SAME' rule."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return _split_total(total)


def _same_pads(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> list[tuple[int, int]]:
    return [same_padding(int(n), k, s) for n, k, s in zip(x.shape[2:], kernel, stride)]


def _apply_pads(x: torch.Tensor, pads: list[tuple[int, int]], value: float) -> tuple[torch.Tensor, tuple]:
    """Pad `x` explicitly only where the padding is asymmetric; return (x, symmetric part for the op)."""
    if all(b == a for b, a in pads):
        return x, tuple(b for b, _ in pads)
    # F.pad takes the last axis first.
    flat: list[int] = []
    for b, a in reversed(pads):
        flat += [b, a]
    return F.pad(x, flat, value=value), (0, 0, 0)


class BatchNorm3dNoScale(nn.Module):
    """Batch norm with a shift (beta) but no scale, epsilon 1e-3 — Sonnet v1 with scale=False."""

    def __init__(self, channels: int, eps: float = BN_EPS, momentum: float = BN_MOMENTUM):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, None, self.bias,
                            self.training, self.momentum, self.eps)

    def extra_repr(self) -> str:
        return f"{self.bias.shape[0]}, eps={self.eps}, scale=False"


class Unit3D(nn.Module):
    """Convolution with 'SAME' padding, then batch norm (optional) and relu (optional)."""

    def __init__(self, cin: int, cout: int, kernel: Sequence[int] = (1, 1, 1), stride: Sequence[int] = (1, 1, 1),
                 *, batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        self.relu = relu
        self.conv = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn: BatchNorm3dNoScale | None = BatchNorm3dNoScale(cout) if batch_norm else None
        self._pointwise = self.kernel == (1, 1, 1) and self.stride == (1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._pointwise:
            pad = (0, 0, 0)
        else:
            x, pad = _apply_pads(x, _same_pads(x, self.kernel, self.stride), 0.0)
        x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, pad)
        if self.bn is not None:
            x = self.bn(x)
        if self.relu:
            x = F.relu(x)
        return x

    @torch.no_grad()
    def fuse_bn(self) -> None:
        """Fold the batch norm into the convolution (inference only); a no-op without batch norm."""
        if self.bn is None:
            return
        bn = self.bn
        w = self.conv.weight
        inv_std = torch.rsqrt(bn.running_var.double() + bn.eps)
        new_w = (w.double() * inv_std.view(-1, 1, 1, 1, 1)).to(w.dtype)
        new_b = (bn.bias.double() - bn.running_mean.double() * inv_std).to(w.dtype)
        if self.conv.bias is not None:  # not the case in I3D, but keep it correct
            new_b = new_b + (self.conv.bias.double() * inv_std).to(w.dtype)
        self.conv.weight.copy_(new_w)
        self.conv.bias = nn.Parameter(new_b)
        self.bn = None


def max_pool_same(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Max-pool with TensorFlow 'SAME' padding; padded elements are -inf and never win."""
    x, pad = _apply_pads(x, _same_pads(x, kernel, stride), float("-inf"))
    # F.max_pool3d's own padding is implicit -inf as well.
    return F.max_pool3d(x, kernel, stride, pad)


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: Sequence[int], stride: Sequence[int]):
        super().__init__()
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_same(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME"


class InceptionBlock(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1; concatenated on channels."""

    def __init__(self, cin: int, ch: Sequence[int]):
        super().__init__()
        self.b0 = Unit3D(cin, ch[0])
        self.b1a = Unit3D(cin, ch[1])
        self.b1b = Unit3D(ch[1], ch[2], (3, 3, 3))
        self.b2a = Unit3D(cin, ch[3])
        self.b2b = Unit3D(ch[3], ch[4], (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, ch[5])
        self.out_channels = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class I3D(nn.Module):
    """Inception-v1 I3D, RGB stream. Input [N, 3, T, H, W] float, already normalised."""

    feature_dim = 1024

    def __init__(self, num_classes: int = 400, dropout_keep_prob: float = 1.0):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = 192
        for name in ("Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d",
                     "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"):
            if name == "MaxPool3d_4a_3x3":
                setattr(self, name, MaxPoolSame((3, 3, 3), (2, 2, 2)))
            elif name == "MaxPool3d_5a_2x2":
                setattr(self, name, MaxPoolSame((2, 2, 2), (2, 2, 2)))
            else:
                block = InceptionBlock(cin, INCEPTION_CHANNELS[name])
                setattr(self, name, block)
                cin = block.out_channels
        assert cin == self.feature_dim
        # Dropout before the logits: keep probability 1.0 at inference in the original (identity).
        self.dropout = nn.Dropout(1.0 - dropout_keep_prob)
        self.Logits = Unit3D(cin, num_classes, batch_norm=False, relu=False, bias=True)
        self.bn_fused = False

    @classmethod
    def empty(cls, num_classes: int = 400) -> "I3D":
        """An I3D with uninitialised CPU tensors (skips the default init), to be filled by load_state_dict."""
        with torch.device("meta"):
            model = cls(num_classes)
        return model.to_empty(device="cpu")

    @staticmethod
    def unit_names() -> list[str]:
        """Names of all conv units (Unit3D) in state-dict order, e.g. 'Conv3d_1a_7x7', 'Mixed_3b.b1a', 'Logits'."""
        names = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3"]
        for block in INCEPTION_CHANNELS:
            names += [f"{block}.{b}" for b in ("b0", "b1a", "b1b", "b2a", "b2b", "b3b")]
        return names + ["Logits"]

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """The Mixed_5c feature map [N, 1024, T/8, H/32, W/32] (sizes rounded up)."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects clips shaped [N, 3, T, H, W], got {tuple(x.shape)}")
        for name in ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Mixed_5c averaged over time and space -> [N, 1024]."""
        return self.mixed_5c(x).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics logits [N, num_classes] through the original Logits path (needs 224x224, T >= 9)."""
        x = self.mixed_5c(x)
        t, h, w = x.shape[2:]
        if h != 7 or w != 7 or t < 2:
            raise ValueError(
                f"I3D.forward needs a Mixed_5c map of >= 2 x 7 x 7 (clips of >= 9 x 224 x 224) as in the "
                f"original logits path; got {t} x {h} x {w}. Use forward_features for other sizes.")
        x = F.avg_pool3d(x, (2, 7, 7), stride=1)          # 'VALID' -> [N, 1024, t-1, 1, 1]
        x = self.Logits(self.dropout(x))                  # [N, classes, t-1, 1, 1]
        return x.squeeze(4).squeeze(3).mean(dim=2)

    def fuse_bn(self, channels_last: bool = False) -> "I3D":
        """Fold every batch norm into its convolution, in place; returns self (inference only).

        channels_last=True also stores the convolution weights in torch.channels_last_3d, which makes
        oneDNN run the whole network in NDHWC: about 1.5-2x faster on CPU, same outputs (inputs may stay
        NCDHW). `extract.weights.load_i3d(fuse_bn=True)` turns it on for CPU devices.
        """
        for m in self.modules():
            if isinstance(m, Unit3D):
                m.fuse_bn()
        self.bn_fused = True
        if channels_last:
            self.to(memory_format=torch.channels_last_3d)
        return self.eval()

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> "I3D":
        """Deterministic random weights (independent of the global RNG) with sane activation scales."""
        g = torch.Generator().manual_seed(seed)
        for m in self.modules():
            if isinstance(m, Unit3D):
                w = m.conv.weight
                fan_in = w[0].numel()
                w.copy_(torch.randn(w.shape, generator=g) * math.sqrt(2.0 / fan_in))
                if m.conv.bias is not None:
                    m.conv.bias.copy_(torch.randn(m.conv.bias.shape, generator=g) * 0.01)
                if m.bn is not None:
                    c = m.bn.bias.shape[0]
                    m.bn.bias.copy_(torch.randn(c, generator=g) * 0.1)
                    m.bn.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                    m.bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        return self
