"""RunConfig layering (defaults <- preset <- overrides), validation, run folder naming."""
import dataclasses
import json

import pytest

from train_head.config import (ConfigError, RunConfig, config_from_dict, parse_set_options,
                               resolve_config)
from train_head.presets import PRESETS, default_preset, get_preset
from train_head.runfolder import RunFolder


def test_defaults_preset_overrides_layering():
    cfg = resolve_config(None, cache="c.h5")
    assert (cfg.depth, cfg.hidden, cfg.theta, cfg.voters, cfg.epochs, cfg.lr, cfg.batch_size) == \
        (5, 256, 100.0, 10, 200, 1e-3, 32)
    dd = resolve_config("mtl_aqa_dd", cache="c.h5")
    assert dd.theta == 30.0 and dd.head == "core_dd" and dd.dataset == "mtl_aqa"
    # CLI strings are coerced to the field types and win over the preset
    o = resolve_config("mtl_aqa_dd", cache="c.h5", theta="25", depth="3", lr="1e-4", cls="none", epochs=None)
    assert (o.theta, o.depth, o.lr, o.cls, o.epochs) == (25.0, 3, 1e-4, None, 200)


def test_jigsaws_presets_per_task_and_fold():
    cfg = resolve_config("jigsaws/Suturing/4fold/2", cache="c.h5")
    assert (cfg.cls, cfg.protocol, cfg.fold, cfg.theta) == ("Suturing", "4fold", "2", 30.0)
    assert cfg.unit == "Suturing-4fold-2"
    assert "aqa7/gym_vault" in PRESETS and "jigsaws/Knot_Tying/louo/B" in PRESETS
    assert default_preset("mtl_aqa", "core_dd") == "mtl_aqa_dd"
    assert default_preset("mtl_aqa", "core") == "mtl_aqa"
    assert default_preset("my_own", None) is None


@pytest.mark.parametrize("bad, match", [
    ({"depht": 3}, "unknown config key.*depht"),
    ({"depth": "three"}, "depth.*int"),
    ({"depth": 1}, "depth"),
    ({"val_fraction": 1.5}, "val_fraction"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"protocol": "5fold"}, "protocol"),
    ({"fold": "1"}, "protocol"),
])
def test_invalid_values_raise_clear_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(None, cache="c.h5", **bad)


def test_missing_cache_and_unknown_preset():
    with pytest.raises(ConfigError, match="cache"):
        resolve_config("aqa7")
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("aqa8")


def test_frozen_set_options_and_roundtrip(tmp_path):
    cfg = resolve_config("aqa7/diving", cache="c.h5", out=str(tmp_path), seed=3, tag="depth=3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.depth = 3
    assert cfg.run_dir() == tmp_path / "aqa7" / "diving" / "core+depth=3" / "seed3"
    assert parse_set_options(["lr=1e-4", "batch-size=8"]) == {"lr": "1e-4", "batch_size": "8"}
    with pytest.raises(ConfigError, match="unknown config key"):
        parse_set_options(["nope=1"])
    rec = RunFolder.config_record(cfg, "aqa7", {"dataset": "aqa7", "views": "[]"})
    text = json.dumps(rec)
    assert "git_commit" in rec and "git_dirty" in rec and rec["cache_attrs"]["dataset"] == "aqa7"
    assert config_from_dict(json.loads(text)) == cfg
    assert cfg.replace(depth=3).depth == 3 and isinstance(cfg.replace(depth=3), RunConfig)
