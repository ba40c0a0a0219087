"""Text encoders and tokenizers: contract, padding, truncation, offline loading, round trips."""

from __future__ import annotations

import pytest
import torch

from refseg.errors import CheckpointError, ConfigError, DataError
from refseg.modeling.contracts import TextFeatures
from refseg.modeling.text import (
    BertTextEncoder,
    TextTokenizer,
    WordTokenizer,
    bert_from_dir,
    bert_tiny,
    load_tokenizer,
)

SENTENCES = [
    "The man on the left.",
    "man in a red shirt",
    "Man's red-shirt!",
    "the dog",
]

# A WordPiece vocabulary for a tiny BERT directory.
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "man", "on", "left", "dog",
         "red", "shirt", "in", "a", ".", "##s", "'", "-", "!"]


# ---------------------------------------------------------------------------------------
# Word-level tokenizer


def test_word_tokenizer_vocabulary_and_layout():
    tok = WordTokenizer.build(SENTENCES, max_length=8)
    # specials, then by count (man 3, the 3, red 2, shirt 2), ties alphabetical
    assert tok.vocab_size == 4 + 14  # the man on left . in a red shirt ' s - ! dog
    assert tok.tokens("The MAN's dog") == ["[CLS]", "the", "man", "'", "s", "dog", "[SEP]"]
    assert tok.tokens("zebra!") == ["[CLS]", "[UNK]", "!", "[SEP]"]
    enc = tok.encode(["man the", "red"])
    ids = tok._backend.token_to_id
    assert enc.input_ids.tolist() == [
        [2, ids("man"), ids("the"), 3, 0, 0, 0, 0],
        [2, ids("red"), 3, 0, 0, 0, 0, 0],
    ]
    assert ids("man") == 4 and ids("the") == 5 and ids("red") == 6
    assert enc.pad_mask.tolist() == [[False] * 4 + [True] * 4, [False] * 3 + [True] * 5]
    assert enc.input_ids.dtype == torch.long and enc.pad_mask.dtype == torch.bool
    assert enc.num_truncated == 0


def test_word_tokenizer_min_freq():
    tok = WordTokenizer.build(SENTENCES, min_freq=2)
    assert tok.tokens("the dog left") == ["[CLS]", "the", "[UNK]", "[UNK]", "[SEP]"]


def test_over_long_sentences_are_truncated_and_flagged():
    tok = WordTokenizer.build(SENTENCES, max_length=5)
    enc = tok.encode(["the man on the left", "the dog"])
    assert enc.truncated.tolist() == [True, False]
    assert enc.num_truncated == 1
    first = enc.input_ids[0].tolist()
    assert first[0] == 2 and first[-1] == 3  # [SEP] kept after truncation
    assert len(first) == 5 and not enc.pad_mask[0].any()
    # exactly max_length tokens with specials: not truncated
    assert not tok.encode(["the man on"]).truncated.any()


def test_empty_sentence_is_a_data_error_naming_it():
    tok = WordTokenizer.build(SENTENCES)
    with pytest.raises(DataError, match=r"sentence 1: empty or whitespace-only"):
        tok.encode(["the dog", "  \t"])
    with pytest.raises(DataError, match=r"sentence 4711: empty or whitespace-only"):
        tok.encode(["the dog", ""], ids=[12, 4711])
    with pytest.raises(DataError, match=r"sentence 7: no tokens left after normalisation"):
        tok.encode(["\x00\x01"], ids=[7])
    with pytest.raises(DataError, match=r"sentence 2: expected text, got NoneType"):
        tok.encode(["a", "b", None])
    with pytest.raises(DataError, match=r"sentence ref-3: empty"):
        WordTokenizer.build(["a", " "], ids=["ref-2", "ref-3"])


def test_a_lone_surrogate_is_a_data_error_naming_the_sentence():
    # What Python makes of undecodable bytes in a command-line argument, or JSON's "\ud800".
    tok = WordTokenizer.build(SENTENCES)
    with pytest.raises(DataError, match=r"sentence 9: not valid text \('\\udcff' at character 4"):
        tok.encode(["the \udcff dog"], ids=[9])
    with pytest.raises(DataError, match=r"sentence 1: not valid text"):
        WordTokenizer.build(["a", "b \ud800"])


