"""The stage-one loop as it was before issue 12, kept only to measure the new one against it.

Per video: ``read_frames`` once, then for each view ``apply_view`` + ``cut_clips`` on the CPU (float32
[n_clips, 3, 16, S, S]), clips of several videos gathered with ``torch.cat`` into batches of
``batch_clips``, ``forward_features`` on the device, features copied back synchronously. Decoding and
the transforms ran in the calling thread with ``workers=0`` (the CPU default, used here). No part files.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from data.transforms import apply_view, clip_starts, cut_clips, shift_window


def legacy_extract(model, dataset, samples, views, cfg, n_clips: int, batch_clips: int,
                   device: torch.device) -> tuple[dict[str, np.ndarray], float, int]:
    """-> (features per video id [V, n_clips, D], seconds, clips)."""
    ms = max(abs(int(v.shift)) for v in views)
    t = dataset.n_frames
    starts = clip_starts(t, n_clips)
    out: dict[str, list] = {}
    pending: list[tuple[str, torch.Tensor]] = []
    n_pending = 0
    n_clips_run = 0

    def run(take: int) -> None:
        nonlocal n_pending, n_clips_run
        chunks, owners, got = [], [], 0
        while got < take:
            vid, x = pending[0]
            k = min(len(x), take - got)
            chunks.append(x[:k])
            owners.append((vid, k))
            if k == len(x):
                pending.pop(0)
            else:
                pending[0] = (vid, x[k:])
            got += k
        f = model.forward_features(torch.cat(chunks).to(device)).float().cpu().numpy()
        o = 0
        for vid, k in owners:
            out[vid].append(f[o:o + k])
            o += k
        n_pending -= got
        n_clips_run += got

    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in samples:
            frames = dataset.read_frames(s, max_shift=ms)
            out[s.video_id] = []
            for v in views:
                window = shift_window(frames, v.shift, ms, t) if ms else frames[:t]
                clips = torch.from_numpy(cut_clips(apply_view(window, v, cfg), starts))
                pending.append((s.video_id, clips))
                n_pending += len(clips)
                while n_pending >= batch_clips:
                    run(batch_clips)
        if n_pending:
            run(n_pending)
    seconds = time.perf_counter() - t0
    feats = {k: np.concatenate(v).reshape(len(views), n_clips, -1) for k, v in out.items()}
    return feats, seconds, n_clips_run
