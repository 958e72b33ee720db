"""What ``attnlab compare`` looks at in a trained model, besides validation accuracy.

- :func:`harder_accuracy`: accuracy on a harder split of the synthetic scenes (the robustness
  column), drawn from the generator's ``test`` stream, which no training or validation scene
  comes from;
- :func:`pointing`: the Grad-CAM pointing game (last stage, true class;
  :mod:`attnlab.viz.localization`) on the first :data:`PROBE_SCENES` validation scenes;
- :func:`gallery`: input, Grad-CAM and the last attention module of each stage for the first
  :data:`GALLERY_IMAGES` validation images (:mod:`attnlab.viz`, needs matplotlib).

Example:
    >>> from attnlab.lab.compare.probe import harder_scenes
    >>> images, labels = harder_scenes("cluttered-hard", length=4, size=32, num_classes=6)
    >>> tuple(images.shape), labels.tolist() == harder_scenes(
    ...     "cluttered-hard", length=4, size=32, num_classes=6)[1].tolist()
    ((4, 3, 32, 32), True)
"""

from __future__ import annotations

from typing import Any

import torch

from .variants import GALLERY_IMAGES, PROBE_SCENES


def harder_scenes(
    difficulty: str, *, length: int, size: int, num_classes: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The harder split: images (n×3×S×S in [0, 1]) and labels, identical in every call."""
    from ...data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(split="test", length=length, size=size, num_classes=num_classes,
                             difficulty=difficulty, seed=seed)  # fmt: skip
    items = [scenes.scene(i) for i in range(length)]
    return torch.stack([s.image for s in items]), torch.tensor([s.label for s in items])


def _load(summary: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    from ...engine.checkpoint import load_model

    model, checkpoint = load_model(summary["checkpoint"])
    return model.eval(), checkpoint.get("data_info") or {}


def _normalise(images: torch.Tensor, info: dict[str, Any]) -> torch.Tensor:
    mean, std = info.get("mean"), info.get("std")
    if not (mean and std):
        return images
    return (images - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def harder_accuracy(
    summary: dict[str, Any], recipe: dict[str, Any], *, difficulty: str, length: int
) -> float:
    """Top-1 accuracy of the run's final model on ``length`` scenes of ``difficulty``."""
    model, info = _load(summary)
    images, labels = harder_scenes(
        difficulty, length=length, size=summary.get("image_size") or 32,
        num_classes=summary["model_config"]["num_classes"], seed=recipe.get("data_seed", 0),
    )  # fmt: skip
    images = _normalise(images, info)
    correct = 0
    with torch.no_grad():
        for start in range(0, length, 256):
            logits = model(images[start : start + 256])
            correct += int((logits.argmax(1) == labels[start : start + 256]).sum())
    return correct / length


def _probe_scenes(summary: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    from ...data.synthetic import SyntheticScenes

    scenes = SyntheticScenes(
        split="val", length=PROBE_SCENES, size=summary.get("image_size") or 32,
        num_classes=summary["model_config"]["num_classes"],
        difficulty=recipe.get("difficulty", "default"), seed=recipe.get("data_seed", 0),
    )  # fmt: skip
    items = [scenes.scene(i) for i in range(len(scenes))]
    return {
        "images": torch.stack([s.image for s in items]),  # n×3×S×S in [0, 1]
        "labels": torch.tensor([s.label for s in items]),
        "masks": torch.stack([s.mask == s.label + 1 for s in items]),  # the target object
    }


def pointing(summary: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """Grad-CAM pointing game and energy in the target, and the attention maps' pointing
    game (None when the model has no spatial attention map), on the probe scenes."""
    from ...viz.localization import localization_score

    model, info = _load(summary)
    probe = _probe_scenes(summary, recipe)
    images = _normalise(probe["images"], info)
    score = localization_score(model, [(images, probe["labels"], probe["masks"])])
    attention = score["attention"]["pointing"] if score["attention"] is not None else None
    return {
        "pointing": score["gradcam"]["pointing"],
        "energy": score["gradcam"]["energy"],
        "attn_pointing": attention,
    }


def gallery(summary: dict[str, Any], recipe: dict[str, Any], path: str) -> str | None:
    """The model's gallery on the first validation images; None without matplotlib."""
    from ...viz.plots import model_columns, require_matplotlib, save_gallery

    try:
        require_matplotlib()
    except ImportError:
        return None
    model, info = _load(summary)
    if recipe.get("data", "synthetic") == "synthetic":
        probe = _probe_scenes(summary, recipe)
        images = _normalise(probe["images"][:GALLERY_IMAGES], info)
        labels = probe["labels"][:GALLERY_IMAGES]
    else:
        from ...data import build_datasets

        _, val, _ = build_datasets(
            recipe["data"], data_dir=recipe.get("data_dir"),
            image_size=recipe.get("image_size"), augment=False,
        )  # fmt: skip
        items = [val[i] for i in range(min(GALLERY_IMAGES, len(val)))]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
    classes = info.get("classes")
    columns, _ = model_columns(model, images, class_names=classes)
    rows = [f"true {classes[int(t)]}" if classes else f"true {int(t)}" for t in labels]
    return save_gallery(images, columns, path, mean=info.get("mean"), std=info.get("std"),
                        row_labels=rows, cell=1.4, dpi=80)  # fmt: skip
