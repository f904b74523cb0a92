"""Adam's state never lingers in the subnormal range on the CPU (train_head.loop.flush_subnormal_state):
the cause (a zero-gradient entry's first moment decays into it), the flush itself, that it changes no
weight, and that the shared loop applies it at every epoch's start and every FLUSH_EVERY steps."""
import json

import pandas as pd
import pytest
import torch

from tests._cachefixture import learnable_cache
from train_head import loop
from train_head.config import resolve_config
from train_head.loop import FIRST_MOMENT_FLOOR, flush_subnormal_state
from train_head.trainer import train

TINY = torch.finfo(torch.float32).tiny


def _subnormal(t):
    return int(((t != 0) & (t.abs() < TINY)).sum())


def _adam(p):
    return torch.optim.Adam([p], lr=1e-3, fused=True)


def test_a_dead_entry_first_moment_turns_subnormal_without_the_flush():
    # one entry gets a gradient once, then exactly zero (a unit whose ReLU stopped firing)
    p = torch.nn.Parameter(torch.tensor([0.05, 0.05]))
    opt = _adam(p)
    for i in range(900):
        p.grad = torch.tensor([0.0 if i else 1e-2, 1e-2])
        opt.step()
    m = opt.state[p]["exp_avg"]
    assert _subnormal(m) == 1 and m[1] > 1e-4          # the dead entry only
    flush_subnormal_state(opt)
    assert m[0] == 0 and m[1] > 1e-4


def test_flush_thresholds_and_what_it_leaves():
    p = torch.nn.Parameter(torch.zeros(6))
    opt = _adam(p)
    p.grad = torch.ones(6)
    opt.step()
    st = opt.state[p]
    st["exp_avg"].copy_(torch.tensor([1e-39, 5e-31, 2e-30, 0.5, 0.0, -1e-39]))
    st["exp_avg_sq"].copy_(torch.tensor([1e-39, 5e-31, 1e-3, 0.0, 1e-40, 1.0]))
    step = st["step"].clone()
    assert 5e-31 < FIRST_MOMENT_FLOOR < 2e-30
    # first moments below the floor, other state below float32's smallest normal number
    flush_subnormal_state(opt)
    assert st["exp_avg"].tolist() == pytest.approx([0, 0, 2e-30, 0.5, 0, 0], rel=1e-6, abs=0)
    assert st["exp_avg_sq"].tolist() == pytest.approx([0, 5e-31, 1e-3, 0, 0, 1.0], rel=1e-6, abs=0)
    assert torch.equal(st["step"], step)


def test_the_flush_changes_no_weight():
    torch.manual_seed(0)
    w0 = torch.randn(4096) * 0.05
    ref, new = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    opt_ref, opt_new = _adam(ref), _adam(new)
    grads = torch.randn(40, 4096) * 1e-2
    grads[5:, :2048] = 0                                    # half the entries die after 5 steps
    for i, g in enumerate(grads):
        for p, o in ((ref, opt_ref), (new, opt_new)):
            p.grad = g.clone()
            o.step()
        if i == 20:
            # the first moments of the dead half are ~1e-4 * 0.9**15 here: shrink them below the floor
            for o, p in ((opt_ref, ref), (opt_new, new)):
                o.state[p]["exp_avg"][:2048] *= 1e-28
            flush_subnormal_state(opt_new)
            assert (opt_new.state[new]["exp_avg"][:2048] == 0).all()
            assert (opt_ref.state[ref]["exp_avg"][:2048] != 0).all()
    assert torch.equal(ref.detach(), new.detach())


def test_the_loop_flushes_each_epoch_and_every_flush_every_steps(tmp_path, monkeypatch):
    cache = learnable_cache(tmp_path / "c.h5", n=60, dim=16, seed=0)
    calls = []
    real = loop.flush_subnormal_state

    def spy(optim):
        calls.append(optim)
        return real(optim)

    monkeypatch.setattr(loop, "flush_subnormal_state", spy)
    cfg = dict(cache=str(cache), depth=3, hidden=32, voters=4, batch_size=8, epochs=3, threads=1)
    run = train(resolve_config(None, out=str(tmp_path / "a"), **cfg), progress=False)
    n_epochs = len(calls)
    assert n_epochs == 3 and all(c is calls[0] for c in calls)          # the run's optimiser, per epoch
    calls.clear()
    monkeypatch.setattr(loop, "FLUSH_EVERY", 2)
    run2 = train(resolve_config(None, out=str(tmp_path / "b"), **cfg), progress=False)
    n_steps = -(-json.loads((run2 / "summary.json").read_text())["n_train"] // 8)   # one pair per video
    assert n_steps >= 4 and len(calls) == 3 * (1 + n_steps // 2)
    # on these features no moment comes near the floor: the flushes change nothing at all
    for name in ("metrics.csv", "predictions.csv"):
        assert pd.read_csv(run / name).equals(pd.read_csv(run2 / name)), name
