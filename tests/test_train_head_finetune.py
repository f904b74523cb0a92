"""End-to-end fine-tuning (train_head.finetune) on tiny synthetic videos: random-init I3D, 16 px crops,
one clip of 8 frames per video, so that a backbone step costs about a second on a CPU."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.synthetic import write_synthetic
from data.transforms import FrameConfig, View, apply_view
from extract.i3d import BatchNorm3dNoScale
from extract.weights import load_i3d
from train_head.finetune import (FinetuneConfig, FinetuneModel, FrozenBNI3D, build_optimizer, crop_flip,
                                 finetune, resolve_finetune_config)
from train_head.groups import build_groups
from train_head.heads import build_head

TINY = dict(weights="random", resize_hw=(20, 20), crop=16, n_clips=1, clip_len=8, epochs=2, device="cpu",
            voters=3, workers=0, eval_batch=8, train_from="Mixed_5b", val_every=2,
            checkpoint_every=1)
CLI = ["--dataset", "synthetic", "--weights", "random", "--frame-size", "20x20", "--crop", "16", "--n-clips", "1",
       "--clip-len", "8", "--epochs", "2", "--device", "cpu", "--workers", "0", "--voters", "3",
       "--train-from", "Mixed_5b", "--val-every", "2", "--checkpoint-every", "1", "--no-progress"]


@pytest.fixture(scope="module", autouse=True)
def no_onednn():
    """Test speed only: at these tiny sizes oneDNN's 3D convolutions cost ~1-2 s per call on this CPU,
    the plain ones ~0.3 s after the first call. The library code does not touch this flag."""
    prev = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = prev


# torchrun launches this instead of `-m train_head.finetune` so that its processes run like this file
LAUNCH = """import runpy, torch
torch.backends.mkldnn.enabled = False
runpy.run_module("train_head.finetune", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    # 6 videos: 2 test, 1 validation, 3 in the training pool -> micro-batches of 2 and 1 pairs per epoch
    return write_synthetic(tmp_path_factory.mktemp("syn") / "syn", n_videos=6, seed=1, size=32)


@pytest.fixture(scope="module")
def run_a(root, tmp_path_factory):
    cfg = FinetuneConfig(dataset="synthetic", root=str(root), out=str(tmp_path_factory.mktemp("a")), eval_batch=8,
                         **{k: v for k, v in TINY.items() if k != "eval_batch"})
    return cfg, finetune(cfg, progress=False)


def test_crop_flip_equals_apply_view_at_the_centre():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (5, 30, 41, 3), dtype=np.uint8)
    cfg = FrameConfig(resize_hw=(37, 29), crop=24)
    for flip in (False, True):
        ref = apply_view(frames, View("c", 0, flip, "center", "train"), cfg)
        top, left = int(round((37 - 24) / 2)), int(round((29 - 24) / 2))
        np.testing.assert_array_equal(crop_flip(frames, top, left, flip, cfg), ref)
    ref = apply_view(frames, View("br", 0, False, "br", "train"), cfg)
    np.testing.assert_array_equal(crop_flip(frames, 37 - 24, 29 - 24, False, cfg), ref)


