"""`data.base.read_first`: the first T frames of a frame folder or a video file (used by
`python -m evaluate score --sampling first`)."""
import numpy as np
import pytest

from data import DataError
from data.base import read_first
from tests.testutil import write_frames, write_video

LEVELS = [10, 40, 70, 100, 130, 160, 190, 220]


def _grey(frames):
    return frames.reshape(len(frames), -1).mean(axis=1)


def test_frame_folder_first_frames(tmp_path):
    folder = write_frames(tmp_path / "clip", LEVELS)
    got = read_first(folder, 5)
    assert got.shape == (5, 8, 8, 3) and got.dtype == np.uint8
    assert np.allclose(_grey(got), LEVELS[:5], atol=3)


def test_video_first_frames(tmp_path):
    video = write_video(tmp_path / "clip.avi", LEVELS)
    got = read_first(video, 4)
    assert got.shape == (4, 32, 32, 3)
    assert np.allclose(_grey(got), LEVELS[:4], atol=6)


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_too_short_or_missing_names_the_file(tmp_path, kind):
    src = write_frames(tmp_path / "c", LEVELS[:3]) if kind == "folder" else write_video(tmp_path / "c.avi", LEVELS[:3])
    with pytest.raises(DataError, match="shorter than"):
        read_first(src, 5)
    with pytest.raises(DataError, match="not found"):
        read_first(tmp_path / "missing.avi", 5)
