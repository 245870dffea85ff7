"""Checkpoint directories: save/load our format, import released π0.5 weights strictly.

Our format (`save_pretrained`):
    model.safetensors      weights, keys as in KIVLA.state_dict() (the tied lm_head stored once)
    config.json            KIVLAConfig
    norm_stats.json        quantile stats of "state" and "actions" (openpi layout)
    fast_tokenizer.json, fast_bpe.json      FAST tokenizer (when the model has one)
    text_tokenizer.json (+ tokenizer.model) text tokenizer

Released π0.5 PyTorch weights come in two key layouts, both read by `load_pretrained`:
    openpi:  paligemma_with_expert.paligemma.{model.*, lm_head.weight}
             paligemma_with_expert.gemma_expert.{model.layers.*, model.norm.dense.*, lm_head.weight}
             action_in_proj.*, action_out_proj.*, time_mlp_in.*, time_mlp_out.*
    LeRobot (pi05): the same names under "model.".
Loading is strict: every tensor of the model must come from the file and every tensor of the
file must have a place (the expert's lm_head, which π0.5 never runs, is the one tensor that is
read past after its shape is checked); otherwise `CheckpointError` lists what did not match.
Weights are read only from safetensors (no pickle).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import KIVLAConfig
from .json_files import read_json
from .normalize import load_data_layout
from .network import KIVLA

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
NORM_STATS_FILE = "norm_stats.json"
TEXT_TOKENIZER_FILE = "text_tokenizer.json"

_TIED_HEAD = "backbone.lm_head.weight"  # same tensor as the token embedding
_EMBED = "backbone.model.language_model.embed_tokens.weight"
_IGNORED = object()  # marks a file tensor that is accounted for but not loaded
_EXPERT_PARTS = ("action_in_proj.", "action_out_proj.", "time_mlp_in.", "time_mlp_out.")
_MAX_LISTED = 40


def respect_umask(path: str | Path) -> None:
    """Give a file safetensors wrote the mode any other new file gets (0666 less the umask):
    safetensors' save_file creates its files 0600, so a checkpoint or dataset written for a
    team could not be read by anyone else."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message lists every mismatch."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


# ---------------------------------------------------------------------- save
def save_pretrained(model: KIVLA, directory, state: dict[str, torch.Tensor] | None = None) -> None:
    """state: the weights to write instead of model.state_dict() (a trainer's gathered FSDP state,
    merged LoRA weights); the config, norm stats and tokenizers always come from the model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    if model.backbone.lm_head.weight is model.backbone.model.language_model.embed_tokens.weight:
        state.pop(_TIED_HEAD, None)
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "layout": "ki_vla_ros"})
    respect_umask(directory / WEIGHTS_FILE)
    model.config.save(directory / CONFIG_FILE)
    if model.norm_stats:
        from .normalize import save_norm_stats

        save_norm_stats(directory / NORM_STATS_FILE, model.norm_stats, model.data_layout)
    if model.fast_tokenizer is not None:
        model.fast_tokenizer.save(directory)
    if model.text_tokenizer is not None:
        spec = model.text_tokenizer.save(directory)
        (directory / TEXT_TOKENIZER_FILE).write_text(json.dumps(spec, indent=2) + "\n")


# ---------------------------------------------------------------------- load
def load_pretrained(directory, *, config: KIVLAConfig | None = None, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> KIVLA:
    """Build a KIVLA from a checkpoint directory (our format, openpi or LeRobot π0.5 layout).

    config overrides the directory's config.json (needed for a bare weights directory).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} not found")
    shapes, files = read_safetensors_index(directory)
    layout = detect_layout(shapes, directory)
    config = config or read_config(directory)
    text_tokenizer = read_text_tokenizer(directory, config)
    with torch.device(device):  # random init where the weights go, then cast before copying them in
        model = KIVLA(config, text_tokenizer=text_tokenizer)
    if dtype is not None:  # openpi's policy: RMSNorms and SigLIP embeddings stay fp32 (precision.py)
        from .precision import set_precision

        set_precision(model, dtype)
    load_weights(model, shapes, files, layout)
    model.norm_stats = load_checkpoint_norm_stats(directory)
    model.data_layout = load_data_layout(directory / NORM_STATS_FILE)
    model.fast_tokenizer = load_checkpoint_fast_tokenizer(directory)
    return model


