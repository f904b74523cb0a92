"""Synthetic demo dataset: rendered dives whose judged score is a known function of what is visible.

`python -m data synthetic --out DIR --n-videos 48 --seed 0 --size 128` writes, deterministically by seed:
- `DIR/diving-out/<idx:03d>/img_<i:05d>.jpg`, i = 1..103 (the AQA-7 layout, class diving);
- `DIR/Split_4/split_4_{train,test}_list.mat` (rows [1, idx, score], unscaled scores; about 75/25,
  round(n/4) test videos chosen at random);
- `DIR/difficulty.csv`: video_id, difficulty and the hidden factors of each video;
- `DIR/README.txt`: the scoring rule below.

The picture is made for a frozen video network at ~112 px: the factors that set the score are large and
last many frames. What a video shows (103 frames, a sky, a water surface at 75% of the height, a tower
on the left): a big diver (red body, yellow head; straight with arms up, about 2/3 of the frame tall)
stands on the platform (frames 0-7), flies along a parabola (frames 8-55) while somersaulting
`performed_rotations` turns in a body shape (tuck, pike or straight) during the first 80% of the flight,
then holds straight at the entry angle for the last 20% (about 10 frames), enters the water head first
(declared dives are all x.5 turns) or feet first (a rotation error of half a turn) and sinks along the
entry angle. From frame 56 on, a white splash whose width and spray height scale with `splash` (from a
small puff to a burst ~90% of the frame wide and ~65% tall) rises for 6 frames, holds, and fades by frame ~100,
and the water around the entry point turns to foam in proportion to `splash` until the last frame.

Hidden factors per video (`DiveFactors`):
- declared_rotations in {1.5, 2.5, 3.5}; shape in {tuck, pike, straight};
- rotation_error in {-0.5, 0, +0.5} (p = .15/.7/.15): performed = declared + error (feet-first entry);
- entry_angle: deviation of the body from vertical at entry, degrees, uniform in [-45, 45];
- splash: 0 (tiny) .. 1 (huge), uniform;
- judge_noise: 7 offsets ~ N(0, 0.2).

Scoring rule (`judge`); execution dominates the score variance, difficulty varies little (2.85 .. 3.25):
- difficulty = 2.7 + 0.1 * declared_rotations + {tuck: 0.0, pike: 0.1, straight: 0.2};
- execution = 10 - 3.5 * splash - 2.5 * |entry_angle| / 45 - 2 * |rotation_error|  (3 .. 10);
- judge j awards clip(round_to_half(execution + judge_noise[j]), 0, 10);
- the 2 highest and 2 lowest awards are dropped, the middle 3 summed (0..30);
- final = clip(sum * difficulty, 21.6, 102.6) (diving's AQA-7 range; in practice about 26 .. 97.5).
So a smaller splash, a more vertical entry and a head-first entry (the declared rotations) score higher.

Reader (`get_dataset("synthetic", root)`): the AQA-7 reader (class diving) plus `difficulty.csv`.
Sample.score is the final judged score itself (the raw AQA-7 diving score, 21.6..102.6), not the AQA-7
[0, 100] normalisation, so that score = completeness x difficulty holds exactly as with MTL-AQA (pass
`normalise=True` for the AQA-7 scale). Sample.extra adds the hidden factors and `raw_score`/`norm_score`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .aqa7 import AQA7, SCORE_RANGES
from .base import DataError, Sample, check_score

log = logging.getLogger(__name__)

N_FRAMES = 103
N_JUDGES = 7
SHAPES = ("tuck", "pike", "straight")
SHAPE_BONUS = {"tuck": 0.0, "pike": 0.1, "straight": 0.2}
ROTATIONS = (1.5, 2.5, 3.5)
LO, HI = SCORE_RANGES["diving"]
T_TAKEOFF, T_ENTRY = 8, 56  # flight is frames [8, 56)
U_OPEN = 0.8  # the somersaults end at 80% of the flight; the body then holds straight at the entry angle
JUDGE_SD = 0.2


@dataclass(frozen=True)
class DiveFactors:
    declared_rotations: float
    shape: str
    rotation_error: float = 0.0
    entry_angle: float = 0.0
    splash: float = 0.0
    judge_noise: tuple = (0.0,) * N_JUDGES

    @property
    def performed_rotations(self) -> float:
        return self.declared_rotations + self.rotation_error


def sample_factors(rng: np.random.Generator) -> DiveFactors:
    return DiveFactors(
        declared_rotations=float(rng.choice(ROTATIONS)),
        shape=str(rng.choice(SHAPES)),
        rotation_error=float(rng.choice([-0.5, 0.0, 0.5], p=[0.15, 0.7, 0.15])),
        entry_angle=float(np.round(rng.uniform(-45, 45), 1)),
        splash=float(np.round(rng.uniform(0, 1), 3)),
        judge_noise=tuple(float(v) for v in np.round(rng.normal(0, JUDGE_SD, N_JUDGES), 3)),
    )


def difficulty_of(f: DiveFactors) -> float:
    return round(2.7 + 0.1 * f.declared_rotations + SHAPE_BONUS[f.shape], 2)


def judge(f: DiveFactors) -> dict:
    """The scoring rule of the module docstring: difficulty, execution, 7 awards, final score."""
    execution = 10 - 3.5 * f.splash - 2.5 * abs(f.entry_angle) / 45 - 2 * abs(f.rotation_error)
    awards = np.clip(np.round((execution + np.asarray(f.judge_noise)) * 2) / 2, 0, 10)
    middle = float(np.sort(awards)[2:-2].sum())
    dd = difficulty_of(f)
    final = float(np.clip(round(middle * dd, 2), LO, HI))
    return {"difficulty": dd, "execution": float(execution), "judge_scores": awards.tolist(),
            "final_score": final, "clipped": bool(middle * dd < LO or middle * dd > HI)}


# ------------------------------------------------------------------------------------------------ render

def _body(shape: str, L: float) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Segments of the figure in body coordinates (hip at origin, head towards -y), length unit L."""
    sh, hd = (0.0, -0.42 * L), (0.0, -0.56 * L)
    torso = [((0.0, 0.0), sh)]
    if shape == "straight":
        limbs = [((0.0, 0.0), (0.0, 0.5 * L)), (sh, (0.0, -0.78 * L))]          # legs, arms above head
    elif shape == "pike":
        limbs = [((0.0, 0.0), (0.42 * L, -0.28 * L)), (sh, (0.36 * L, -0.18 * L))]  # legs folded forward
    else:  # tuck: knees to chest, shins back down
        knee = (0.3 * L, -0.2 * L)
        limbs = [((0.0, 0.0), knee), (knee, (0.12 * L, 0.05 * L)), (sh, knee)]
    return torso + limbs, hd


