"""BEiT-3 tokenizer: the sentencepiece model ``beit3.spm`` read with XLM-R's id scheme.

The official code tokenizes with ``transformers.XLMRobertaTokenizer(beit3.spm)``, which
keeps fairseq's dictionary order: ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3,
and every sentencepiece id ``i > 0`` becomes ``i + 1`` (sentencepiece's own id 0 is its
unknown piece, mapped to 3; its ids 1 and 2 are control pieces that encoding never
emits). A sequence is ``[<s>] pieces[: max_length - 2] [</s>]`` padded with ``<pad>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from refseg.data.text import clean_expression
from refseg.errors import CheckpointError
from refseg.io.atomic import write_bytes, write_json

BOS, PAD, EOS, UNK = 0, 1, 2, 3
FAIRSEQ_OFFSET = 1  # fairseq id of a piece = sentencepiece id + 1
SPM_NAME = "beit3.spm"
CONFIG_NAME = "tokenizer.json"


class Beit3Tokenizer:
    """Sentencepiece tokenizer of BEiT-3 with fixed-length padding.

    Args:
        spm_path: a local ``beit3.spm``.
        max_length: sequence length L including ``<s>`` and ``</s>`` (50 for the
            generalized benchmarks, 20 for the classic ones).
        clean: apply `clean_expression` (lower-case, no punctuation) first, as DeRIS and
            InstanceVG do.
    """

    kind = "beit3"

    def __init__(self, spm_path: str | Path, *, max_length: int = 50, clean: bool = True):
        import sentencepiece as spm

        self.spm_path = Path(spm_path)
        if not self.spm_path.is_file():
            raise CheckpointError(f"{self.spm_path}: sentencepiece model not found")
        if max_length < 2:
            raise ValueError(f"max_length {max_length} leaves no room for <s> and </s>")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.spm_path))
        except (OSError, RuntimeError) as exc:
            raise CheckpointError(f"{self.spm_path}: not a sentencepiece model ({exc})") from None
        # The fairseq offset is only valid for XLM-R's piece layout: <unk> at 0 and two
        # control pieces (<s>, </s>) at 1 and 2.
        if not (self.sp.unk_id() == 0 and self.sp.IsControl(1) and self.sp.IsControl(2)):
            raise CheckpointError(
                f"{self.spm_path}: not an XLM-R style sentencepiece model "
                "(expects <unk> at id 0 and control pieces at 1 and 2)"
            )
        self.max_length = max_length
        self.clean = clean

    @property
    def vocab_size(self) -> int:
        """Ids this tokenizer can emit, plus XLM-R's ``<mask>`` (len(spm) + 1)."""
        return self.sp.GetPieceSize() + FAIRSEQ_OFFSET + 1

    def piece_ids(self, sentence: str) -> list[int]:
        """Fairseq ids of a sentence's pieces, without specials or truncation."""
        text = clean_expression(sentence) if self.clean else sentence
        ids = self.sp.EncodeAsIds(text)
        return [i + FAIRSEQ_OFFSET if i != 0 else UNK for i in ids]

    def encode(self, sentences: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize, truncate and pad a batch.

        Returns:
            input_ids: (B, L) int64, ``<s> pieces </s> <pad>...``.
            pad_mask: (B, L) bool, True at padding.
        """
        n = self.max_length
        input_ids = torch.full((len(sentences), n), PAD, dtype=torch.long)
        pad_mask = torch.ones((len(sentences), n), dtype=torch.bool)
        for row, sentence in enumerate(sentences):
            ids = [BOS] + self.piece_ids(sentence)[: n - 2] + [EOS]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            pad_mask[row, : len(ids)] = False
        return input_ids, pad_mask

    def save(self, directory: str | Path) -> Path:
        """Copy the .spm and write the settings into ``directory`` (travels with a model)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / SPM_NAME
        if self.spm_path.resolve() != target.resolve():
            write_bytes(target, self.spm_path.read_bytes())
        settings = {"kind": self.kind, "max_length": self.max_length, "clean": self.clean}
        write_json(directory / CONFIG_NAME, settings)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "Beit3Tokenizer":
        """Rebuild a tokenizer written by `save`."""
        config = Path(directory) / CONFIG_NAME
        try:
            settings = json.loads(config.read_text(encoding="utf-8"))
            kind, max_length, clean = settings["kind"], settings["max_length"], settings["clean"]
        except FileNotFoundError:
            raise CheckpointError(f"{config}: tokenizer settings not found") from None
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, not UTF-8, a key missing
            raise CheckpointError(f"{config}: malformed tokenizer settings ({exc!r})") from None
        if kind != cls.kind:
            raise CheckpointError(f"{config}: tokenizer kind {kind!r}, not 'beit3'")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise CheckpointError(f"{config}: max_length={max_length!r}: expected a positive "
                                  "integer")
        return cls(Path(directory) / SPM_NAME, max_length=max_length, clean=bool(clean))


class Beit3BatchTokenizer:
    """`Beit3Tokenizer` behind the engine's tokenizer contract (that of
    `refseg.modeling.text.TextTokenizer`): ``encode(sentences, ids) -> Tokenized`` with
    truncation flags and named errors for empty sentences, ``max_length``, ``vocab_size``,
    ``save`` / ``load``. Used by the methods whose text side is BEiT-3 (DeRIS).

    Args:
        tokenizer: the sentencepiece tokenizer.
    """

    kind = Beit3Tokenizer.kind

    def __init__(self, tokenizer: Beit3Tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def from_spm(cls, spm_path: str | Path, *, max_length: int = 50,
                 clean: bool = True) -> "Beit3BatchTokenizer":
        return cls(Beit3Tokenizer(spm_path, max_length=max_length, clean=clean))

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def encode(self, sentences: Sequence[str], ids: Sequence | None = None):
        """Tokenize a batch -> `refseg.modeling.text.Tokenized` (input_ids (B, L), pad_mask
        (B, L) True at padding, truncated (B,)).

        Raises:
            DataError: a sentence is empty or has no piece left after cleaning, named by
                ``ids`` (default: positions).
        """
        from refseg.errors import DataError
        from refseg.modeling.text.tokenizers import Tokenized, check_sentence

        names = list(range(len(sentences))) if ids is None else list(ids)
        if len(names) != len(sentences):
            raise ValueError(f"{len(names)} ids for {len(sentences)} sentences")
        room = self.max_length - 2
        truncated = []
        for name, sentence in zip(names, sentences):
            check_sentence(sentence, name)
            count = len(self.tokenizer.piece_ids(sentence))
            if count == 0:
                raise DataError(f"sentence {name}: no tokens left after normalisation")
            truncated.append(count > room)
        input_ids, pad_mask = self.tokenizer.encode(sentences)
        return Tokenized(input_ids, pad_mask, torch.tensor(truncated, dtype=torch.bool))

    def save(self, directory: str | Path) -> Path:
        return self.tokenizer.save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Beit3BatchTokenizer":
        return cls(Beit3Tokenizer.load(directory))
