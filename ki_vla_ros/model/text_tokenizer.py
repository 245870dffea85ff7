"""Text tokenizers that never download anything.

- `ByteTokenizer`: the tiny preset's tokenizer. ids 0 = pad, 1 = bos, 2 = eos,
  3..258 = the UTF-8 bytes 0..255; ids 259..vocab_size-1 are reserved for other uses
  (the FAST action ids sit at the end of the vocabulary) and are not text.
- `SentencePieceTokenizer`: PaliGemma's SentencePiece model, read from the checkpoint
  directory the user provides (tokenizer.model, or openpi's paligemma_tokenizer.model);
  or a small one fitted on a dataset's own text (`SentencePieceTokenizer.fit`), which
  the demo checkpoint uses: with whole words as tokens a tiny backbone links "red" to the
  red patches far sooner than it does from the bytes r, e, d (docs/demo_checkpoint.md).

A checkpoint records its tokenizer with `to_config()` (and `save(directory)`, which also
writes the model file); `load_text_tokenizer(config, directory)` rebuilds it.
"""

from __future__ import annotations

import io
import operator
from pathlib import Path
from typing import Sequence

import sentencepiece

SENTENCEPIECE_FILES = ("tokenizer.model", "paligemma_tokenizer.model")


def _check_ids(ids: Sequence[int], vocab_size: int) -> list[int]:
    out = []
    for i, tok in enumerate(ids):
        try:
            if isinstance(tok, bool):
                raise TypeError
            tok = operator.index(tok)  # python / numpy / torch integers; not floats
        except TypeError:
            raise ValueError(f"token {i} is {tok!r}; expected an integer id") from None
        if not 0 <= tok < vocab_size:
            raise ValueError(f"token {i} is id {tok}; expected an id in [0, {vocab_size})")
        out.append(tok)
    return out


