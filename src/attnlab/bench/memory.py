"""Peak memory of a call: the most tensor memory alive at once while it runs, beyond what was
alive before.

- CUDA: the caching allocator's own statistics (``torch.cuda.reset_peak_memory_stats`` and
  ``max_memory_allocated``): every tensor and kernel workspace the allocator handed out, minus
  what was allocated before the call.
- CPU: a :class:`torch.overrides.TorchFunctionMode` (public) sees every call of a torch
  function, tensor method or operator from Python — ``F.conv2d`` inside ``nn.Conv2d``,
  ``torch.empty``, ``x + y``, a custom operator — and the tensors it returns. Each new tensor
  storage is counted once (views and in-place results share their input's storage) from its
  creation until it is freed (a ``weakref.finalize`` on the storage). Backward runs in C++,
  out of the mode's sight, so gradients are counted through autograd's public hooks: a hook on
  the autograd node of every tensor made under the mode counts the gradients that node
  produces (while the gradients it received are alive), and a post-accumulate hook on every
  leaf counts a new ``.grad`` where autograd copied the gradient into one. The maximum of the
  live total is recorded at every allocation seen.

What the CPU figure counts: activations, saved tensors, outputs, the gradients of every tensor
created during the call and of the leaves (parameters) it used — the memory a forward or a
training step needs to hold. What it does not count: the temporaries *inside* one call (the
scratch of a kernel or of a custom operator such as attnlab's blocked position attention, the
intermediates of a Python function of ``torch.nn.functional`` that calls other torch
functions), temporaries of backward formulas beyond the gradients above, allocator caches,
Python objects, and the freeing of tensors that existed before the call. It is therefore a
lower bound of what the process needs, deterministic and exact for what it counts, and needs
no fresh process. :func:`rss_growth` measures the other side — the peak resident set, caches
and scratch included, noisy, best in a fresh process (``benchmarks/pam_memory.py`` uses it).

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
from torch.overrides import TorchFunctionMode


def peak_memory(fn: Callable[[], Any], *, device: str | torch.device | None = None) -> int:
    """Bytes of tensor memory at the peak of ``fn()``, beyond what was allocated before it.

    Args:
        fn: a callable taking no arguments; its result is discarded.
        device: ``"cuda"`` (or ``"cuda:N"``) uses the CUDA allocator's statistics; anything
            else (default: CPU) the function-mode tracker described in the module docstring.

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


class _StorageTracker(TorchFunctionMode):
    """Live bytes of the storages created under this mode (and their gradients), and the max."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._bytes: dict[int, int] = {}  # id of a live storage's Python object → bytes
        self._finalizers: list[weakref.finalize] = []
        self._handles: list[Any] = []  # autograd hook handles, removed by detach()
        self._leaves: set[int] = set()  # ids of the leaves given a post-accumulate hook

    def __torch_function__(self, func, types, args=(), kwargs=None):
        # The mode is off while this runs: the calls below are not seen again.
        kwargs = kwargs or {}
        given = _tensors((args, kwargs))
        inputs = {_key(t) for t in given}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            self._track(tensor, inputs)
            if tensor.grad_fn is not None:
                self._handles.append(tensor.grad_fn.register_hook(self._count_gradients))
        for tensor in given:
            if tensor.is_leaf and tensor.requires_grad and id(tensor) not in self._leaves:
                self._leaves.add(id(tensor))
                self._watch_leaf(tensor)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int | None]) -> None:
        """Counts ``tensor``'s storage if it is new."""
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse, nested …: no plain storage
            return
        key = id(storage)
        nbytes = storage.nbytes()
        if key in self._bytes:  # resized in place (out= arguments)
            self.live += nbytes - self._bytes[key]
            self._bytes[key] = nbytes
        elif key in inputs:
            return
        else:
            # A storage not among the op's inputs was created by it. The storage's Python
            # object lives exactly as long as the storage (PyTorch preserves it), so its id is
            # a stable key and its finalizer runs when the memory is freed.
            self._bytes[key] = nbytes
            self.live += nbytes
            self._finalizers.append(weakref.finalize(storage, self._free, key))
        self.peak = max(self.peak, self.live)

    def _count_gradients(self, grad_inputs: tuple, grad_outputs: tuple) -> None:
        """Autograd node hook: the gradients a backward step just made, counted while the
        gradients it received (``grad_outputs``, counted before) are still alive."""
        received = {_key(g) for g in _tensors(grad_outputs)}
        for grad in _tensors(grad_inputs):
            self._track(grad, received)

    def _watch_leaf(self, leaf: torch.Tensor) -> None:
        """Counts the leaf's ``.grad`` when backward creates it (not when it accumulates in
        place into a gradient that existed before the call)."""
        before = leaf.grad
        existing = weakref.ref(before.untyped_storage()) if before is not None else None

        def hook(param: torch.Tensor) -> None:
            storage = param.grad.untyped_storage()
            if existing is None or existing() is not storage:
                self._track(param.grad, set())

        self._handles.append(leaf.register_post_accumulate_grad_hook(hook))

    def _free(self, key: int) -> None:
        self.live -= self._bytes.pop(key, 0)

    def detach(self) -> None:
        """Removes the autograd hooks and stops watching storages that outlive the call."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for finalizer in self._finalizers:
            finalizer.detach()
        self._finalizers.clear()


def _key(tensor: torch.Tensor) -> int | None:
    try:
        return id(tensor.untyped_storage())
    except (RuntimeError, NotImplementedError):
        return None


def _tensors(value: Any) -> list[torch.Tensor]:
    """The tensors inside nested tuples, lists and dicts (a call's arguments or results)."""
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
