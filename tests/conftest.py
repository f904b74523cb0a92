"""Fixtures shared by several test modules."""
import pytest
import torch


@pytest.fixture()
def one_thread():
    """One torch thread for tests of tiny ops: with 2 threads on a shared 2-core machine they ran ~10x slower
    (thread contention). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
