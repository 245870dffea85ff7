"""Real-time chunking (RTC): sample the next chunk so that it continues the one being executed.

Black, Galliker, Levine 2025, "Real-Time Execution of Action Chunking Flow Policies"
(arXiv 2506.07339), section 4 / algorithm 1, in this project's flow convention
(t = 1 noise, t = 0 actions, x_t = t * noise + (1 - t) * actions, v = dx/dt; the paper's
tau is 1 - t).

While the robot executes the previous chunk Y, the next chunk is sampled from an observation
taken now. Its first d steps (the inference delay) will have run from Y before the new chunk
exists, and its steps up to the end of Y overlap Y. RTC treats this as inpainting:

    prefix weights  W_k = 1                                  k < d          (frozen: executed from Y)
                    W_k = c_k (e^c_k - 1) / (e - 1),         d <= k < K     c_k = (K - k) / (K - d + 1)
                    W_k = 0                                  k >= K         (K = overlap: Y's last step + 1)

    each Euler step, with v = v(x_t, t) and the predicted clean chunk x0 = x_t - t v:
        correction = (d x0 / d x_t)^T  [W * (Y - x0)]             (a vector-Jacobian product)
        weight     = min(beta, (1 - tau) / (tau r^2)),  r^2 = (1 - tau)^2 / (tau^2 + (1 - tau)^2)
                   = min(beta, t / (1 - t) * ((1 - t)^2 + t^2) / t^2)   (beta at t = 1)
        v_guided   = v - weight * correction                       (minus: x moves along -t)

beta = 5 is the paper's guidance clipping. After the last step the d frozen steps are set to
Y exactly: the robot executes them from Y whatever the model says, so the returned chunk
states what will really happen. The guidance needs one backward pass through the expert per
step (about 2-3x the expert's cost; the prefix pass is unchanged).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0  # the paper's beta


def rtc_prefix_weights(delay_steps: int, overlap_steps: int, horizon: int) -> torch.Tensor:
    """The paper's soft mask W [horizon] float32: 1 for the d frozen steps, exponentially decaying
    over the rest of the overlap, 0 after it. overlap_steps is clipped to the horizon and
    delay_steps to the overlap (a delay beyond the old chunk's end freezes all of it)."""
    if delay_steps < 0 or overlap_steps < 0:
        raise ValueError(f"delay_steps {delay_steps} and overlap_steps {overlap_steps}; expected both >= 0")
    overlap = min(overlap_steps, horizon)
    delay = min(delay_steps, overlap)
    weights = torch.zeros(horizon, dtype=torch.float32)
    weights[:delay] = 1.0
    k = torch.arange(delay, overlap, dtype=torch.float64)
    c = (overlap - k) / (overlap - delay + 1)
    weights[delay:overlap] = (c * torch.expm1(c) / (math.e - 1)).float()
    return weights


@dataclasses.dataclass(frozen=True)
class ChunkGuidance:
    """What RTC guides a new chunk toward, in model units (normalized, padded to the model's D).

    previous_chunk: [B, H, D] float32, the running chunk at the new chunk's step times (steps at
        and after overlap_steps are ignored, any value);
    delay_steps: d, steps that will have run from the previous chunk before the new one arrives;
    overlap_steps: K, how many of the new chunk's steps the previous chunk still covers.
    """

    previous_chunk: torch.Tensor
    delay_steps: int
    overlap_steps: int
    max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT

    def check(self, shape: tuple[int, int, int]) -> None:
        if tuple(self.previous_chunk.shape) != shape:
            raise ValueError(f"previous_chunk has shape {tuple(self.previous_chunk.shape)}; expected [B, H, D] = "
                             f"{shape}")
        if not bool(torch.isfinite(self.previous_chunk).all()):
            raise ValueError("previous_chunk contains NaN or inf; expected finite actions")
        if self.delay_steps < 0 or self.overlap_steps < 0:
            raise ValueError(f"delay_steps {self.delay_steps}, overlap_steps {self.overlap_steps}; expected >= 0")
        if not self.max_guidance_weight > 0:
            raise ValueError(f"max_guidance_weight is {self.max_guidance_weight}; expected > 0")

    def weights(self, horizon: int, device) -> torch.Tensor:
        """W as [1, H, 1] on `device`, ready to broadcast over [B, H, D]."""
        return rtc_prefix_weights(self.delay_steps, self.overlap_steps, horizon).to(device)[None, :, None]

    def guidance_weight(self, t: float) -> float:
        """min(beta, t / (1 - t) / r^2) at flow time t (t = 1: beta)."""
        if t >= 1.0:
            return self.max_guidance_weight
        inv_r2 = ((1.0 - t) ** 2 + t ** 2) / (t ** 2)
        return min(self.max_guidance_weight, t / (1.0 - t) * inv_r2)

    def freeze_prefix(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [B, H, D] with the first min(d, K) steps replaced by the previous chunk's."""
        frozen = min(self.delay_steps, self.overlap_steps, actions.shape[1])
        if frozen == 0:
            return actions
        actions = actions.clone()
        actions[:, :frozen] = self.previous_chunk[:, :frozen].to(actions)
        return actions


def guided_velocity(velocity_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, t: float,
                    guidance: ChunkGuidance, weights: torch.Tensor) -> torch.Tensor:
    """v_guided(x) [B, H, D] at flow time t: the expert's velocity plus the clipped ΠGDM correction.

    velocity_fn: x [B, H, D] -> v [B, H, D] (the expert over a fixed prefix K/V); weights: W [1, H, 1].
    Runs under enable_grad (callers are in no_grad; not under inference_mode, whose tensors
    cannot enter autograd): only d x0 / d x is taken, the weights get no gradient.
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        v = velocity_fn(x_in)
        x0 = x_in - t * v
        error = weights * (guidance.previous_chunk.to(x0) - x0)
        (correction,) = torch.autograd.grad(x0, x_in, grad_outputs=error.detach())
    return v.detach() - guidance.guidance_weight(t) * correction
