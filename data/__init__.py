"""Datasets: samples, frames and views (docs/ARCHITECTURE.md, "data/").

`get_dataset(name, root, **options)` builds a reader from `DATASETS`:
"aqa7" (cls=), "mtl_aqa" (anno_file=, train_split_file=, test_split_file=), "jigsaws" (task=, folds_file=,
n_frames=), "csv" (n_frames=, test_fraction=, seed=), "synthetic" (normalise=), "finediving" (anno_file=,
train_split_file=, test_split_file=). Readers raise `DataError`
for bad user data (see data/base.py for the policy). Importing this package loads numpy only; PIL, PyAV,
scipy and torch are imported where they are used.
"""
from __future__ import annotations

import inspect

from .aqa7 import AQA7
from .base import DataError, Dataset, Sample
from .csv_dataset import CSVDataset
from .finediving import FineDiving
from .jigsaws import JIGSAWS
from .mtl_aqa import MTLAQA
from .synthetic import Synthetic

DATASETS: dict[str, type[Dataset]] = {
    "aqa7": AQA7, "mtl_aqa": MTLAQA, "jigsaws": JIGSAWS, "csv": CSVDataset, "synthetic": Synthetic,
    "finediving": FineDiving,
}


def get_dataset(name: str, root, **options) -> Dataset:
    """A dataset reader by registry name; unknown names or options raise DataError listing the valid ones."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    cls = DATASETS[name]
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "root")]
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise DataError(f"dataset {name!r} has no option(s) {unknown}; its options are {params}")
    return cls(root, **options)


__all__ = ["Sample", "DataError", "Dataset", "get_dataset", "DATASETS"]
