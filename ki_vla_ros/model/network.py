"""KIVLA: PaliGemma backbone + flow-matching action expert, trained with knowledge insulation.

Token layout of one sample (B = batch, P = prefix, T = backbone targets, H = horizon):

    prefix   [images: N_cam x 256 | prompt "Task: ..., State: ...;\\nAction: "]  bidirectional
    targets  [FAST action tokens / subtask or VQA text, EOS]                    causal, after the prefix
    actions  [H noisy action tokens]                                           expert only

In every layer l the backbone attends over prefix + targets, and the expert's queries attend
to the backbone's keys/values of layer l over the prefix plus the expert's own. So the
expert never sees the targets, and nothing in the backbone sees the expert: both by
construction, not by masking. Knowledge insulation (Driess et al., 2025) = `.detach()` on
those prefix keys/values: the backbone learns only from next-token cross-entropy, the
expert only from the flow-matching loss.

Flow matching (π0 convention): x_t = t * noise + (1 - t) * actions, the expert predicts the
velocity u = noise - actions, and sampling integrates dx/dt from t = 1 (noise) to t = 0.
The expert is conditioned on t by adaptive RMSNorm (π0.5): scale, shift and a residual gate
from an MLP of a sin-cos embedding of t.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

from .attention import make_attn_mask
from .config import RECIPES, KIVLAConfig
from .rtc import ChunkGuidance, guided_velocity

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (k, v), each [B, n_kv_heads, N, head_dim]


# ----------------------------------------------------------------------------- inputs
@dataclasses.dataclass
class ModelInputs:
    """What the model sees at inference. Build it from numpy with `inference.prepare_inputs`."""

    images: torch.Tensor  # [B, N_cam, 3, S, S] float in [-1, 1]
    image_masks: torch.Tensor  # [B, N_cam] bool, False = camera missing (its tokens are padding)
    tokens: torch.Tensor  # [B, L] long prompt ids (task + discretized state), right-padded
    token_masks: torch.Tensor  # [B, L] bool, False = padding

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "ModelInputs":
        return dataclasses.replace(self, **{
            f.name: getattr(self, f.name).to(device)
            for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), torch.Tensor)})


@dataclasses.dataclass
class TrainingBatch(ModelInputs):
    """ModelInputs plus what the losses need. The state is in the prompt text (π0.5)."""

    target_tokens: torch.Tensor  # [B, T] long: backbone ids after the prompt (FAST ids, text), EOS-terminated
    target_masks: torch.Tensor  # [B, T] bool, False = padding
    target_loss_masks: torch.Tensor  # [B, T] bool, True = counts toward the cross-entropy
    actions: torch.Tensor  # [B, H, D] float, normalized action chunk (zeros where has_actions is False)
    has_actions: torch.Tensor  # [B] bool, False for VLM co-training samples (no flow loss)
    noise: torch.Tensor | None = None  # [B, H, D] optional, for determinism
    time: torch.Tensor | None = None  # [B] optional flow time in (0, 1]


@dataclasses.dataclass
class FASTActions:
    """Result of autoregressive FAST decoding; an invalid row is NaN, never zeros."""

    actions: torch.Tensor  # [B, H, D] float32 normalized actions, NaN rows where not valid
    valid: torch.Tensor  # [B] bool
    errors: list[str | None]  # why a row is invalid


def _check_inputs(inputs: ModelInputs, config: KIVLAConfig) -> None:
    b, n_cam = inputs.image_masks.shape
    s = config.image_size
    if tuple(inputs.images.shape) != (b, n_cam, 3, s, s):
        raise ValueError(f"images has shape {tuple(inputs.images.shape)}; expected [B, N_cam, 3, {s}, {s}] "
                         f"= {(b, n_cam, 3, s, s)}")
    if inputs.tokens.shape != inputs.token_masks.shape or inputs.tokens.shape[0] != b:
        raise ValueError(f"tokens {tuple(inputs.tokens.shape)} and token_masks {tuple(inputs.token_masks.shape)} "
                         f"must both be [B={b}, L]")


# ----------------------------------------------------------------------------- modules
class AdaptiveRMSNorm(nn.Module):
    """π0.5's adaRMSNorm: RMSNorm with scale, shift and residual gate computed from `cond`."""

    def __init__(self, width: int, cond_width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.dense = nn.Linear(cond_width, 3 * width)
        nn.init.zeros_(self.dense.weight)  # starts as plain RMSNorm with a constant gate (openpi)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, N, W], cond [B, C] -> (normalized x [B, N, W], gate [B, 1, W])."""
        var = x.float().pow(2).mean(-1, keepdim=True)
        normed = x.float() * torch.rsqrt(var + self.eps)
        scale, shift, gate = self.dense(cond.to(self.dense.weight.dtype))[:, None, :].chunk(3, dim=-1)
        return (normed * (1 + scale.float()) + shift.float()).to(x.dtype), gate.to(x.dtype)


class GatedMLP(nn.Module):
    """Gemma's feed-forward: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, width: int, mlp_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, mlp_dim, bias=False)
        self.up_proj = nn.Linear(width, mlp_dim, bias=False)
        self.down_proj = nn.Linear(mlp_dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class ExpertAttention(nn.Module):
    """Query/key/value/output projections, named like transformers' GemmaAttention."""

    def __init__(self, width: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.q_proj = nn.Linear(width, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(width, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, width, bias=False)


class ExpertLayer(nn.Module):
    activation_checkpointing = False  # KIVLA.set_activation_checkpointing

    def __init__(self, c: KIVLAConfig):
        super().__init__()
        w = c.expert_width
        self.input_layernorm = AdaptiveRMSNorm(w, w, c.rms_norm_eps)
        self.self_attn = ExpertAttention(w, c.expert_num_heads, c.expert_num_kv_heads, c.expert_head_dim)
        self.post_attention_layernorm = AdaptiveRMSNorm(w, w, c.rms_norm_eps)
        self.mlp = GatedMLP(w, c.expert_mlp_dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, k_prefix: torch.Tensor, v_prefix: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, H, W_e], cond [B, W_e], the backbone's K/V of this layer [B, kv_heads, P, hd] -> x [B, H, W_e]."""
        return _maybe_checkpointed(_expert_layer, self, x, cond, k_prefix, v_prefix, cos, sin, bias)


def _expert_layer(layer: ExpertLayer, x, cond, k_prefix, v_prefix, cos, sin, bias) -> torch.Tensor:
    normed, gate = layer.input_layernorm(x, cond)
    q, k, v = _project_qkv(layer.self_attn, normed, cos, sin)
    k, v = torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2)
    x = x + layer.self_attn.o_proj(_attend(q, k, v, bias)) * gate
    normed, gate = layer.post_attention_layernorm(x, cond)
    return x + layer.mlp(normed) * gate


def _gemma_layer(layer: nn.Module, x, cos, sin, bias, past_k, past_v, kv_only: bool):
    """One Gemma decoder layer of the joint attention: x [B, N, W] -> (x [B, N, W] or None when
    kv_only, k, v [B, kv_heads, N_past + N, hd]); past_k/past_v (or None): earlier tokens' K/V."""
    q, k, v = _project_qkv(layer.self_attn, layer.input_layernorm(x), cos, sin)
    if past_k is not None:
        k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
    if kv_only:
        return None, k, v
    x = x + layer.self_attn.o_proj(_attend(q, k, v, bias))
    return x + layer.mlp(layer.post_attention_layernorm(x)), k, v


def _gemma_layer_forward(layer: nn.Module, *args):
    """The forward our Gemma layers run (bound per instance in KIVLA.__init__): the loop calls the
    layer as a module, so module hooks (FSDP2's gather/reshard, per layer) wrap each layer call."""
    return _maybe_checkpointed(_gemma_layer, layer, *args)


def _maybe_checkpointed(fn: Callable, layer: nn.Module, *args):
    """fn(layer, *args), recomputed in backward instead of storing its activations when the layer's
    activation_checkpointing is on (training only). Called inside forward, so module hooks stay
    outside the checkpoint and do not run again during the recompute (transformers does the same)."""
    if getattr(layer, "activation_checkpointing", False) and layer.training and torch.is_grad_enabled():
        return checkpoint(fn, layer, *args, use_reentrant=False)
    return fn(layer, *args)


class ActionExpert(nn.Module):
    """Every parameter that only the flow-matching loss trains."""

    def __init__(self, c: KIVLAConfig):
        super().__init__()
        w = c.expert_width
        self.config = c
        self.layers = nn.ModuleList(ExpertLayer(c) for _ in range(c.expert_depth))
        self.norm = AdaptiveRMSNorm(w, w, c.rms_norm_eps)
        self.action_in_proj = nn.Linear(c.action_dim, w)
        self.action_out_proj = nn.Linear(w, c.action_dim)
        self.time_mlp_in = nn.Linear(w, w)
        self.time_mlp_out = nn.Linear(w, w)

    def time_condition(self, time: torch.Tensor) -> torch.Tensor:
        """Flow time [B] -> adaRMSNorm condition [B, W_expert]."""
        c = self.config
        emb = sincos_embedding(time, c.expert_width, c.time_min_period, c.time_max_period)
        emb = emb.to(self.time_mlp_in.weight.dtype)
        return F.silu(self.time_mlp_out(F.silu(self.time_mlp_in(emb))))


def sincos_embedding(t: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """Scalars t [B] -> [B, dim]: sin then cos at periods geometric in [min_period, max_period]."""
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.double()[:, None] * (2 * math.pi / period)[None, :]
    return torch.cat([angle.sin(), angle.cos()], dim=-1).float()


def paligemma_config(c: KIVLAConfig) -> PaliGemmaConfig:
    """The stock transformers PaliGemma config for these sizes (gelu-tanh, RMSNorm eps, RoPE)."""
    return PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=c.vision_width, intermediate_size=c.vision_mlp_dim,
            num_hidden_layers=c.vision_depth, num_attention_heads=c.vision_num_heads, patch_size=c.patch_size,
            image_size=c.image_size, vision_use_head=False, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6),
        text_config=dict(
            model_type="gemma", hidden_size=c.width, intermediate_size=c.mlp_dim, num_hidden_layers=c.depth,
            num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads, head_dim=c.head_dim,
            vocab_size=c.vocab_size, hidden_activation="gelu_pytorch_tanh", rms_norm_eps=c.rms_norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta}),
        projection_dim=c.width, vocab_size=c.vocab_size,
        image_token_index=c.vocab_size,  # never used: image embeddings are placed by position, not by token
    )


