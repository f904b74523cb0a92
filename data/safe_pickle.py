"""A restricted unpickler for files from outside the project.

Dataset annotations (MTL-AQA, JIGSAWS folds) and the Flax I3D checkpoint are pickles. Loading a pickle
with the standard unpickler can run arbitrary code, so these files are read with an unpickler that only
admits the types they need: containers, numbers, strings and numpy arrays. Anything else (a function,
a class from another module) fails with `UnsafePickleError` naming the file and the refused global.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

# (module, name) pairs a data pickle may reference. numpy arrays pickle through these
# reconstructors; the rest are plain builtins.
_ALLOWED = {
    ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"), ("builtins", "bool"),
    ("builtins", "slice"), ("builtins", "range"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list."""


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load global {module}.{name!r}; this file should hold only "
            "dicts, lists, numbers, strings and numpy arrays. Re-download it from its official source."
        )


def restricted_loads(payload: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `payload` admitting only plain data types (see module docstring)."""
    return _RestrictedUnpickler(io.BytesIO(payload), source).load()


def restricted_load(path: str | Path) -> Any:
    """Unpickle the file at `path` admitting only plain data types.

    Raises FileNotFoundError (with the path) for a missing file and UnsafePickleError for a file that
    references anything else.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open("rb") as fh:
        try:
            return _RestrictedUnpickler(fh, str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as exc:  # truncated or not a pickle at all
            raise pickle.UnpicklingError(f"{path}: not a readable pickle ({exc}); re-download it") from exc
