"""The command lines share their words (data/cli.py, extract/devices.py): -h everywhere, one -v meaning,
--force / --opt / --frame-size / --resize-mode / --precision / --device with the old names still accepted,
one-line errors for a device this machine lacks, and one default cache name for make and the CLI."""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from data.cli import (CONTEXT_SETTINGS, force_option, frame_size_option, log_level, opt_option, parse_frame_size,
                      parse_opts, resize_mode_option, split_list, verbose_option)
from extract.devices import DeviceError, device_option, precision_option, resolve_device

REPO = Path(__file__).resolve().parents[1]


def _clis():
    from cache.__main__ import main as cache_main
    from data.__main__ import cli as data_cli
    from evaluate.__main__ import cli as evaluate_cli
    from extract.__main__ import main as extract_main
    return {"data": data_cli, "extract": extract_main, "cache": cache_main, "evaluate": evaluate_cli}


def _commands():
    """(package, command name or None for the group, command object) of every CLI command."""
    out = []
    for pkg, group in _clis().items():
        out.append((pkg, None, group))
        out.extend((pkg, name, cmd) for name, cmd in sorted(group.commands.items()))
    return out


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


# ------------------------------------------------------------------------------------------- -h / -v
@pytest.mark.parametrize("pkg,name,cmd", _commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_answers_h_and_has_the_shared_verbose(pkg, name, cmd):
    args = ([name] if name else []) + ["-h"]
    r = CliRunner().invoke(_clis()[pkg], args)
    assert r.exit_code == 0, r.output
    assert "-h, --help" in r.output and "Usage:" in r.output
    assert "-v, --verbose" in r.output and "-vv DEBUG" in r.output
    assert "Traceback" not in r.output


def test_h_from_the_shell_for_each_package():
    for pkg in ("data", "extract", "cache", "evaluate"):
        r = subprocess.run([sys.executable, "-m", pkg, "-h"], capture_output=True, text=True, cwd=REPO)
        assert r.returncode == 0 and "-h, --help" in r.stdout, (pkg, r.stderr)


def test_shared_modules_import_no_torch():
    code = ("import sys, data.cli, extract.devices, extract.__main__, data.__main__, cache.__main__; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_log_levels():
    assert log_level(0) == logging.WARNING and log_level(1) == logging.INFO
    assert log_level(2) == logging.DEBUG and log_level(5) == logging.DEBUG


@pytest.mark.parametrize("args,level", [
    ([], logging.WARNING), (["-v"], logging.INFO), (["-vv"], logging.DEBUG), (["--verbose"], logging.INFO),
    (["-v", "-v"], logging.DEBUG)])
def test_v_counts_the_same_in_every_package(args, level, tmp_path):
    missing = str(tmp_path / "missing")
    calls = {"cache": ["info", missing + ".h5"], "data": ["info", "--dataset", "aqa7", "--root", missing],
             "evaluate": ["plots", str(tmp_path)], "extract": ["cache-path", "--dataset", "csv"]}
    for pkg, cli in _clis().items():
        for where in ("group", "command"):
            logging.getLogger().setLevel(logging.CRITICAL)
            argv = args + calls[pkg] if where == "group" else calls[pkg] + args
            r = CliRunner().invoke(cli, argv)
            assert r.exit_code == 1, (pkg, argv, r.output)       # each of these is a user error
            assert logging.getLogger().level == level, (pkg, argv)


def test_v_on_group_and_command_adds_up(tmp_path):
    from cache.__main__ import main
    CliRunner().invoke(main, ["-v", "info", str(tmp_path / "x.h5"), "-v"])
    assert logging.getLogger().level == logging.DEBUG


def test_user_error_is_one_line_and_traceback_only_with_v(tmp_path):
    from cache.__main__ import main
    r = CliRunner().invoke(main, ["info", str(tmp_path / "x.h5")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert [ln for ln in r.output.splitlines() if ln.strip()] == [r.output.strip()]
    assert r.output.startswith("Error: ")
    r = CliRunner().invoke(main, ["-v", "info", str(tmp_path / "x.h5")])
    assert r.exit_code == 1 and "Traceback" in r.output and r.output.rstrip().splitlines()[-1].startswith("Error: ")


# ------------------------------------------------------------------------------------ shared options
@click.command(context_settings=CONTEXT_SETTINGS)
@verbose_option
@force_option
@opt_option
@frame_size_option
@resize_mode_option
@device_option
@precision_option
def _probe(force, opts, frame_size, resize_mode, device, precision):
    click.echo(repr(dict(force=force, opts=opts, frame_size=frame_size, resize_mode=resize_mode, device=device,
                         precision=precision)))


def _probe_values(*args):
    r = CliRunner().invoke(_probe, list(args))
    assert r.exit_code == 0, r.output
    return eval(r.output)  # noqa: S307 - our own repr of plain values


def test_shared_option_defaults():
    assert _probe_values() == dict(force=False, opts={}, frame_size=(455, 256), resize_mode="nearest",
                                   device="auto", precision="auto")


def test_new_names_parse():
    v = _probe_values("--force", "--opt", "class=diving", "--opt", "n_frames=96", "--frame-size", "128x96",
                      "--resize-mode", "bilinear_short_side", "--device", "cpu", "--precision", "fp16")
    assert v == dict(force=True, opts={"cls": "diving", "n_frames": 96}, frame_size=(128, 96),
                     resize_mode="bilinear_short_side", device="cpu", precision="fp16")


def test_old_names_still_parse_but_are_not_shown():
    v = _probe_values("--overwrite", "-o", "class=diving", "--option", "task=Suturing", "--interp",
                      "bilinear_short_side", "--amp", "bf16")
    assert v["force"] is True and v["opts"] == {"cls": "diving", "task": "Suturing"}
    assert v["resize_mode"] == "bilinear_short_side" and v["precision"] == "bf16"
    help_text = CliRunner().invoke(_probe, ["-h"]).output
    for new in ("--force", "--opt", "--frame-size", "--resize-mode", "--device", "--precision"):
        assert new in help_text
    for old in ("--overwrite", "--option", "-o,", "--interp", "--amp"):
        assert old not in help_text, old
    r = CliRunner().invoke(_probe, ["--interp", "cubic"])          # errors name the new word
    assert r.exit_code == 2 and "'--resize-mode'" in r.output and "--interp" not in r.output


def test_old_names_reach_the_extraction(monkeypatch, tmp_path):
    import data
    import extract.pipeline
    from extract.__main__ import default_cache_path, main

    class _DS:
        name = "synthetic"
    seen = {}

    def fake_get_dataset(name, root, **opts):
        seen["opts"] = opts
        return _DS()

    def fake_run(ds, out, **kw):
        seen.update(kw, out=out)
        raise ValueError("stop here")
    monkeypatch.setattr(data, "get_dataset", fake_get_dataset)
    monkeypatch.setattr(extract.pipeline, "run_extraction", fake_run)
    r = CliRunner().invoke(main, ["features", "--dataset", "synthetic", "--root", str(tmp_path), "--overwrite",
                                  "-o", "normalise=true", "--interp", "bilinear_short_side", "--amp", "fp16",
                                  "--frame-size", "256", "--device", "cpu"])
    assert r.exit_code == 1 and r.output.strip() == "Error: stop here"
    assert seen["overwrite"] is True and seen["precision"] == "fp16" and seen["opts"] == {"normalise": True}
    assert seen["dataset_options"] == {"normalise": True}
    cfg = seen["frame_cfg"]
    assert cfg.interp == "bilinear_short_side" and tuple(cfg.resize_hw) == (256, 256)
    # without --out: the one default name
    assert seen["out"] == default_cache_path("synthetic", "kinetics400", tmp_path)


def test_data_info_takes_opt_and_old_o(monkeypatch, tmp_path):
    import data.__main__ as dm
    seen = []

    def fake(name, root, **opts):
        seen.append(opts)
        raise dm.DataError("stop")
    monkeypatch.setattr(dm, "get_dataset", fake)
    for flag in ("--opt", "-o", "--option"):
        r = CliRunner().invoke(dm.cli, ["info", "--dataset", "aqa7", "--root", str(tmp_path), flag, "class=diving"])
        assert r.exit_code == 1 and r.output.strip() == "Error: stop"
    assert seen == [{"cls": "diving"}] * 3


# ---------------------------------------------------------------------------------------- parsers
@pytest.mark.parametrize("text,hw", [("455,256", (455, 256)), ("455x256", (455, 256)), ("455X256", (455, 256)),
                                     (" 128 , 96 ", (128, 96)), ("224", (224, 224)), ((32, 48), (32, 48))])
def test_parse_frame_size(text, hw):
    assert parse_frame_size(text) == hw


@pytest.mark.parametrize("text", ["", "abc", "1,2,3", "0,10", "10,-5", "-3", "12.5,10", "10,", "x", "10x10x10"])
def test_parse_frame_size_rejects(text):
    with pytest.raises(click.BadParameter) as e:
        parse_frame_size(text)
    assert "--frame-size" in e.value.format_message() and "HEIGHT,WIDTH" in e.value.format_message()


def test_frame_size_option_error_names_the_option():
    r = CliRunner().invoke(_probe, ["--frame-size", "big"])
    assert r.exit_code == 2 and "'--frame-size'" in r.output and "HEIGHT,WIDTH" in r.output


def test_parse_opts():
    assert parse_opts([]) == {} and parse_opts(None) == {}
    assert parse_opts(["class=diving"]) == {"cls": "diving"}
    assert parse_opts(["n_frames=96", "test_fraction=0.25", "normalise=true", "flag=false"]) == {
        "n_frames": 96, "test_fraction": 0.25, "normalise": True, "flag": False}
    assert parse_opts(["task=Suturing", "folds_file=a=b.txt"]) == {"task": "Suturing", "folds_file": "a=b.txt"}
    assert parse_opts(["x=[1,2]", "y=null", "z=", "w=NaN"]) == {"x": "[1,2]", "y": "null", "z": "", "w": "NaN"}
    assert parse_opts(["seed=1", "seed=2"]) == {"seed": 2}
    assert parse_opts([" cls = diving"]) == {"cls": "diving"}


@pytest.mark.parametrize("bad", ["diving", "=diving", "  =1"])
def test_parse_opts_rejects(bad):
    with pytest.raises(click.BadParameter) as e:
        parse_opts([bad])
    assert "--opt" in e.value.format_message() and "KEY=VALUE" in e.value.format_message()


def test_split_list():
    assert split_list("a, b,,c ") == ["a", "b", "c"] and split_list(None) == [] and split_list("") == []
    assert split_list(["a,b", "c"]) == ["a", "b", "c"]


# ------------------------------------------------------------------------------------------ devices
def test_resolve_device_on_this_machine():
    import torch
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == auto
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "", "banana:0"):
        with pytest.raises(DeviceError, match="not a device torch knows"):
            resolve_device(bad)
    with pytest.raises(DeviceError, match="out of range|no CUDA device"):
        resolve_device("cuda:99")
    assert issubclass(DeviceError, ValueError)


def test_resolve_device_without_cuda(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0", "CUDA:1"):
        with pytest.raises(DeviceError) as e:
            resolve_device(name)
        msg = str(e.value)
        assert msg == (f"--device {name}: this machine has no CUDA device (torch reports none); "
                       f"use --device cpu or auto")
    assert resolve_device("auto").type == "cpu"


def test_resolve_device_index_out_of_range(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(DeviceError, match=r"index 2 is out of range.*2 \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_pipeline_still_exports_the_one_resolver():
    import extract.devices
    import extract.pipeline
    assert extract.pipeline.resolve_device is extract.devices.resolve_device


def _device_invocations(tmp_path):
    """Minimal arguments of every command that takes --device (the test below checks none is missing)."""
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"")
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    return {("extract", "features"): ["features", "--dataset", "synthetic", "--root", str(tmp_path)],
            ("evaluate", "score"): ["score", str(video), "--run", str(run)]}


def test_every_device_command_is_covered(tmp_path):
    with_device = {(pkg, name) for pkg, name, cmd in _commands() if name
                   for p in cmd.params if p.name == "device"}
    assert with_device == set(_device_invocations(tmp_path))


@pytest.mark.parametrize("key", [("extract", "features"), ("evaluate", "score")], ids="-".join)
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "gpu"])
def test_device_this_machine_lacks_is_one_line_no_traceback(key, device, tmp_path):
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = _device_invocations(tmp_path)[key] + ["--device", device]
    r = subprocess.run([sys.executable, "-m", key[0], *args], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    assert lines[0].startswith(f"Error: --device {device}: ")
    if device != "gpu":
        assert "no CUDA device" in lines[0] and "--device cpu" in lines[0]


def test_device_error_raised_late_is_one_line_too(monkeypatch, tmp_path):
    """A DeviceError from inside the work (e.g. the pipeline's own resolve) is still one line."""
    import data
    import extract.pipeline
    from extract.__main__ import main

    class _DS:
        name = "synthetic"

    def boom(*a, **k):
        raise DeviceError("--device cuda: this machine has no CUDA device (torch reports none); use --device cpu "
                          "or auto")
    monkeypatch.setattr(data, "get_dataset", lambda *a, **k: _DS())
    monkeypatch.setattr(extract.pipeline, "run_extraction", boom)
    r = CliRunner().invoke(main, ["features", "--dataset", "synthetic", "--root", str(tmp_path), "--device", "cpu"])
    assert r.exit_code == 1 and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------- default cache name
def test_default_cache_path_rule(tmp_path):
    from extract.__main__ import default_cache_path
    assert str(default_cache_path("synthetic", "kinetics400", "artifacts/datasets/synthetic")) == \
        "artifacts/features/synthetic-kinetics400.h5"
    assert str(default_cache_path("aqa7", "/w/model_rgb.pth", "/data/AQA-7", artifacts="art")) == \
        "art/features/aqa7-model_rgb.h5"
    a = default_cache_path("csv", "kinetics400", tmp_path / "one" / "scores.csv")
    b = default_cache_path("csv", "kinetics400", tmp_path / "two" / "scores.csv")
    c = default_cache_path("csv", "kinetics400", tmp_path / "other.csv")
    assert len({a, b, c}) == 3
    assert re.fullmatch(r"csv-scores-[0-9a-f]{8}-kinetics400\.h5", a.name) and "csv-other-" in c.name
    # the same file named two ways is the same cache
    os.makedirs(tmp_path / "one", exist_ok=True)
    rel = os.path.relpath(tmp_path / "one" / "scores.csv")
    assert default_cache_path("csv", "kinetics400", rel) == a
    with pytest.raises(ValueError, match="--root"):
        default_cache_path("csv", "kinetics400", None)
    weird = default_cache_path("csv", "kinetics400", tmp_path / "my data $(x).csv")
    assert re.fullmatch(r"[A-Za-z0-9_.+/-]+", str(weird).replace(str(tmp_path), "")), weird.name


def test_cache_path_command_prints_the_rule(tmp_path):
    from extract.__main__ import default_cache_path
    csv = tmp_path / "d.csv"
    r = subprocess.run([sys.executable, "-m", "extract", "cache-path", "--dataset", "csv", "--root", str(csv),
                        "--artifacts", "art"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == str(default_cache_path("csv", "kinetics400", csv, "art"))


def _make(*args):
    if shutil.which("make") is None or not os.access(REPO / ".venv" / "bin" / "python", os.X_OK):
        pytest.skip("needs make and the project's .venv")
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DATASET", "DATA_ROOT", "WEIGHTS", "FEATURES", "ART")}
    r = subprocess.run(["make", "--no-print-directory", *args], capture_output=True, text=True, cwd=REPO, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _flag(text: str, flag: str) -> str:
    m = re.search(rf"{flag} (\S+)", text)
    assert m, text
    return m.group(1)


def test_make_and_cli_name_the_cache_the_same(tmp_path):
    from extract.__main__ import default_cache_path
    one, two = tmp_path / "a" / "scores.csv", tmp_path / "b" / "scores.csv"
    names = []
    for root in (one, two):
        feat = _make("-n", "features", "DATASET=csv", f"DATA_ROOT={root}")
        train = _make("-n", "train", "DATASET=csv", f"DATA_ROOT={root}")
        out = _flag(feat, "--out")
        assert out == str(default_cache_path("csv", "kinetics400", root)) == _flag(train, "--cache")
        names.append(out)
    assert names[0] != names[1]
    demo = _make("-n", "features")
    assert _flag(demo, "--out") == "artifacts/features/synthetic-kinetics400.h5" == \
        str(default_cache_path("synthetic", "kinetics400", "artifacts/datasets/synthetic"))
    w = _make("-n", "train", "DATASET=aqa7", "WEIGHTS=/w/model_rgb.pth")
    assert _flag(w, "--cache") == str(default_cache_path("aqa7", "/w/model_rgb.pth"))


def test_make_help_lists_what_the_docs_mention():
    text = "\n".join(p.read_text(encoding="utf-8") for p in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    help_text = _make("help")
    targets = set(re.findall(r"\bmake ([a-z][a-z-]*)", text))
    assert {"demo", "test", "features", "train", "eval"} <= targets
    for t in targets:
        assert f"make {t} " in help_text, f"make help does not list target {t}"
    variables = {v for v in re.findall(r"\b([A-Z][A-Z_]{2,})=", text)
                 if re.search(rf"^{v}\s*[?:]?=", makefile, re.M)}
    variables |= {v for v in re.findall(r"`([A-Z][A-Z_]{2,})`", text) if re.search(rf"^{v}\s*[?:]?=", makefile, re.M)}
    assert {"DATASET", "DATA_ROOT", "FEATURES", "WEIGHTS", "DEVICE"} <= variables
    for v in variables:
        assert re.search(rf"\b{v}\b", help_text), f"make help does not list variable {v}"