def test_frozen_bn_and_a_fixed_batch_overfits():
    """The backbone from Mixed_4b on trains (the whole backbone costs ~9 s a step on this CPU), batch norm
    statistics never move, the loss falls."""
    torch.manual_seed(0)
    backbone = FrozenBNI3D(load_i3d("random"), train_from="Mixed_4b")
    t = torch.tensor([30.0, 60.0])
    head = build_head("core", groups=build_groups(np.array([20.0, 30.0, 50.0, 60.0, 90.0])))
    model = FinetuneModel(backbone, head).train()
    bns = [m for m in model.modules() if isinstance(m, BatchNorm3dNoScale)]
    assert bns and not any(m.training for m in bns) and model.backbone.training
    stats0 = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    w0 = model.backbone.i3d.Mixed_4b.b1b.conv.weight.detach().clone()
    assert model.backbone.i3d.Mixed_4c.b0.bn.bias.requires_grad           # BN shift trains (documented)
    assert not model.backbone.i3d.Mixed_3c.b0.conv.weight.requires_grad    # before train_from: frozen
    assert not model.backbone.i3d.Logits.conv.weight.requires_grad         # unused Kinetics logits frozen
    opt = build_optimizer(model)
    g = torch.Generator().manual_seed(0)
    cq, ce = torch.randn(1, 1, 3, 8, 16, 16, generator=g), torch.randn(1, 1, 3, 8, 16, 16, generator=g)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model(cq, t[:1], ce, t[1:])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert not torch.equal(model.backbone.i3d.Mixed_4b.b1b.conv.weight, w0)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, stats0[k]), k


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randn(1, 3, 8, 16, 16, generator=torch.Generator().manual_seed(1))
    grads, i3d = [], load_i3d("random")
    for ckpt in (False, True):
        b = FrozenBNI3D(copy.deepcopy(i3d), train_from="Mixed_5c", checkpoint_activations=ckpt)
        b(x).square().sum().backward()
        grads.append([p.grad for p in b.parameters() if p.requires_grad])
    assert len(grads[0]) > 0
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-7)


def test_clip_dataset_same_with_workers(root):
    from data import get_dataset
    from train_head.finetune import Aug, ClipDataset, clip_loader

    ds = get_dataset("synthetic", root)
    clips = ClipDataset(ds, ds.samples(), FrameConfig(resize_hw=(20, 20), crop=16), 2, 8, 3)
    plan = [[(0, None), (1, Aug(0, 0.9, 0.1, True))], [(2, Aug(0, 0.0, 0.99, False))]]
    a = list(clip_loader(clips, plan, 0, False))
    b = list(clip_loader(clips, plan, 1, False))
    assert a[0].shape == (2, 2, 3, 8, 16, 16) and a[1].shape == (1, 2, 3, 8, 16, 16)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[0][1])


def test_run_folder_is_read_by_evaluate(run_a):
    from evaluate.tables import results_table

    cfg, run = run_a
    assert run == cfg.run_dir() and run.parts[-2] == "core+finetune"
    for name in ("config.json", "metrics.csv", "predictions.csv", "groups.json", "summary.json", "split.json",
                 "model_selected.pt", "model_final.pt", "backbone_final.pt", "checkpoint.pt"):
        assert (run / name).is_file(), name
    s = json.loads((run / "summary.json").read_text())
    assert s["complete"] and s["mode"] == "finetune" and s["n_train"] == 3 and s["n_test"] == 2
    assert json.loads((run / "config.json").read_text())["mode"] == "finetune"
    df, skipped = results_table([run.parents[3]], n_boot=20)
    assert not skipped
    assert set(df["protocol"]) >= {"val-selected", "final-epoch"} and (df["head"] == "core+finetune").all()
    # the fine-tuned backbone loads as an I3D state dict and differs from the initial weights
    b = load_i3d(run / "backbone_final.pt")
    assert not torch.equal(b.Mixed_5c.b0.conv.weight, load_i3d("random").Mixed_5c.b0.conv.weight)
    assert torch.equal(b.Conv3d_1a_7x7.conv.weight, load_i3d("random").Conv3d_1a_7x7.conv.weight)  # frozen part


