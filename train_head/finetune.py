"""End-to-end fine-tuning: the I3D backbone and a head trained together from frames (docs/METHOD.md §6).

    python -m train_head finetune --dataset mtl_aqa --root /data/MTL-AQA --head core_dd --epochs 200
    torchrun --nproc_per_node 4 -m train_head finetune --dataset aqa7 --root /data/AQA-7 --class diving

    >>> from train_head.config import FinetuneConfig
    >>> from train_head.finetune import finetune
    >>> run_dir = finetune(FinetuneConfig(dataset="synthetic", root="artifacts/datasets/synthetic"))

This module supplies only what fine-tuning adds to the shared loop (`train_head.loop`; the rules are in
`train_head.protocol`, so selection, voters, groups and the run folder are the cached mode's):
  * model: `FrozenBNI3D` (batch norm frozen, its shift trains) + the head (`finetune_model.py`);
    Adam with two parameter groups (backbone 1e-4, head 1e-3).
  * a batch of pairs becomes features by decoding its videos (`finetune_data.ClipDataset`, augmentation
    drawn from the run's train stream) and running them through the backbone; video feature = mean
    over the `n_clips` clips.
  * evaluation features: the test view of the pool, validation and test videos through the CURRENT
    backbone, once per evaluation (reused for the final predictions when nothing trained since).
  * DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA): every rank builds the same
    global plan from the seed and takes its slice of each global micro-batch; the loss of a slice is
    weighted by its share, so the all-reduced gradient equals one process on the same global batch.

Run folder: `train_head.runfolder`, head level `<head>+<tag>` (tag "finetune" by default, so tables
never pool fine-tuned runs with cached ones); backbone_selected.pt / backbone_final.pt are I3D state
dicts in our layout (`load_i3d(path)` loads them).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from extract import dist as xdist
from extract.i3d import I3D
from train_head.config import FinetuneConfig, resolve_config
from train_head.evaluator import Evaluator
from train_head.finetune_data import (Aug, ClipDataset, FrameStore, StoreLoader, clip_loader, crop_flip,  # noqa: F401
                                      augment, draw_augs, labels_of)
from train_head.finetune_model import FinetuneModel, FrozenBNI3D, build_optimizer  # noqa: F401
from train_head.loop import Task, build_run_head, cpu_state, open_run, prepare, record_protocol, run
from train_head.runenv import run_environment
from train_head.protocol import TrainError
from train_head.runfolder import RunFolder

log = logging.getLogger(__name__)


def resolve_finetune_config(dataset: str, root: str, /, **overrides: Any) -> FinetuneConfig:
    """FinetuneConfig defaults <- the dataset's preset (theta, head, protocol, cls) <- overrides."""
    from train_head.presets import default_preset

    return resolve_config(default_preset(dataset, overrides.get("head")), kind=FinetuneConfig,
                          **{**overrides, "dataset": dataset, "root": str(root)})


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class FinetuneTask(Task):
    mode = "finetune"

    def __init__(self, ctx, ds, samples, device: torch.device, info: xdist.DistInfo):
        from extract.weights import load_i3d

        cfg = ctx.cfg
        self.ctx, self.cfg, self.device, self.info = ctx, cfg, device, info
        self.desc = f"finetune {cfg.dataset}/{cfg.unit}/{cfg.head} seed{cfg.seed}"
        self.cuda = device.type == "cuda"
        amp = cfg.precision == "bf16" or (cfg.precision == "auto" and self.cuda)
        channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.cuda)
        backbone = FrozenBNI3D(load_i3d(cfg.weights, device="cpu"), train_bn_bias=cfg.train_bn_bias,
                               train_from=cfg.train_from, checkpoint_activations=cfg.checkpoint_activations)
        torch.manual_seed(ctx.streams.torch)
        head = build_run_head(cfg, I3D.feature_dim, ctx.groups, ctx.n_judges)
        self.model = FinetuneModel(backbone, head, amp=amp, channels_last=channels_last).to(device)
        if channels_last:
            self.model.backbone.to(memory_format=torch.channels_last_3d)
        self.head = self.model.head
        self.optim = build_optimizer(self.model, cfg.lr_backbone, cfg.lr_head, cfg.weight_decay)
        self.ddp = self.model
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel
            self.ddp = DistributedDataParallel(self.model, device_ids=[device] if self.cuda else None,
                                               broadcast_buffers=False)
        if cfg.batch_size < info.world_size:
            raise TrainError(f"batch_size {cfg.batch_size} (pairs per micro-step over all ranks) is smaller "
                             f"than the {info.world_size} processes; raise --batch-size")
        self.clips = ClipDataset(ds, samples, cfg.frame_config(), cfg.n_clips, cfg.clip_len, cfg.max_shift)
        self.workers = cfg.workers if cfg.workers is not None else (4 if self.cuda else 0)
        self.ds, self.store = ds, self._frame_store(ds, samples)
        self.t_all = torch.from_numpy(ctx.targets).float()
        self._feats: dict[int, torch.Tensor] | None = None     # evaluation features of the current model

    # ---- frames
    def _frame_store(self, ds, samples):
        """The decoded-once frame store (finetune_data.FrameStore) when `frame_store` asks for one: "auto"
        = on CUDA (the GPU would otherwise wait for JPEG decoding every step), off on the CPU; "off"; or
        a folder. The main process builds it, the others open it after a barrier."""
        where = self.cfg.frame_store
        if where == "off" or (where == "auto" and not self.cuda):
            return None
        path = (Path(self.cfg.out) / "_frames" / f"{self.ctx.dataset}-{self.cfg.unit}") if where == "auto" else Path(where)
        build = dict(cfg=self.cfg.frame_config(), max_shift=self.cfg.max_shift, workers=self.workers)
        store = FrameStore.open_or_build(ds, samples, path, **build) if self.info.is_main else None
        xdist.barrier(self.info)
        return store if store is not None else FrameStore.open_or_build(ds, samples, path, **build)

    def _loader(self, plan):
        """Batches of clips for a plan of (position, Aug | None): from the frame store with the views cut
        on the device, or decoded per step by DataLoader workers (bitwise the same clips)."""
        if self.store is None:
            return clip_loader(self.clips, plan, self.workers, self.cuda)
        return StoreLoader(self.store, plan, self.cfg.frame_config(), self.ds.n_frames, self.cfg.n_clips,
                           self.cfg.clip_len, self.device)

    # ---- training
    def batches(self, q, e, rng):
        self._feats = None
        tr, bs, info = self.ctx.unit.train, self.cfg.batch_size, self.info
        plan, meta = [], []
        for s in range(0, q.size, bs):
            qb = q[s:s + bs]
            aq = draw_augs(rng, qb.size, self.cfg.max_shift)
            ae = draw_augs(rng, qb.size, self.cfg.max_shift) if e is not None else None
            sl = xdist.contiguous_slice(qb.size, info)
            items = [(int(tr[k]), a) for k, a in zip(qb[sl], aq[sl])]
            if e is not None:
                eb = e[s:s + bs]
                items += [(int(tr[k]), a) for k, a in zip(eb[sl], ae[sl])]
                meta.append((tr[qb[sl]], tr[eb[sl]], qb.size))
            else:
                meta.append((tr[qb[sl]], None, qb.size))
            plan.append(items)
        for b, x in enumerate(self._loader(plan)):
            yield lambda x=x, m=meta[b]: self._step(x, *m)

    def _step(self, x, pq, pe, n_global):
        nl = len(pq)
        if nl == 0:
            empty = torch.zeros((0, 1), device=self.device)
            loss = self.ddp(empty, empty)
        else:
            x = x.to(self.device, non_blocking=True)
            tq = self.t_all[pq].to(self.device)
            loss = self.ddp(x[:nl], tq, x[nl:], self.t_all[pe].to(self.device)) if pe is not None else self.ddp(x, tq)
        # this slice's share of the global mean; DDP averages over ranks, hence x world size
        return loss, nl, nl * self.info.world_size / n_global

    def no_sync(self, skip: bool):
        return self.ddp.no_sync() if (self.info.enabled and skip) else contextlib.nullcontext()

    def reduce_loss(self, total: torch.Tensor) -> float:
        return float(xdist.all_reduce_sum(total.to(self.device) if self.cuda else total.cpu(), self.info).item())

    # ---- evaluation
    def _eval_features(self) -> dict[int, torch.Tensor]:
        """Test-view features of the pool, validation and test videos from the current model."""
        unit, info, model = self.ctx.unit, self.info, self.model
        was = model.training
        model.eval()
        mine = xdist.shard(list(np.concatenate([unit.train, unit.val, unit.test])), info)
        eb = self.cfg.eval_batch
        plan = [[(int(p), None) for p in mine[s:s + eb]] for s in range(0, len(mine), eb)]
        out: list[torch.Tensor] = []
        with torch.inference_mode():
            for x in self._loader(plan):
                out.append(model.features(x.to(self.device, non_blocking=True)).cpu())
        pairs = list(zip(mine, torch.cat(out) if out else torch.zeros(0, I3D.feature_dim)))
        if info.enabled:
            gathered: list = [None] * info.world_size
            torch.distributed.all_gather_object(gathered, pairs)
            pairs = [p for g in gathered for p in g]
        model.train(was)
        return {int(p): f for p, f in pairs}

    def evaluators(self):
        if self._feats is None:
            self._feats = self._eval_features()
        ctx, feats, dev = self.ctx, self._feats, self.device
        labels, unit, dd = ctx.labels, ctx.unit, ctx.head_cls.dd

        def stack(pos):
            return (torch.stack([feats[int(p)] for p in pos]).to(dev) if len(pos)
                    else torch.zeros(0, I3D.feature_dim, device=dev))
        pool, t_tr, rng = stack(unit.train), self.t_all[unit.train].to(dev), ctx.streams.voters()
        return tuple(Evaluator(ctx.head_cls, stack(p), labels.scores[p], labels.difficulty[p] if dd else None,
                               pool, t_tr, ctx.d_tr, self.cfg.voters, rng) for p in (unit.val, unit.test))

    def test_evaluator(self, state):
        if state is not None:
            self.model.load_state_dict(state)
            self._feats = None
        return self.evaluators()[1]

    # ---- files
    def save_models(self, folder: RunFolder, selected: dict, final: dict) -> None:
        folder.save("model_final.pt", _sub(final, "head."))
        folder.save("model_selected.pt", _sub(selected, "head."))
        folder.save("backbone_final.pt", _sub(final, "backbone.i3d."))
        folder.save("backbone_selected.pt", _sub(selected, "backbone.i3d."))

    def barrier(self) -> None:
        xdist.barrier(self.info)

    def summary_extra(self) -> dict:
        return {"world_size": self.info.world_size}


