"""LoRA adapters on the backbone's projections, and which parameters a run trains.

    apply_lora(model, rank, alpha, targets)   every targeted nn.Linear of the Gemma layers
                                              becomes a LoRALinear; the backbone is frozen except
                                              the adapters; the action expert stays fully trained
    merged_state_dict(state, scale)           weight + scale * B @ A, adapter tensors dropped:
                                              an ordinary KIVLA state dict (Predictor loads it)
    freeze(model, parts)                      --freeze vision: the SigLIP tower takes no updates

Knowledge insulation is unchanged: the expert reads the backbone's K/V detached, so the
flow loss reaches no adapter; the adapters learn from cross-entropy only.

Why not peft: it is not in our environment and would pull its own dependency tree for one
module of ~30 lines; and peft renames the adapted layers (`base_layer.weight`), while
LoRALinear subclasses nn.Linear so the base weight keeps its key (`...q_proj.weight`) and a
merged state dict is our ordinary checkpoint format.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ki_vla_ros.model.network import KIVLA

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FREEZABLE = ("vision",)
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


class LoRALinear(nn.Linear):
    """y = x W^T + b + scale * (x A^T) B^T, with A [r, in] (Kaiming init) and B [out, r] (zeros),
    so the adapted layer starts exactly at the base layer (Hu et al., 2021). W is frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters: keys and values unchanged
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        w = base.weight
        a = nn.init.kaiming_uniform_(torch.empty(rank, base.in_features), a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(w.device, w.dtype))  # drawn on CPU: the same on every rank and device
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale


def apply_lora(model: KIVLA, rank: int, alpha: float, targets: tuple[str, ...] = LORA_TARGETS,
               seed: int = 0) -> int:
    """Put LoRA adapters on the targeted projections of every Gemma layer; freeze the rest of the
    backbone. The A matrices are drawn from `seed`, so every rank starts from the same adapters
    (FSDP does not broadcast them). Returns the number of adapted layers."""
    generator = torch.Generator().manual_seed(seed)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise ValueError(f"--lora-targets is {list(targets)}; expected a non-empty subset of {list(LORA_TARGETS)}")
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"--lora rank is {rank!r}; expected a positive integer")
    model.backbone.requires_grad_(False)
    adapted = 0
    for layer in model.backbone.model.language_model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in targets:
                base = getattr(parent, name, None)
                if base is None:
                    continue
                if rank > min(base.in_features, base.out_features):
                    raise ValueError(f"--lora rank is {rank}; the backbone's {name} is {base.out_features}x"
                                     f"{base.in_features}, so the rank must be <= {min(base.in_features, base.out_features)}")
                setattr(parent, name, LoRALinear(base, rank, alpha, generator))
                adapted += 1
    model.action_expert.requires_grad_(True)
    return adapted


def is_adapter_key(name: str) -> bool:
    return name.endswith(ADAPTER_SUFFIXES)


def merged_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A LoRA model's state dict -> the plain model's: W + scale * B @ A (computed in fp32), no adapters."""
    merged = {k: v for k, v in state.items() if not is_adapter_key(k)}
    for key in state:
        if key.endswith(".lora_A"):
            prefix = key[: -len(".lora_A")]
            weight = merged[prefix + ".weight"]
            delta = state[prefix + ".lora_B"].float() @ state[key].float()
            merged[prefix + ".weight"] = (weight.float() + scale * delta).to(weight.dtype)
    return merged


def adapted_weight_keys(state_keys, targets: tuple[str, ...]) -> set[str]:
    """Base weights that merging changes: `...layers.<i>.{self_attn,mlp}.<target>.weight`."""
    return {k for k in state_keys if ".language_model.layers." in k
            and k.rsplit(".", 2)[-2] in targets and k.endswith(".weight")}


def vision_tower(model: KIVLA) -> nn.Module:
    """The SigLIP tower: what --freeze vision freezes and --vision-lr-scale slows."""
    return model.backbone.model.vision_tower


def freeze(model: KIVLA, parts: tuple[str, ...]) -> None:
    """Parts that take no updates: "vision" = the SigLIP tower."""
    unknown = sorted(set(parts) - set(FREEZABLE))
    if unknown:
        raise ValueError(f"--freeze is {list(parts)}; expected parts from {list(FREEZABLE)}")
    if "vision" in parts:
        vision_tower(model).requires_grad_(False)