def _init_projector(linear: nn.Linear) -> None:
    """Fan-in init of the image-token projector: image tokens start with unit variance per
    dimension, as the LayerNormed vision features do. transformers' default (std 0.02) makes
    them as small as the text embeddings; a backbone trained from scratch then did not learn
    which image token shows the named block (docs/demo_checkpoint.md). Pretrained
    weights replace this init when loaded."""
    nn.init.normal_(linear.weight, std=linear.in_features ** -0.5)
    nn.init.zeros_(linear.bias)


def _project_qkv(attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """h [B, N, W] -> q [B, heads, N, hd], k and v [B, kv_heads, N, hd], RoPE on q and k."""
    b, n, _ = h.shape
    shape = (b, n, -1, attn.head_dim)
    q = attn.q_proj(h).view(shape).transpose(1, 2)
    k = attn.k_proj(h).view(shape).transpose(1, 2)
    v = attn.v_proj(h).view(shape).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    return q, k, v


def _mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [B, Nq, Nk] -> additive bias [B, 1, Nq, Nk]: 0 where allowed, a huge finite negative where not
    (finite, so a row with nothing to see gives a uniform average instead of NaN)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        ~mask, torch.finfo(dtype).min / 2)[:, None]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """q [B, heads, Nq, hd], k/v [B, kv_heads, Nk, hd], bias [B, 1, Nq, Nk] -> [B, Nq, heads * hd].

    On CUDA the K/V heads are repeated to the query heads: SDPA's GQA runs only on its flash
    and math kernels, flash takes no mask, so with GQA these masks would fall back to the math
    kernel; repeated, they run on the memory-efficient kernel (benchmarks/gpu_check.py times both).
    """
    if q.is_cuda and k.shape[1] != q.shape[1]:
        k, v = (repeat_kv_heads(t, q.shape[1]) for t in (k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    return out.transpose(1, 2).flatten(2)


def repeat_kv_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, kv_heads, N, hd] -> [B, heads, N, hd], query head h reading K/V head h // (heads / kv_heads)
    (as GQA; expand + reshape never synchronizes with the GPU, so it can be captured in a CUDA graph)."""
    b, kv_heads, n, hd = t.shape
    return t[:, :, None].expand(b, kv_heads, heads // kv_heads, n, hd).reshape(b, heads, n, hd)


# ----------------------------------------------------------------------------- model
class KIVLA(nn.Module):
    """The knowledge-insulated VLA. `backbone`: stock PaliGemma; `action_expert`: the flow-only part."""

    def __init__(self, config: KIVLAConfig, *, text_tokenizer=None, fast_tokenizer=None, norm_stats=None):
        super().__init__()
        self.config = config
        self.backbone = PaliGemmaForConditionalGeneration(paligemma_config(config))
        _init_projector(self.backbone.model.multi_modal_projector.linear)
        self.action_expert = ActionExpert(config)
        for layer in self._lm.layers:  # our joint-attention layer instead of transformers' GemmaDecoderLayer
            layer.forward = types.MethodType(_gemma_layer_forward, layer)
        if text_tokenizer is None and config.text_tokenizer == "byte":
            from .text_tokenizer import ByteTokenizer

            text_tokenizer = ByteTokenizer(config.vocab_size)
        # Not modules: saved next to the weights by checkpoint.save_pretrained.
        self.text_tokenizer = text_tokenizer
        self.fast_tokenizer = fast_tokenizer
        self.norm_stats = norm_stats  # {"state": NormStats, "actions": NormStats} or None
        # {"state_names", "action_names", "step_duration_s"} of the training data, or None
        self.data_layout: dict | None = None

    @property
    def dtype(self) -> torch.dtype:
        return self.action_expert.action_in_proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.action_expert.action_in_proj.weight.device

    @property
    def _lm(self) -> nn.Module:  # the Gemma decoder inside PaliGemma
        return self.backbone.model.language_model

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> "KIVLA":
        """Load a checkpoint directory (own format, openpi or LeRobot π0.5 layout); see checkpoint.py."""
        from .checkpoint import load_pretrained

        return load_pretrained(path, **kwargs)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Recompute each layer's activations in backward instead of storing them (backbone, vision
        tower, expert): activation memory per layer drops to the layer's input; ~1/3 more compute."""
        for layer in [*self._lm.layers, *self.action_expert.layers]:
            layer.activation_checkpointing = enabled
        vision = self.backbone.model.vision_tower
        if enabled:
            vision.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            vision.activation_checkpointing_disable()

    def save_pretrained(self, path, state: dict[str, torch.Tensor] | None = None) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, path, state)

    # ------------------------------------------------------------------ embeddings
    def embed_prefix(self, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """-> prefix embeddings [B, P, W] and their pad mask [B, P], P = N_cam * tokens_per_image + L."""
        _check_inputs(inputs, self.config)
        b, n_cam = inputs.image_masks.shape
        tower = self.backbone.model.vision_tower  # SigLIP; its embeddings may be fp32 (precision.py)
        tower = getattr(tower, "vision_model", tower)  # transformers releases that still nest it
        pixels = inputs.images.flatten(0, 1).to(self.device, tower.embeddings.patch_embedding.weight.dtype)
        patches = tower.embeddings(pixels).to(self.dtype)  # [B * N_cam, I, W_vision]
        features = tower.post_layernorm(tower.encoder(inputs_embeds=patches).last_hidden_state)
        img = self.backbone.model.multi_modal_projector(features)  # [B * N_cam, I, W], not scaled (openpi)
        n_img = img.shape[1]
        img = img.reshape(b, n_cam * n_img, -1)
        img_pad = inputs.image_masks.to(self.device, torch.bool)[:, :, None].expand(b, n_cam, n_img)
        txt = self._lm.embed_tokens(inputs.tokens.to(self.device))  # scaled by sqrt(W) inside
        pad = torch.cat([img_pad.reshape(b, -1), inputs.token_masks.to(self.device, torch.bool)], dim=1)
        return torch.cat([img, txt], dim=1), pad

    # ------------------------------------------------------------------ transformers
    def _run_backbone(self, x: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                      past_kv: KV | None = None, need_hidden: bool = True) -> tuple[torch.Tensor | None, KV]:
        """Gemma layers over x [B, N, W] -> (final-normed hidden [B, N, W] or None, per-layer K/V).

        mask bool [B, N, N_past + N]; positions [B, N]; past_kv: K/V of earlier tokens to attend to
        (returned K/V include them). need_hidden=False skips the work only the backbone's own
        outputs need (last MLP, final norm): the expert needs just the K/V.
        """
        cos, sin = self._lm.rotary_emb(x, positions)
        bias = _mask_bias(mask, x.dtype)
        kv: KV = []
        layers = self._lm.layers
        for i, layer in enumerate(layers):
            past_k, past_v = past_kv[i] if past_kv is not None else (None, None)
            kv_only = not need_hidden and i == len(layers) - 1
            x, k, v = layer(x, cos, sin, bias, past_k, past_v, kv_only)  # _gemma_layer
            kv.append((k, v))
            if kv_only:
                return None, kv
        return self._lm.norm(x), kv

    def _expert_context(self, prefix_pad: torch.Tensor, horizon: int):
        """What the expert's attention needs besides the K/V, fixed for a prefix: (mask bias
        [B, 1, H, P + H], RoPE cos/sin [B, H, hd]). Action tokens see the valid prefix and each other."""
        b, p = prefix_pad.shape
        pad = torch.cat([prefix_pad, prefix_pad.new_ones(b, horizon)], dim=1)
        ar = torch.zeros(p + horizon, dtype=torch.bool, device=pad.device)
        ar[p] = True  # one new block: bidirectional among themselves, invisible to the prefix
        bias = _mask_bias(make_attn_mask(pad, ar)[:, p:], self.dtype)
        positions = prefix_pad.sum(-1, keepdim=True) + torch.arange(horizon, device=pad.device)  # [B, H]
        cos, sin = self._lm.rotary_emb(bias, positions)
        return bias, cos, sin

    def _run_expert(self, x_t: torch.Tensor, time: torch.Tensor, prefix_kv: KV, context) -> torch.Tensor:
        """Noisy actions x_t [B, H, D] at time [B] -> velocity [B, H, D] float32.

        prefix_kv: the backbone's per-layer K/V over the prefix only ([B, kv_heads, P, hd]);
        context: `_expert_context` of the prefix pad mask.
        """
        ex = self.action_expert
        bias, cos, sin = context
        cond = ex.time_condition(time.to(x_t.device))  # [B, W_e]
        x = ex.action_in_proj(x_t.to(self.dtype))  # [B, H, W_e]
        for layer, (k_prefix, v_prefix) in zip(ex.layers, prefix_kv):
            x = layer(x, cond, k_prefix, v_prefix, cos, sin, bias)
        x, _ = ex.norm(x, cond)
        return ex.action_out_proj(x).float()

    def _prefix_kv(self, inputs: ModelInputs) -> tuple[KV, torch.Tensor]:
        """One backbone pass over the prefix -> (per-layer K/V [B, kv_heads, P, hd], pad mask [B, P])."""
        embs, pad = self.embed_prefix(inputs)
        mask = make_attn_mask(pad, torch.zeros_like(pad))
        _, kv = self._run_backbone(embs, mask, _positions(pad), need_hidden=False)
        return kv, pad

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: TrainingBatch, recipe: str = "ki") -> dict[str, torch.Tensor]:
        """Losses of one batch: {"total", "ce", "flow"} (scalars; a loss a recipe skips is 0), plus
        detached diagnostics "logits" [n_counted, V] (backbone, at the counted target positions)
        and "velocity" [B, H, D] (expert), when the recipe computes them.

        "ki":    total = ce + alpha * flow, backbone K/V detached for the expert (knowledge insulation)
        "joint": same losses, no stop-gradient (the flow loss also trains the backbone)
        "pi0":   total = flow, gradients reach the backbone (π0 / π0.5 flow-only training)
        "fast":  total = ce (π0-FAST: actions only as tokens, decoded autoregressively)
        """
        if recipe not in RECIPES:
            raise ValueError(f"recipe is {recipe!r}; expected one of {list(RECIPES)}")
        use_ce, use_flow = recipe != "pi0", recipe != "fast"
        dev = self.device
        prefix, prefix_pad = self.embed_prefix(batch)
        b, p = prefix_pad.shape
        x, pad = prefix, prefix_pad
        if use_ce:
            targets = batch.target_tokens.to(dev)
            x = torch.cat([prefix, self._lm.embed_tokens(targets)], dim=1)
            pad = torch.cat([prefix_pad, batch.target_masks.to(dev, torch.bool)], dim=1)
        ar = torch.arange(pad.shape[1], device=dev) >= p  # targets: one causal block per token
        hidden, kv = self._run_backbone(x, make_attn_mask(pad, ar), _positions(pad), need_hidden=use_ce)

        zero = prefix.new_zeros((), dtype=torch.float32)
        ce = flow = zero
        out: dict[str, torch.Tensor] = {}
        if use_ce:
            # Target j is predicted from the token before it: the last valid prompt token for j = 0.
            last_prompt = (prefix_pad * torch.arange(p, device=dev)).argmax(dim=1)  # [B]
            before = torch.cat([hidden[torch.arange(b, device=dev), last_prompt][:, None], hidden[:, p:-1]], dim=1)
            counted = (batch.target_loss_masks.to(dev, torch.bool) & batch.target_masks.to(dev, torch.bool))
            if counted.any():
                logits = self.backbone.lm_head(before[counted]).float()  # [n_counted, V]
                ce = F.cross_entropy(logits, targets[counted])
                out["logits"] = logits.detach()
            else:
                ce = hidden.sum().float() * 0.0  # keeps the graph; nothing to predict in this batch
        if use_flow:
            prefix_kv = [(k[:, :, :p], v[:, :, :p]) for k, v in kv]
            if recipe == "ki":
                prefix_kv = [(k.detach(), v.detach()) for k, v in prefix_kv]
            actions = batch.actions.to(dev, torch.float32)
            noise = batch.noise.to(dev, torch.float32) if batch.noise is not None else torch.randn_like(actions)
            time = batch.time.to(dev, torch.float32) if batch.time is not None else sample_time(b, dev)
            t = time[:, None, None]
            x_t = t * noise + (1 - t) * actions
            u_t = noise - actions
            v_t = self._run_expert(x_t, time, prefix_kv, self._expert_context(prefix_pad, x_t.shape[1]))
            per_sample = (v_t - u_t).pow(2).mean(dim=(1, 2))  # [B]
            has = batch.has_actions.to(dev, torch.float32)
            flow = (per_sample * has).sum() / has.sum().clamp(min=1.0)
            out["velocity"] = v_t.detach()
        if recipe == "pi0":
            total = flow
        elif recipe == "fast":
            total = ce
        else:
            total = ce + self.config.flow_loss_weight * flow
        return {"total": total, "ce": ce, "flow": flow, **out}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(self, inputs: ModelInputs, noise: torch.Tensor | None = None, num_steps: int | None = None,
                       use_kv_cache: bool = True, guidance: ChunkGuidance | None = None) -> torch.Tensor:
        """Integrate the flow from noise (t = 1) to actions (t = 0) with Euler steps -> [B, H, D] float32.

        noise [B, H, D] (default: standard normal). With the cache the prefix runs through the
        backbone once and every step reuses its per-layer K/V; use_kv_cache=False recomputes the
        whole prefix (images included) at each step, the baseline the cache is measured against.
        guidance: real-time chunking toward the running chunk (rtc.py: previous_chunk [B, H, D] in
        model units, delay and overlap steps); None is the plain sampler, operation for operation.
        Call it under no_grad, not inference_mode, when guided (the guidance differentiates the expert).
        """
        c = self.config
        num_steps = num_steps or c.num_flow_steps
        b = inputs.batch_size
        if noise is None:
            noise = torch.randn(b, c.action_horizon, c.action_dim, device=self.device)
        if tuple(noise.shape) != (b, c.action_horizon, c.action_dim):
            raise ValueError(f"noise has shape {tuple(noise.shape)}; expected [B, H, D] = "
                             f"{(b, c.action_horizon, c.action_dim)}")
        x = noise.to(self.device, torch.float32)
        if guidance is not None:
            guidance.check((b, c.action_horizon, c.action_dim))
            weights = guidance.weights(c.action_horizon, self.device)
        dt = -1.0 / num_steps
        kv = context = None
        for step in range(num_steps):
            if kv is None or not use_kv_cache:
                kv, pad = self._prefix_kv(inputs)
                context = self._expert_context(pad, c.action_horizon)
            time = torch.full((b,), 1.0 + step * dt, device=self.device)
            if guidance is None:
                x = x + dt * self._run_expert(x, time, kv, context)
            else:
                velocity = guided_velocity(lambda x_in: self._run_expert(x_in, time, kv, context), x,
                                           1.0 + step * dt, guidance, weights)
                x = x + dt * velocity
        return x if guidance is None else guidance.freeze_prefix(x)

    @torch.no_grad()
    def generate_text(self, inputs: ModelInputs, max_new_tokens: int, stop_at_eos: bool = True) -> list[list[int]]:
        """Greedy decoding after the prompt, with a K/V cache -> per sample the new ids (EOS excluded)."""
        eos = self.text_tokenizer.eos_id if self.text_tokenizer is not None else None
        embs, pad = self.embed_prefix(inputs)
        b, p = pad.shape
        hidden, kv = self._run_backbone(embs, make_attn_mask(pad, torch.zeros_like(pad)), _positions(pad))
        last_prompt = (pad * torch.arange(p, device=pad.device)).argmax(dim=1)
        h_next = hidden[torch.arange(b, device=pad.device), last_prompt]  # [B, W]
        n_valid = pad.sum(dim=1)  # [B]
        out: list[list[int]] = [[] for _ in range(b)]
        done = torch.zeros(b, dtype=torch.bool, device=pad.device)
        for step in range(max_new_tokens):
            tok = self.backbone.lm_head(h_next).argmax(dim=-1)  # [B]
            for i in range(b):
                if not done[i]:
                    if stop_at_eos and eos is not None and int(tok[i]) == eos:
                        done[i] = True
                    else:
                        out[i].append(int(tok[i]))
            if bool(done.all()) or step == max_new_tokens - 1:
                break
            pad = torch.cat([pad, pad.new_ones(b, 1)], dim=1)  # the new token; earlier ones stay visible
            hidden, kv = self._run_backbone(self._lm.embed_tokens(tok[:, None]), pad[:, None, :],
                                            (n_valid + step)[:, None], past_kv=kv)
            h_next = hidden[:, -1]
        return out

    @torch.no_grad()
    def decode_fast_actions(self, inputs: ModelInputs, max_new_tokens: int | None = None,
                            action_dim: int | None = None, stop_at_eos: bool = True) -> FASTActions:
        """The autoregressive π0-FAST baseline: greedy FAST tokens -> DCT inverse -> actions.

        action_dim: the dims the FAST tokenizer was fitted on (default: the action norm stats'
        length, else config.action_dim); the rest of the D = config.action_dim columns are 0.
        A malformed sequence gives valid=False, a NaN row and the reason, never zeros.
        """
        from .fast import FASTDecodeError

        if self.fast_tokenizer is None:
            raise ValueError("decode_fast_actions needs a FAST tokenizer; set model.fast_tokenizer "
                             "(FASTTokenizer.fit / load)")
        c = self.config
        action_dim = action_dim or self._fast_action_dim()
        ids = self.generate_text(inputs, max_new_tokens or c.max_target_len, stop_at_eos=stop_at_eos)
        actions = torch.full((len(ids), c.action_horizon, c.action_dim), float("nan"))
        valid = torch.zeros(len(ids), dtype=torch.bool)
        errors: list[str | None] = []
        for i, seq in enumerate(ids):
            try:
                fast_ids = self.fast_tokenizer.from_backbone_ids(seq, c.vocab_size)
                chunk = self.fast_tokenizer.decode(fast_ids, c.action_horizon, action_dim)
            except FASTDecodeError as e:
                errors.append(str(e))
                continue
            actions[i] = 0.0
            actions[i, :, :action_dim] = torch.from_numpy(chunk)
            valid[i] = True
            errors.append(None)
        return FASTActions(actions=actions, valid=valid, errors=errors)

    # ------------------------------------------------------------------ examples
    def example_batch(self, batch_size: int = 2, seed: int = 0) -> TrainingBatch:
        """A valid random training batch (CPU): real prompt format, smooth actions, FAST targets.

        The last sample (when batch_size > 1) is a VLM co-training sample: a text answer as target,
        no actions; sample 1 (when batch_size > 2) has its last camera missing.
        """
        from .preprocess import discretize_state, format_prompt

        c = self.config
        g = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng(seed)
        b, n_cam, s = batch_size, c.num_cameras, c.image_size
        images = torch.rand(b, n_cam, 3, s, s, generator=g) * 2 - 1
        image_masks = torch.ones(b, n_cam, dtype=torch.bool)
        if b > 2:
            image_masks[1, -1] = False
        t = np.linspace(0, 1, c.action_horizon)[:, None]
        freq, phase = rng.uniform(0.3, 1.5, (b, 1, c.action_dim)), rng.uniform(0, 2 * np.pi, (b, 1, c.action_dim))
        actions = torch.from_numpy(0.8 * np.sin(2 * np.pi * freq * t + phase)).float()  # [B, H, D] smooth
        has_actions = torch.ones(b, dtype=torch.bool)
        if b > 1:
            has_actions[-1] = False
            actions[-1] = 0.0

        tok = self.text_tokenizer
        prompts, targets = [], []
        for i in range(b):
            state_bins = discretize_state(rng.uniform(-1, 1, 8))
            task = "pick up the red cup" if i % 2 == 0 else "open the drawer"
            if tok is not None:
                prompt = tok.encode(format_prompt(task, state_bins), add_bos=True)
            else:  # no tokenizer files (e.g. pi05 preset without a checkpoint): random text ids
                prompt = rng.integers(3, 259, size=min(40, c.max_token_len)).tolist()
            if has_actions[i]:
                if self.fast_tokenizer is not None:
                    d = self._fast_action_dim()
                    fast = self.fast_tokenizer.encode(actions[i, :, :d].numpy())
                    target = self.fast_tokenizer.to_backbone_ids(fast, c.vocab_size)
                else:  # ids from the FAST range at the end of the vocabulary
                    hi = c.vocab_size - 1 - 128
                    target = rng.integers(hi - c.fast_vocab_size + 1, hi + 1, size=12).tolist()
            else:
                target = tok.encode("a red cup on a table", add_bos=False) if tok is not None else \
                    rng.integers(3, 259, size=8).tolist()
            eos = tok.eos_id if tok is not None else 1
            prompts.append(prompt[: c.max_token_len])
            targets.append((target + [eos])[: c.max_target_len])

        def pad(seqs, length):
            ids = torch.full((b, length), tok.pad_id if tok is not None else 0, dtype=torch.long)
            mask = torch.zeros(b, length, dtype=torch.bool)
            for i, seq in enumerate(seqs):
                ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[i, : len(seq)] = True
            return ids, mask

        tokens, token_masks = pad(prompts, max(len(t) for t in prompts))  # shortest padding that fits all
        target_tokens, target_masks = pad(targets, max(len(t) for t in targets))
        return TrainingBatch(images=images, image_masks=image_masks, tokens=tokens, token_masks=token_masks,
                             target_tokens=target_tokens, target_masks=target_masks,
                             target_loss_masks=target_masks.clone(), actions=actions, has_actions=has_actions)

    def _fast_action_dim(self) -> int:
        """Action dims the FAST tokenizer codes: the robot's (norm stats) when known, else all D."""
        stats = (self.norm_stats or {}).get("actions")
        return stats.dim if stats is not None else self.config.action_dim


