"""The fine-tuning frame store: decode once into a memory-mapped uint8 file, augment on the device; the
clips equal today's CPU `ClipDataset` for the same plan (CPU here; the CUDA versions are marked `cuda`)."""
import numpy as np
import pytest
import torch

from data.base import Sample
from data.transforms import FrameConfig
from train_head.finetune_data import Aug, ClipDataset, FrameStore, StoreLoader, draw_augs

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class Videos:
    """A dataset with a shift protocol: video i = seeded random frames (30 x 37 px), counting reads."""
    name, n_frames, supports_shift, root = "fake", 24, True, "/fake"

    def __init__(self, n=3):
        self._samples = [Sample(f"v{i}", f"src{i}", float(i)) for i in range(n)]
        self.reads = []

    def samples(self):
        return list(self._samples)

    def read_frames(self, sample, max_shift=0):
        self.reads.append(sample.video_id)
        rng = np.random.default_rng(int(sample.video_id[1:]))
        frames = rng.integers(0, 256, (self.n_frames + 6, 30, 37, 3), dtype=np.uint8)   # shifts up to 3
        return frames[3 - max_shift: 3 + self.n_frames + max_shift]


def plan_for(n_batches, n, max_shift, seed=0):
    rng = np.random.default_rng(seed)
    plan = []
    for b in range(n_batches):
        augs = draw_augs(rng, 2, max_shift)
        plan.append([((b + k) % n, augs[k]) for k in range(2)] + [((b + 2) % n, None)])      # + a test view
    return plan


@pytest.mark.parametrize("cfg", [FrameConfig((40, 48), 32), FrameConfig((40, 48), 24, "minus1to1"),
                                 FrameConfig((34, 34), 32, interp="bilinear_short_side")])
def test_store_clips_equal_the_cpu_clip_dataset_bitwise(tmp_path, cfg):
    ds = Videos()
    store = FrameStore.open_or_build(ds, ds.samples(), tmp_path / "store", cfg, max_shift=3)
    assert sorted(ds.reads) == ["v0", "v1", "v2"]                    # decoded once
    assert isinstance(store.data, np.memmap) and len(store) == 3
    plan = plan_for(4, 3, 3)
    assert any(a is not None and a.flip for b in plan for _, a in b) and any(a is not None and a.shift for b in plan
                                                                             for _, a in b)
    ref = ClipDataset(ds, ds.samples(), cfg, n_clips=3, clip_len=8, max_shift=3)
    got = list(StoreLoader(store, plan, cfg, ds.n_frames, n_clips=3, clip_len=8, device="cpu"))
    assert len(got) == 4
    for batch, x in zip(plan, got):
        assert x.shape == (3, 3, 3, 8, cfg.crop, cfg.crop) and x.dtype == torch.float32
        for i, key in enumerate(batch):
            assert torch.equal(x[i], ref[key]), key


def test_store_is_reused_and_rebuilt_when_its_key_changes(tmp_path):
    ds = Videos()
    cfg = FrameConfig((40, 48), 32)
    FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", cfg, max_shift=3)
    ds.reads.clear()
    s = FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", cfg, max_shift=3)
    assert ds.reads == [] and s.window(1).shape == (30, 40, 48, 3)     # stored resized, with the shift margin
    FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", FrameConfig((44, 48), 32), max_shift=3)
    assert sorted(ds.reads) == ["v0", "v1", "v2"]                    # another resize: decoded again
    ds.reads.clear()
    (tmp_path / "s" / "index.json").unlink()                         # an interrupted build: redone
    FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", cfg, max_shift=3)
    assert len(ds.reads) == 3


def test_loader_errors_reach_the_caller(tmp_path):
    ds = Videos()
    cfg = FrameConfig((40, 48), 32)
    store = FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", cfg, max_shift=3)
    plan = [[(0, None)], [(7, Aug())]]                                # position 7 does not exist
    it = iter(StoreLoader(store, plan, cfg, ds.n_frames, 2, 8, "cpu"))
    assert next(it).shape[0] == 1
    with pytest.raises(IndexError):
        next(it)


@pytest.mark.cuda
@needs_cuda
def test_cuda_store_clips_equal_the_cpu(tmp_path):
    ds = Videos()
    cfg = FrameConfig((40, 48), 32)
    store = FrameStore.open_or_build(ds, ds.samples(), tmp_path / "s", cfg, max_shift=3)
    plan = plan_for(3, 3, 3)
    cpu = list(StoreLoader(store, plan, cfg, ds.n_frames, 3, 8, "cpu"))
    gpu = list(StoreLoader(store, plan, cfg, ds.n_frames, 3, 8, "cuda"))
    for a, b in zip(cpu, gpu):
        assert b.is_cuda and torch.equal(a, b.cpu())


@pytest.mark.cuda
@needs_cuda
def test_cuda_finetune_step_bf16_with_frozen_batch_norm():
    from extract.i3d import BatchNorm3dNoScale
    from extract.weights import load_i3d
    from train_head.finetune_model import FinetuneModel, FrozenBNI3D, build_optimizer
    from train_head.groups import build_groups
    from train_head.heads import build_head

    dev = torch.device("cuda")
    model = FinetuneModel(FrozenBNI3D(load_i3d("random")), build_head("core", groups=build_groups(np.arange(20.0))),
                          amp=True, channels_last=True).to(dev)
    bn = [m for m in model.modules() if isinstance(m, BatchNorm3dNoScale)]
    before = [m.running_mean.clone() for m in bn]
    opt = build_optimizer(model)
    x = torch.randn(2, 2, 3, 16, 64, 64, device=dev)
    w0 = model.backbone.i3d.Conv3d_1a_7x7.conv.weight.detach().clone()
    loss = model(x[:1], torch.tensor([10.0], device=dev), x[1:], torch.tensor([14.0], device=dev))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(not m.training for m in bn)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bn))          # statistics frozen
    assert not torch.equal(w0, model.backbone.i3d.Conv3d_1a_7x7.conv.weight)        # the backbone trains
