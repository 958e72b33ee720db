"""Our parameters and MACs for the papers' ImageNet networks, next to the published figures.

Each row of :data:`PAPER_VARIANTS` is a set of :func:`attnlab.create_model` options for a
ResNet; :data:`PAPER_FIGURES` holds the figures that could be checked against a primary source.

Example:
    >>> "se" in PAPER_VARIANTS
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..registry import create_model
from .cost import count_params
from .flops import count_flops

MIB, GIB = 2**20, 2**30
# Published figures checked against a primary source. ECA's "M" is 2**20 parameters and its
# "G" 2**30 operations (its authors in BangguWu/ECANet issue #35: "ECA-Net uses 1024").
# The SE, CBAM and BAM papers count in decimal units (10^6 parameters, 10^9 multiply-adds).
PAPER_FIGURES: dict[tuple[str, str], dict[str, Any]] = {
    ("resnet50", "baseline"): {"params_m": 25.56, "gflops": 3.86, "units": "10^6, 10^9",
                               "source": "papers"},
    ("resnet50", "se"): {"params_m": 28.09, "gflops": 3.87, "units": "10^6, 10^9",
                         "source": "papers"},
    ("resnet50", "cbam"): {"params_m": 28.09, "gflops": 3.864, "units": "10^6, 10^9",
                           "source": "papers"},
    ("resnet50", "bam"): {"params_m": 25.92, "gflops": None, "units": "10^6",
                          "source": "papers"},
    ("resnet50", "eca"): {"params_m": 24.37, "gflops": 3.86, "units": "2^20, 2^30",
                          "source": "eca"},
    ("resnet101", "eca"): {"params_m": 42.49, "gflops": 7.35, "units": "2^20, 2^30",
                           "source": "eca"},
    ("resnet50", "sk"): {"params_m": 27.5, "gflops": 4.47, "units": "10^6, 10^9",
                         "source": "sknet"},
    ("resnet50", "fca"): {"params_m": 28.07, "gflops": None, "units": "10^6",
                          "source": "fcanet"},
    ("resnet50", "sa"): {"params_m": 25.56, "gflops": 4.12, "units": "10^6, 10^9",
                         "source": "sanet"},
    ("resnet50", "triplet"): {"params_m": 25.56, "gflops": 4.169, "units": "10^6, 10^9",
                              "source": "triplet"},
}  # fmt: skip
PAPER_SOURCES = {
    "papers": "SE (CVPR 2018: ResNet-50 3.86 → 3.87 GFLOPs), CBAM (ECCV 2018: 28.09M, "
    "3.864 GFLOPs) and BAM (BMVC 2018: 25.92M) as collected in the project's REFERENCE.md",
    "eca": "ECA-Net (arXiv 1910.03151), abstract and the authors' README (BangguWu/ECANet)",
    "sknet": "SKNet (arXiv 1903.06586): SKNet-50 27.5M, 4.47 GFLOPs, as collected in "
    "REFERENCE.md; the count equals timm's skresnext50_32x4d (27,479,784)",
    "fcanet": "FcaNet (arXiv 2012.11879): FcaNet-50 28.07M, as collected in REFERENCE.md",
    "sanet": "SA-Net (arXiv 2102.00240), abstract: ResNet-50 25.56M, 4.12 GFLOPs",
    "triplet": "Triplet attention (arXiv 2010.03045), the authors' README "
    "(landskape-ai/triplet-attention): ResNet-50 + triplet (k = 7) 25.56 M, 4.169 GFLOPs",
}
# The ECA authors' kernel sizes per stage (their models eca_resnet50_k3557, _resnet101_k3357).
ECA_AUTHOR_KERNELS = {"resnet50": (3, 5, 5, 7), "resnet101": (3, 3, 5, 7)}
PAPER_VARIANTS = {
    "baseline": {},
    "se": {"attn": "se"},
    "cbam": {"attn": "cbam"},
    "bam": {"stage_attn": "bam"},
    "eca": {"attn": "eca"},
    # SKNet-50: ResNeXt-50 (32×4d) with SK units in place of the 3×3 group convs.
    "sk": {"block_conv": "sk", "groups": 32, "width_per_group": 4},
    # FcaNet-50: the authors' DCT grid per stage (their 224×224 maps: 56, 28, 14, 7).
    "fca": {"attn": "fca", "attn_stage_kwargs": [{"dct_size": s} for s in (56, 28, 14, 7)]},
    "sa": {"attn": "sa"},
    # GCNet's best setting: GC (r = 16, add fusion) in the blocks of stages c3–c5.
    "gc": {"attn": "gc", "attn_stages": (2, 3, 4)},
    "ge": {"attn": "ge"},  # GE-θ⁻, global extent: parameter-free
    "simam": {"attn": "simam"},
    "triplet": {"attn": "triplet"},
    "sge": {"attn": "sge"},
    "srm": {"attn": "srm"},
}


def paper_macs_table(models: Sequence[str] = ("resnet50", "resnet101")) -> dict[str, Any]:
    """Our parameters and MACs at 224×224 (1000 classes) next to the papers' figures.

    Counted on shape-only ("meta") tensors, so it takes seconds. ECA uses its authors'
    per-stage kernel sizes, as in their published models.

    Returns:
        ``{"rows", "sources", "notes"}``; a paper cell is None where no figure could be
        checked against a primary source.
    """
    rows = []
    for model in models:
        for name, opts in PAPER_VARIANTS.items():
            if name == "eca" and model in ECA_AUTHOR_KERNELS:
                kernels = [{"k_size": k} for k in ECA_AUTHOR_KERNELS[model]]
                opts = {**opts, "attn_stage_kwargs": kernels}
            with torch.device("meta"):
                net = create_model(model, num_classes=1000, **opts)
            params = count_params(net)
            counts = count_flops(net, (1, 3, 224, 224), device="meta")
            paper = PAPER_FIGURES.get((model, name), {})
            rows.append(
                {
                    "model": model,
                    "variant": name,
                    "params": params,
                    "params_m_binary": params / MIB,
                    "macs": counts["macs"],
                    "gmacs_binary": counts["macs"] / GIB,
                    "flops": counts["flops"],
                    "paper_params_m": paper.get("params_m"),
                    "paper_gflops": paper.get("gflops"),
                    "paper_units": paper.get("units"),
                    "source": paper.get("source"),
                }
            )
    notes = [
        "Our ResNets are torchvision's v1.5 (stride on the 3×3 conv), as is the CBAM/BAM and "
        "ECA authors' code: ResNet-50 is 4.09·10^9 MACs.",
        "ECA's M and G are 2^20 and 2^30 (its authors): its 3.86 G is 4.14·10^9, thop's count "
        "for torchvision's ResNet-50 (MACs plus some BN/ReLU work); compare it with our "
        "2^20 / 2^30 columns.",
        "ECA rows use the authors' per-stage kernel sizes (ResNet-50: 3, 5, 5, 7; ResNet-101: "
        "3, 3, 5, 7); attnlab's default ψ(C) gives 5, 5, 5, 7.",
        "Empty paper cells: no figure checked here (BAM's GFLOPs, the ResNet-101 rows of the "
        "SE/CBAM/BAM papers, the GC, GE, SimAM, SGE and SRM tables).",
        "GE-θ⁻, SimAM, SGE and SRM add pooling and elementwise work only, which MAC counts "
        "leave out: their MACs equal the baseline's.",
    ]
    return {"rows": rows, "sources": dict(PAPER_SOURCES), "notes": notes}
