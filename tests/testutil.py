"""Test helpers (not library code): solid-colour frame folders and videos whose frame k has grey level
`values[k]`, so tests can tell which frame a reader returned.

    from tests.testutil import write_frames, write_video
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def solid_frames(values: Sequence[int], size: tuple[int, int] = (8, 8)) -> np.ndarray:
    v = np.asarray(values, dtype=np.uint8)
    return np.broadcast_to(v[:, None, None, None], (len(v), size[0], size[1], 3)).copy()


def write_frames(folder, values: Sequence[int], size=(8, 8), names: Sequence[str] | None = None) -> Path:
    """JPEG frames `img_00001.jpg`... (or `names`) with grey levels `values`."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = names or [f"img_{i:05d}.jpg" for i in range(1, len(values) + 1)]
    for name, frame in zip(names, solid_frames(values, size)):
        Image.fromarray(frame).save(folder / name, quality=95)
    return folder


def write_video(path, values: Sequence[int], size=(32, 32), codec: str = "mpeg4", fps: int = 30) -> Path:
    """A video file (container from the suffix, e.g. .avi) whose frame k is grey level values[k]."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        st = out.add_stream(codec, rate=fps)
        st.width, st.height = size[1], size[0]
        st.pix_fmt = "yuv420p"
        st.bit_rate = 4_000_000
        for frame in solid_frames(values, size):
            for pkt in st.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path
