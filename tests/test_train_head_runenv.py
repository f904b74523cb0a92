"""train_head.runenv: the C allocator keeps freed memory for reuse during a run (keep_freed_memory), so
an evaluation's large temporaries are not faulted in afresh every time. Checked in fresh processes by
the kernel's count of minor page faults, which does not depend on the machine's load."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import resource, sys
import numpy as np, torch
torch.set_num_threads(1)
from train_head.heads import build_head
from train_head.runenv import run_environment

g = np.array([[i / 16, (i + 1) / 16] for i in range(16)]) * 30 - 15
head = build_head("core_dd", feat_dim=64, theta=30.0, depth=5, hidden=256, groups=torch.tensor(g)).eval()
pool, pt = torch.randn(200, 64), torch.rand(200) * 10 + 10
q, idx = torch.randn(200, 64), torch.randint(0, 200, (200, 10))
mask = torch.ones(200, 10, dtype=torch.bool)

def faults_per_prediction():
    with torch.inference_mode():
        head.predict_indexed(q, pool, pt, idx, mask)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            head.predict_indexed(q, pool, pt, idx, mask)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 5

if sys.argv[1] == "run":
    with run_environment(1):
        print(faults_per_prediction())
else:
    print(faults_per_prediction())
"""


def _faults(mode):
    r = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return float(r.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_run_reuses_freed_memory_instead_of_faulting_it_in():
    from train_head.runenv import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("the C library has no mallopt (not glibc)")
    plain, in_run = _faults("plain"), _faults("run")
    # 2000 query x voter pairs through a depth-5 tree: ~11,000 faults per prediction by default, ~1,000
    # once freed memory is kept (measured)
    assert in_run < 0.3 * plain, (plain, in_run)
