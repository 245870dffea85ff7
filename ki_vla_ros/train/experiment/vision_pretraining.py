"""Dense pretraining of the vision tower: which block colours each image patch shows.

The stand-in for the pretraining that PaliGemma's SigLIP tower brings. A tiny tower trained
from scratch only through the language model's loss collapses to features that ignore the
image (README, "The demo checkpoint"). This stage first teaches each patch token to say
which block colours lie in its patch, with a throw-away linear head and per-colour binary
cross-entropy, so that "a red block is here" is a direction of that token. On the study's
32 px images it takes seconds. The labels come from the pixels themselves: a patch shows a
colour when one of its pixels lies within COLOR_TOLERANCE of that block colour's RGB.

    tower_history = pretrain_vision_tower(model, images, steps=600)
"""

from __future__ import annotations

import numpy as np
import torch

from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.sim.scene import BLOCK_COLORS_RGB
from ki_vla_ros.train.experiment.batches import images_to_tensor

COLOR_TOLERANCE = 60.0  # RGB distance; the block colours are >= 160 apart, table, floor and arm >= 100 from any


def patch_color_labels(images: np.ndarray, patch_size: int,
                       colors_rgb: dict[str, tuple[int, int, int]] = BLOCK_COLORS_RGB) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float labels [N, (H/p) * (W/p), len(colors_rgb)]: 1 where
    a pixel of that patch (row-major, as the tower orders its tokens) shows that colour."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: shape {images.shape}, dtype {images.dtype}; expected uint8 [N, H, W, 3]")
    n, h, w, _ = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"images are {h}x{w} px; expected multiples of patch_size={patch_size}")
    colors = torch.tensor(list(colors_rgb.values()), dtype=torch.float32)
    distance = (torch.from_numpy(images).float()[..., None, :] - colors).norm(dim=-1)  # [N, H, W, C]
    hit = (distance < COLOR_TOLERANCE).float()
    hit = hit.reshape(n, h // patch_size, patch_size, w // patch_size, patch_size, len(colors)).amax(dim=(2, 4))
    return hit.reshape(n, -1, len(colors))


def _pixels(images: np.ndarray, device) -> torch.Tensor:
    return images_to_tensor(images).to(device)


def patch_color_accuracy(model: KIVLA, head: torch.nn.Linear, images: np.ndarray, labels: torch.Tensor) -> float:
    """Fraction of patches whose every colour the head gets right."""
    device = model.device
    tower = model.backbone.model.vision_tower
    with torch.no_grad():
        logits = head(tower(pixel_values=_pixels(images, device)).last_hidden_state)
    return ((logits > 0).float().cpu() == labels).all(-1).float().mean().item()


def pretrain_vision_tower(model: KIVLA, images: np.ndarray, steps: int, batch_size: int = 64, lr: float = 2e-3,
                          seed: int = 0, held_out: np.ndarray | None = None) -> dict:
    """Train model's vision tower in place on patch colour labels of `images` (uint8
    [N, H, W, 3], every camera's frames). Returns the per-step losses and, when held_out
    images are given, the patch accuracy there before and after."""
    config = model.config
    tower = model.backbone.model.vision_tower
    device = model.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(config.vision_width, len(BLOCK_COLORS_RGB)).to(device)
    out: dict = {}
    if held_out is not None:
        held_labels = patch_color_labels(held_out, config.patch_size)
        out["held_out_accuracy_before"] = patch_color_accuracy(model, head, held_out, held_labels)
    optimizer = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    losses = []
    tower.train()
    for _ in range(steps):
        batch = images[rng.integers(len(images), size=batch_size)]  # labelled per batch: a study has 10^4+ frames
        logits = head(tower(pixel_values=_pixels(batch, device)).last_hidden_state)
        labels = patch_color_labels(batch, config.patch_size).to(device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tower.eval()
    out["losses"] = losses
    if held_out is not None:
        out["held_out_accuracy_after"] = patch_color_accuracy(model, head, held_out, held_labels)
    return out


def frames(data) -> np.ndarray:
    """Every camera frame of a ReachData as uint8 [N, H, W, 3]."""
    images = np.asarray(data.images)
    return images.reshape(-1, *images.shape[-3:])
