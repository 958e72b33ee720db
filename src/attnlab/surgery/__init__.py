"""Insert attention into models built elsewhere — torchvision's, timm's, your own — without
breaking their pretrained weights (SE: arXiv 1709.01507; CBAM: arXiv 1807.06521; ECA: arXiv
1910.03151; CA: arXiv 2103.02907; BAM: arXiv 1807.06514).

Where attention goes (``where=``):

- ``"block"``: on the residual branch of every residual block, before the addition, as the
  SE, CBAM, ECA and CA papers place it. Blocks are found from their forward code
  (:mod:`attnlab.surgery.sites`): ResNet/ResNeXt/Wide-ResNet, RegNet, MobileNetV2/V3,
  EfficientNet and ConvNeXt blocks of torchvision and timm alike, and any block written the same
  way. attnlab's own blocks use their ``attn`` slot (``attention_site()``).
- ``"stage"``: after every stage but the last (the BAM placement), from the model's
  ``feature_info`` or a probe forward pass (:mod:`attnlab.surgery.stages`): DenseNet and VGG too.
- a list of module paths or glob patterns (``["layer2.*", "stages.*.blocks.*"]``; ``*`` matches
  one path segment, ``**`` any number): a residual block named this way gets attention on its
  branch, any other module on its output.

Blocks that already have a squeeze-excitation (MobileNetV3, EfficientNet, RegNetY) keep it and
the report names it; ``replace_se=True`` puts the new attention in its place instead.

Original parameter names are kept (the attention is applied by a forward hook, or appended to
an ``nn.Sequential``), so weights saved before insertion still load by name; the new parameters
live under ``<block>.attn.*`` or ``<module>.output_attn.*``.

With ``identity_init=True`` each inserted module is wrapped as y = x + α·(A(x) − x) with a
learnable α = 0 (modules that are already identities at init, DANet's PAM and CAM, are not
wrapped), so the model computes exactly what it did before insertion and training moves it
away from there.

Example:
    >>> import torch, attnlab
    >>> model = attnlab.create_model("resnet18", num_classes=10)
    >>> report = attnlab.insert_attention(model, "cbam", where="block")
    >>> len(report), report[0].path, report[0].channels
    (8, 'layer1.0', 64)
"""

from .blend import AttentionBlend
from .insert import Insertion, InsertionReport, insert_attention
from .sites import BlockSite, find_blocks
from .stages import find_stages, match_paths

__all__ = [
    "AttentionBlend",
    "BlockSite",
    "Insertion",
    "InsertionReport",
    "find_blocks",
    "find_stages",
    "insert_attention",
    "match_paths",
]
