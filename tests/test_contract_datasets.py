"""Contract of every registered dataset reader (data.DATASETS), parametrised over the registry.

Each reader gets a tiny stand-in on disk (a builder below, keyed by registry name); a registry entry
without a builder FAILS with a message saying so, so a new dataset cannot go untested silently.
For every sample: video_id a unique non-empty str, source an existing path, score a finite float,
difficulty None or a finite float, split "train"/"test", cls a non-empty str, folds a mapping of str to
str, extra JSON-serialisable; ``read_frames(sample)`` is uint8 [ds.n_frames, H, W, 3].
"""
from __future__ import annotations

import json
import math
import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from data import DATASETS, Dataset, Sample, get_dataset
from tests.testutil import write_frames, write_video


def _aqa7(root: Path):
    import scipy.io
    # rows [class_idx, sample_idx, unscaled score]: two classes, train and test
    train, test = [[1, 1, 60.0], [2, 7, 14.0]], [[6, 2, 70.0]]
    (root / "Split_4").mkdir(parents=True)
    scipy.io.savemat(root / "Split_4" / "split_4_train_list.mat", {"consolidated_train_list": np.array(train)})
    scipy.io.savemat(root / "Split_4" / "split_4_test_list.mat", {"consolidated_test_list": np.array(test)})
    for folder in ("diving-out/001", "gym_vault-out/007", "sync_diving_10m-out/002"):
        write_frames(root / folder, [(2 * i) % 256 for i in range(103)])
    return root, {}


def _mtl_aqa(root: Path):
    def anno(end, score, dd):
        return {"final_score": score, "difficulty": dd, "end_frame": end, "start_frame": end - 60,
                "judge_scores": np.array([8.0] * 7), "dive_number": "107B"}

    root.mkdir(parents=True, exist_ok=True)
    write_frames(root / "01", [2 * p for p in range(110)])                      # one folder per source video
    write_frames(root / "02_03", [p for p in range(105)], names=[f"{500 + p}.jpg" for p in range(105)])
    annos = {(1, 1): anno(104, 50.0, 2.0), (1, 2): anno(110, 60.5, 3.2), (2, 3): anno(603, 40.0, 2.5)}
    with open(root / "final_annotations_dict_with_dive_number.pkl", "wb") as fh:
        pickle.dump(annos, fh)
    for name, keys in (("train_split_0.pkl", [(1, 1), (2, 3)]), ("test_split_0.pkl", [(1, 2)])):
        with open(root / name, "wb") as fh:
            pickle.dump(keys, fh)
    return root, {}


def _jigsaws(root: Path):
    task = "Suturing"
    trials = [f"{task}_B001", f"{task}_C002", f"{task}_D001", f"{task}_E003"]
    lines = [f"{t}\t\t{'NIE'[k % 3]}\t\t{6 + k}\t" + "\t".join(["1"] * 5 + [str(1 + k)]) for k, t in enumerate(trials)]
    (root / task / "video").mkdir(parents=True)
    (root / task / f"meta_file_{task}.txt").write_text("\n".join(lines) + "\n")
    for k, t in enumerate(trials):
        write_video(root / task / "video" / f"{t}_capture1.avi", [(10 * k + 3 * i) % 256 for i in range(20)])
    folds = root / "folds.pkl"
    with open(folds, "wb") as fh:
        pickle.dump({task: [[t] for t in trials]}, fh)
    return root, {"task": task, "folds_file": str(folds), "n_frames": 16}


def _csv(root: Path):
    write_video(root / "vids" / "a.avi", [3 * k for k in range(20)])
    write_frames(root / "frames" / "b", [5 * k for k in range(18)])
    write_frames(root / "frames" / "c", [7 * k for k in range(16)])
    (root / "scores.csv").write_text("video,score,difficulty,split,class\n"
                                     "vids/a.avi,7.5,2.0,train,x\nframes/b,3.25,,test,y\nframes/c,1,,train,\n")
    return root / "scores.csv", {"n_frames": 16}


def _synthetic(root: Path):
    from data.synthetic import write_synthetic
    return write_synthetic(root, n_videos=3, seed=0, size=32), {}


def _finediving(root: Path):
    from tests.test_data_finediving import write_finediving
    return write_finediving(root, n_dives=3, n_test=1), {}      # dives of 63..149 frames, 7/3/5 judges


BUILDERS = {"aqa7": _aqa7, "mtl_aqa": _mtl_aqa, "jigsaws": _jigsaws, "csv": _csv, "synthetic": _synthetic,
            "finediving": _finediving}


@pytest.fixture(params=sorted(DATASETS), scope="module")
def dataset(request, tmp_path_factory) -> tuple[str, Dataset]:
    name = request.param
    if name not in BUILDERS:
        pytest.fail(f"dataset {name!r} is registered in data.DATASETS but has no stand-in builder in "
                    f"tests/test_contract_datasets.py; add one to BUILDERS so its contract is checked")
    root, options = BUILDERS[name](tmp_path_factory.mktemp(name))
    return name, get_dataset(name, root, **options)


def test_every_builder_is_a_registered_dataset():
    assert set(BUILDERS) <= set(DATASETS), sorted(set(BUILDERS) - set(DATASETS))


def test_reader_identity(dataset):
    name, ds = dataset
    assert isinstance(ds, DATASETS[name]) and ds.name == name
    assert isinstance(ds.n_frames, int) and ds.n_frames > 0


def test_sample_fields(dataset):
    name, ds = dataset
    samples = ds.samples()
    assert len(samples) >= 2, f"{name}: the stand-in should have at least 2 samples"
    ids = [s.video_id for s in samples]
    assert len(set(ids)) == len(ids), f"{name}: duplicate video_id"
    for s in samples:
        assert isinstance(s, Sample)
        where = f"{name} {s.video_id!r}"
        assert isinstance(s.video_id, str) and s.video_id, where
        assert isinstance(s.source, str) and Path(s.source).exists(), f"{where}: source {s.source} missing"
        assert isinstance(s.score, float) and math.isfinite(s.score), f"{where}: score {s.score!r}"
        assert s.difficulty is None or (isinstance(s.difficulty, float) and math.isfinite(s.difficulty)), \
            f"{where}: difficulty {s.difficulty!r}"
        assert s.split in ("train", "test"), f"{where}: split {s.split!r}"
        assert isinstance(s.cls, str) and s.cls, f"{where}: cls {s.cls!r}"
        assert isinstance(s.folds, Mapping), f"{where}: folds {type(s.folds)}"
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in s.folds.items()), f"{where}: {s.folds}"
        assert isinstance(s.extra, Mapping), f"{where}: extra {type(s.extra)}"
        json.dumps(dict(s.extra), allow_nan=False)        # raises for numpy values, tuples keys, NaN...
    assert ds.samples() == samples and len(ds) == len(samples)   # deterministic, cached


def test_read_frames(dataset):
    name, ds = dataset
    for s in ds.samples():
        fr = ds.read_frames(s)
        assert isinstance(fr, np.ndarray) and fr.dtype == np.uint8, f"{name} {s.video_id}: {fr.dtype}"
        assert fr.ndim == 4 and fr.shape[0] == ds.n_frames and fr.shape[3] == 3, \
            f"{name} {s.video_id}: shape {fr.shape}, expected [{ds.n_frames}, H, W, 3]"
        assert fr.shape[1] > 0 and fr.shape[2] > 0
