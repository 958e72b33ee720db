"""The Triton kernels of the gate product (:mod:`attnlab.kernels.triton.gates`), imported on the
first CUDA call with ``ATTNLAB_BACKEND=fast``, never at package import (Triton is optional).
Paper: CBAM, arXiv 1807.06521.

Example:
    >>> from attnlab.kernels import select
    >>> select.triton_ops() is None or hasattr(select.triton_ops(), "gate_apply")
    True
"""
