"""FAST action tokenizer: round trip, persistence, malformed input, backbone id mapping."""

import json

import numpy as np
import pytest
import torch

from ki_vla_ros.model.fast import FASTDecodeError, FASTTokenizer, dct, dct_matrix, idct

H, D, SCALE = 16, 7, 10.0
PALIGEMMA_VOCAB = 257152


def smooth_chunks(rng: np.random.Generator, n: int, horizon: int = H, dim: int = D) -> np.ndarray:
    """Normalized action chunks [n, H, D] like a robot's: an offset plus a slow sinusoid per joint."""
    t = np.linspace(0.0, 1.0, horizon)[None, :, None]
    offset = rng.uniform(-0.6, 0.6, (n, 1, dim))
    amp = rng.uniform(0.0, 0.4, (n, 1, dim))
    freq = rng.uniform(0.2, 1.5, (n, 1, dim))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, dim))
    return offset + amp * np.sin(2 * np.pi * freq * t + phase)


@pytest.fixture(scope="module")
def fitted() -> tuple[FASTTokenizer, np.ndarray]:
    rng = np.random.default_rng(0)
    train = smooth_chunks(rng, 400)
    held_out = smooth_chunks(rng, 100)
    return FASTTokenizer.fit(train, vocab_size=1024, scale=SCALE), held_out


def test_dct_matches_the_orthonormal_dct_ii_definition_and_inverts():
    n = 6
    x = np.random.default_rng(1).normal(size=(n, 3))
    k, t = np.arange(n)[:, None], np.arange(n)[None, :]
    weight = np.where(k == 0, np.sqrt(1.0 / n), np.sqrt(2.0 / n))
    expected = (weight * np.cos(np.pi * (2 * t + 1) * k / (2 * n))) @ x
    np.testing.assert_allclose(dct(x), expected, atol=1e-12)
    np.testing.assert_allclose(idct(dct(x)), x, atol=1e-12)
    np.testing.assert_allclose(dct_matrix(n) @ dct_matrix(n).T, np.eye(n), atol=1e-12)


def test_round_trip_error_is_within_the_quantization_bound(fitted):
    """Rounding moves each DCT coefficient by <= 0.5/scale. The inverse DCT is orthonormal,
    so a decoded value differs by at most the L2 norm of that error: sqrt(H) * 0.5 / scale
    (0.2 for H=16, scale=10). Uniform rounding noise gives an RMS of 1 / (sqrt(12) * scale)."""
    tok, chunks = fitted
    decoded = np.stack([tok.decode(tok.encode(c, strict=True), H, D) for c in chunks])
    assert decoded.dtype == np.float32 and decoded.shape == chunks.shape
    err = decoded - chunks
    assert np.abs(err).max() <= np.sqrt(H) * 0.5 / SCALE
    assert np.sqrt(np.mean(err**2)) <= 1.2 / (np.sqrt(12) * SCALE)


def test_encoding_compresses_smooth_chunks(fitted):
    tok, chunks = fitted
    lengths = [len(tok.encode(c)) for c in chunks]
    assert all(0 <= i < tok.vocab_size for c in chunks[:10] for i in tok.encode(c))
    assert np.mean(lengths) < H * D / 2  # BPE merges the runs of zero high-frequency coefficients


def test_a_larger_scale_gives_a_smaller_error():
    rng = np.random.default_rng(2)
    train, test = smooth_chunks(rng, 300), smooth_chunks(rng, 50)
    errors = {}
    for scale in (5.0, 20.0):
        tok = FASTTokenizer.fit(train, vocab_size=1024, scale=scale)
        errors[scale] = max(np.abs(tok.decode(tok.encode(c), H, D) - c).max() for c in test)
        assert errors[scale] <= np.sqrt(H) * 0.5 / scale
    assert errors[20.0] < errors[5.0]


def test_coefficients_outside_the_fitted_range_are_clipped_or_rejected_when_strict(fitted):
    tok, _ = fitted
    spike = np.full((H, D), 5.0)  # far outside normalized [-1, 1]: its DC coefficient is not in the alphabet
    with pytest.raises(ValueError, match="fitted range"):
        tok.encode(spike, strict=True)
    decoded = tok.decode(tok.encode(spike), H, D)  # clipped to the largest representable DC value
    top_dc = (tok.min_token + tok.alphabet_size - 1) / tok.scale / np.sqrt(H)
    np.testing.assert_allclose(decoded[:, 0], top_dc, atol=1e-5)


def test_encode_rejects_non_finite_and_misshaped_chunks(fitted):
    tok, chunks = fitted
    bad = chunks[0].copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"chunk\[3, 2\] is nan"):
        tok.encode(bad)
    with pytest.raises(ValueError, match=r"expected a non-empty \[H, D\]"):
        tok.encode(chunks[0].reshape(-1))


