"""See what the attention does: attention maps, Grad-CAM / Grad-CAM++, overlays and galleries.

- :mod:`~attnlab.viz.maps`: every attention module's maps for one batch (hooks, outputs
  unchanged) and their spatial, channel-weight and affinity views;
- :mod:`~attnlab.viz.gradcam`: Grad-CAM and Grad-CAM++ for any layer and class;
- :mod:`~attnlab.viz.draw`: detected boxes and segmentation masks drawn on images
  (torchvision's drawing utilities);
- :mod:`~attnlab.viz.plots`: overlays, galleries and per-stage channel-weight histograms as
  PNG (needs the ``viz`` extra, matplotlib, imported only when drawing);
- :mod:`~attnlab.viz.localization`: pointing game and energy in the object mask of Grad-CAM
  and of the attention maps (the scores themselves are in :mod:`attnlab.metrics`).

Example:
    >>> import torch, attnlab
    >>> from attnlab.viz import collect_attention, grad_cam, weights_by_stage
    >>> model = attnlab.create_model("resnet20", attn="eca", num_classes=3).eval()
    >>> images = torch.randn(4, 3, 32, 32)
    >>> cam = grad_cam(model, images, layer="layer2", method="gradcam++")
    >>> tuple(cam.raw.shape)
    (4, 1, 16, 16)
    >>> _, entries = collect_attention(model, images)
    >>> {stage: values.numel() for stage, values in weights_by_stage(entries).items()}
    {'layer1': 192, 'layer2': 384, 'layer3': 768}
"""

from .draw import PALETTE, draw_boxes, overlay_labels
from .gradcam import CAMResult, default_layer, grad_cam, resolve_layer
from .localization import localization_score
from .maps import (
    AttentionMap,
    affinity_maps,
    channel_weights,
    collect_attention,
    spatial_maps,
    weights_by_stage,
)
from .plots import (
    GalleryColumn,
    model_columns,
    overlay,
    require_matplotlib,
    save_channel_histograms,
    save_gallery,
    save_overlay,
    to_display,
)

__all__ = [
    "PALETTE",
    "AttentionMap",
    "CAMResult",
    "GalleryColumn",
    "affinity_maps",
    "channel_weights",
    "collect_attention",
    "default_layer",
    "draw_boxes",
    "grad_cam",
    "localization_score",
    "model_columns",
    "overlay",
    "overlay_labels",
    "require_matplotlib",
    "resolve_layer",
    "save_channel_histograms",
    "save_gallery",
    "save_overlay",
    "spatial_maps",
    "to_display",
    "weights_by_stage",
]
