"""Tokenizers: sentences -> fixed-length token ids and a padding mask.

Every tokenizer wraps a ``tokenizers.Tokenizer`` (the Rust library behind Hugging Face's
fast tokenizers) and is saved next to a checkpoint as ``tokenizer.json`` plus
``refseg_tokenizer.json`` (its kind and max length), so a trained model always travels with
the exact vocabulary it was trained on.

Legend: B sentences, L = max_length tokens.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tokenizers
import torch
from tokenizers import models, normalizers, pre_tokenizers, processors

from refseg.errors import CheckpointError, ConfigError, DataError
from refseg.io.atomic import write_json, write_text

TOKENIZER_FILE = "tokenizer.json"
META_FILE = "refseg_tokenizer.json"

# BERT's special tokens; the word-level tokenizer uses them too, so one template serves both.
PAD, UNK, CLS, SEP = "[PAD]", "[UNK]", "[CLS]", "[SEP]"


@dataclass
class Tokenized:
    """Token ids of a batch of sentences.

    Attributes:
        input_ids: (B, L) long.
        pad_mask: (B, L) bool, True at padding.
        truncated: (B,) bool, True where the sentence was longer than L tokens and cut
            (callers warn: the tail of the expression is lost).
    """

    input_ids: torch.Tensor
    pad_mask: torch.Tensor
    truncated: torch.Tensor

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


class TextTokenizer:
    """[CLS] tokens [SEP] [PAD]..., truncated and padded to ``max_length``.

    Args:
        backend: a ``tokenizers.Tokenizer`` whose post-processor adds the special tokens.
        max_length: L, special tokens included (ReLA / InstAlign use 20 for BERT).
        pad_token: the backend's padding token.
    """

    kind = "tokenizers"

    def __init__(self, backend: tokenizers.Tokenizer, *, max_length: int = 20,
                 pad_token: str = PAD):
        if max_length < 3:
            raise ConfigError(f"tokenizer: max_length {max_length} leaves no room for words")
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ConfigError(f"tokenizer: padding token {pad_token!r} is not in the vocabulary")
        self.max_length = max_length
        self.pad_token = pad_token
        self.pad_id = pad_id
        self.vocab_size = backend.get_vocab_size()
        self._backend = tokenizers.Tokenizer.from_str(backend.to_str())
        self._backend.no_truncation()
        self._backend.no_padding()
        self._encoder = tokenizers.Tokenizer.from_str(self._backend.to_str())
        self._encoder.enable_truncation(max_length)
        self._encoder.enable_padding(length=max_length, pad_id=pad_id, pad_token=pad_token)

    def encode(self, sentences: Sequence[str], ids: Sequence | None = None) -> Tokenized:
        """Tokenize a batch.

        Args:
            sentences: B referring expressions.
            ids: B names for error messages (e.g. sentence ids); default: positions.

        Raises:
            DataError: a sentence is not a string, is empty or whitespace-only, or has no
                token left after normalisation.
        """
        names = _names(sentences, ids)
        for name, sentence in zip(names, sentences):
            check_sentence(sentence, name)
        encodings = self._encoder.encode_batch(list(sentences))
        for name, enc in zip(names, encodings):
            if not any(a and not s for a, s in zip(enc.attention_mask, enc.special_tokens_mask)):
                raise DataError(f"sentence {name}: no tokens left after normalisation")
        input_ids = torch.tensor([e.ids for e in encodings], dtype=torch.long)
        pad_mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.long) == 0
        truncated = torch.tensor([len(e.overflowing) > 0 for e in encodings], dtype=torch.bool)
        return Tokenized(
            input_ids.view(-1, self.max_length), pad_mask.view(-1, self.max_length), truncated
        )

    def tokens(self, sentence: str) -> list[str]:
        """The token strings of one sentence (unpadded), for inspection."""
        return self._backend.encode(sentence).tokens

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and ``refseg_tokenizer.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text(directory / TOKENIZER_FILE, self._backend.to_str(pretty=True))
        write_json(directory / META_FILE, {"kind": self.kind, "max_length": self.max_length,
                                           "pad_token": self.pad_token})

    @classmethod
    def from_bert_dir(cls, directory: str | Path, *, max_length: int = 20) -> TextTokenizer:
        """BERT's WordPiece tokenizer from a Hugging Face directory (``vocab.txt`` and/or
        ``tokenizer.json``, with ``tokenizer_config.json`` if present), offline.

        Raises:
            CheckpointError: the directory has no vocabulary or it cannot be read.
        """
        from transformers import BertTokenizerFast

        directory = Path(directory)
        if not any((directory / name).is_file() for name in ("vocab.txt", TOKENIZER_FILE)):
            raise CheckpointError(f"{directory}: no vocab.txt or {TOKENIZER_FILE} (BERT tokenizer)")
        try:
            hf = BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{directory}: cannot read the BERT tokenizer ({exc})") from None
        return cls(hf.backend_tokenizer, max_length=max_length, pad_token=hf.pad_token)


class WordTokenizer(TextTokenizer):
    """A word-level vocabulary built from the training sentences, for offline runs without
    downloaded weights: BERT-uncased normalisation (lower case, accents stripped), words and
    single punctuation marks as tokens, [UNK] for unseen words, BERT's [CLS] x [SEP] layout."""

    kind = "word"

    @classmethod
    def build(cls, sentences: Sequence[str], *, min_freq: int = 1, max_length: int = 20,
              ids: Sequence | None = None) -> WordTokenizer:
        """Vocabulary of the words seen at least ``min_freq`` times, most frequent first.

        Ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, then words by descending count (ties in
        alphabetical order, so the same sentences always give the same ids).

        Raises:
            DataError: a sentence is empty or whitespace-only (named by ``ids`` or position).
        """
        backend = _word_backend({})
        counts: Counter[str] = Counter()
        names = _names(sentences, ids)
        for name, sentence in zip(names, sentences):
            check_sentence(sentence, name)
            normalized = backend.normalizer.normalize_str(sentence)
            counts.update(word for word, _ in backend.pre_tokenizer.pre_tokenize_str(normalized))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        vocab = {token: i for i, token in enumerate([PAD, UNK, CLS, SEP, *words])}
        return cls(_word_backend(vocab), max_length=max_length)