def test_save_load_gives_identical_ids_and_actions(fitted, tmp_path):
    tok, chunks = fitted
    tok.save(tmp_path)
    assert json.loads((tmp_path / "fast_tokenizer.json").read_text())["scale"] == SCALE
    loaded = FASTTokenizer.load(tmp_path)
    assert loaded.vocab_size == tok.vocab_size
    for c in chunks[:20]:
        ids = tok.encode(c)
        assert loaded.encode(c) == ids
        np.testing.assert_array_equal(loaded.decode(ids, H, D), tok.decode(ids, H, D))


def test_load_names_the_missing_file_and_rejects_inconsistent_files(fitted, tmp_path):
    with pytest.raises(FileNotFoundError, match="fast_tokenizer.json"):
        FASTTokenizer.load(tmp_path)
    tok, _ = fitted
    tok.save(tmp_path)
    config = json.loads((tmp_path / "fast_tokenizer.json").read_text())
    (tmp_path / "fast_tokenizer.json").write_text(json.dumps(config | {"alphabet_size": 5000}))
    with pytest.raises(ValueError, match="lacks FAST symbols"):  # BPE would drop unknown symbols
        FASTTokenizer.load(tmp_path)


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda ids, tok: ids[:-1], "DCT coefficients; expected horizon\\*action_dim"),  # truncated
        (lambda ids, tok: ids + ids[-1:], "DCT coefficients; expected"),  # one token too many
        (lambda ids, tok: ids[:2] + [tok.vocab_size + 5] + ids[2:], "does not know"),  # unknown id
        (lambda ids, tok: ids[:1] + [-1], "does not know"),  # negative id
        (lambda ids, tok: [], "0 DCT coefficients"),  # empty
        (lambda ids, tok: ids[:1] + [2.5], "expected an integer id"),  # garbage
        (lambda ids, tok: ids[:1] + ["x"], "expected an integer id"),
    ],
)
def test_malformed_token_sequences_raise_instead_of_returning_motion(fitted, corrupt, message):
    tok, chunks = fitted
    ids = tok.encode(chunks[0])
    with pytest.raises(FASTDecodeError, match=message):
        tok.decode(corrupt(ids, tok), H, D)


def test_decoding_with_the_wrong_shape_raises(fitted):
    tok, chunks = fitted
    ids = tok.encode(chunks[0])
    with pytest.raises(FASTDecodeError, match="expected horizon\\*action_dim = 16\\*8 = 128"):
        tok.decode(ids, H, D + 1)
    with pytest.raises(FASTDecodeError, match="not a positive"):
        tok.decode(ids, 0, D)


def test_random_id_sequences_never_decode_silently_to_a_wrong_length(fitted):
    tok, _ = fitted
    rng = np.random.default_rng(3)
    for _ in range(200):
        ids = rng.integers(0, tok.vocab_size, size=rng.integers(1, 40)).tolist()
        try:
            actions = tok.decode(ids, H, D)
        except FASTDecodeError:
            continue
        assert actions.shape == (H, D) and np.isfinite(actions).all()


def test_decode_accepts_numpy_and_torch_ids(fitted):
    tok, chunks = fitted
    ids = tok.encode(chunks[0])
    expected = tok.decode(ids, H, D)
    np.testing.assert_array_equal(tok.decode(np.asarray(ids), H, D), expected)
    np.testing.assert_array_equal(tok.decode(torch.tensor(ids), H, D), expected)


def test_backbone_ids_follow_openpi_and_round_trip(fitted):
    tok, chunks = fitted
    assert tok.to_backbone_ids([0, 1, tok.vocab_size - 1], PALIGEMMA_VOCAB) == [
        PALIGEMMA_VOCAB - 1 - 128,
        PALIGEMMA_VOCAB - 2 - 128,
        PALIGEMMA_VOCAB - 128 - tok.vocab_size,
    ]
    ids = tok.encode(chunks[0])
    backbone = tok.to_backbone_ids(ids, PALIGEMMA_VOCAB)
    assert tok.from_backbone_ids(backbone, PALIGEMMA_VOCAB) == ids


def test_backbone_ids_outside_the_fast_range_are_rejected(fitted):
    tok, _ = fitted
    first, last = PALIGEMMA_VOCAB - 128 - tok.vocab_size, PALIGEMMA_VOCAB - 1 - 128
    for bad in (first - 1, last + 1, 2, PALIGEMMA_VOCAB - 1):
        with pytest.raises(FASTDecodeError, match=f"id {bad}, outside the FAST range \\[{first}, {last}\\]"):
            tok.from_backbone_ids([first, bad], PALIGEMMA_VOCAB)
    with pytest.raises(ValueError, match="outside \\[0, 1024\\)"):
        tok.to_backbone_ids([tok.vocab_size], PALIGEMMA_VOCAB)
    with pytest.raises(ValueError, match="cannot hold"):
        tok.to_backbone_ids([0], 1000)


def test_fit_rejects_an_alphabet_larger_than_the_vocabulary():
    chunks = smooth_chunks(np.random.default_rng(4), 50) * 50  # not normalized
    with pytest.raises(ValueError, match="lower scale"):
        FASTTokenizer.fit(chunks, vocab_size=256)
