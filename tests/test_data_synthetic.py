import collections
import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from data import get_dataset
from data.__main__ import cli
from data.synthetic import DiveFactors, judge, render_dive, sample_factors, write_synthetic


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn"), n_videos=6, seed=1, size=64)


def test_layout_and_reader(synth):
    assert (synth / "diving-out" / "006" / "img_00103.jpg").is_file()
    assert (synth / "README.txt").read_text().startswith("Synthetic")
    ds = get_dataset("synthetic", root=synth)
    s = ds.samples()
    assert collections.Counter(x.split for x in s) == {"train": 4, "test": 2}
    for x in s:
        assert 21.6 <= x.score <= 102.6 and 2.85 <= x.difficulty <= 3.25 and x.cls == "diving"
        assert x.extra["shape"] in ("tuck", "pike", "straight") and len(x.extra["judge_scores"]) == 7
    fr = ds.read_frames(s[0])
    assert fr.shape == (103, 64, 64, 3)
    # the AQA-7 reader reads the same files (unscaled scores detected)
    a = get_dataset("aqa7", root=synth, cls="diving")
    assert len(a.samples()) == 6 and a.score_scale == {"train": 1, "test": 1}
    norm = get_dataset("synthetic", root=synth, normalise=True).samples()
    assert [x.score for x in norm] == pytest.approx([x.score for x in a.samples()])


def test_deterministic_by_seed(synth, tmp_path):
    again = write_synthetic(tmp_path / "again", n_videos=6, seed=1, size=64)
    assert (again / "difficulty.csv").read_text() == (synth / "difficulty.csv").read_text()
    assert (again / "diving-out/003/img_00050.jpg").read_bytes() == (synth / "diving-out/003/img_00050.jpg").read_bytes()
    other = [sample_factors(np.random.default_rng(2)) for _ in range(3)]
    assert other != [sample_factors(np.random.default_rng(1)) for _ in range(3)]


def test_score_follows_the_pictures():
    base = DiveFactors(2.5, "pike", 0.0, 5.0, 0.1, (0.1, -0.2, 0.0, 0.2, -0.1, 0.05, 0.0))
    big = dataclasses.replace(base, splash=0.9)
    assert judge(base)["final_score"] > judge(big)["final_score"]  # smaller splash scores higher
    fa, fb = render_dive(base, 64), render_dive(big, 64)
    np.testing.assert_array_equal(fa[:56], fb[:56])  # identical until the entry
    diff = np.abs(fa[56:].astype(int) - fb[56:].astype(int))
    assert diff.sum() > 1000 and (diff.max(-1) > 30).mean() > 0.1  # the splash is big and lasts: >10% of pixels
    assert (diff[-1].max(-1) > 30).any()  # foam still visible in the last frame
    # the other factors in their documented direction
    assert judge(base)["final_score"] > judge(dataclasses.replace(base, entry_angle=40.0))["final_score"]
    assert judge(base)["final_score"] > judge(dataclasses.replace(base, rotation_error=0.5))["final_score"]
    assert judge(base)["difficulty"] == pytest.approx(2.7 + 0.1 * 2.5 + 0.1)
    assert not np.array_equal(render_dive(dataclasses.replace(base, rotation_error=0.5), 64)[40], fa[40])


def test_cli(tmp_path):
    r = CliRunner().invoke(cli, ["synthetic", "--out", str(tmp_path / "s"), "--n-videos", "2", "--size", "32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["info", "--dataset", "synthetic", "--root", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "train: 1" in r.output and "test: 1" in r.output
    r = CliRunner().invoke(cli, ["info", "--dataset", "aqa7", "--root", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "not found" in r.output
