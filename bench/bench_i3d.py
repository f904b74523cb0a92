"""Throughput of the I3D backbone: clips/s, FLOPs per clip and fraction of the machine's peak.

    .venv/bin/python -m bench.bench_i3d --threads 2          # CPU float32: unfused/fused x NCDHW/channels_last_3d
    .venv/bin/python -m bench.bench_i3d --device cuda        # the pipeline's forward per precision and batch

FLOPs are counted analytically from the convolution shapes of one forward_features pass (2 FLOPs per
multiply-add; pooling, batch norm and relu are not counted) and cross-checked with
torch.utils.flop_counter. Weights do not change the speed, so the random init is used (no download).
The fraction of peak uses --peak-gflops (default 155 GFLOP/s: the 2-core reference machine, float32).
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from extract.i3d import I3D, Unit3D
from extract.pipeline import Features, _forward, backend_flags, input_dtype, prepare_model
from extract.weights import load_i3d


def conv_flops_per_clip(model: I3D, frames: int, size: int) -> float:
    """2 * MACs of every convolution in forward_features for one clip [3, frames, size, size]."""
    total = 0

    def hook(mod: Unit3D, inp, out):
        nonlocal total
        w = mod.conv.weight
        total += 2 * out.numel() * w[0].numel()  # per output element: cin * kt * kh * kw MACs

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules()
               if isinstance(m, Unit3D) and n != "Logits"]
    with torch.no_grad():
        model.forward_features(torch.zeros(1, 3, frames, size, size))
    for h in handles:
        h.remove()
    return float(total)


def counter_flops_per_clip(model: I3D, frames: int, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.forward_features(torch.zeros(1, 3, frames, size, size))
    return float(fc.get_total_flops())


def time_clips(model, x, iters: int, warmup: int, sync=lambda: None, autocast=None) -> float:
    """clips/s of model.forward_features on batch x (median of `iters` timed runs)."""
    def run():
        if autocast is not None:
            with torch.autocast(device_type=x.device.type, dtype=autocast):
                return model.forward_features(x)
        return model.forward_features(x)

    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        sync()
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    times.sort()
    return x.shape[0] / times[len(times) // 2]


def pipeline_net(dev: torch.device):
    """The network exactly as `extract.pipeline.run_extraction` builds it (random weights)."""
    return Features(prepare_model(load_i3d("random", device="cpu", fuse_bn=True), dev))


def pipeline_input(batch: int, frames: int, size: int, dev: torch.device, prec: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, frames, size, size, generator=g).to(dev, input_dtype(dev, prec))
    return x.contiguous(memory_format=torch.channels_last_3d) if dev.type == "cuda" else x


def time_pipeline(net, x, dev, prec, iters: int, warmup: int, sync=lambda: None) -> float:
    """clips/s of the pipeline's `_forward` (median of ``iters``)."""
    times = []
    with torch.inference_mode():
        for _ in range(warmup):
            _forward(net, x, dev, prec)
        sync()
        for _ in range(iters):
            t0 = time.perf_counter()
            _forward(net, x, dev, prec)
            sync()
            times.append(time.perf_counter() - t0)
    return x.shape[0] / sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--batch", type=int, default=None, help="clips per batch (default: 2 on CPU, 32 on CUDA)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--peak-gflops", type=float, default=155.0, help="machine peak, GFLOP/s (float32 on CPU)")
    ap.add_argument("--skip-unfused-cl", action="store_true", help="CPU: skip the unfused channels_last_3d row")
    ap.add_argument("--precisions", default="fp32,bf16,fp16", help="CUDA: precisions to time")
    ap.add_argument("--batches", default="32,64,128", help="CUDA: batch sizes to time")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = args.batch or (32 if device == "cuda" else 2)

    model = I3D().init_random(0).eval()
    flops = conv_flops_per_clip(model, args.frames, args.size)
    flops_counter = counter_flops_per_clip(model, args.frames, args.size)
    res = {"device": device, "batch": batch, "clip": [3, args.frames, args.size, args.size],
           "gflop_per_clip": flops / 1e9, "gflop_per_clip_flop_counter": flops_counter / 1e9,
           "threads": torch.get_num_threads(), "torch": torch.__version__, "peak_gflops": args.peak_gflops}
    print(f"I3D forward_features, clip 3x{args.frames}x{args.size}x{args.size}: {flops / 1e9:.2f} GFLOP "
          f"(conv shapes), {flops_counter / 1e9:.2f} GFLOP (torch flop_counter)")

    def report(name: str, cps: float, peak: float | None) -> None:
        gflops = cps * flops / 1e9
        res[name] = {"clips_per_s": cps, "gflop_per_s": gflops}
        line = f"{name:>31}: {cps:8.2f} clips/s  {gflops:9.1f} GFLOP/s"
        if peak:
            res[name]["fraction_of_peak"] = gflops / peak
            line += f"  {100 * gflops / peak:5.1f}% of {peak:g} GFLOP/s peak"
        print(line, flush=True)

    fused = copy.deepcopy(model).fuse_bn()
    if device == "cpu":
        print(f"CPU float32, {torch.get_num_threads()} threads, batch {batch}, median of {args.iters}")
        x = torch.randn(batch, 3, args.frames, args.size, args.size)
        report("cpu_fp32_unfused", time_clips(model, x, args.iters, args.warmup), args.peak_gflops)
        report("cpu_fp32_fused", time_clips(fused, x, args.iters, args.warmup), args.peak_gflops)
        # what load_i3d(fuse_bn=True) gives on CPU: channels_last_3d weights, NCDHW input
        f_cl = copy.deepcopy(fused).to(memory_format=torch.channels_last_3d)
        report("cpu_fp32_fused_channels_last", time_clips(f_cl, x, args.iters, args.warmup), args.peak_gflops)
        net = pipeline_net(torch.device("cpu"))
        report("cpu_fp32_pipeline", time_pipeline(net, pipeline_input(batch, args.frames, args.size,
                                                                       torch.device("cpu"), "fp32"),
                                                  torch.device("cpu"), "fp32", args.iters, args.warmup),
               args.peak_gflops)
        if not args.skip_unfused_cl:
            m_cl = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
            report("cpu_fp32_unfused_channels_last", time_clips(m_cl, x, args.iters, args.warmup),
                   args.peak_gflops)
    else:
        dev = torch.device(device)
        sync = torch.cuda.synchronize
        name = torch.cuda.get_device_name(dev)
        res["gpu"] = name
        print(f"CUDA {name}: the pipeline's forward (BN folded, channels_last_3d, input in the autocast dtype, "
              f"float32 mean), cudnn.benchmark, median of {args.iters}; peak memory per batch")
        net = pipeline_net(dev)
        ref = None
        for prec in args.precisions.split(","):
            for b in (int(v) for v in args.batches.split(",")):
                x = pipeline_input(b, args.frames, args.size, dev, prec)
                torch.cuda.reset_peak_memory_stats(dev)
                with backend_flags(dev, False):
                    cps = time_pipeline(net, x, dev, prec, args.iters, args.warmup, sync)
                key = f"cuda_{prec}_b{b}"
                report(key, cps, None)
                res[key]["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
                print(f"{'':>33}peak memory {res[key]['peak_memory_gib']:.2f} GiB", flush=True)
            with torch.inference_mode():
                x = pipeline_input(4, args.frames, args.size, dev, prec, seed=1)
                out = _forward(net, x, dev, prec).float()
            if prec == "fp32":
                ref = out
            elif ref is not None:
                res[f"{prec}_rel_err_vs_fp32"] = float((out - ref).norm() / ref.norm())
                print(f"{prec} vs fp32 features: relative error {res[f'{prec}_rel_err_vs_fp32']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
