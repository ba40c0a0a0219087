"""Restricted unpickling of foreign pickles (refs files, model-zoo ``.pkl`` weights).

Plain ``pickle.load`` runs any code a file names; these loaders admit only plain data.
They run pickle's pure-Python unpickler: the C one sizes its memo table by the largest
index a file names, so a corrupt or hostile file of a few bytes can make it allocate and
clear tens of GB; the Python one keeps the memo in a dict (about 2.5x slower to load).
One of its opcodes, BYTEARRAY8, still allocates and zero-fills the length it declares
before reading a byte: a bytearray longer than the whole file is refused first.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

from refseg.errors import DataError

# What plain-data pickles (refs(unc).p, grefs(unc).p, refs(final).p) may reference.
_PLAIN = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("collections", "OrderedDict"),
    ("__builtin__", "set"),  # Python 2 pickles
    ("copy_reg", "_reconstructor"),
}

# Additionally admitted for numpy arrays inside a pickle (Mask2Former model-zoo .pkl).
_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # protocol-5 pickles
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # protocol-2 pickles store array bytes as latin-1 text
}


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python implementation
    """``encoding`` decodes Python 2 ``str`` objects: UTF-8 for text (a refs file's
    sentences), latin-1 where numpy stores array bytes as such strings."""

    def __init__(self, data: bytes, allowed: set[tuple[str, str]], source: str, encoding: str):
        super().__init__(io.BytesIO(data), encoding=encoding)
        self._allowed = allowed
        self._source = source
        self._size = len(data)

    def load_bytearray8(self):
        """BYTEARRAY8 (protocol 5, numpy's in-band array data), its length checked against
        the file's before the bytearray is allocated."""
        (length,) = struct.unpack("<Q", self.read(8))
        if length > self._size:
            raise pickle.UnpicklingError(
                f"a bytearray of {length} bytes in a file of {self._size} bytes"
            )
        data = bytearray(length)
        self.readinto(data)
        self.append(data)

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8

    def find_class(self, module: str, name: str):
        if (module, name) not in self._allowed:
            raise DataError(
                f"{self._source}: pickle references {module}.{name}; only plain data is "
                "loaded (refusing to run code from a pickle)"
            )
        if module == "copy_reg":
            module = "copyreg"
        elif module == "__builtin__":
            module = "builtins"
        return super().find_class(module, name)


def load_pickle(path: str | Path, *, allow_numpy: bool = False):
    """Load a pickle that may hold only containers, scalars and (optionally) numpy arrays.

    Args:
        path: the pickle file.
        allow_numpy: also admit numpy arrays and dtypes (model-zoo weights).

    Raises:
        DataError: the file is missing, truncated, or references anything else.
    """
    path = Path(path)
    allowed = _PLAIN | _NUMPY if allow_numpy else _PLAIN
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    encoding = "latin1" if allow_numpy else "utf-8"
    try:
        return _RestrictedUnpickler(data, allowed, str(path), encoding).load()
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{path}: not a readable pickle (truncated or empty)") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: a Python 2 string in the pickle is not UTF-8 ({exc})") from None
    except (pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, OverflowError, MemoryError, RecursionError,
            struct.error) as exc:
        raise DataError(f"{path}: not a readable pickle ({exc})") from None
