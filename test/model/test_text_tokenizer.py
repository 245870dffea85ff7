"""Text tokenizers: the download-free byte tokenizer and a locally stored SentencePiece model."""

import pytest
import sentencepiece

from ki_vla_ros.model.text_tokenizer import ByteTokenizer, SentencePieceTokenizer, load_text_tokenizer

SENTENCES = [
    "pick up the red cup and place it in the sink",
    "open the top drawer of the cabinet",
    "move the blue block onto the green plate",
    "close the microwave door",
    "wipe the table with the sponge",
    "put the spoon next to the bowl",
] * 5


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A tiny SentencePiece model trained at test time with PaliGemma's special ids (pad 0, eos 1, bos 2, unk 3)."""
    directory = tmp_path_factory.mktemp("checkpoint")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_prefix=str(directory / "tokenizer"),
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        minloglevel=2,
    )
    return directory


def test_byte_tokenizer_round_trips_any_text_with_bos():
    tok = ByteTokenizer()
    text = "Task: grasp the mug, State: 1 2 3;\nAction: ü✓"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and all(3 <= i < 259 for i in ids[1:])
    assert tok.decode(ids) == text
    assert tok.encode("a", add_bos=False, add_eos=True) == [ord("a") + 3, tok.eos_id]


def test_byte_tokenizer_decode_stops_at_eos_and_skips_pad_and_reserved_ids():
    tok = ByteTokenizer(vocab_size=1024)
    ids = tok.encode("hi") + [tok.pad_id, 900, tok.eos_id] + tok.encode("ignored", add_bos=False)
    assert tok.decode(ids) == "hi"


def test_byte_tokenizer_rejects_ids_outside_its_vocabulary_and_a_small_vocab():
    with pytest.raises(ValueError, match=r"token 1 is id 259; expected an id in \[0, 259\)"):
        ByteTokenizer().decode([1, 259])
    with pytest.raises(ValueError, match="token 0 is 3.5; expected an integer id"):
        ByteTokenizer().decode([3.5])
    with pytest.raises(ValueError, match="expected >= 259"):
        ByteTokenizer(vocab_size=100)


def test_sentencepiece_model_loads_from_a_checkpoint_directory(sp_dir):
    tok = SentencePieceTokenizer.from_dir(sp_dir)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    ids = tok.encode("open the drawer")
    assert ids[0] == tok.bos_id
    assert tok.decode(ids + [tok.eos_id] + ids) == "open the drawer"


def test_sentencepiece_with_a_larger_backbone_vocab_skips_the_reserved_tail(sp_dir):
    tok = SentencePieceTokenizer.from_dir(sp_dir, vocab_size=500)
    assert tok.vocab_size == 500
    assert tok.decode(tok.encode("close the door") + [400]) == "close the door"
    with pytest.raises(ValueError, match=r"id 500; expected an id in \[0, 500\)"):
        tok.decode([500])


def test_missing_sentencepiece_file_names_the_directory_and_expected_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*tokenizer.model"):
        SentencePieceTokenizer.from_dir(tmp_path)


def test_tokenizers_are_rebuilt_from_their_recorded_config(sp_dir, tmp_path):
    byte = ByteTokenizer(vocab_size=2048)
    rebuilt = load_text_tokenizer(byte.to_config())
    assert isinstance(rebuilt, ByteTokenizer) and rebuilt.vocab_size == 2048

    sp = SentencePieceTokenizer.from_dir(sp_dir, vocab_size=100)
    config = sp.save(tmp_path)  # a new checkpoint directory
    rebuilt = load_text_tokenizer(config, directory=tmp_path)
    assert rebuilt.vocab_size == 100
    assert rebuilt.encode("wipe the table") == sp.encode("wipe the table")
    assert isinstance(load_text_tokenizer("byte"), ByteTokenizer)
    assert load_text_tokenizer("byte", vocab_size=1024).vocab_size == 1024  # KIVLAConfig tiny preset
    from_config_name = load_text_tokenizer("sentencepiece", directory=sp_dir, vocab_size=300)
    assert from_config_name.vocab_size == 300 and from_config_name.filename == "tokenizer.model"
    assert isinstance(load_text_tokenizer(str(sp_dir)), SentencePieceTokenizer)


def test_bad_tokenizer_specs_raise_clearly(tmp_path):
    with pytest.raises(ValueError, match="'wordpiece'"):
        load_text_tokenizer({"type": "wordpiece"})
    with pytest.raises(ValueError, match="needs the checkpoint directory"):
        load_text_tokenizer({"type": "sentencepiece"})
    with pytest.raises(FileNotFoundError, match="tokenizer.model not found"):
        load_text_tokenizer({"type": "sentencepiece", "file": "tokenizer.model"}, directory=tmp_path)


def test_a_fitted_sentencepiece_model_has_whole_words_and_still_encodes_unseen_text(tmp_path):
    lines = [f"Task: move to the {c} block, State: 1 2 3;\nAction: " for c in ("red", "blue", "green")] * 20
    tok = SentencePieceTokenizer.fit(lines, max_pieces=400, vocab_size=1024)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2) and tok.vocab_size == 1024
    pieces = tok._sp.encode("move to the blue block", out_type=str)
    assert pieces == ["▁move", "▁to", "▁the", "▁blue", "▁block"]
    assert tok.decode(tok.encode("grasp the purple mug ü 42")) == "grasp the purple mug ü 42"  # byte fallback
    assert SentencePieceTokenizer.fit(lines, max_pieces=400)._sp.serialized_model_proto() == \
        tok._sp.serialized_model_proto()  # deterministic
    rebuilt = load_text_tokenizer(tok.save(tmp_path), directory=tmp_path)
    assert rebuilt.encode("move to the red block") == tok.encode("move to the red block")


def test_fitting_a_sentencepiece_model_rejects_no_text_and_too_few_pieces():
    with pytest.raises(ValueError, match="at least one non-empty line"):
        SentencePieceTokenizer.fit(["", "  "], max_pieces=400)
    with pytest.raises(ValueError, match="max_pieces is 100; expected >= 261"):
        SentencePieceTokenizer.fit(["move to the red block"], max_pieces=100)
