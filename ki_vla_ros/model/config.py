"""KIVLAConfig: every size of the knowledge-insulated VLA in one frozen dataclass.

The defaults are the paper's (π0.5 / KI, Driess et al. 2025):
PaliGemma = SigLIP So400m/14 at 224x224 (256 tokens per image) + Gemma 2B, and a
Gemma-300M-shaped action expert. In every layer the expert's queries attend to the
backbone's keys/values of that layer, so depth, heads, KV heads and head_dim must match.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# Expert fields that must equal the backbone's, for the per-layer joint attention.
_SHARED_ATTENTION_FIELDS = (
    ("expert_depth", "depth"), ("expert_num_heads", "num_heads"),
    ("expert_num_kv_heads", "num_kv_heads"), ("expert_head_dim", "head_dim"),
)
RECIPES = ("ki", "joint", "pi0", "fast")
TEXT_TOKENIZERS = ("byte", "sentencepiece")


@dataclasses.dataclass(frozen=True)
class KIVLAConfig:
    name: str = "pi05"
    # SigLIP vision tower (So400m/14).
    image_size: int = 224
    patch_size: int = 14
    vision_width: int = 1152
    vision_depth: int = 27
    vision_mlp_dim: int = 4304
    vision_num_heads: int = 16
    # Gemma backbone (2B).
    width: int = 2048
    depth: int = 18
    mlp_dim: int = 16384
    num_heads: int = 8
    num_kv_heads: int = 1
    head_dim: int = 256
    vocab_size: int = 257152
    # Action expert (Gemma-300M-shaped).
    expert_width: int = 1024
    expert_depth: int = 18
    expert_mlp_dim: int = 4096
    expert_num_heads: int = 8
    expert_num_kv_heads: int = 1
    expert_head_dim: int = 256
    # Actions, flow matching and the π0.5 time conditioning.
    action_horizon: int = 50
    action_dim: int = 32
    num_flow_steps: int = 10
    time_min_period: float = 4e-3
    time_max_period: float = 4.0
    flow_loss_weight: float = 1.0  # alpha in total = ce + alpha * flow
    # Action dims predicted as offsets from the same state dim at the chunk's start (openpi's
    # DeltaActions, used for joint positions): norm stats and FAST are fitted on the offsets,
    # and the predictor adds the measured state back. Empty: absolute actions.
    delta_action_dims: tuple[int, ...] = ()
    # Tokens: prompt (task + discretized state) and the backbone's targets (FAST / text).
    max_token_len: int = 200
    max_target_len: int = 256
    fast_vocab_size: int = 1024
    state_bins: int = 256
    num_cameras: int = 3
    text_tokenizer: str = "sentencepiece"  # "sentencepiece" (PaliGemma, from the checkpoint) or "byte"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number and value <= 0 and name != "flow_loss_weight":
                raise ValueError(f"KIVLAConfig.{name} is {value}; expected a positive number")
        for expert_field, backbone_field in _SHARED_ATTENTION_FIELDS:
            e, b = getattr(self, expert_field), getattr(self, backbone_field)
            if e != b:
                raise ValueError(
                    f"KIVLAConfig.{expert_field} is {e} but {backbone_field} is {b}; the action expert "
                    f"attends to the backbone's keys/values in every layer, so they must be equal"
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"KIVLAConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(f"KIVLAConfig.image_size ({self.image_size}) must be a multiple of patch_size "
                             f"({self.patch_size})")
        if self.expert_width % 2:
            raise ValueError(f"KIVLAConfig.expert_width is {self.expert_width}; the sin-cos time embedding "
                             f"needs an even width")
        if self.text_tokenizer not in TEXT_TOKENIZERS:
            raise ValueError(f"KIVLAConfig.text_tokenizer is {self.text_tokenizer!r}; expected "
                             f"'sentencepiece' or 'byte'")
        dims = self.delta_action_dims
        if isinstance(dims, list):  # from config.json
            dims = tuple(dims)
            object.__setattr__(self, "delta_action_dims", dims)
        if not (isinstance(dims, tuple) and all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
                and list(dims) == sorted(set(dims)) and all(0 <= d < self.action_dim for d in dims)):
            raise ValueError(f"KIVLAConfig.delta_action_dims is {dims!r}; expected increasing distinct action "
                             f"indices in 0..{self.action_dim - 1}")
        if self.flow_loss_weight < 0:
            raise ValueError(f"KIVLAConfig.flow_loss_weight is {self.flow_loss_weight}; expected >= 0")

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def preset(cls, name: str, **overrides) -> "KIVLAConfig":
        """"pi05": the paper's sizes. "tiny": same architecture, ~1M parameters, fast on CPU."""
        if name == "pi05":
            base = cls()
        elif name == "tiny":
            base = cls(
                name="tiny", image_size=32, patch_size=8, vision_width=64, vision_depth=2,
                vision_mlp_dim=128, vision_num_heads=2,
                width=128, depth=4, mlp_dim=256, num_heads=4, num_kv_heads=1, head_dim=32,
                vocab_size=1024,  # 259 byte-level text ids, then 256 FAST ids below the 128 skipped tail ids
                expert_width=64, expert_depth=4, expert_mlp_dim=128, expert_num_heads=4,
                expert_num_kv_heads=1, expert_head_dim=32,
                action_horizon=10, max_token_len=256, max_target_len=48, fast_vocab_size=256,
                num_cameras=2, text_tokenizer="byte",
            )
        else:
            raise ValueError(f"config preset is {name!r}; expected 'pi05' or 'tiny'")
        return dataclasses.replace(base, **overrides) if overrides else base

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "KIVLAConfig":
        if not isinstance(d, dict):
            raise ValueError(f"{where} is a {type(d).__name__}; expected a JSON object of KIVLAConfig fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where} has unknown field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**d)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> "KIVLAConfig":
        from .json_files import read_json

        return cls.from_dict(read_json(path, "model config"), where=f"model config {path}")