def test_resume_gives_the_same_numbers(run_a, tmp_path):
    cfg, run = run_a
    cfg_b = cfg.replace(out=str(tmp_path))

    def stop(epoch, row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(cfg_b, progress=False, on_epoch_end=stop)
    assert (cfg_b.run_dir() / "checkpoint.pt").is_file() and not (cfg_b.run_dir() / "summary.json").exists()
    run_b = finetune(cfg_b, progress=False)                     # resumes after epoch 1; same seed throughout
    assert (run_b / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    for name in ("model_final.pt", "backbone_final.pt"):
        a = torch.load(run / name, weights_only=True)
        b = torch.load(run_b / name, weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_torchrun_two_processes_equal_one_process(run_a, root, tmp_path):
    cfg, run = run_a
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    launch = tmp_path / "launch.py"
    launch.write_text(LAUNCH)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(launch), *CLI, "--root", str(root), "--out", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "2 process(es)" in r.stdout
    run_m = tmp_path / "runs" / "synthetic" / "all" / "core+finetune" / "seed0"
    assert json.loads((run_m / "summary.json").read_text())["world_size"] == 2
    la = np.loadtxt(run / "metrics.csv", delimiter=",", skiprows=1, usecols=1)
    lm = np.loadtxt(run_m / "metrics.csv", delimiter=",", skiprows=1, usecols=1)
    np.testing.assert_allclose(lm, la, rtol=1e-4)
    # Tolerances: float32 sums in another order (two half-batch means all-reduced vs one batch mean, 1 vs 2
    # threads) differ by ~1e-7 relative per gradient entry. Adam normalises each update to about lr per
    # weight, so for an entry whose gradient is near zero that rounding can move the update by up to its
    # whole size, in either direction: every weight must lie within the two runs' largest possible motion
    # apart (2 x 2 updates x lr of its group), and all but a handful (1 in 10^4: one entry of a 213k-weight
    # conv was seen at 13 %) within 10 % of one run's motion (2 updates x lr).
    updates = 2
    for name, lr in (("model_final.pt", cfg.lr_head), ("backbone_final.pt", cfg.lr_backbone)):
        a = torch.load(run / name, weights_only=True)
        m = torch.load(run_m / name, weights_only=True)
        n_far = n_all = 0
        for k in a:
            torch.testing.assert_close(m[k], a[k], rtol=0, atol=2 * updates * lr * 1.001, msg=f"{name} {k}")
            if a[k].is_floating_point():
                n_far += int(((m[k] - a[k]).abs() > 0.1 * updates * lr).sum())
                n_all += a[k].numel()
        assert n_far <= max(1, n_all // 10_000), f"{name}: {n_far} of {n_all} weights differ by > 10% of 2 x lr"
    # Adam is invariant to the gradient's scale, so also compare its first moment (a running mean of the
    # raw gradients): a sum instead of a mean over ranks, or a wrong share of the last micro-batch, shows here
    sa = torch.load(run / "checkpoint.pt", weights_only=True)["optim"]["state"]
    sm = torch.load(run_m / "checkpoint.pt", weights_only=True)["optim"]["state"]
    assert sa.keys() == sm.keys() and len(sa) > 0
    for i in sa:
        ea, em = sa[i]["exp_avg"], sm[i]["exp_avg"]
        torch.testing.assert_close(em, ea, rtol=1e-3, atol=1e-4 * float(ea.abs().max()) + 1e-12, msg=str(i))


def test_config_resolution_and_refusals(root):
    cfg = resolve_finetune_config("mtl_aqa", "/x", head="core_dd")
    assert cfg.theta == 30.0 and cfg.head == "core_dd" and cfg.batch_size == 2 and cfg.grad_accum == 2
    assert (cfg.lr_backbone, cfg.lr_head, cfg.crop, cfg.resize_hw) == (1e-4, 1e-3, 224, (455, 256))
    with pytest.raises(ValueError, match=r"unknown config key.*\[.lr.\]"):
        resolve_finetune_config("synthetic", str(root), lr=1.0)
    with pytest.raises(ValueError, match="train_from"):
        FinetuneConfig(dataset="synthetic", root=str(root), train_from="Mixed_9z")


def test_frame_store_gives_the_same_run(root, run_a, tmp_path):
    """Frames decoded once into the store, views cut by device_clips: the same numbers as decoding per step."""
    cfg, run = run_a
    store_dir = tmp_path / "frames"
    cfg_s = cfg.replace(out=str(tmp_path / "runs"), frame_store=str(store_dir))
    run_s = finetune(cfg_s, progress=False)
    assert (store_dir / "index.json").is_file() and (store_dir / "frames.u8").stat().st_size > 0
    assert (run_s / "metrics.csv").read_text() == (run / "metrics.csv").read_text()
    assert (run_s / "predictions.csv").read_text() == (run / "predictions.csv").read_text()


def test_score_refuses_a_fine_tuning_run_in_one_line(run_a, tmp_path):
    from evaluate.score import ScoreError, score_video

    _, run = run_a
    with pytest.raises(ScoreError, match="fine-tuning run .* cached features"):
        score_video(tmp_path / "any.mp4", run, device="cpu")