def test_word_tokenizer_save_load_round_trip(tmp_path):
    tok = WordTokenizer.build(SENTENCES, max_length=7)
    tok.save(tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    assert type(back) is WordTokenizer
    assert back.max_length == 7 and back.vocab_size == tok.vocab_size
    probe = ["The man's dog!", "zebra on the left of the red man in a shirt"]
    a, b = tok.encode(probe), back.encode(probe)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pad_mask, b.pad_mask)
    assert torch.equal(a.truncated, b.truncated)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(CheckpointError, match="refseg_tokenizer.json: file not found"):
        load_tokenizer(tmp_path)
    WordTokenizer.build(SENTENCES).save(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="tokenizer.json: not a readable tokenizer"):
        load_tokenizer(tmp_path)
    with pytest.raises(ConfigError, match="max_length 2"):
        WordTokenizer.build(SENTENCES, max_length=2)


# ---------------------------------------------------------------------------------------
# BERT encoder (tiny, random init)


def tiny_pair():
    torch.manual_seed(0)
    tok = WordTokenizer.build(SENTENCES, max_length=10)
    return bert_tiny(vocab_size=tok.vocab_size, max_positions=16).eval(), tok


def test_text_features_contract():
    enc, tok = tiny_pair()
    batch = tok.encode(["the man on the left", "dog"])
    out = enc(batch.input_ids, batch.pad_mask)
    assert isinstance(out, TextFeatures)
    assert out.tokens.shape == (2, 10, 64) and out.sentence.shape == (2, 64)
    assert torch.equal(out.pad_mask, batch.pad_mask)
    assert (out.tokens[batch.pad_mask] == 0).all()
    assert enc.width == 64


def test_padding_is_honoured():
    enc, tok = tiny_pair()
    batch = tok.encode(["the man on the left", "red dog"])
    base = enc(batch.input_ids, batch.pad_mask)
    changed_ids = batch.input_ids.clone()
    changed_ids[1, batch.pad_mask[1]] = tok._backend.token_to_id("shirt")
    changed = enc(changed_ids, batch.pad_mask)
    real = ~batch.pad_mask
    torch.testing.assert_close(changed.tokens[real], base.tokens[real], atol=1e-6, rtol=0)
    torch.testing.assert_close(changed.sentence, base.sentence, atol=1e-6, rtol=0)
    # a real token changed does change the sentence feature (the check can fail)
    real_changed = batch.input_ids.clone()
    real_changed[1, 1] = tok._backend.token_to_id("shirt")
    assert not torch.allclose(enc(real_changed, batch.pad_mask).sentence[1], base.sentence[1])


def test_pad_mask_must_be_bool_and_match():
    enc, tok = tiny_pair()
    batch = tok.encode(["the dog"])
    with pytest.raises(ValueError, match="pad_mask must be bool"):
        enc(batch.input_ids, batch.pad_mask.long())


@pytest.mark.parametrize("tokens, pad_mask, sentence", [
    ((2, 5), (2, 5), (2, 8)),  # tokens without channels
    ((2, 5, 8), (2, 4), (2, 8)),  # a mask of another length
    ((2, 5, 8), (2, 5), (3, 8)),  # a sentence per another batch
    ((2, 5, 8), (2, 5), (2, 1, 8)),  # a sentence that is no (B, C)
    ((2, 5, 8), (2, 5), (2, 6)),  # a sentence of another width
])
def test_text_features_contract_is_checked(tokens, pad_mask, sentence):
    with pytest.raises(ValueError, match="TextFeatures: expected tokens"):
        TextFeatures(torch.zeros(tokens), torch.zeros(pad_mask, dtype=torch.bool),
                     torch.zeros(sentence))


def test_text_features_pad_mask_must_be_bool():
    with pytest.raises(ValueError, match="a torch.int64 pad_mask"):
        TextFeatures(torch.zeros(2, 5, 8), torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 8))


