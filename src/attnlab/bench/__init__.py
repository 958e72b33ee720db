"""Measuring what attention costs: parameters, MACs and FLOPs, time, and peak memory.

- :mod:`.flops`: MACs (the papers' "FLOPs") and FLOPs with a per-op breakdown;
- :mod:`.memory`: peak tensor memory of a call (CPU function-mode tracker, CUDA allocator);
- :mod:`.cost`: parameters, robust timing (rounds of calls, medians, interleaved comparisons);
- :mod:`.runner`: the ``attnlab bench`` benchmarks; :mod:`.report`: their JSON/Markdown/PNG report.
"""

from .cost import (
    compare_latency,
    count_macs,
    count_params,
    inference_fn,
    measure_latency,
    measure_train_step,
    train_step_fn,
)
from .flops import count_flops
from .memory import peak_memory
from .papers import paper_macs_table
from .report import write_report
from .runner import bench_models, bench_modules

__all__ = [
    "bench_models",
    "bench_modules",
    "compare_latency",
    "count_flops",
    "count_macs",
    "count_params",
    "inference_fn",
    "measure_latency",
    "measure_train_step",
    "paper_macs_table",
    "peak_memory",
    "train_step_fn",
    "write_report",
]