def read_safetensors_index(directory: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Path]]:
    """-> {tensor name: shape} and {tensor name: file} from the header(s), without reading tensors."""
    index = directory / WEIGHTS_INDEX_FILE
    if (directory / WEIGHTS_FILE).is_file():
        paths = [directory / WEIGHTS_FILE]
    elif index.is_file():
        try:
            paths = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index: {e}") from e
    else:
        others = sorted(p.name for p in directory.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt"))
        hint = f"; found {others}, which are pickle formats this loader does not read" if others else ""
        raise FileNotFoundError(f"no {WEIGHTS_FILE} (or {WEIGHTS_INDEX_FILE}) in {directory}{hint}")
    shapes, files = {}, {}
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
                    files[key] = path
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"weights file {path} is not a readable safetensors file "
                                  f"(corrupt or truncated?): {e}") from e
    return shapes, files


def detect_layout(keys, directory: Path | str = "checkpoint") -> str:
    """"ki_vla_ros", "openpi" or "lerobot", from the tensor names."""
    keys = list(keys)
    if any(k.startswith(("backbone.", "action_expert.")) for k in keys):
        return "ki_vla_ros"
    if any(k.startswith("model.paligemma_with_expert.") for k in keys):
        return "lerobot"
    if any(k.startswith("paligemma_with_expert.") for k in keys):
        return "openpi"
    raise CheckpointError(f"{directory}: weight names match no known layout (ki_vla_ros 'backbone.*', "
                          f"openpi 'paligemma_with_expert.*', LeRobot 'model.paligemma_with_expert.*'); "
                          f"first names: {sorted(keys)[:5]}")


def map_key(key: str, layout: str, model_keys: set[str]):
    """A file tensor name -> our parameter name, _IGNORED, or None (no place for it)."""
    if layout == "ki_vla_ros":
        return key if key in model_keys else None
    if layout == "lerobot":
        if not key.startswith("model."):
            return None
        key = key[len("model."):]
    if key.startswith(_EXPERT_PARTS):
        return "action_expert." + key
    if key == "paligemma_with_expert.gemma_expert.lm_head.weight":
        return _IGNORED  # transformers' GemmaForCausalLM head; the expert never produces tokens
    for theirs, ours in (("paligemma_with_expert.gemma_expert.model.", "action_expert."),
                         ("paligemma_with_expert.paligemma.", "backbone.")):
        if key.startswith(theirs):
            name = ours + key[len(theirs):]
            if name not in model_keys:  # transformers 5 dropped SiglipVisionModel's "vision_model." level
                name = name.replace("vision_tower.vision_model.", "vision_tower.")
            return name if name in model_keys else None
    return None


def load_weights(model: KIVLA, shapes: dict[str, tuple[int, ...]], files: dict[str, Path], layout: str) -> None:
    """Strictly copy the file tensors into the model; CheckpointError lists every mismatch."""
    own = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in own.items()}
    expected_ignored = {"paligemma_with_expert.gemma_expert.lm_head.weight":
                        (model.config.vocab_size, model.config.expert_width)}
    plan: dict[str, str] = {}  # file key -> our key
    unexpected, mismatched, covered = [], [], set()
    for key, shape in sorted(shapes.items()):
        name = map_key(key, layout, set(expected))
        if name is None:
            unexpected.append(f"{key} {list(shape)}")
            continue
        want = expected_ignored[key.removeprefix("model.")] if name is _IGNORED else expected[name]
        if shape != want:
            mismatched.append(f"{key}: file {list(shape)}, expected {list(want)}")
            covered.add(name)
        elif name in plan.values():
            unexpected.append(f"{key} {list(shape)} (a second tensor for {name})")
        elif name is not _IGNORED:
            plan[key] = name
    # The tied head and embedding are one tensor: either name in the file provides both.
    if _TIED_HEAD in plan.values() and _EMBED in plan.values():
        plan = {k: v for k, v in plan.items() if v != _TIED_HEAD}
    plan = {k: (_EMBED if v == _TIED_HEAD else v) for k, v in plan.items()}
    provided = set(plan.values()) | covered
    if _EMBED in provided or _TIED_HEAD in provided:
        provided |= {_EMBED, _TIED_HEAD}
    missing = [f"{k} {list(expected[k])}" for k in sorted(set(expected) - provided)]
    if missing or unexpected or mismatched:
        parts = [f"checkpoint ({layout} layout) does not match the model ({model.config.name} config):"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched)):
            if items:
                shown = "\n    ".join(items[:_MAX_LISTED])
                more = f"\n    ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
                parts.append(f"  {len(items)} {title} tensor(s):\n    {shown}{more}")
        raise CheckpointError("\n".join(parts), missing, unexpected, mismatched)

    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    handles: dict[Path, object] = {}
    try:
        with torch.no_grad():
            for key, name in plan.items():
                path = files[key]
                if path not in handles:
                    handles[path] = safe_open(str(path), framework="pt")
                try:
                    tensor = handles[path].get_tensor(key)
                except (SafetensorError, OSError, ValueError) as e:
                    raise CheckpointError(f"weights file {path}: cannot read tensor {key}: {e}") from e
                params[name].copy_(tensor.to(params[name].dtype))
    finally:
        handles.clear()


