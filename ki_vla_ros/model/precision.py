"""The released π0.5's precision policy: bf16 weights, with the numerically touchy parts in fp32.

openpi (PyTorch π0.5) runs in bfloat16 but keeps these parameters in float32, and the
released checkpoints were evaluated that way:

    every RMSNorm of the Gemma backbone   (input_layernorm, post_attention_layernorm, final norm)
    every adaRMSNorm of the action expert (its scale/shift/gate projection included)
    SigLIP's patch embedding and position embedding

`model.to(torch.bfloat16)` would cast those too. `set_precision` is the one place that
casts a KIVLA; checkpoint loading and the benchmarks use it. The forward pass handles the
mix: Gemma's RMSNorm and `AdaptiveRMSNorm` compute in fp32 and return the input's dtype,
and `KIVLA.embed_prefix` feeds the fp32 image embeddings to the bf16 SigLIP encoder.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
from transformers.models.siglip.modeling_siglip import SiglipVisionEmbeddings

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def keeps_float32(module: nn.Module) -> bool:
    """True for the modules openpi keeps in float32 when the rest runs in a 16-bit dtype."""
    from .network import AdaptiveRMSNorm

    return isinstance(module, (GemmaRMSNorm, AdaptiveRMSNorm, SiglipVisionEmbeddings))


def set_precision(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast `model` (a KIVLA) to dtype in place, keeping `keeps_float32` modules in float32 -> model."""
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype is {dtype}; expected one of {sorted(DTYPES)}")
    model.to(dtype)
    if dtype != torch.float32:
        for module in model.modules():
            if keeps_float32(module):
                module.float()
    return model


def float32_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that are float32 (for tests and logs)."""
    return [name for name, p in model.named_parameters() if p.dtype == torch.float32]
