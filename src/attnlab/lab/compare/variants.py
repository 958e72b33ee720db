"""What ``attnlab compare`` trains: the variant sets and the default and quick recipes.

The default task is the ``"medium"`` synthetic scenes (:mod:`attnlab.data.synthetic`): six
glyph classes, one target among up to two look-alike distractors on a textured background,
turned by any angle; with a data-limited training set (300 scenes, no augmentation), so that
the network fits its training scenes within the schedule and validation accuracy levels off
below saturation, where the inductive bias of a module can show, instead of measuring how fast
each variant starts learning. The robustness split is ``"cluttered"`` from the same generator:
smaller targets among up to three distractors, more texture, and sometimes an occluder over the
target, which the training scenes never have — drawn from the held-out ``test`` stream.

Example:
    >>> from attnlab.lab.compare.variants import VARIANT_SETS, variant_options
    >>> list(VARIANT_SETS["main"])
    ['baseline', 'se', 'cbam', 'eca', 'bam', 'ca']
    >>> variant_options("main", ["baseline", "eca"])
    {'baseline': {}, 'eca': {'attn': 'eca'}}
"""

from __future__ import annotations

from typing import Any

# Each variant is a set of model options on top of the shared recipe.
VARIANT_SETS: dict[str, dict[str, dict[str, Any]]] = {
    "main": {
        "baseline": {},
        "se": {"attn": "se"},
        "cbam": {"attn": "cbam"},
        "eca": {"attn": "eca"},
        "bam": {"stage_attn": "bam"},
        "ca": {"attn": "ca"},
    },
    # The ablations of the CBAM paper (Tables 1-3) and the seeds' "CBAM ≈ SE when shallow".
    "cbam": {
        "baseline": {},
        "se": {"attn": "se"},
        "cbam k=7": {"attn": "cbam"},
        "cbam k=3": {"attn": "cbam", "attn_kwargs": {"kernel_size": 3}},
        "cbam spatial→channel": {"attn": "cbam", "attn_kwargs": {"order": "spatial-channel"}},
        "cbam parallel": {"attn": "cbam", "attn_kwargs": {"order": "parallel"}},
        "cbam pool avg": {"attn": "cbam", "attn_kwargs": {"pool_types": ["avg"]}},
        "cbam pool max": {"attn": "cbam", "attn_kwargs": {"pool_types": ["max"]}},
    },
}

# The default recipe, sized on the baseline alone: the plain ResNet-20 fits the 300 training
# scenes and its validation accuracy levels off (< 1 point over the last quarter) between 70
# and 90 %, and 6 variants × 3 seeds fit the budget on 2 CPU cores
# (benchmarks/compare_budget.py). AdamW fits these scenes in far fewer steps than SGD; a peak
# rate of 0.003 keeps the epoch-to-epoch wobble of the last quarter below the plateau
# threshold; the evaluation (300 scenes and precise BN over 128) is a quarter of the cost.
DEFAULT_RECIPE: dict[str, Any] = {
    "model": "resnet20",
    "data": "synthetic",
    "difficulty": "medium",
    "epochs": 20,
    "train_size": 300,
    "val_size": 300,
    "augment": False,
    "batch_size": 32,
    "optimizer": "adamw",
    "lr": 0.003,
    "weight_decay": 0.05,
    "precise_bn_images": 128,
}
# The smoke run (``--quick``): every step of the job (training, statistics, harder split,
# Grad-CAM, galleries, charts) on tiny data, two seeds (so intervals exist), in about a minute.
QUICK_RECIPE: dict[str, Any] = {
    "epochs": 2,
    "train_size": 128,
    "val_size": 96,
    "batch_size": 64,
    "precise_bn_images": 64,
}
DEFAULT_SEEDS = 3
QUICK_SEEDS = 2
# The harder split the trained models are also evaluated on, by training difficulty.
HARDER = {
    "easy": "default",
    "medium": "cluttered",
    "default": "cluttered",
    "hard": "cluttered-hard",
    "cluttered": "cluttered-hard",
}
ROBUST_SCENES = 500
QUICK_ROBUST_SCENES = 64
# The inspection after training: Grad-CAM pointing game on the first validation scenes, and a
# gallery of the first few images of each variant's first run.
PROBE_SCENES = 64
GALLERY_IMAGES = 5


def variant_options(variant_set: str, names: list[str] | None = None) -> dict[str, dict]:
    """The variants to train: a set (``"main"`` or an ablation), optionally only ``names``.

    A name outside the set that is a registered attention module means that module in every
    block (``{"attn": name}``), so any registered attention can be compared.

    Raises:
        ValueError: an unknown set, or a name that is neither in the set nor registered.
    """
    from ...registry import list_attention

    if variant_set not in VARIANT_SETS:
        raise ValueError(
            f"compare: unknown variant set {variant_set!r}; valid: {', '.join(VARIANT_SETS)}"
        )
    variants = VARIANT_SETS[variant_set]
    if not names:
        return dict(variants)
    registered = list_attention()
    unknown = [n for n in names if n not in variants and n not in registered]
    if unknown:
        raise ValueError(
            f"compare: unknown variant(s) {', '.join(unknown)}; valid: "
            f"{', '.join(variants)} or a registered attention ({', '.join(registered)})"
        )
    return {n: dict(variants[n]) if n in variants else {"attn": n} for n in names}
