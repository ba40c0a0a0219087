"""Text encoders (each returns `TextFeatures`) and the tokenizers that travel with them."""

from refseg.modeling.text.bert import BertTextEncoder, bert_from_dir, bert_tiny
from refseg.modeling.text.tokenizers import (
    TextTokenizer,
    Tokenized,
    WordTokenizer,
    load_tokenizer,
)

__all__ = [
    "BertTextEncoder",
    "TextTokenizer",
    "Tokenized",
    "WordTokenizer",
    "bert_from_dir",
    "bert_tiny",
    "load_tokenizer",
]
