"""One fine-tuning step (backbone + CoRe head, frozen batch norm) timed on the device, and the clip
loader that feeds it, to tell whether fine-tuning is limited by the GPU or by the loader.

    .venv/bin/python -m bench.bench_finetune --device cuda --json ft.json    # 224 px, bf16, 2 pairs x 10 clips
    .venv/bin/python -m bench.bench_finetune --device cpu --size 64 --clips 2 --steps 1   # a quick CPU run

The step is the fine-tuning mode's own: `FinetuneModel(FrozenBNI3D(I3D), core head)` with bf16 autocast
and channels_last_3d on CUDA (the defaults there), Adam over the two parameter groups, ``pairs`` query +
exemplar videos of ``clips`` clips each (the default batch: 2 pairs), random clips already on the device.
The loader row times `ClipDataset` + `clip_loader` (today's fine-tuning loader: decode and augment on
the CPU in ``workers`` processes) over 455x256 JPEG frames for the same batch: if it needs more time
per step than the device, the loader is the limit.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def step_rate(device: torch.device, size: int, clips: int, pairs: int, steps: int, amp: bool,
              checkpoint: bool) -> dict:
    from extract.weights import load_i3d
    from train_head.finetune_model import FinetuneModel, FrozenBNI3D, build_optimizer
    from train_head.groups import build_groups
    from train_head.heads import build_head

    cuda = device.type == "cuda"
    groups = build_groups(np.linspace(0, 100, 40))
    model = FinetuneModel(FrozenBNI3D(load_i3d("random"), checkpoint_activations=checkpoint),
                          build_head("core", groups=groups), amp=amp, channels_last=cuda).to(device)
    if cuda:
        model.backbone.to(memory_format=torch.channels_last_3d)
        torch.backends.cudnn.benchmark = True
        torch.cuda.reset_peak_memory_stats(device)
    opt = build_optimizer(model)
    g = torch.Generator().manual_seed(0)
    xq = torch.randn(pairs, clips, 3, 16, size, size, generator=g).to(device)
    xe = torch.randn(pairs, clips, 3, 16, size, size, generator=g).to(device)
    tq, te = torch.rand(pairs, generator=g).to(device) * 100, torch.rand(pairs, generator=g).to(device) * 100
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times, losses = [], []
    model.train()
    for i in range(steps + 1):                        # the first step warms up (cuDNN autotuner)
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(xq, tq, xe, te)
        loss.backward()
        opt.step()
        sync()
        if i:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()))
    bn_frozen = all(not m.training for n, m in model.backbone.named_modules() if type(m).__name__ == "BatchNorm3dNoScale")
    out = {"s_per_step": float(np.median(times)), "pairs": pairs, "clips_per_video": clips, "size": size,
           "amp_bf16": amp, "checkpoint_activations": checkpoint, "losses_finite": bool(np.isfinite(losses).all()),
           "bn_frozen": bn_frozen}
    if cuda:
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def loader_rate(size: int, clips: int, pairs: int, steps: int, workers: int) -> dict:
    from bench.frames import BenchFrames, write_frames
    from data.transforms import FrameConfig
    from train_head.finetune_data import ClipDataset, clip_loader, draw_augs

    root = write_frames(Path(tempfile.mkdtemp(prefix="bench-ft-")) / "frames")
    ds = BenchFrames(root, 2 * pairs * (steps + 1))
    cfg = FrameConfig(crop=size) if size <= 256 else FrameConfig((size * 2, size), size)
    data = ClipDataset(ds, ds.samples(), cfg, clips, 16, 3)
    rng = np.random.default_rng(0)
    plan = [[(k, a) for k, a in zip(range(b * 2 * pairs, (b + 1) * 2 * pairs), draw_augs(rng, 2 * pairs, 3))]
            for b in range(steps + 1)]
    it = iter(clip_loader(data, plan, workers, False))
    next(it)                                           # the workers' start is not a step
    t0 = time.perf_counter()
    n = sum(1 for _ in it)
    return {"s_per_step": (time.perf_counter() - t0) / max(1, n), "workers": workers, "steps": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--clips", type=int, default=10)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--checkpoint-activations", action="store_true")
    ap.add_argument("--workers", type=int, default=4, help="loader workers (today's CUDA default: 4)")
    ap.add_argument("--no-loader", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    dev = torch.device(a.device)
    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "torch": torch.__version__}
    res["step"] = step_rate(dev, a.size, a.clips, a.pairs, a.steps, a.precision == "bf16", a.checkpoint_activations)
    s = res["step"]
    print(f"fine-tuning step on {dev}: {a.pairs} pairs x {a.clips} clips at {a.size} px, {a.precision}: "
          f"{s['s_per_step']:.3f} s/step" + (f", peak memory {s['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in s
                                             else "") + f"; batch norm frozen: {s['bn_frozen']}", flush=True)
    if not a.no_loader:
        res["loader"] = loader_rate(a.size, a.clips, a.pairs, a.steps, a.workers)
        ld = res["loader"]
        res["limited_by"] = "loader" if ld["s_per_step"] > s["s_per_step"] else "device"
        print(f"clip loader ({a.workers} workers, CPU decode + augmentation): {ld['s_per_step']:.3f} s per step's "
              f"batch -> limited by the {res['limited_by']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
