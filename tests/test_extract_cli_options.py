"""The feeding options of `python -m extract features` reach the pipeline and do not change features."""
import numpy as np
from click.testing import CliRunner

from cache import load_cache
from data.synthetic import write_synthetic
from extract.__main__ import main


def test_decode_mode_and_deterministic_flags_give_the_same_features(tmp_path):
    root = write_synthetic(tmp_path / "syn", n_videos=3, seed=2, size=32)
    base = ["features", "--dataset", "synthetic", "--root", str(root), "--weights", "random", "--device", "cpu",
            "--frame-size", "32,32", "--crop", "32", "--views", "test", "--n-clips", "2", "--no-progress"]
    feats = []
    for extra, name in (([], "a.h5"), (["--decode", "threads", "--workers", "1", "--deterministic"], "b.h5")):
        r = CliRunner().invoke(main, base + ["--out", str(tmp_path / name)] + extra)
        assert r.exit_code == 0, r.output
        feats.append(load_cache(tmp_path / name).features)
    np.testing.assert_array_equal(feats[0], feats[1])
    r = CliRunner().invoke(main, base + ["--out", str(tmp_path / "c.h5"), "--decode", "fibers"])
    assert r.exit_code == 2 and "fibers" in r.output
