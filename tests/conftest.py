"""Session set-up shared by every test."""

import os

import torch

# Without a GPU, Triton kernels run in Triton's interpreter (tests/kernels/test_triton.py).
# Triton reads this when it is imported, and torch.compile imports it: so it is set here, before
# any test runs. (torch.compile on the CPU generates C++, not Triton, either way.)
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