def _positions(pad: torch.Tensor) -> torch.Tensor:
    """RoPE positions [B, N]: index among the valid tokens (padding repeats its neighbour's)."""
    return (torch.cumsum(pad.long(), dim=1) - 1).clamp(min=0)


def sample_time(batch_size: int, device) -> torch.Tensor:
    """Flow time t ~ Beta(1.5, 1) * 0.999 + 0.001 [B] (π0: more weight on noisy times)."""
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
    return (beta.sample((batch_size,)) * 0.999 + 0.001).to(device)


def count_parameters(module: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def batch_prompts(tokenizer, prompts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize prompts (with BOS) -> right-padded ids [B, L] long and mask [B, L] bool.

    L is the longest prompt, not max_len: padding is masked out (tests check it changes
    nothing), so shorter sequences are only faster. max_len is the limit a prompt may reach.
    """
    seqs = [tokenizer.encode(text, add_bos=True) for text in prompts]
    for i, seq in enumerate(seqs):
        if len(seq) > max_len:
            raise ValueError(f"prompt {i} is {len(seq)} tokens; max_token_len is {max_len} "
                             f"(shorten the task text or raise max_token_len)")
    length = max(len(seq) for seq in seqs)
    ids = torch.full((len(prompts), length), tokenizer.pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), length, dtype=torch.bool)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = True
    return ids, mask
