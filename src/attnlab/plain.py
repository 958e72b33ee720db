"""Plain Python values for configs: what JSON, YAML and ``weights_only`` loading accept.

Example:
    >>> plain({"sizes": (3, 5), "k": 7})
    {'sizes': [3, 5], 'k': 7}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def plain(value: Any) -> Any:
    """Tuples → lists and numpy/torch scalars → Python, recursively.

    A config passed through it equals its own JSON/YAML round trip.
    """
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic, torch.Tensor)):
        return value.tolist()
    return value
