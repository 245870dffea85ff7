"""FAST action tokenizer (Pertsch et al., 2025, "FAST: Efficient Action Tokenization for VLAs").

An action chunk [H, D] (normalized actions) becomes a short sequence of integer ids:

    1. DCT-II over time, per action dim, orthonormal    coeffs[k, d] = sum_t C[k, t] * chunk[t, d]
    2. quantize                                          q = round(coeffs * scale)
    3. flatten frequency-major                           q[0, 0..D-1], q[1, 0..D-1], ...
    4. shift by the minimum seen at fit time             symbol = q - min_token, in [0, alphabet_size)
    5. one unicode character per symbol                  chr(symbol)
    6. byte-pair encoding trained on those strings       -> ids in [0, vocab_size)

Decoding runs the steps backwards. Smooth chunks put almost all energy in the first few
coefficients, the rest round to 0, and BPE merges the long runs of "0" characters, which
is where the compression comes from.

Round-trip error: rounding moves each coefficient by at most 0.5 / scale; the orthonormal
inverse DCT maps that error vector to the time domain with the same L2 norm, so every
decoded value is within sqrt(H) * 0.5 / scale of the input (RMS about 1 / (sqrt(12) * scale)),
as long as no coefficient fell outside the fitted alphabet (see `FASTTokenizer.quantize`).

Unlike the released tokenizer, which prints an error and returns zeros (a command the
robot would execute), a malformed sequence raises `FASTDecodeError`.

FAST ids live in the backbone vocabulary next to its end, as in openpi: id k <-> token
backbone_vocab_size - 1 - 128 - k (the last 128 PaliGemma tokens are special and skipped).
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, models, trainers

from .json_files import read_json

FORMAT_VERSION = 1
CONFIG_FILE = "fast_tokenizer.json"
BPE_FILE = "fast_bpe.json"
BACKBONE_SKIP_TOKENS = 128  # special tokens at the very end of the PaliGemma vocabulary
_MAX_ALPHABET = 0xD800  # chr() of a UTF-16 surrogate cannot be handed to the Rust tokenizer


class FASTDecodeError(ValueError):
    """A FAST token sequence does not describe a valid [H, D] action chunk."""


def dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C [n, n] (scipy's dct(norm="ortho")); its inverse is C.T (DCT-III)."""
    k = np.arange(n)[:, None]
    t = np.arange(n)[None, :]
    c = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * k / (2 * n))
    c[0] /= np.sqrt(2.0)
    return c


def dct(x: np.ndarray) -> np.ndarray:
    """[..., H, D] -> DCT-II coefficients over the time axis H, orthonormal."""
    return np.einsum("kt,...td->...kd", dct_matrix(x.shape[-2]), x)


def idct(coeffs: np.ndarray) -> np.ndarray:
    """Inverse of `dct`: [..., H, D] coefficients -> [..., H, D] values (orthonormal DCT-III)."""
    return np.einsum("kt,...kd->...td", dct_matrix(coeffs.shape[-2]), coeffs)