# fixed spray pattern (unit offsets), the same for every video: x in [-1, 1], height in [0.3, 1], radius
_SPRAY = np.random.default_rng(12345).uniform([-1.0, 0.3, 0.5], [1.0, 1.0, 1.0], size=(14, 3))


def render_dive(f: DiveFactors, size: int = 128) -> np.ndarray:
    """uint8 [103, size, size, 3] frames of one dive (deterministic in `f` and `size`)."""
    from PIL import Image, ImageDraw

    S = int(size)
    water_y = 0.75 * S
    wy = int(water_y)
    plat_y = 0.5 * S
    L = 0.52 * S
    lw = max(3, S // 11)
    # static background
    bg = np.empty((S, S, 3), np.uint8)
    yy = np.arange(S)[:, None]
    sky = np.stack([150 + 40 * yy / S, 195 + 30 * yy / S, np.full_like(yy, 240.0)], -1)
    bg[:] = np.broadcast_to(sky, (S, S, 3)).astype(np.uint8)
    bg[wy:] = (25, 70, 150)
    bg[int(plat_y):wy, : int(0.08 * S)] = (120, 120, 120)     # tower
    bg[int(plat_y):int(plat_y + 0.04 * S), : int(0.25 * S)] = (90, 90, 90)  # platform slab
    base = Image.fromarray(bg)
    xs = np.arange(S)[None, :]

    x0, x1 = 0.2 * S, 0.55 * S
    c0 = plat_y - 0.35 * L  # body centre (0.15 L above the hip) standing on the platform
    total = 360.0 * f.performed_rotations + f.entry_angle
    a_end = math.radians(total)
    out = np.empty((N_FRAMES, S, S, 3), np.uint8)
    for t in range(N_FRAMES):
        im = base.copy()
        dr = ImageDraw.Draw(im)
        if t < T_TAKEOFF:
            pos, ang, shape = (x0, c0), 0.0, "straight"
        elif t < T_ENTRY:
            u = (t - T_TAKEOFF) / (T_ENTRY - T_TAKEOFF)
            y = c0 - 0.15 * S * u * (1 - u) + (water_y - c0) * u * u
            pos, ang = (x0 + (x1 - x0) * u, y), total * min(1.0, u / U_OPEN)
            shape = f.shape if 0.08 <= u <= U_OPEN - 0.05 else "straight"
        else:  # sinking along the entry angle
            d = (t - T_ENTRY + 1) * 0.05 * S
            pos, ang, shape = (x1 - math.sin(a_end) * d, water_y + abs(math.cos(a_end)) * d), total, "straight"
        if t < T_ENTRY + 14:
            segs, head = _body(shape, L)
            a = math.radians(ang)
            ca, sa = math.cos(a), math.sin(a)

            def tr(p):
                px, py = p[0], p[1] + 0.15 * L  # rotate about the body centre
                return (pos[0] + ca * px - sa * py, pos[1] + sa * px + ca * py)

            for p, q in segs:
                dr.line([tr(p), tr(q)], fill=(220, 30, 30), width=lw)
            hx, hy = tr(head)
            r = 0.15 * L
            dr.ellipse([hx - r, hy - r, hx + r, hy + r], fill=(250, 210, 40))
            if pos[1] + L > water_y:  # what is under water is hidden
                arr = np.asarray(im).copy()
                arr[wy:] = bg[wy:]
                im = Image.fromarray(arr)
                dr = ImageDraw.Draw(im)
        if t >= T_ENTRY:
            k = t - T_ENTRY
            # foam on the water around the entry point: width and whiteness grow with the splash, lasts
            arr = np.asarray(im).astype(np.float32)
            half = (0.05 + 0.45 * f.splash) * S
            foam = np.clip(1 - np.abs(xs - x1) / half, 0, 1) * (0.25 + 0.7 * f.splash)
            foam = foam * min(1.0, (k + 1) / 4) * (1 - 0.4 * k / (N_FRAMES - T_ENTRY))
            arr[wy:] += (np.array([240.0, 245.0, 255.0]) - arr[wy:]) * foam[..., None]
            im = Image.fromarray(arr.astype(np.uint8))
            dr = ImageDraw.Draw(im)
            # the splash: rises for 6 frames, holds, fades out over ~35 frames
            env = min(1.0, (k + 1) / 6) * max(0.0, 1 - max(0, k - 10) / 35)
            w = (0.03 + 0.42 * f.splash) * S * env
            h = (0.03 + 0.62 * f.splash) * S * env
            if w > 0.5:
                white = (245, 248, 255)
                dr.ellipse([x1 - w, water_y - 0.5 * h, x1 + w, water_y + 0.2 * h], fill=white)  # crown
                dr.polygon([(x1 - 0.45 * w, water_y - 0.2 * h), (x1 - 0.15 * w, water_y - h),
                            (x1 + 0.15 * w, water_y - h), (x1 + 0.45 * w, water_y - 0.2 * h)], fill=white)  # column
                for dx, dy, rr in _SPRAY:  # spray droplets
                    cx, cy, rad = x1 + dx * 1.1 * w, water_y - dy * 1.15 * h, max(1.0, 0.12 * rr * w)
                    dr.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=(235, 240, 255))
        out[t] = np.asarray(im)
    return out


