"""Shared toolkit of every weight loader: file readers, explicit key maps, strict loading.

A loader reads a foreign file with one of the readers below, names the layout's keys with an
explicit key map, and calls `load_mapped`, which accounts for every key: loaded, missing,
unexpected, shape-mismatched, skipped on purpose, initialised fresh on purpose, adapted
(e.g. a resized table) or outside the prefix being loaded. The user names the layout; no
loader guesses a checkpoint's origin from its keys.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from refseg.errors import CheckpointError, DataError
from refseg.io.safe_pickle import load_pickle

# A key map: a function from a source key (prefix removed) to a module key, None when the
# key has no place in the module; or rules `(regex, replacement)` tried in order, the first
# whose regex matches the whole key wins (`\1` etc. refer to its groups).
KeyMap = Callable[[str], "str | None"] | Sequence[tuple[str, "str | None"]]

# Adapts a value whose shape differs from the module's: (module key, value, wanted shape)
# -> the adapted value, or None when it cannot be adapted (then it is a mismatch).
Adapter = Callable[[str, torch.Tensor, torch.Size], "torch.Tensor | None"]

_SHOWN = 12  # keys listed per section of a report; the rest are counted


@dataclass
class KeyReport:
    """The account of every key of one load.

    Attributes:
        missing: module keys the file does not provide.
        unexpected: source keys (as in the file) that map to nothing in the module.
        mismatched_shapes: (source key, module key, source shape, module shape).
        source: the file (or directory) read.
        loaded: module keys that received a value.
        skipped: reason -> source keys left unused on purpose (e.g. a classifier head).
        fresh: reason -> module keys left at their initialisation on purpose.
        adapted: one line per value reshaped to fit (e.g. an interpolated table).
        outside: source keys outside the prefix being loaded (other components' weights).
        prefix: the prefix loaded.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched_shapes: list[tuple[str, str, tuple, tuple]] = field(default_factory=list)
    source: str = "<memory>"
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)
    fresh: dict[str, list[str]] = field(default_factory=dict)
    adapted: list[str] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)
    prefix: str = ""

    @property
    def ok(self) -> bool:
        """True when every module key got a value (or is fresh on purpose) and every source
        key was used (or skipped on purpose)."""
        return not (self.missing or self.unexpected or self.mismatched_shapes)

    def summary(self) -> str:
        """One line: the file and the counts of each kind of problem."""
        parts = [f"{len(self.loaded)} loaded"]
        for name, count in (
            ("missing", len(self.missing)),
            ("unexpected", len(self.unexpected)),
            ("shape mismatches", len(self.mismatched_shapes)),
        ):
            if count:
                parts.append(f"{count} {name}")
        return f"{self.source}: " + ", ".join(parts)

    def error_message(self) -> str:
        """A first line naming the file and the first offending keys, then the report."""
        firsts = []
        if self.missing:
            firsts.append(f"{len(self.missing)} missing, e.g. {self.missing[0]}")
        if self.unexpected:
            firsts.append(f"{len(self.unexpected)} unexpected, e.g. {self.unexpected[0]}")
        if self.mismatched_shapes:
            src, dst, a, b = self.mismatched_shapes[0]
            firsts.append(
                f"{len(self.mismatched_shapes)} of the wrong shape, e.g. {src} {tuple(a)} "
                f"for {dst} {tuple(b)}"
            )
        return f"{self.source}: keys do not match the model ({'; '.join(firsts)})\n{self}"

    def __str__(self) -> str:
        lines = [self.summary()]
        _section(lines, "missing (in the model, not in the file)", self.missing)
        _section(lines, "unexpected (in the file, used by nothing)", self.unexpected)
        _section(
            lines,
            "shape mismatch (file -> model)",
            [f"{s} {tuple(a)} -> {d} {tuple(b)}" for s, d, a, b in self.mismatched_shapes],
        )
        # Keys left out on purpose come in families (one per block): a few examples each.
        for reason, keys in self.skipped.items():
            _section(lines, f"skipped on purpose: {reason}", keys, shown=3)
        for reason, keys in self.fresh.items():
            _section(lines, f"initialised fresh on purpose: {reason}", keys, shown=3)
        _section(lines, "adapted", self.adapted)
        if self.outside:
            heads = sorted({k.split(".")[0] + "." for k in self.outside})
            lines.append(
                f"  outside prefix {self.prefix!r}: {len(self.outside)} keys "
                f"({', '.join(heads[:_SHOWN])}), not loaded here"
            )
        return "\n".join(lines)