class FASTTokenizer:
    """Fitted FAST tokenizer: quantization constants + a trained BPE model."""

    def __init__(self, bpe: Tokenizer, *, scale: float, min_token: int, alphabet_size: int, vocab_size: int):
        learned = bpe.get_vocab_size()
        if learned > vocab_size:
            raise ValueError(f"BPE model has {learned} tokens; expected at most vocab_size={vocab_size}")
        vocab = bpe.get_vocab()
        missing = [i for i in range(alphabet_size) if chr(i) not in vocab]
        if missing:  # BPE silently drops characters it does not know, which would shift coefficients
            raise ValueError(f"BPE model lacks FAST symbols {missing[:5]}...; expected all of [0, {alphabet_size})")
        self._bpe = bpe
        self.scale = float(scale)
        self.min_token = int(min_token)
        self.alphabet_size = int(alphabet_size)
        self._vocab_size = int(vocab_size)

    @property
    def vocab_size(self) -> int:
        """Size of the FAST id range [0, vocab_size) reserved in the backbone vocabulary.

        The BPE model may have learned fewer tokens (little training data); the unused ids
        exist in the embedding but decoding one raises `FASTDecodeError`.
        """
        return self._vocab_size

    # ---------------------------------------------------------------- fit
    @classmethod
    def fit(
        cls, chunks: np.ndarray, vocab_size: int = 1024, scale: float = 10.0, margin: float = 0.1
    ) -> "FASTTokenizer":
        """Fit on normalized action chunks [N, H, D]: quantization range, then BPE.

        The alphabet covers the quantized coefficients seen here, widened on each side by
        `margin` times their span, so chunks a little beyond the training data (a new
        episode, a model's own output) still encode exactly; see `quantize` for the rest.
        """
        chunks = np.asarray(chunks, dtype=np.float64)
        if chunks.ndim != 3 or 0 in chunks.shape:
            raise ValueError(f"chunks has shape {chunks.shape}; expected a non-empty [N, H, D] array")
        if not np.isfinite(chunks).all():
            raise ValueError("chunks contains NaN or inf; expected finite normalized actions")
        if scale <= 0 or margin < 0:
            raise ValueError(f"scale is {scale} and margin {margin}; expected scale > 0 and margin >= 0")
        q = np.rint(dct(chunks) * scale).astype(np.int64)
        pad = int(np.ceil(margin * (q.max() - q.min())))
        min_token, max_token = int(q.min()) - pad, int(q.max()) + pad
        alphabet_size = max_token - min_token + 1
        if alphabet_size > min(vocab_size, _MAX_ALPHABET):
            raise ValueError(
                f"quantized DCT coefficients span {alphabet_size} values [{min_token}, {max_token}] "
                f"but vocab_size is {vocab_size}; lower scale ({scale}), normalize the actions, "
                f"or raise vocab_size"
            )
        alphabet = [chr(i) for i in range(alphabet_size)]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            special_tokens=[],
            initial_alphabet=alphabet,
            limit_alphabet=alphabet_size,
            show_progress=False,
        )
        bpe = Tokenizer(models.BPE())  # no normalizer / pre-tokenizer: each chunk is one "word"
        bpe.train_from_iterator((_to_text(row - min_token) for row in q), trainer=trainer)
        return cls(bpe, scale=scale, min_token=min_token, alphabet_size=alphabet_size, vocab_size=vocab_size)

    # ---------------------------------------------------------- encode/decode
    def quantize(self, chunk: np.ndarray, strict: bool = False) -> np.ndarray:
        """[H, D] actions -> [H, D] integer symbols in [0, alphabet_size) (steps 1, 2 and 4).

        Coefficients outside the fitted alphabet (the range seen at fit time plus its margin)
        are clipped to the nearest representable value, so an unusual chunk still encodes,
        with a larger error on those coefficients. With strict=True they raise ValueError.
        """
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.ndim != 2 or 0 in chunk.shape:
            raise ValueError(f"action chunk has shape {chunk.shape}; expected a non-empty [H, D] array")
        if not np.isfinite(chunk).all():
            t, d = np.argwhere(~np.isfinite(chunk))[0]
            raise ValueError(f"action chunk[{t}, {d}] is {chunk[t, d]}; expected a finite value")
        symbols = np.rint(dct(chunk) * self.scale).astype(np.int64) - self.min_token
        if strict:
            bad = (symbols < 0) | (symbols >= self.alphabet_size)
            if bad.any():
                k, d = np.argwhere(bad)[0]
                raise ValueError(
                    f"DCT coefficient {k} of action dim {d} quantizes to {symbols[k, d] + self.min_token}; "
                    f"fitted range is [{self.min_token}, {self.min_token + self.alphabet_size - 1}]"
                )
        return np.clip(symbols, 0, self.alphabet_size - 1)

    def encode(self, chunk: np.ndarray, strict: bool = False) -> list[int]:
        """[H, D] normalized actions -> FAST ids in [0, vocab_size). See `quantize` for out-of-range values."""
        symbols = self.quantize(chunk, strict=strict)
        ids = self._bpe.encode(_to_text(symbols)).ids
        # Every symbol is in the BPE alphabet, so nothing may be dropped; check, never assume.
        if len(self._tokens_to_text(ids)) != symbols.size:
            raise RuntimeError("BPE dropped symbols while encoding; the tokenizer files are inconsistent")
        return ids

    def decode(self, tokens: Sequence[int], horizon: int, action_dim: int) -> np.ndarray:
        """FAST ids -> [horizon, action_dim] float32 normalized actions.

        Raises FASTDecodeError for an unknown id, a coefficient count other than
        horizon * action_dim, or a symbol outside the fitted alphabet.
        """
        if horizon <= 0 or action_dim <= 0:
            raise FASTDecodeError(f"decode shape ({horizon}, {action_dim}) is not a positive [horizon, action_dim]")
        text = self._tokens_to_text(tokens)
        expected = horizon * action_dim
        if len(text) != expected:
            raise FASTDecodeError(
                f"FAST tokens decode to {len(text)} DCT coefficients; expected horizon*action_dim = "
                f"{horizon}*{action_dim} = {expected}"
            )
        symbols = np.fromiter((ord(c) for c in text), dtype=np.int64, count=expected)
        if symbols.max() >= self.alphabet_size:
            raise FASTDecodeError(
                f"FAST symbol {int(symbols.max())} is outside the fitted alphabet [0, {self.alphabet_size})"
            )
        coeffs = (symbols + self.min_token).reshape(horizon, action_dim) / self.scale
        return idct(coeffs).astype(np.float32)

    def _tokens_to_text(self, tokens: Sequence[int]) -> str:
        """FAST ids -> the string of symbol characters they stand for; unknown ids raise."""
        pieces = []
        for i, tok in enumerate(tokens):
            tok = _as_id(tok, f"FAST token {i}")
            piece = self._bpe.id_to_token(tok) if 0 <= tok < self._vocab_size else None
            if piece is None:
                raise FASTDecodeError(
                    f"FAST token {i} is id {tok}, which the tokenizer does not know; "
                    f"learned ids are [0, {self._bpe.get_vocab_size()})"
                )
            pieces.append(piece)
        return "".join(pieces)

    # --------------------------------------------------- backbone vocabulary
    def to_backbone_ids(self, tokens: Sequence[int], backbone_vocab_size: int) -> list[int]:
        """FAST id k -> backbone id backbone_vocab_size - 1 - 128 - k (openpi's mapping)."""
        last = self._last_backbone_id(backbone_vocab_size)
        out = []
        for i, tok in enumerate(tokens):
            tok = _as_id(tok, f"FAST token {i}")
            if not 0 <= tok < self._vocab_size:
                raise ValueError(f"FAST id {tok} is outside [0, {self._vocab_size})")
            out.append(last - tok)
        return out

    def from_backbone_ids(self, ids: Sequence[int], backbone_vocab_size: int) -> list[int]:
        """Inverse of `to_backbone_ids`; an id outside the FAST range raises FASTDecodeError."""
        last = self._last_backbone_id(backbone_vocab_size)
        first = last - (self._vocab_size - 1)
        out = []
        for i, tok in enumerate(ids):
            tok = _as_id(tok, f"backbone token {i}")
            if not first <= tok <= last:
                raise FASTDecodeError(
                    f"backbone token {i} is id {tok}, outside the FAST range [{first}, {last}] "
                    f"of a {backbone_vocab_size}-token vocabulary"
                )
            out.append(last - tok)
        return out

    def _last_backbone_id(self, backbone_vocab_size: int) -> int:
        last = int(backbone_vocab_size) - 1 - BACKBONE_SKIP_TOKENS
        if last - (self._vocab_size - 1) < 0:
            raise ValueError(
                f"backbone vocabulary of {backbone_vocab_size} tokens cannot hold {self._vocab_size} FAST ids "
                f"plus {BACKBONE_SKIP_TOKENS} skipped special tokens"
            )
        return last

    # ---------------------------------------------------------- save / load
    def save(self, directory) -> None:
        """Write fast_tokenizer.json (constants) and fast_bpe.json (HF tokenizers) into directory."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "format_version": FORMAT_VERSION,
            "scale": self.scale,
            "min_token": self.min_token,
            "alphabet_size": self.alphabet_size,
            "vocab_size": self._vocab_size,
        }
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        self._bpe.save(str(directory / BPE_FILE))

    @classmethod
    def load(cls, directory) -> "FASTTokenizer":
        directory = Path(directory)
        config_path, bpe_path = directory / CONFIG_FILE, directory / BPE_FILE
        for path in (config_path, bpe_path):
            if not path.is_file():
                raise FileNotFoundError(f"FAST tokenizer file {path} not found; expected {CONFIG_FILE} and {BPE_FILE}")
        config = read_json(config_path, "FAST tokenizer file")
        for key in ("format_version", "scale", "min_token", "alphabet_size", "vocab_size"):
            if key not in config:
                raise ValueError(f"{config_path} has no key {key!r}")
        if config["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{config_path} has format_version {config['format_version']}; expected {FORMAT_VERSION}")
        return cls(
            Tokenizer.from_file(str(bpe_path)),
            scale=config["scale"],
            min_token=config["min_token"],
            alphabet_size=config["alphabet_size"],
            vocab_size=config["vocab_size"],
        )


def _as_id(value, what: str) -> int:
    """An integer id from a python / numpy / torch integer; floats and bools are not ids."""
    if isinstance(value, (bool, np.bool_)):
        raise FASTDecodeError(f"{what} is {value!r}; expected an integer id")
    try:
        return operator.index(value)
    except TypeError:
        raise FASTDecodeError(f"{what} is {value!r}; expected an integer id") from None


def _to_text(symbols: np.ndarray) -> str:
    """[H, D] symbols -> string, frequency-major: row-major flattening of [H, D] coefficients."""
    return "".join(map(chr, symbols.reshape(-1).tolist()))
