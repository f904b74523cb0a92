"""Config fields that reach the run: the tree's leaf activation and TensorBoard logging."""
import json

import pandas as pd
import pytest
from click.testing import CliRunner

from tests._cachefixture import learnable_cache
from train_head.__main__ import cli
from train_head.config import resolve_config
from train_head.trainer import train

SMALL = dict(epochs=3, depth=3, voters=3, hidden=8, threads=1)


def test_leaf_activation_from_the_cli_changes_the_model(tmp_path):
    cache = learnable_cache(tmp_path / "c.h5", n=24, dim=8)
    preds = {}
    for act in ("identity", "sigmoid"):
        out = tmp_path / act
        res = CliRunner().invoke(cli, ["train", "--cache", str(cache), "--out", str(out), "--epochs", "3",
                                       "--depth", "3", "--voters", "3", "--set", "hidden=8", "--set", "threads=1",
                                       "--set", f"leaf_activation={act}"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        run = out / "synthetic" / "all" / "core" / "seed0"
        assert json.loads((run / "config.json").read_text())["leaf_activation"] == act
        preds[act] = pd.read_csv(run / "predictions.csv")["pred"].to_numpy()
    assert not (preds["identity"] == preds["sigmoid"]).all()
    assert resolve_config(None, cache="c.h5").leaf_activation == "identity"       # the reference's linear leaves


def test_tensorboard_from_the_config(tmp_path):
    pytest.importorskip("tensorboard")          # requirements-test.txt installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cache = learnable_cache(tmp_path / "c.h5", n=24, dim=8)
    run = train(resolve_config(None, cache=str(cache), out=str(tmp_path), tensorboard="true", **SMALL),
                progress=False)
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    metrics = pd.read_csv(run / "metrics.csv")
    assert [round(s.value, 5) for s in acc.Scalars("test_rho")] == [round(v, 5) for v in metrics["test_rho"]]
    # logging is not part of what decides the numbers: the run without it is the same run (no retrain)
    again = train(resolve_config(None, cache=str(cache), out=str(tmp_path), **SMALL), progress=False)
    assert again == run and json.loads((run / "summary.json").read_text())["complete"]


def test_training_and_scoring_build_the_head_in_one_place(tmp_path):
    """train_head.loop.build_run_head is what training and `evaluate score` both call: the head it rebuilds
    from a saved run's typed config loads that run's weights and predicts what the run predicted, for a
    sigmoid-leaf run and for a run saved before `leaf_activation` existed (its trees had sigmoid leaves)."""
    import numpy as np
    import torch

    from train_head.loop import build_run_head
    from train_head.runfolder import RunFolder
    from train_head.trainer import load_cache_data

    cache = learnable_cache(tmp_path / "c.h5", n=24, dim=8)
    run = train(resolve_config(None, cache=str(cache), out=str(tmp_path / "r"), leaf_activation="sigmoid", **SMALL),
                progress=False)
    rec = json.loads((run / "config.json").read_text())
    del rec["leaf_activation"]                                   # as an old run's config.json
    (run / "config.json").write_text(json.dumps(rec))
    folder = RunFolder(run)
    groups = np.asarray(folder.read_json("groups.json")["groups"])
    head = build_run_head(folder.load_config(), 8, groups)
    assert head.tree_net.leaf_activation == "sigmoid"
    head.load_state_dict(torch.load(run / "model_final.pt", weights_only=True))
    data = load_cache_data(cache)
    split = folder.read_json("split.json")
    ids = list(data.video_ids)
    q = [ids.index(v) for v in split["test"]]
    pool = [ids.index(v) for v in split["train"]]
    pred = pd.read_csv(run / "predictions.csv", keep_default_na=False)
    tv = data.test_view
    f = torch.from_numpy(data.feats[:, tv])
    pool_t = torch.from_numpy(data.scores[pool]).float()
    idx = torch.tensor([[pool.index(ids.index(e)) for e in row.split()] for row in pred["exemplars"]])
    with torch.inference_mode():
        p = head.eval().predict_indexed(f[q], f[pool], pool_t, idx)
    np.testing.assert_allclose(p.target.double().numpy(), pred["pred_final"].to_numpy(), rtol=1e-5)
