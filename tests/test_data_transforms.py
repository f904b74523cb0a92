import numpy as np
import pytest
import torch

from data.transforms import (FrameConfig, View, apply_view, clip_starts, cut_clips, default_views,
                             shift_window)


def test_clip_starts_reference_103():
    assert clip_starts(103, 10) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 86]


def test_clip_starts_jigsaws_160_non_overlapping():
    s = clip_starts(160, 10)
    assert s == [0, 16, 32, 48, 64, 80, 96, 112, 128, 144]
    assert all(b - a >= 16 for a, b in zip(s, s[1:])) and s[-1] + 16 == 160


def test_clip_starts_generic_and_errors():
    assert clip_starts(48, 3) == [0, 16, 32]
    assert clip_starts(40, 2) == [0, 24]
    with pytest.raises(ValueError):
        clip_starts(10, 2)


def test_cut_clips_numpy_and_torch():
    x = np.arange(103, dtype=np.float32)[None, :, None, None] * np.ones((3, 103, 2, 2), np.float32)
    c = cut_clips(x, clip_starts(103, 10))
    assert c.shape == (10, 3, 16, 2, 2)
    assert c[9, 0, 0, 0, 0] == 86 and c[9, 0, 15, 0, 0] == 101 and c[1, 2, 3, 1, 1] == 13
    ct = cut_clips(torch.from_numpy(x), [0, 87])
    assert isinstance(ct, torch.Tensor) and ct.shape == (2, 3, 16, 2, 2) and ct[1, 0, 15, 0, 0] == 102
    with pytest.raises(ValueError):
        cut_clips(x, [88])


def _coord_frames(h=8, w=8, t=2):
    """Frame pixel (r, c) has red = 16*r + c, green = t index, blue 0."""
    f = np.zeros((t, h, w, 3), np.uint8)
    f[..., 0] = (16 * np.arange(h)[:, None] + np.arange(w)[None, :])
    f[..., 1] = np.arange(t)[:, None, None]
    return f


def _red(out, cfg):
    """Undo the normalisation of channel 0 back to bytes."""
    if cfg.norm == "imagenet":
        return np.rint((out[0] * 0.229 + 0.485) * 255).astype(int)
    return np.rint((out[0] + 1) * 127.5).astype(int)


@pytest.mark.parametrize("crop,r0,c0", [("center", 2, 2), ("tl", 0, 0), ("tr", 0, 4), ("bl", 4, 0), ("br", 4, 4)])
def test_crop_positions(crop, r0, c0):
    cfg = FrameConfig(resize_hw=(8, 8), crop=4)
    f = _coord_frames()
    out = apply_view(f, View("v", crop=crop), cfg)
    assert out.shape == (3, 2, 4, 4) and out.dtype == np.float32
    np.testing.assert_array_equal(_red(out, cfg)[0], f[0, r0:r0 + 4, c0:c0 + 4, 0])


def test_flip_mirrors_columns():
    cfg = FrameConfig(resize_hw=(8, 8), crop=4, norm="minus1to1")
    f = _coord_frames()
    a = apply_view(f, View("a", crop="tl"), cfg)
    b = apply_view(f, View("b", crop="tl", flip=True), cfg)
    np.testing.assert_array_equal(b, a[..., ::-1])
    assert not np.array_equal(a, b)


def test_normalisation_values():
    f = np.zeros((1, 4, 4, 3), np.uint8)
    f[0, :2] = 255
    im = apply_view(f, View("t", crop="tl"), FrameConfig(resize_hw=(4, 4), crop=4, norm="imagenet"))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(im[:, 0, 3, 0], -mean / std, rtol=1e-6)
    np.testing.assert_allclose(im[:, 0, 0, 0], (1 - mean) / std, rtol=1e-6)
    m = apply_view(f, View("t", crop="tl"), FrameConfig(resize_hw=(4, 4), crop=4, norm="minus1to1"))
    assert m[:, 0, 0, 0].tolist() == [1, 1, 1] and m[:, 0, 3, 0].tolist() == [-1, -1, -1]


def test_nearest_resize_rule_and_default_size():
    # 4 rows -> 8 rows: source row floor(i * 4 / 8) = 0,0,1,1,2,2,3,3
    f = _coord_frames(h=4, w=4, t=1)
    cfg = FrameConfig(resize_hw=(8, 8), crop=8, norm="minus1to1")
    red = _red(apply_view(f, View("v"), cfg), cfg)[0]
    assert red[:, 0].tolist() == [16 * r for r in (0, 0, 1, 1, 2, 2, 3, 3)]
    # default config: 455 x 256 then a 224 crop, any input size (landscape is stretched vertically)
    out = apply_view(np.zeros((3, 24, 32, 3), np.uint8), View("test", role="test"), FrameConfig())
    assert out.shape == (3, 3, 224, 224)


def test_bilinear_short_side_keeps_aspect():
    f = np.full((2, 30, 60, 3), 200, np.uint8)
    cfg = FrameConfig(resize_hw=(24, 24), crop=16, norm="minus1to1", interp="bilinear_short_side")
    out = apply_view(f, View("v", crop="tr"), cfg)
    assert out.shape == (3, 2, 16, 16)
    np.testing.assert_allclose(out, 200 / 127.5 - 1, atol=1e-6)
    # the resized frame is 24 x 48: a coordinate image shows the column scale is 2 (not squashed to 24)
    g = np.zeros((1, 30, 60, 3), np.uint8)
    g[..., 0] = np.arange(60)[None, :] * 4
    left = apply_view(g, View("v", crop="tl"), cfg)[0, 0, 0, -1]
    right = apply_view(g, View("v", crop="tr"), cfg)[0, 0, 0, -1]
    assert right > left + 1


def test_default_views():
    v = default_views("mtl_aqa")
    assert v[0] == View("test", 0, False, "center", "test") and len(v) == 15
    assert sorted((x.shift, x.flip) for x in v[1:]) == [(s, f) for s in range(-3, 4) for f in (False, True)]
    for name in ("aqa7", "jigsaws", "csv", "synthetic"):
        w = default_views(name)
        assert w[0].role == "test" and len(w) == 7 and all(x.role == "train" and x.shift == 0 for x in w[1:])
        assert {(x.crop, x.flip) for x in w[1:]} == {(c, f) for c in ("center", "tl", "br") for f in (False, True)}
    assert len({x.name for x in v}) == len(v)


def test_shift_window_and_config_errors():
    arr = np.arange(109)
    np.testing.assert_array_equal(shift_window(arr, -3, 3, 103), np.arange(103))
    np.testing.assert_array_equal(shift_window(arr, 2, 3, 103), np.arange(5, 108))
    with pytest.raises(ValueError):
        shift_window(arr, 4, 3, 103)
    with pytest.raises(ValueError):
        FrameConfig(norm="bogus")
    with pytest.raises(ValueError):
        FrameConfig(resize_hw=(100, 100), crop=224)
    with pytest.raises(ValueError):
        View("x", crop="middle")
    cfg = FrameConfig(resize_hw=(128, 128), crop=112)
    assert FrameConfig.from_dict(cfg.to_dict()) == cfg
