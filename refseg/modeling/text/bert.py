"""BERT text encoder (transformers' ``BertModel``) with refseg's `TextFeatures` contract.

Two ways to build it: from a downloaded Hugging Face directory (``bert-base-uncased``:
``config.json``, weights, ``vocab.txt``), loaded through an explicit key map with a key
report; or a small random-init BERT for offline runs (`bert_tiny`), paired with a
`WordTokenizer` built from the training sentences.

Sentence feature: BERT's pooled [CLS] (``tanh(W h_[CLS] + b)``, the pooler trained by
next-sentence prediction): the sentence embedding t_s refseg's InstAlign no-target head
reads (ReLA drops the pooler and pools region features for its no-target head instead).

Legend: B sentences, L tokens, C hidden width.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from refseg.errors import CheckpointError, ConfigError
from refseg.modeling.contracts import TextFeatures
from refseg.modeling.text.tokenizers import TOKENIZER_FILE, TextTokenizer
from refseg.modeling.weights import KeyReport, hf_weights_file, load_mapped, read_hf_weights

_BERT_SKIP = {
    r"embeddings\.position_ids": "buffer, rebuilt",
    r"embeddings\.token_type_ids": "buffer, rebuilt",
}


class BertTextEncoder(nn.Module):
    """Token features, padding mask and pooled [CLS] sentence feature of a BERT.

    Attributes:
        width: C.
        max_positions: the longest sequence the position table covers.
        vocab_size: rows of the word embedding.
    """

    def __init__(self, *, bert: nn.Module):
        super().__init__()
        if getattr(bert, "pooler", None) is None:
            raise ConfigError("BertTextEncoder needs a BertModel with its pooler (sentence feature)")
        self.bert = bert
        self.width = bert.config.hidden_size
        self.max_positions = bert.config.max_position_embeddings
        self.vocab_size = bert.config.vocab_size

    def forward(self, input_ids: torch.Tensor, pad_mask: torch.Tensor) -> TextFeatures:
        """
        Args:
            input_ids: (B, L) long, [CLS] first.
            pad_mask: (B, L) bool, True at padding (never attended to).

        Returns:
            TextFeatures: tokens (B, L, C) with zeros at padding, pad_mask (B, L),
            sentence (B, C) pooled [CLS].
        """
        if pad_mask.dtype != torch.bool or pad_mask.shape != input_ids.shape:
            raise ValueError(
                f"pad_mask must be bool of shape {tuple(input_ids.shape)}, got "
                f"{pad_mask.dtype} {tuple(pad_mask.shape)}"
            )
        out = self.bert(
            input_ids=input_ids,
            attention_mask=(~pad_mask).long(),
            token_type_ids=torch.zeros_like(input_ids),
        )
        # Zeros at padding so a careless sum downstream cannot pick them up.
        tokens = out.last_hidden_state.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return TextFeatures(tokens=tokens, pad_mask=pad_mask, sentence=out.pooler_output)

    def check_tokenizer(self, tokenizer: TextTokenizer) -> None:
        """Raise ConfigError when ``tokenizer`` can emit ids or lengths this BERT lacks."""
        if tokenizer.vocab_size > self.vocab_size:
            raise ConfigError(
                f"tokenizer has {tokenizer.vocab_size} tokens, the text encoder {self.vocab_size}"
            )
        if tokenizer.max_length > self.max_positions:
            raise ConfigError(
                f"tokenizer max_length {tokenizer.max_length} exceeds the text encoder's "
                f"{self.max_positions} positions"
            )


def bert_tiny(*, vocab_size: int, max_positions: int = 64, hidden: int = 64, layers: int = 2,
              heads: int = 2) -> BertTextEncoder:
    """A small random-init BERT for offline runs (pair it with a `WordTokenizer`)."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max_positions)
    return BertTextEncoder(bert=BertModel(config, add_pooling_layer=True))


def bert_from_dir(directory: str | Path, *, prefix: str = "bert.",
                  strict: bool = True) -> tuple[BertTextEncoder, KeyReport]:
    """BERT from a Hugging Face directory, offline.

    Args:
        directory: holds ``config.json``, ``model.safetensors`` or ``pytorch_model.bin``,
            and ``vocab.txt`` or ``tokenizer.json`` (read by `TextTokenizer.from_bert_dir`).
        prefix: the weights' prefix: ``bert.`` for ``bert-base-uncased`` (saved with its
            pre-training heads ``cls.*``, which are left out); ``""`` for a bare ``BertModel``.

    Returns:
        (encoder, key report). Old ``LayerNorm.gamma/beta`` names read as ``weight/bias``.

    Raises:
        CheckpointError: incomplete directory, not a BERT config, or keys that do not match.
    """
    from transformers import BertConfig, BertModel

    directory = Path(directory)
    check_bert_dir(directory)
    config_path = directory / "config.json"
    try:
        declared = json.loads(config_path.read_text())
        config = BertConfig.from_dict(declared)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{config_path}: not a readable config ({exc})") from None
    if declared.get("model_type") != "bert":
        raise CheckpointError(f"{config_path}: model_type is {declared.get('model_type')!r}, not 'bert'")
    encoder = BertTextEncoder(bert=BertModel(config, add_pooling_layer=True))
    state, path = read_hf_weights(directory)
    report = load_mapped(encoder.bert, state, _bert_key, strict=strict, source=path,
                         prefix=prefix, skip=_BERT_SKIP)
    return encoder, report


def check_bert_dir(directory: Path) -> None:
    """Raise one CheckpointError listing everything a BERT directory lacks."""
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (a Hugging Face BERT directory is expected)")
    lacking = []
    if not (directory / "config.json").is_file():
        lacking.append("config.json")
    try:
        hf_weights_file(directory)
    except CheckpointError:
        lacking.append("model.safetensors or pytorch_model.bin")
    if not any((directory / name).is_file() for name in ("vocab.txt", TOKENIZER_FILE)):
        lacking.append(f"vocab.txt or {TOKENIZER_FILE}")
    if lacking:
        raise CheckpointError(f"{directory}: incomplete BERT directory, missing {'; '.join(lacking)}")


def _bert_key(key: str) -> str:
    """Module key of a BERT file key: identity, but TF-era LayerNorm gamma/beta names."""
    if key.endswith("LayerNorm.gamma"):
        return key[: -len("gamma")] + "weight"
    if key.endswith("LayerNorm.beta"):
        return key[: -len("beta")] + "bias"
    return key
