"""Peak memory of a call: the most tensor memory alive at once while it runs, beyond what was
alive before.

- CUDA: the caching allocator's own statistics (``torch.cuda.reset_peak_memory_stats`` and
  ``max_memory_allocated``): every tensor and kernel workspace the allocator handed out, minus
  what was allocated before the call.
- CPU: a ``TorchDispatchMode`` sees every op's outputs; each new tensor storage is counted once
  (views and in-place results share their input's storage) from its creation until it is freed
  (a ``weakref.finalize`` on the storage), and the maximum of the live total is recorded after
  every op. It counts tensor storage — activations, saved tensors, gradients, outputs — not
  allocator caches, kernel-internal scratch buffers, or Python objects, and it does not credit
  the freeing of tensors that existed before the call. A custom operator
  (``torch.library.custom_op``, e.g. attnlab's blocked position attention) is one op to the
  dispatcher: its outputs are counted, its internal scratch is not — measure such modules with
  :func:`rss_growth` in a fresh process (``benchmarks/pam_memory.py`` does).

Unlike the peak resident set of the process (:func:`rss_growth`, used by
``benchmarks/pam_memory.py``), the CPU figure is deterministic and exact for what it counts,
and needs no fresh process.

Example:
    >>> import torch
    >>> from attnlab.bench.memory import peak_memory
    >>> def two_then_one():
    ...     a, b = torch.empty(2**18), torch.empty(2**18)  # 1 MiB each, alive together
    ...     del a, b
    ...     return torch.empty(3 * 2**17)  # 1.5 MiB
    >>> peak_memory(two_then_one) / 2**20
    2.0
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device | None = None) -> int:
    """Bytes of tensor memory at the peak of ``fn()``, beyond what was allocated before it.

    Args:
        fn: a callable taking no arguments; its result is discarded.
        device: ``"cuda"`` (or ``"cuda:N"``) uses the CUDA allocator's statistics; anything
            else (default: CPU) the dispatch-mode tracker described in the module docstring.

    Returns:
        Peak bytes (≥ 0).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return _cuda_peak(fn, device)
    tracker = _StorageTracker()
    try:
        with tracker:
            fn()
    finally:
        tracker.detach()
    return tracker.peak


def _cuda_peak(fn: Callable[[], Any], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return max(0, torch.cuda.max_memory_allocated(device) - before)


class _StorageTracker(TorchDispatchMode):
    """Live bytes of the storages created under this mode, and their maximum."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._bytes: dict[int, int] = {}  # id of a live storage's Python object → bytes
        self._finalizers: list[weakref.finalize] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {_key(t) for t in _tensors((args, kwargs))}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, inputs)
        self.peak = max(self.peak, self.live)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int | None]) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested …: no plain storage
            return
        key = id(storage)
        nbytes = storage.nbytes()
        if key in self._bytes:  # resized in place (out= arguments)
            self.live += nbytes - self._bytes[key]
            self._bytes[key] = nbytes
        elif key not in inputs:
            # A storage not among the op's inputs was created by it. The storage's Python
            # object lives exactly as long as the storage (PyTorch preserves it), so its id is
            # a stable key and its finalizer runs when the memory is freed.
            self._bytes[key] = nbytes
            self.live += nbytes
            self._finalizers.append(weakref.finalize(storage, self._free, key))

    def _free(self, key: int) -> None:
        self.live -= self._bytes.pop(key, 0)

    def detach(self) -> None:
        """Stops watching storages that outlive the call (outputs, gradients)."""
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()


def _key(tensor: torch.Tensor) -> int | None:
    try:
        return id(tensor.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors inside nested tuples, lists and dicts (an op's arguments or results)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_growth(fn: Callable[[], Any]) -> dict[str, int]:
    """Growth of the process's peak resident set while ``fn`` runs (Linux only).

    Resets the kernel's peak-RSS mark (VmHWM) to the current RSS through /proc/self/clear_refs,
    runs ``fn`` and reads the mark: what the machine had to provide, allocator caches and
    scratch buffers included. Run it in a fresh process for a clean figure.

    Returns:
        {"growth_bytes": peak − RSS before, "peak_bytes": the peak resident set}.
    """
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset VmHWM (peak RSS) to the current RSS
    fn()
    peak = _status_kib("VmHWM")
    return {"growth_bytes": (peak - before) * 1024, "peak_bytes": peak * 1024}
