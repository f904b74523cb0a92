"""Small file helpers every stage uses, written once here (the lowest layer): atomic writes, JSON in
the project's style, and the code's provenance (git state).

    atomic_write_text(path, text)            # readers never see a half-written file
    with atomic_path(path) as tmp: ...       # write anything to `tmp`; it replaces `path` on success
    dump_json(obj) -> str                    # indented, NaN kept (json's NaN), newline at the end
    jsonable(h5py / numpy values) -> plain JSON types
    git_state() -> (commit, dirty)

An atomic write goes to `<name>.tmp-<pid>` beside the target and is renamed over it (one filesystem,
so the rename is atomic); on any error the temporary file is removed and the target is untouched.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator, Mapping

_REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path`, on an error it is
    removed and `path` keeps its old content. `durable`: fsync the file before the rename (for files
    that are expensive to make again, such as converted weights). The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"


def jsonable(value: Any) -> Any:
    """h5py/numpy attribute values -> plain JSON types (JSON strings stay strings)."""
    import numpy as np

    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def dataset_label(dataset: str, root: str | os.PathLike | None = None) -> str:
    """The name a dataset's outputs carry (feature cache file, the run folders' dataset level, tables).

    The registry name, except for `csv`, whose root is the user's CSV file: `csv-<stem>-<hash8>` (stem of the
    file, first 8 hex digits of the sha256 of its absolute path), so two CSV datasets never share a cache
    file or run folders."""
    if dataset != "csv" or root is None or not str(root).strip():
        return dataset
    import hashlib
    import re

    absolute = Path(root).expanduser().resolve()
    digest = hashlib.sha256(str(absolute).encode("utf-8")).hexdigest()[:8]
    stem = re.sub(r"[^A-Za-z0-9_.+-]+", "_", absolute.stem).strip("_") or "x"
    return f"csv-{stem}-{digest}"


def git_state(repo: Path = _REPO) -> tuple[str, bool | None]:
    """(commit, dirty) of the code; ("unknown", None) outside a git checkout. Dirty = tracked files
    differ from the commit (untracked files do not count)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "--no-optional-locks", *args], cwd=repo, capture_output=True,
                              text=True, timeout=20, check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        return commit, bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", None


def code_version() -> str:
    """The commit as one string: `<sha>`, `<sha>+dirty`, or `unknown`."""
    commit, dirty = git_state()
    return commit + ("+dirty" if dirty else "")
