"""Measuring what attention costs: parameters, MACs, latency."""

from .cost import count_macs, count_params, measure_latency

__all__ = ["count_macs", "count_params", "measure_latency"]