def _section(lines: list[str], title: str, items: Sequence[str], shown: int = _SHOWN) -> None:
    if not items:
        return
    lines.append(f"  {title}: {len(items)}")
    lines.extend(f"    {item}" for item in items[:shown])
    if len(items) > shown:
        lines.append(f"    ... and {len(items) - shown} more")


def apply_key_map(key_map: KeyMap, key: str) -> str | None:
    """The module key of source key ``key`` under ``key_map`` (None: no place in the module)."""
    if callable(key_map):
        return key_map(key)
    for pattern, replacement in key_map:
        match = re.fullmatch(pattern, key)
        if match:
            return None if replacement is None else match.expand(replacement)
    return None


def _reason(patterns: Mapping[str, str] | None, key: str) -> str | None:
    for pattern, reason in (patterns or {}).items():
        if re.fullmatch(pattern, key):
            return reason
    return None


def load_mapped(
    module: nn.Module,
    source_state: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    *,
    strict: bool = True,
    source: str | Path = "<memory>",
    prefix: str = "",
    skip: Mapping[str, str] | None = None,
    fresh: Mapping[str, str] | None = None,
    adapt: Adapter | None = None,
) -> KeyReport:
    """Load ``source_state`` into ``module`` through an explicit key map and account for
    every key.

    Args:
        module: receives the values (its ``state_dict`` keys are the targets).
        source_state: tensors as read from the file.
        key_map: source key (``prefix`` removed) -> module key; see `KeyMap`.
        strict: raise unless every module key got a value and every source key was used,
            except the keys ``skip`` and ``fresh`` name.
        source: the file, named in the report and in errors.
        prefix: only source keys starting with it are loaded (it is removed before the key
            map); the others are listed in ``report.outside`` for their own loaders.
        skip: regex (on the source key, prefix removed) -> why that key is left unused.
        fresh: regex (on the module key) -> why that key is absent from this layout and
            stays at its initialisation.
        adapt: called when a value's shape differs from the module's (see `Adapter`).

    Returns:
        The `KeyReport`; with ``strict=False`` whatever matched is loaded and the rest is
        reported.

    Raises:
        CheckpointError: (strict) any key missing, unexpected or of the wrong shape, with
            the report; (always) two source keys mapping to one module key.
    """
    target = module.state_dict()
    report = KeyReport(source=str(source), prefix=prefix)
    mapped = _map_source_keys(source_state, target, key_map, report, skip=skip, adapt=adapt)
    _account_module_keys(target, mapped, report, fresh=fresh)
    if strict and not report.ok:
        raise CheckpointError(report.error_message())
    with torch.no_grad():
        module.load_state_dict(mapped, strict=False)
    return report


def _map_source_keys(
    source_state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    report: KeyReport,
    *,
    skip: Mapping[str, str] | None,
    adapt: Adapter | None,
) -> dict[str, torch.Tensor]:
    """`load_mapped`'s first step: every source key is loaded, outside the prefix, skipped,
    unexpected or of the wrong shape (all but the first recorded in ``report``).

    Returns:
        module key -> value (adapted where ``adapt`` fits it) of the loaded keys.
    """
    source, prefix = report.source, report.prefix
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for src_key, value in source_state.items():
        if not src_key.startswith(prefix):
            report.outside.append(src_key)
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: {src_key} is a {type(value).__name__}, not a tensor")
        key = src_key[len(prefix):]
        reason = _reason(skip, key)
        if reason is not None:
            report.skipped.setdefault(reason, []).append(src_key)
            continue
        dst = apply_key_map(key_map, key)
        if dst is None or dst not in target:
            report.unexpected.append(src_key)
            continue
        if dst in mapped:
            raise CheckpointError(
                f"{source}: {origin[dst]} and {src_key} both map to {dst} (key map error)"
            )
        wanted = target[dst].shape
        if value.shape != wanted:
            resized = adapt(dst, value, wanted) if adapt is not None else None
            if resized is None or resized.shape != wanted:
                report.mismatched_shapes.append((src_key, dst, tuple(value.shape), tuple(wanted)))
                continue
            report.adapted.append(f"{src_key}: {tuple(value.shape)} -> {tuple(wanted)}")
            value = resized
        mapped[dst] = value
        origin[dst] = src_key
    return mapped