def finetune(cfg: FinetuneConfig, *, force: bool = False, progress: bool = True,
             on_epoch_end: Callable[[int, dict], None] | None = None, dataset=None) -> Path:
    """Fine-tune backbone + head; returns the run folder (module docstring).

    A complete folder of the same config is skipped unless `force` (which deletes its files first); a
    folder with checkpoint.pt of the same config resumes. `on_epoch_end(epoch, row)` runs after each
    epoch's checkpoint (raising interrupts the run: tests use it). `dataset`: an already built reader.
    """
    from data import get_dataset
    from data.fileio import dataset_label
    from extract.devices import resolve_device

    info = xdist.dist_info()
    device = xdist.rank_device(resolve_device(cfg.device), info)
    info, started = xdist.init(device, info)
    try:
        ds = dataset if dataset is not None else get_dataset(cfg.dataset, cfg.root)
        label = dataset_label(cfg.dataset, cfg.root)       # csv: csv-<stem>-<hash8>, else the name
        record = RunFolder.config_record(cfg, label, None, extra={"world_size": info.world_size})
        lock = RunFolder(cfg.run_dir(label)).lock() if info.is_main else contextlib.nullcontext()
        samples = ds.samples()
        ctx = prepare(cfg, labels_of(ds, samples), label, is_main=info.is_main)   # nothing written yet
        with lock:
            folder, resume = open_run(cfg, label, record, force=force, is_main=info.is_main)
            xdist.barrier(info)
            if resume is None:
                return folder.path
            record_protocol(ctx, folder)
            with run_environment(device=device, deterministic=cfg.deterministic):
                run(FinetuneTask(ctx, ds, samples, device, info), ctx, folder, resume=resume,
                    progress=progress, on_epoch_end=on_epoch_end)
        return folder.path
    finally:
        xdist.finalize(started)


__all__ = ["FinetuneConfig", "resolve_finetune_config", "finetune", "FinetuneTask", "FrozenBNI3D",
           "FinetuneModel", "build_optimizer", "Aug", "draw_augs", "augment", "crop_flip", "ClipDataset",
           "clip_loader", "cpu_state"]


if __name__ == "__main__":          # `torchrun -m train_head.finetune ...` = `python -m train_head finetune ...`
    from train_head.finetune_cli import finetune_command
    finetune_command()