# ------------------------------------------------------------------------------------------------ writer

README = """Synthetic diving demo dataset (generated by `python -m data synthetic`).
Layout: AQA-7 (diving-out/<idx>/img_<i>.jpg, Split_4/*.mat with unscaled scores), difficulty.csv.
Seed {seed}, {n} videos, {size}x{size} px, {n_test} test videos.

Scoring rule (execution dominates; difficulty 2.85 .. 3.25):
  difficulty = 2.7 + 0.1 * declared_rotations (1.5 | 2.5 | 3.5) + (tuck 0.0 | pike 0.1 | straight 0.2)
  execution  = 10 - 3.5 * splash - 2.5 * |entry_angle_deg| / 45 - 2 * |rotation_error|
  each of 7 judges: clip(round_to_half(execution + noise_j), 0, 10), noise_j ~ N(0, 0.2)
  final = clip(sum of the middle 3 awards * difficulty, 21.6, 102.6)
What is visible: splash = width/height of the white burst and of the foam on the water (frames 57-103);
entry_angle = tilt of the straight body over the last ~10 flight frames and while sinking;
rotation_error = +-0.5 turn, i.e. a feet-first instead of head-first entry (declared dives are x.5 turns).
A smaller splash, a more vertical entry and performing the declared rotations score higher.
"""