def test_every_bert_parameter_gets_a_gradient():
    enc, tok = tiny_pair()
    enc.train()
    batch = tok.encode(SENTENCES)
    out = enc(batch.input_ids, batch.pad_mask)
    (out.tokens.square().mean() + out.sentence.square().mean()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_check_tokenizer():
    tok = WordTokenizer.build(SENTENCES, max_length=20)
    with pytest.raises(ConfigError, match="tokenizer has 18 tokens, the text encoder 10"):
        bert_tiny(vocab_size=10).check_tokenizer(tok)
    with pytest.raises(ConfigError, match="max_length 20 exceeds the text encoder's 16"):
        bert_tiny(vocab_size=18, max_positions=16).check_tokenizer(tok)
    bert_tiny(vocab_size=18, max_positions=20).check_tokenizer(tok)


# ---------------------------------------------------------------------------------------
# A Hugging Face BERT directory written here, loaded offline.


def hf_bert_dir(path, *, with_heads: bool = True):
    from transformers import BertConfig, BertForPreTraining, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=24)
    model = (BertForPreTraining if with_heads else BertModel)(config).eval()
    with torch.no_grad():  # off the initialisation, so a misplaced LayerNorm would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(path)
    (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return model


def test_hf_bert_dir_loads_offline_with_parity(tmp_path):
    hf = hf_bert_dir(tmp_path)
    enc, report = bert_from_dir(tmp_path)
    assert report.ok and not report.missing
    assert report.outside and all(k.startswith("cls.") for k in report.outside)
    tok = TextTokenizer.from_bert_dir(tmp_path, max_length=8)
    batch = tok.encode(["The men on the left!", "red dog"])
    assert tok.tokens("the mans") == ["[CLS]", "the", "man", "##s", "[SEP]"]
    enc.eval()
    out = enc(batch.input_ids, batch.pad_mask)
    with torch.no_grad():
        ref = hf.bert(input_ids=batch.input_ids, attention_mask=(~batch.pad_mask).long())
    real = ~batch.pad_mask
    torch.testing.assert_close(out.tokens[real], ref.last_hidden_state[real], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.sentence, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_hf_bert_bare_export_and_legacy_names(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_bert_dir(tmp_path, with_heads=False)
    with pytest.raises(CheckpointError, match="missing"):
        bert_from_dir(tmp_path)  # a bare BertModel export has no "bert." prefix
    enc, report = bert_from_dir(tmp_path, prefix="")
    assert report.ok
    state = load_file(str(tmp_path / "model.safetensors"))
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    assert any(k.endswith("gamma") for k in legacy)
    save_file(legacy, str(tmp_path / "model.safetensors"))
    again, report = bert_from_dir(tmp_path, prefix="")
    assert report.ok
    torch.testing.assert_close(again.bert.embeddings.LayerNorm.weight,
                               enc.bert.embeddings.LayerNorm.weight)


def test_hf_bert_wrong_key_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    hf_bert_dir(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["bert.pooler.dense.kernel"] = state.pop("bert.pooler.dense.weight")
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        bert_from_dir(tmp_path)
    first = str(err.value).splitlines()[0]
    assert "model.safetensors: keys do not match the model" in first
    assert "1 missing, e.g. pooler.dense.weight" in first
    assert "1 unexpected, e.g. bert.pooler.dense.kernel" in first


def test_incomplete_bert_dir(tmp_path):
    hf_bert_dir(tmp_path)
    (tmp_path / "vocab.txt").unlink()
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"incomplete BERT directory, missing "
                       r"model.safetensors or pytorch_model.bin; vocab.txt or tokenizer.json"):
        bert_from_dir(tmp_path)
    with pytest.raises(CheckpointError, match="no vocab.txt or tokenizer.json"):
        TextTokenizer.from_bert_dir(tmp_path)
    with pytest.raises(CheckpointError, match="not a directory"):
        bert_from_dir(tmp_path / "absent")


def test_bert_tokenizer_truncation_and_round_trip(tmp_path):
    hf_bert_dir(tmp_path / "bert")
    tok = TextTokenizer.from_bert_dir(tmp_path / "bert", max_length=5)
    enc = tok.encode(["the man on the left", "dog"])
    assert enc.truncated.tolist() == [True, False]
    assert enc.input_ids[0, -1].item() == VOCAB.index("[SEP]")
    assert enc.input_ids[1].tolist() == [2, VOCAB.index("dog"), 3, 0, 0]
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert type(back) is TextTokenizer and back.max_length == 5
    again = back.encode(["the man on the left", "dog"])
    assert torch.equal(again.input_ids, enc.input_ids) and torch.equal(again.pad_mask, enc.pad_mask)
