"""The CPU gate kernels: C++/OpenMP operators ``torch.ops.attnlab_kernels.*``, built on first use.

The sources (``ops.cpp``: the operator schemas; ``pool.cpp``, ``apply.cpp``, ``grad.cpp``,
``norm.cpp``: one kernel family each) are compiled with
:func:`torch.utils.cpp_extension.load` (a C++ compiler and ninja are needed; about a minute,
once) and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``), keyed by a hash of the sources and their folder, the torch
version, the compiler flags and this machine's CPU features (the build uses
``-march=native``). A failed build is remembered, and :func:`error` says why. Paper: CBAM,
arXiv 1807.06521 (the gate these kernels serve).

Example:
    >>> from attnlab.kernels import cpu
    >>> cpu.ops() is None or hasattr(cpu.ops(), "gate_apply")
    True
"""

from __future__ import annotations

import hashlib
import os
import platform
import threading
from pathlib import Path

import torch

_DIR = Path(__file__).parent
SOURCES = ("ops.cpp", "pool.cpp", "apply.cpp", "grad.cpp", "norm.cpp")
HEADERS = ("common.h", "ops.h")
# -fno-trapping-math / -fno-math-errno let the compiler vectorise the branch-free selects and
# float comparisons; results are unchanged for finite inputs.
CFLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-trapping-math", "-fno-math-errno")

_state: dict = {"ops": None, "error": None}
_lock = threading.Lock()


def ops():
    """``torch.ops.attnlab_kernels`` once built and loaded, else None (see :func:`error`)."""
    if _state["ops"] is None and _state["error"] is None:
        with _lock:
            if _state["ops"] is None and _state["error"] is None:
                try:
                    _state["ops"] = _build()
                except Exception as err:  # no compiler, no ninja, no headers: reference path
                    _state["error"] = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return _state["ops"]


def error() -> str | None:
    """Why the kernels could not be built (after a failed build), else None."""
    return _state["error"]


def _build():
    from torch.utils import cpp_extension

    try:  # the ninja wheel puts its binary beside the interpreter's scripts
        import ninja

        path = os.environ.get("PATH", "")
        if ninja.BIN_DIR not in path.split(os.pathsep):
            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path
    except ImportError:
        pass
    # keyed by the sources' folder too: two checkouts never share (and rebuild) one build folder
    key = torch.__version__ + _cpu_flags() + " ".join(CFLAGS) + str(_DIR.resolve())
    digest = hashlib.sha256(key.encode())
    for name in SOURCES + HEADERS:
        digest.update((_DIR / name).read_bytes())
    if not hasattr(torch.ops.attnlab_kernels, "gate_apply"):
        cpp_extension.load(
            name=f"attnlab_kernels_{digest.hexdigest()[:12]}",
            sources=[str(_DIR / name) for name in SOURCES],
            extra_include_paths=[str(_DIR)],
            extra_cflags=list(CFLAGS),
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=False,
        )
    return torch.ops.attnlab_kernels


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.machine() + platform.processor()