class ByteTokenizer:
    """UTF-8 bytes as tokens: no vocabulary file, any text, 259 ids plus reserved ones."""

    pad_id, bos_id, eos_id = 0, 1, 2
    _OFFSET = 3
    TEXT_VOCAB = _OFFSET + 256

    def __init__(self, vocab_size: int = TEXT_VOCAB):
        if vocab_size < self.TEXT_VOCAB:
            raise ValueError(f"ByteTokenizer vocab_size is {vocab_size}; expected >= {self.TEXT_VOCAB}")
        self.vocab_size = int(vocab_size)

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text is a {type(text).__name__}; expected a string")
        ids = [b + self._OFFSET for b in text.encode("utf-8")]
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first eos; pad, bos and reserved ids are skipped; broken UTF-8 shows as U+FFFD."""
        data = bytearray()
        for tok in _check_ids(ids, self.vocab_size):
            if tok == self.eos_id:
                break
            if self._OFFSET <= tok < self.TEXT_VOCAB:
                data.append(tok - self._OFFSET)
        return data.decode("utf-8", errors="replace")

    def to_config(self) -> dict:
        return {"type": "byte", "vocab_size": self.vocab_size}

    def save(self, directory) -> dict:
        """Nothing to write besides the config; returns it."""
        return self.to_config()


class SentencePieceTokenizer:
    """A SentencePiece model (PaliGemma's: pad 0, eos 1, bos 2) loaded from a local file."""

    def __init__(self, model_proto: bytes, vocab_size: int | None = None, filename: str = SENTENCEPIECE_FILES[0]):
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
        self.filename = filename
        pieces = self._sp.get_piece_size()
        self.text_vocab = pieces
        # The backbone's embedding may be larger than the SentencePiece model (reserved tail).
        self.vocab_size = int(vocab_size) if vocab_size is not None else pieces
        if self.vocab_size < pieces:
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the SentencePiece model's {pieces} pieces")
        self.bos_id, self.eos_id = self._sp.bos_id(), self._sp.eos_id()
        # Padded positions are masked out, so pad only needs to be a valid id; models trained
        # without a pad piece fall back to unk.
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.unk_id()

    @classmethod
    def fit(cls, lines: Sequence[str], max_pieces: int, vocab_size: int | None = None) -> "SentencePieceTokenizer":
        """Fit a BPE model on `lines` (in memory; deterministic for the same lines).

        PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3); every UTF-8 byte has a piece
        (byte fallback), so text unlike the lines still encodes and decodes; digits are
        split, as PaliGemma's are. max_pieces bounds the model (a repetitive corpus gives
        fewer); vocab_size is the backbone's vocabulary, at least the model's pieces.
        """
        lines = [line for line in lines if isinstance(line, str) and line.strip()]
        if not lines:
            raise ValueError("fitting a SentencePiece model needs at least one non-empty line of text")
        min_pieces = 4 + 256 + 1  # special ids, byte pieces, one word piece
        if max_pieces < min_pieces:
            raise ValueError(f"max_pieces is {max_pieces}; expected >= {min_pieces} "
                             "(4 special ids and 256 byte pieces come first)")
        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=buffer, vocab_size=int(max_pieces), model_type="bpe",
            byte_fallback=True, character_coverage=1.0, split_digits=True, hard_vocab_limit=False,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, num_threads=1, minloglevel=2)
        return cls(buffer.getvalue(), vocab_size=vocab_size)

    @classmethod
    def from_dir(cls, directory, vocab_size: int | None = None) -> "SentencePieceTokenizer":
        directory = Path(directory)
        for name in SENTENCEPIECE_FILES:
            path = directory / name
            if path.is_file():
                return cls(path.read_bytes(), vocab_size=vocab_size, filename=name)
        raise FileNotFoundError(
            f"no SentencePiece model in {directory}: expected {' or '.join(SENTENCEPIECE_FILES)} "
            f"(PaliGemma's tokenizer, shipped with the checkpoint)"
        )

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"text is a {type(text).__name__}; expected a string")
        return self._sp.encode(text, add_bos=add_bos, add_eos=add_eos)

    def decode(self, ids: Sequence[int]) -> str:
        """Text up to the first eos; bos, pad and ids past the SentencePiece model are skipped."""
        kept = []
        for tok in _check_ids(ids, self.vocab_size):
            if tok == self.eos_id:
                break
            if tok < self.text_vocab and tok not in (self.bos_id, self.pad_id):
                kept.append(tok)
        return self._sp.decode(kept)

    def to_config(self) -> dict:
        return {"type": "sentencepiece", "file": self.filename, "vocab_size": self.vocab_size}

    def save(self, directory) -> dict:
        """Write the model file into directory (a checkpoint) and return the config."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / self.filename).write_bytes(self._sp.serialized_model_proto())
        return self.to_config()


def load_text_tokenizer(
    spec: dict | str, directory=None, vocab_size: int | None = None
) -> ByteTokenizer | SentencePieceTokenizer:
    """Build a text tokenizer from what a config or checkpoint records.

    spec: a `to_config()` dict, "byte", "sentencepiece" (KIVLAConfig.text_tokenizer), or a
    directory holding a SentencePiece model. A sentencepiece tokenizer reads its model file
    from `directory` (the checkpoint). vocab_size, when given, is the backbone's vocabulary
    size and overrides the recorded one.
    """
    if isinstance(spec, str):
        if spec in ("byte", "sentencepiece"):
            spec = {"type": spec}
        else:
            return SentencePieceTokenizer.from_dir(spec, vocab_size=vocab_size)
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(
            f"text tokenizer spec is {spec!r}; expected 'byte', 'sentencepiece', a directory, or a dict with a 'type'"
        )
    kind = spec["type"]
    vocab_size = vocab_size if vocab_size is not None else spec.get("vocab_size")
    if kind == "byte":
        return ByteTokenizer(vocab_size if vocab_size is not None else ByteTokenizer.TEXT_VOCAB)
    if kind == "sentencepiece":
        if directory is None:
            raise ValueError("a sentencepiece text tokenizer needs the checkpoint directory that holds its model file")
        if "file" not in spec:
            return SentencePieceTokenizer.from_dir(directory, vocab_size=vocab_size)
        path = Path(directory) / spec["file"]
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model {path} not found; the tokenizer config names {path.name}")
        return SentencePieceTokenizer(path.read_bytes(), vocab_size=vocab_size, filename=path.name)
    raise ValueError(f"text tokenizer type is {kind!r}; expected 'byte' or 'sentencepiece'")
