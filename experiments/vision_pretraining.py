"""Dense pretraining of the vision tower: which block colours each image patch shows.

The stand-in for the pretraining that PaliGemma's SigLIP tower brings. A tiny tower trained
from scratch only through the language model's loss collapses to features that ignore the
image (docs/demo_checkpoint.md). This stage first teaches each patch token to say
which block colours lie in its patch, with a throw-away linear head and per-colour binary
cross-entropy, so that "a red block is here" is a direction of that token. On the study's
32 px images it takes seconds. The labels come from the pixels themselves: a patch shows a
colour when one of its pixels lies within COLOR_TOLERANCE of that block colour's RGB.

With where_weight > 0 the head also regresses, per patch and colour, where in the image
those pixels are (their centroid), so a token also says where its block is to a fraction
of a pixel: the position a reaching policy needs, which an 8 px patch alone gives only to
about 3 px (docs/demo_checkpoint.md).

    tower_history = pretrain_vision_tower(model, images, steps=600)
    tower_history = pretrain_vision_tower(model, images, steps=1500, where_weight=WHERE_WEIGHT)
"""

from __future__ import annotations

import numpy as np
import torch

from ki_vla_ros.model.network import KIVLA
from ki_vla_ros.sim.scene import BLOCK_COLORS_RGB
from experiments.batches import images_to_tensor

# Weight of the centroid error (image coordinates in [-1, 1], squared) against the colour
# cross-entropy when positions are trained too: 3 kept held-out colour accuracy at 0.98 and
# brought the centroid error to 0.97 px in 1500 steps (10 gave 0.94 and 1.04 px).
WHERE_WEIGHT = 3.0
COLOR_TOLERANCE = 60.0  # RGB distance; the block colours are >= 160 apart, table, floor and arm >= 100 from any


def patch_color_labels(images: np.ndarray, patch_size: int,
                       colors_rgb: dict[str, tuple[int, int, int]] = BLOCK_COLORS_RGB) -> torch.Tensor:
    """uint8 images [N, H, W, 3] -> float labels [N, (H/p) * (W/p), len(colors_rgb)]: 1 where
    a pixel of that patch (row-major, as the tower orders its tokens) shows that colour."""
    return patch_targets(images, patch_size, colors_rgb)[0]


def patch_targets(images: np.ndarray, patch_size: int,
                  colors_rgb: dict[str, tuple[int, int, int]] = BLOCK_COLORS_RGB) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, H, W, 3] -> (labels [N, T, C], where [N, T, C, 2]), T patches row-major.

    labels: 1 where a pixel of the patch shows colour c. where: the (x, y) centroid of those
    pixels in image coordinates scaled to [-1, 1] (left/top edge -1), each pixel weighted by
    how close it is to the colour (1 - distance / COLOR_TOLERANCE), so an anti-aliased block
    edge moves it by a fraction of a pixel; 0 where the colour is absent."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images: shape {images.shape}, dtype {images.dtype}; expected uint8 [N, H, W, 3]")
    n, h, w, _ = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"images are {h}x{w} px; expected multiples of patch_size={patch_size}")
    colors = torch.tensor(list(colors_rgb.values()), dtype=torch.float32)
    c = len(colors)
    distance = (torch.from_numpy(images).float()[..., None, :] - colors).norm(dim=-1)  # [N, H, W, C]
    weight = (1.0 - distance / COLOR_TOLERANCE).clamp(min=0.0)

    def per_patch(x):  # [N, H, W, C] -> [N, T, C, p * p]
        x = x.reshape(n, h // patch_size, patch_size, w // patch_size, patch_size, c)
        return x.permute(0, 1, 3, 5, 2, 4).reshape(n, -1, c, patch_size * patch_size)

    wp = per_patch(weight)
    labels = (wp > 0).any(-1).float()
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h * 2 - 1, (torch.arange(w) + 0.5) / w * 2 - 1,
                            indexing="ij")
    px = per_patch(xs[None, :, :, None].expand(n, h, w, c))
    py = per_patch(ys[None, :, :, None].expand(n, h, w, c))
    total = wp.sum(-1).clamp(min=1e-6)
    where = torch.stack([(wp * px).sum(-1) / total, (wp * py).sum(-1) / total], dim=-1) * labels[..., None]
    return labels, where


def _pixels(images: np.ndarray, device) -> torch.Tensor:
    return images_to_tensor(images).to(device)


def _predict(model: KIVLA, head: torch.nn.Linear, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-> colour logits [N, T, C] and where [N, T, C, 2] from the head on the tower's tokens."""
    out = head(model.backbone.model.vision_tower(pixel_values=pixels).last_hidden_state)
    c = len(BLOCK_COLORS_RGB)
    return out[..., :c], out[..., c:].reshape(*out.shape[:-1], c, 2)


def patch_color_accuracy(model: KIVLA, head: torch.nn.Linear, images: np.ndarray,
                         targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
    """accuracy: fraction of patches whose every colour the head gets right; where_error_px:
    mean distance (pixels) of the predicted from the true centroid where a colour is shown."""
    labels, where = targets
    with torch.no_grad():
        logits, predicted = (x.cpu() for x in _predict(model, head, _pixels(images, model.device)))
    shown = labels.bool()
    error = ((predicted - where)[shown] * images.shape[1] / 2).norm(dim=-1)
    return {"accuracy": ((logits > 0).float() == labels).all(-1).float().mean().item(),
            "where_error_px": error.mean().item() if error.numel() else float("nan")}


def pretrain_vision_tower(model: KIVLA, images: np.ndarray, steps: int, batch_size: int = 64, lr: float = 2e-3,
                          seed: int = 0, held_out: np.ndarray | None = None,
                          where_weight: float = 0.0) -> dict:
    """Train model's vision tower in place on the patch targets of `images` (uint8
    [N, H, W, 3], every camera's frames): which colours each patch shows (binary cross-entropy)
    and, when where_weight > 0, where (squared error of the centroid, times where_weight;
    WHERE_WEIGHT is the tested value; the study's default 0 trains colours only). Returns the
    per-step losses and, when held_out images are given, patch_color_accuracy there before and
    after."""
    config = model.config
    tower = model.backbone.model.vision_tower
    device = model.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Linear(config.vision_width, 3 * len(BLOCK_COLORS_RGB)).to(device)
    out: dict = {}
    if held_out is not None:
        held_targets = patch_targets(held_out, config.patch_size)
        out["held_out_before"] = patch_color_accuracy(model, head, held_out, held_targets)
    optimizer = torch.optim.AdamW(list(tower.parameters()) + list(head.parameters()), lr=lr, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    losses = []
    tower.train()
    for _ in range(steps):
        batch = images[rng.integers(len(images), size=batch_size)]  # labelled per batch: a study has 10^4+ frames
        labels, where = (x.to(device) for x in patch_targets(batch, config.patch_size))
        logits, predicted = _predict(model, head, _pixels(batch, device))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        if where_weight:
            squared = ((predicted - where) ** 2).sum(-1) * labels
            loss = loss + where_weight * squared.sum() / labels.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    tower.eval()
    out["losses"] = losses
    if held_out is not None:
        out["held_out_after"] = patch_color_accuracy(model, head, held_out, held_targets)
    return out


def frames(data) -> np.ndarray:
    """Every camera frame of a ReachData as uint8 [N, H, W, 3]."""
    images = np.asarray(data.images)
    return images.reshape(-1, *images.shape[-3:])
