"""Session set-up shared by every test."""

import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter (tests/kernels/test_triton.py).
# Triton reads this when it is imported, and torch.compile imports it: so it is set here, before
# any test runs. (torch.compile on the CPU generates C++, not Triton, either way.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (`-n N`) the cores are shared out between the workers, so N workers do not
# each start one intra-op thread per core and oversubscribe the machine.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


@pytest.fixture(scope="session")
def paper_table() -> dict:
    """``attnlab.bench.paper_macs_table()`` with its default models, computed once.

    Both the bench runner's tests and ``attnlab bench``'s end-to-end test read it; building and
    counting every paper variant of two ResNets on meta tensors is the costliest step of either.
    """
    from attnlab.bench import paper_macs_table

    return paper_macs_table()
