"""The fine-tuning model: I3D with frozen batch norm + a head, and its two-group optimiser.

    backbone = FrozenBNI3D(load_i3d("kinetics400"), train_bn_bias=True, train_from=None)
    model = FinetuneModel(backbone, build_head("core", groups=...), amp=False, channels_last=False)
    optim = build_optimizer(model, lr_backbone=1e-4, lr_head=1e-3)
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from extract.i3d import ENDPOINTS, I3D, BatchNorm3dNoScale

INCEPTION_BLOCKS = tuple(n for n in ENDPOINTS if n.startswith("Mixed_"))


class FrozenBNI3D(nn.Module):
    """I3D features [N, 3, L, S, S] -> [N, 1024] with every batch norm frozen.

    `train()` keeps each BatchNorm3dNoScale in eval mode, so batch norm always normalises with the
    stored (Kinetics) statistics and never updates them: with 1-2 pairs per step the batch statistics
    of a few clips of one video would be noise. The shift `bn.bias` stays a parameter (it is the only
    bias of a conv unit) and trains unless `train_bn_bias=False`. The Logits layer is frozen (unused).
    `checkpoint_activations` recomputes each Inception block during backward (torch.utils.checkpoint,
    non-reentrant): its activations are not kept, which is what fills the memory at 224 px.
    """

    def __init__(self, i3d: I3D, *, train_bn_bias: bool = True, train_from: str | None = None,
                 checkpoint_activations: bool = False):
        super().__init__()
        if getattr(i3d, "bn_fused", False):
            raise ValueError("FrozenBNI3D needs an unfused I3D (load_i3d(..., fuse_bn=False))")
        self.i3d = i3d
        self.checkpoint_activations = bool(checkpoint_activations)
        frozen_until = ENDPOINTS.index(train_from) if train_from else 0
        for p in i3d.Logits.parameters():
            p.requires_grad_(False)
        for k, name in enumerate(ENDPOINTS):
            for pname, p in getattr(i3d, name).named_parameters():
                trainable = k >= frozen_until and (train_bn_bias or not pname.endswith("bn.bias"))
                p.requires_grad_(trainable)
        self.train()

    def train(self, mode: bool = True) -> "FrozenBNI3D":
        super().train(mode)
        for m in self.modules():
            if isinstance(m, BatchNorm3dNoScale):
                m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        use_ckpt = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for name in ENDPOINTS:
            layer = getattr(self.i3d, name)
            if use_ckpt and name in INCEPTION_BLOCKS:
                x = checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
        return x.float().mean(dim=(2, 3, 4))                   # (N, 1024)


class FinetuneModel(nn.Module):
    """Backbone + head. `forward` returns the head's loss so that DistributedDataParallel sees it."""

    def __init__(self, backbone: FrozenBNI3D, head: nn.Module, *, amp: bool = False,
                 channels_last: bool = False):
        super().__init__()
        self.backbone, self.head = backbone, head
        self.amp, self.channels_last = bool(amp), bool(channels_last)

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """clips (V, C, 3, L, S, S) -> video features (V, 1024) float32 = mean over the C clips."""
        V, C = clips.shape[:2]
        x = clips.reshape(V * C, *clips.shape[2:])
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = (torch.autocast(device_type=x.device.type, dtype=torch.bfloat16) if self.amp
               else contextlib.nullcontext())
        with ctx:
            f = self.backbone(x)                               # (V*C, 1024)
        return f.float().reshape(V, C, -1).mean(dim=1)

    def forward(self, clips_q: torch.Tensor, t_q: torch.Tensor, clips_e: torch.Tensor | None = None,
                t_e: torch.Tensor | None = None) -> torch.Tensor:
        """Mean loss of the pairs (or videos) given; an empty batch (a rank with no share of a small
        last micro-batch) gives a zero that still touches every parameter, so DDP's all-reduce runs."""
        if clips_q.shape[0] == 0:
            return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad),
                       torch.zeros((), device=clips_q.device))
        n = clips_q.shape[0]
        if clips_e is not None:
            f = self.features(torch.cat([clips_q, clips_e]))   # one backbone call for q and e
            loss, _ = self.head.loss(f[:n], t_q, f[n:], t_e)
        else:
            loss, _ = self.head.loss(self.features(clips_q), t_q)
        return loss


def build_optimizer(model: FinetuneModel, lr_backbone: float = 1e-4, lr_head: float = 1e-3,
                    weight_decay: float = 0.0) -> torch.optim.Adam:
    """Adam with two parameter groups: the trainable backbone parameters (lr_backbone) and the head."""
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    return torch.optim.Adam([{"params": bb, "lr": lr_backbone},
                             {"params": list(model.head.parameters()), "lr": lr_head}], weight_decay=weight_decay)