def _word_backend(vocab: dict[str, int]) -> tokenizers.Tokenizer:
    backend = tokenizers.Tokenizer(models.WordLevel(vocab or {UNK: 0}, unk_token=UNK))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if vocab:
        backend.add_special_tokens([PAD, UNK, CLS, SEP])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{CLS} $A {SEP}", special_tokens=[(CLS, vocab[CLS]), (SEP, vocab[SEP])]
        )
    return backend


def _names(sentences: Sequence[str], ids: Sequence | None) -> list:
    if ids is None:
        return list(range(len(sentences)))
    if len(ids) != len(sentences):
        raise ValueError(f"{len(ids)} ids for {len(sentences)} sentences")
    return list(ids)


def check_sentence(sentence, name) -> None:
    """Raise DataError naming ``name`` unless ``sentence`` is Unicode text (no lone
    surrogate, which no tokenizer takes) with a visible character."""
    if not isinstance(sentence, str):
        raise DataError(f"sentence {name}: expected text, got {type(sentence).__name__}")
    if not sentence.strip():
        raise DataError(f"sentence {name}: empty or whitespace-only")
    try:
        sentence.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataError(
            f"sentence {name}: not valid text ({sentence[exc.start]!r} at character {exc.start}, "
            "a lone surrogate: bytes the locale could not decode, or a \\ud800-style JSON "
            "escape)") from None


_KINDS = {cls.kind: cls for cls in (TextTokenizer, WordTokenizer)}


def load_tokenizer(directory: str | Path) -> TextTokenizer:
    """A tokenizer written by `TextTokenizer.save`.

    Raises:
        CheckpointError: missing or unreadable files, or an unknown kind.
    """
    directory = Path(directory)
    meta_path, tok_path = directory / META_FILE, directory / TOKENIZER_FILE
    for path in (meta_path, tok_path):
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found (a saved refseg tokenizer needs it)")
    try:
        meta = json.loads(meta_path.read_text())
        kind, max_length, pad_token = meta["kind"], int(meta["max_length"]), meta["pad_token"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path}: malformed ({exc})") from None
    if kind not in _KINDS:
        raise CheckpointError(f"{meta_path}: unknown tokenizer kind {kind!r}")
    try:
        backend = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as exc:  # the Rust library raises plain Exception
        raise CheckpointError(f"{tok_path}: not a readable tokenizer ({exc})") from None
    return _KINDS[kind](backend, max_length=max_length, pad_token=pad_token)