def _account_module_keys(target: Mapping[str, torch.Tensor], mapped: Mapping[str, torch.Tensor],
                         report: KeyReport, *, fresh: Mapping[str, str] | None) -> None:
    """`load_mapped`'s second step: every module key the source did not fill (nor offered
    in the wrong shape) is fresh on purpose or missing; ``report.loaded`` lists the rest."""
    mismatched = {dst for _, dst, _, _ in report.mismatched_shapes}
    for dst in target:
        if dst in mapped or dst in mismatched:
            continue
        reason = _reason(fresh, dst)
        if reason is not None:
            report.fresh.setdefault(reason, []).append(dst)
        else:
            report.missing.append(dst)
    report.loaded = list(mapped)


# ---------------------------------------------------------------------------------------
# Readers. Each turns every failure into a CheckpointError naming the file.


def _require_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")


def read_torch(path: str | Path):
    """Read a torch file with ``weights_only=True`` (tensors and plain containers only).

    Raises:
        CheckpointError: missing, truncated or corrupt file, or one that holds other Python
            objects (which ``weights_only`` refuses to construct).
    """
    path = Path(path)
    _require_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{path}: holds a {found.group(1)} object; refseg reads torch files with "
                "weights_only=True (tensors and plain containers only)"
            ) from None
        raise CheckpointError(f"{path}: not a readable torch file (corrupt)") from None
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: truncated or corrupt torch file ({first})") from None


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file.

    Raises:
        CheckpointError: missing, truncated or corrupt file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    _require_file(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own SafetensorError and OSError
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def read_pkl_weights(path: str | Path, *, key: str = "model") -> dict[str, torch.Tensor]:
    """Read a detectron2 / Mask2Former model-zoo ``.pkl``: numpy arrays under ``key``.

    The pickle is read by the restricted unpickler (plain data and numpy arrays only).

    Returns:
        The arrays of ``obj[key]`` as tensors.

    Raises:
        CheckpointError: unreadable pickle, no ``key`` dict, or a value that is not an array.
    """
    path = Path(path)
    try:
        obj = load_pickle(path, allow_numpy=True)
    except DataError as exc:
        raise CheckpointError(str(exc)) from None
    state = state_dict_under(obj, key, path)
    out = {}
    for name, value in state.items():
        if isinstance(value, np.ndarray):
            out[name] = torch.from_numpy(np.array(value, copy=True))
        elif isinstance(value, torch.Tensor):
            out[name] = value
        else:
            raise CheckpointError(f"{path}: {key}[{name!r}] is a {type(value).__name__}, not an array")
    return out


def state_dict_under(obj, key: str | None, path: str | Path) -> dict:
    """``obj[key]`` (or ``obj`` itself when ``key`` is None), checked to be a dict with string keys.

    Raises:
        CheckpointError: naming the file when the layout does not hold.
    """
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            found = sorted(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{path}: no {key!r} entry (found {found})")
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: {key or 'top level'} is not a dict of named weights")
    return dict(obj)


# Weight files of a Hugging Face directory, in the order they are looked for.
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
               "pytorch_model.bin.index.json")


def hf_weights_file(directory: str | Path) -> Path:
    """The weights file of a Hugging Face model directory.

    Raises:
        CheckpointError: the directory has none of the known weight files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (a Hugging Face model directory is expected)")
    for name in _HF_WEIGHTS:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weights file (looked for {', '.join(_HF_WEIGHTS)})")


def read_hf_weights(directory: str | Path) -> tuple[dict[str, torch.Tensor], Path]:
    """All tensors of a Hugging Face model directory (single file or sharded).

    Returns:
        (tensors by key, the file read — the index file for sharded weights).
    """
    path = hf_weights_file(directory)
    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: not a weight index ({exc})") from None
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_read_hf_file(path.parent / shard))
        return state, path
    return _read_hf_file(path), path


def _read_hf_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    return state_dict_under(read_torch(path), None, path)