def read_config(directory: Path) -> KIVLAConfig:
    """config.json as written by us, by openpi's converter, or by LeRobot's pi05 policy."""
    path = directory / CONFIG_FILE
    d = read_json(path, "model config",
                  missing_hint="pass config=KIVLAConfig.preset(...) to load bare weights")
    if not isinstance(d, dict):
        raise ValueError(f"model config {path} holds a {type(d).__name__}; expected an object")
    if "paligemma_variant" not in d:
        return KIVLAConfig.from_dict(d, where=f"model config {path}")
    variants = (d.get("paligemma_variant"), d.get("action_expert_variant", "gemma_300m"))
    if variants != ("gemma_2b", "gemma_300m"):
        raise ValueError(f"model config {path} names variants {variants}; expected ('gemma_2b', 'gemma_300m') "
                         f"(LoRA and other variants are not supported)")
    if "chunk_size" in d:  # LeRobot PI05Config
        fields = {"action_horizon": "chunk_size", "action_dim": "max_action_dim",
                  "num_flow_steps": "num_inference_steps", "max_token_len": "tokenizer_max_length"}
    else:  # openpi's convert_jax_model_to_pytorch.py
        fields = {"action_horizon": "action_horizon", "action_dim": "action_dim"}
    overrides = {ours: int(d[theirs]) for ours, theirs in fields.items() if d.get(theirs) is not None}
    resolution = d.get("image_resolution")
    if resolution is not None:
        if len(set(resolution)) != 1:
            raise ValueError(f"model config {path} has image_resolution {resolution}; expected a square size")
        overrides["image_size"] = int(resolution[0])
    return KIVLAConfig.preset("pi05", **overrides)


def read_text_tokenizer(directory: Path, config: KIVLAConfig):
    from .text_tokenizer import SENTENCEPIECE_FILES, load_text_tokenizer

    spec_path = directory / TEXT_TOKENIZER_FILE
    if spec_path.is_file():
        return load_text_tokenizer(json.loads(spec_path.read_text()), directory)
    if config.text_tokenizer == "byte":
        return load_text_tokenizer({"type": "byte", "vocab_size": config.vocab_size})
    for name in SENTENCEPIECE_FILES:
        if (directory / name).is_file():
            return load_text_tokenizer({"type": "sentencepiece", "file": name, "vocab_size": config.vocab_size},
                                       directory)
    return None  # weights usable for tests; the Predictor reports the missing tokenizer


def load_checkpoint_norm_stats(directory: Path):
    """norm_stats.json at the top, else openpi's assets/<asset_id>/norm_stats.json, else LeRobot's
    normalizer processor file ("observation.state.q01", "action.q99", ...)."""
    from .normalize import load_norm_stats

    candidates = [directory / NORM_STATS_FILE] if (directory / NORM_STATS_FILE).is_file() else \
        sorted((directory / "assets").glob(f"*/{NORM_STATS_FILE}"))
    if len(candidates) > 1:
        raise ValueError(f"{directory} has several norm stats files {[str(c) for c in candidates]}; "
                         f"copy the one for your robot to {directory / NORM_STATS_FILE}")
    if candidates:
        return load_norm_stats(candidates[0])
    lerobot = sorted(directory.glob("policy_preprocessor*normalizer_processor.safetensors"))
    return _lerobot_norm_stats(lerobot[0]) if lerobot else None


def _lerobot_norm_stats(path: Path):
    from .normalize import NormStats

    try:
        with safe_open(str(path), framework="pt") as f:
            flat = {k: f.get_tensor(k).double().numpy() for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"normalizer file {path} is not a readable safetensors file: {e}") from e
    stats = {}
    for ours, theirs in (("state", "observation.state"), ("actions", "action")):
        q01, q99 = flat.get(f"{theirs}.q01"), flat.get(f"{theirs}.q99")
        if q01 is None or q99 is None:
            raise ValueError(f"normalizer file {path} has no {theirs}.q01 / {theirs}.q99 (π0.5 quantile "
                             f"normalization); it has {sorted(flat)}")
        mean = flat.get(f"{theirs}.mean", (q01 + q99) / 2)
        std = flat.get(f"{theirs}.std", (q99 - q01) / 2)
        stats[ours] = NormStats(q01=q01, q99=q99, mean=mean, std=std)
    return stats


def load_checkpoint_fast_tokenizer(directory: Path):
    from .fast import CONFIG_FILE as FAST_CONFIG
    from .fast import FASTTokenizer

    return FASTTokenizer.load(directory) if (directory / FAST_CONFIG).is_file() else None