def write_synthetic(out: str | Path, n_videos: int = 48, seed: int = 0, size: int = 128,
                    quality: int = 90) -> Path:
    """Render and write the demo dataset (module docstring). Returns `out`."""
    import scipy.io
    from PIL import Image

    if n_videos < 2:
        raise DataError(f"synthetic: need at least 2 videos (one train, one test), got {n_videos}")
    if size < 32:
        raise DataError(f"synthetic: size must be >= 32 px, got {size}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    factors = [sample_factors(rng) for _ in range(n_videos)]
    n_test = max(1, int(round(n_videos * 0.25)))
    test_idx = set((rng.permutation(n_videos)[:n_test] + 1).tolist())
    rows = {"train": [], "test": []}
    (out / "Split_4").mkdir(parents=True, exist_ok=True)
    with (out / "difficulty.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "difficulty", "final_score", "declared_rotations", "shape", "rotation_error",
                    "performed_rotations", "entry_angle", "splash", "execution", "judge_scores", "clipped"])
        for i, f in enumerate(factors, 1):
            j = judge(f)
            folder = out / "diving-out" / f"{i:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for t, frame in enumerate(render_dive(f, size), 1):
                Image.fromarray(frame).save(folder / f"img_{t:05d}.jpg", quality=quality)
            rows["test" if i in test_idx else "train"].append([1.0, float(i), j["final_score"]])
            w.writerow([f"diving/{i:03d}", j["difficulty"], j["final_score"], f.declared_rotations, f.shape,
                        f.rotation_error, f.performed_rotations, f.entry_angle, f.splash, round(j["execution"], 4),
                        " ".join(f"{a:g}" for a in j["judge_scores"]), int(j["clipped"])])
    for split, key in (("train", "consolidated_train_list"), ("test", "consolidated_test_list")):
        scipy.io.savemat(str(out / "Split_4" / f"split_4_{split}_list.mat"),
                         {key: np.asarray(rows[split], dtype=np.float64).reshape(-1, 3)})
    (out / "README.txt").write_text(README.format(seed=seed, n=n_videos, size=size, n_test=n_test))
    log.info("synthetic: wrote %d videos (%d test) to %s", n_videos, n_test, out)
    return out


# ------------------------------------------------------------------------------------------------ reader

class Synthetic(AQA7):
    """The AQA-7 reader restricted to diving, plus difficulty.csv (module docstring)."""

    name = "synthetic"

    def __init__(self, root, normalise: bool = False):
        super().__init__(root, cls="diving")
        self.normalise = bool(normalise)

    def _load_samples(self):
        if not (self.root / "Split_4" / "split_4_train_list.mat").is_file():
            raise DataError(f"{self.root}: not a synthetic dataset (no Split_4/split_4_train_list.mat); "
                            f"create one with `python -m data synthetic --out {self.root}`")
        path = self.root / "difficulty.csv"
        if not path.is_file():
            raise DataError(f"{path}: difficulty file of the synthetic dataset not found")
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                missing = [c for c in _META_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{path}: missing column(s) {missing}; regenerate the dataset with "
                                    f"`python -m data synthetic --out {self.root}`")
                meta = {r["video_id"]: r for r in reader}
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path}: cannot read the difficulty file ({exc})") from None
        self.difficulty_file = path
        out = []
        for s in super()._load_samples():
            r = meta.get(s.video_id)
            if r is None:
                raise DataError(f"{path}: no row for {s.video_id}")
            where = f"{path} {s.video_id}"
            dd = check_score(r["difficulty"], f"{where} difficulty", 0.0, 10.0)
            extra = dict(s.extra)
            extra["norm_score"] = s.score
            extra.update({k: r[k] for k in ("shape",)})
            for k in ("declared_rotations", "rotation_error", "performed_rotations", "entry_angle", "splash",
                      "execution"):
                extra[k] = _number(r[k], f"{where} {k}")
            extra["judge_scores"] = [_number(v, f"{where} judge_scores") for v in (r["judge_scores"] or "").split()]
            score = s.score if self.normalise else float(s.extra["raw_score"])
            out.append(Sample(video_id=s.video_id, source=s.source, score=score, difficulty=dd, split=s.split,
                              cls=s.cls, folds={}, extra=extra))
        return out

    def label_source(self, sample: Sample, field: str = "score") -> str:
        if field == "difficulty" and getattr(self, "difficulty_file", None) is not None:
            return str(self.difficulty_file)
        return super().label_source(sample, field)


_META_COLUMNS = ("video_id", "difficulty", "shape", "declared_rotations", "rotation_error", "performed_rotations",
                 "entry_angle", "splash", "execution", "judge_scores")


def _number(value, where: str) -> float:
    """A finite float, or DataError naming `where`."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x):
        raise DataError(f"{where}: {x} is not a finite number")
    return x


def factors_to_json(f: DiveFactors) -> str:
    return json.dumps(asdict(f))
