"""Benchmark videos: JPEG frame folders of a realistic size (455 x 256, landscape), read through the
project's own frame reader (`data.base.read_images`, PIL), with an end-frame shift protocol so that the
15 MTL-AQA views (shifts -3..3) can be benchmarked too.

    root = write_frames(tmp / "frames", n_distinct=6)
    ds = BenchFrames(root, n_videos=48)        # 48 samples cycling over the 6 folders

Content: the demo's rendered dive (``data.synthetic.render_dive`` at 256 px) in the middle of a
textured background (a smooth random "crowd" plus pixel noise of standard deviation 3), JPEG quality 90:
about 20-30 KB a frame (the benchmark prints the mean), between a flat synthetic frame (~15 KB) and
grainy footage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.base import Sample, read_images

WIDTH, HEIGHT = 455, 256
N_FILES = 110          # 103 frames + 2 x 3 for the MTL-AQA shifts, + 1 spare


def _background(rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    small = rng.integers(40, 220, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8)
    big = np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.BILINEAR), dtype=np.float32)
    return big


def write_frames(root: str | Path, n_distinct: int = 6, seed: int = 0, quality: int = 90) -> Path:
    """``n_distinct`` folders ``v00/img_00001.jpg`` ... of N_FILES frames each; returns ``root``."""
    from PIL import Image

    from data.synthetic import render_dive, sample_factors

    root = Path(root)
    rng = np.random.default_rng(seed)
    for v in range(n_distinct):
        folder = root / f"v{v:02d}"
        if folder.is_dir() and len(list(folder.glob("*.jpg"))) == N_FILES:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        dive = render_dive(sample_factors(rng), HEIGHT)          # [103, 256, 256, 3]
        bg = _background(rng)
        left = (WIDTH - HEIGHT) // 2
        for t in range(N_FILES):
            frame = bg + rng.normal(0.0, 3.0, bg.shape)
            frame[:, left:left + HEIGHT] = dive[min(t, len(dive) - 1)]
            img = np.clip(frame, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"img_{t + 1:05d}.jpg", quality=quality)
    return root


def mean_frame_kb(root: str | Path) -> float:
    files = sorted(Path(root).glob("v*/img_*.jpg"))
    return float(np.mean([f.stat().st_size for f in files]) / 1024) if files else 0.0


class BenchFrames:
    """A dataset over `write_frames` folders: ``n_videos`` samples of 103 frames, shifts up to 3."""

    name = "bench"
    n_frames = 103
    supports_shift = True

    def __init__(self, root: str | Path, n_videos: int):
        self.root = Path(root)
        self.folders = sorted(p for p in self.root.iterdir() if p.is_dir())
        self._samples = [Sample(f"bench/{i:04d}", str(self.folders[i % len(self.folders)]), float(i % 10), None,
                                "train" if i % 4 else "test", "bench") for i in range(n_videos)]

    def samples(self) -> list[Sample]:
        return list(self._samples)

    def read_frames(self, sample: Sample, max_shift: int = 0) -> np.ndarray:
        """uint8 [103 + 2*max_shift, 256, 455, 3]: frames 4-max_shift .. of the folder (JPEG decode)."""
        first = 3 - max_shift
        paths = [Path(sample.source) / f"img_{t + 1:05d}.jpg"
                 for t in range(first, first + self.n_frames + 2 * max_shift)]
        return read_images(paths)


def write_csv(root: str | Path, n_videos: int, n_distinct: int = 6) -> Path:
    """A `csv` dataset of ``n_videos`` frame folders for `python -m extract features --dataset csv`:
    ``root/frames`` (the distinct folders) and ``root/videos/v0000 -> ../frames/vNN`` (symbolic links, so
    that every row is its own video id); returns the CSV path."""
    root = Path(root)
    frames = write_frames(root / "frames", n_distinct)
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    lines = ["video,score,split"]
    for i in range(n_videos):
        link = vids / f"v{i:05d}"
        if not link.exists():
            link.symlink_to(Path("..") / "frames" / f"v{i % n_distinct:02d}", target_is_directory=True)
        lines.append(f"videos/v{i:05d},{(i * 7) % 100},{'test' if i % 4 == 0 else 'train'}")
    del frames
    csv = root / "bench.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


__all__ = ["write_frames", "write_csv", "BenchFrames", "mean_frame_kb", "WIDTH", "HEIGHT"]


if __name__ == "__main__":         # python -m bench.frames OUT_DIR N_VIDEOS  -> prints the CSV path
    import sys
    print(write_csv(sys.argv[1], int(sys.argv[2])))
