"""The selection rule of train_head.protocol: validation decides, never the test set, never a NaN."""
import math

from train_head.protocol import MIN_VAL_VIDEOS, small_validation, update_best

NAN = math.nan


def select(rhos, always=False):
    best = {"epoch": None, "val_rho": None}
    for epoch, rho in enumerate(rhos, 1):
        new = update_best(best, epoch, rho, always=always)
        if new is not None:
            best = new
    return best["epoch"]


def test_best_validation_rho_earliest_tie_nan_never_wins():
    assert select([0.1, 0.5, 0.3, 0.5]) == 2
    assert select([0.2, NAN, 0.1, NAN]) == 1
    assert select([NAN, 0.1, NAN, 0.05]) == 2                  # a defined rho beats the NaN before it


def test_undefined_everywhere_selects_the_final_epoch_not_the_first():
    assert select([NAN, NAN, NAN]) == 3
    assert select([0.4, 0.1], always=True) == 2                # no validation split: the last epoch


def test_small_validation_is_named():
    assert small_validation(0) is None and small_validation(MIN_VAL_VIDEOS) is None
    assert "only 3 videos" in small_validation(3)
