"""Checkpoints: a directory of safetensors weights, a JSON config and the training state.

Layout (never a pickle of code)::

    <ckpt>/model.safetensors   weights of the bare model (no DDP prefix)
    <ckpt>/config.json         {"format", "refseg_version", "method", "iteration",
                                "thresholds", "config": resolved RunConfig}
    <ckpt>/tokenizer/          the method's tokenizer (tokenizer.save)
    <ckpt>/train_state.pt      optimiser, scheduler, scaler, position, RNG states
                               (tensors and plain containers; torch.load weights_only)

A checkpoint is written to a temporary directory and renamed into place, and a run's
``checkpoints/last`` (and ``best``) are symlinks swapped atomically, so a kill at any
moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import refseg
from refseg import config as config_io
from refseg.errors import CheckpointError, ConfigError
from refseg.io.atomic import usual_modes
from refseg.modeling.base import Thresholds

FORMAT = "refseg-checkpoint-1"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer"
TRAIN_STATE = "train_state.pt"


# ---------------------------------------------------------------------------- writing
def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())


def _unshared_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict on CPU, contiguous, with tensors that share storage copied apart
    (safetensors refuses shared storage, e.g. tied embeddings)."""
    out, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        ptr = value.untyped_storage().data_ptr()
        if ptr in seen and value.numel() > 0:
            value = value.clone()
        seen.add(ptr)
        out[key] = value
    return out


def thresholds_of(model_config) -> Thresholds:
    """The decision thresholds a method config carries (field ``thresholds``)."""
    found = getattr(model_config, "thresholds", None)
    return Thresholds(**asdict(found)) if is_dataclass(found) else Thresholds()


def write_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    config: config_io.RunConfig,
    tokenizer,
    thresholds: Thresholds | None = None,
    iteration: int = 0,
    train_state: dict | None = None,
) -> Path:
    """Write a complete checkpoint directory at ``path`` atomically (replacing one there).

    Args:
        model: the bare model (unwrap DDP first).
        config: the resolved run config.
        tokenizer: the method's tokenizer; ``tokenizer.save(directory)`` is called.
        thresholds: saved decision thresholds (default: the model config's).
        iteration: optimiser steps done.
        train_state: what `--resume` needs (see `capture_rng` and the trainer).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        save_file(_unshared_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        meta = {
            "format": FORMAT,
            "refseg_version": refseg.__version__,
            "method": config.method,
            "iteration": iteration,
            "thresholds": asdict(thresholds or thresholds_of(config.model)),
            "config": config_io.to_dict(config),
        }
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
        tokenizer.save(str(tmp / TOKENIZER))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE)
        usual_modes(tmp)
        _fsync_tree(tmp)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(new: Path, path: Path) -> None:
    """Rename ``new`` to ``path``; an existing ``path`` is moved aside first, then removed."""
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old / path.name)
        os.replace(new, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, path)


def point_link(link: Path, target_name: str) -> None:
    """Make ``link`` a symlink to the sibling ``target_name``, atomically."""
    tmp = link.parent / f".{link.name}.{os.getpid()}.link"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target_name, tmp)
    os.replace(tmp, link)


class CheckpointDir:
    """A run's ``checkpoints/`` folder: ``iter_XXXXXXX`` directories, ``last`` and ``best``.

    Only the directories ``last`` and ``best`` point to are kept.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def name(self, iteration: int) -> str:
        return f"iter_{iteration:07d}"

    def save(self, iteration: int, *, best: bool = False, **kwargs) -> Path:
        """`write_checkpoint` into ``iter_<iteration>``, then move ``last`` (and ``best``)."""
        name = self.name(iteration)
        path = write_checkpoint(self.root / name, iteration=iteration, **kwargs)
        if best:  # before "last": a kill in between must not resume with a stale "best"
            point_link(self.root / "best", name)
        point_link(self.root / "last", name)
        self._prune()
        return path

    def last(self) -> Path | None:
        """``checkpoints/last``, or None before the first save. A ``last`` that points at
        nothing whole is an error: starting afresh would overwrite the run's log."""
        link = self.root / "last"
        if (link / CONFIG).exists():
            return link
        if link.is_symlink() or link.exists():
            target = os.readlink(link) if link.is_symlink() else link
            raise CheckpointError(
                f"{link}: points at {target}, which holds no {CONFIG}; move the run's "
                "checkpoints/last aside (or point it at an intact iter_* folder) to go on"
            )
        return None

    def _prune(self) -> None:
        """Remove every checkpoint but ``last`` and ``best``, and what a killed save left
        (``.iter_*.tmp`` and ``.iter_*.old`` directories, ``.*.link`` files)."""
        links = [self.root / name for name in ("last", "best")]
        keep = {os.readlink(link) for link in links if link.is_symlink()}
        for entry in self.root.iterdir():
            stale = entry.name.startswith(".") and entry.name.endswith((".tmp", ".old", ".link"))
            if stale and (entry.is_symlink() or not entry.is_dir()):
                entry.unlink(missing_ok=True)
            elif stale or (entry.name.startswith("iter_") and entry.name not in keep):
                shutil.rmtree(entry, ignore_errors=True)


# ---------------------------------------------------------------------------- reading
def resolve(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory (its ``best``, else ``last``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if path.is_file():
        raise CheckpointError(
            f"{path}: is a file; a refseg checkpoint is a directory with {WEIGHTS} and "
            f"{CONFIG} (foreign weights are read by the methods' converters)"
        )
    run_dir = (path / "checkpoints").is_dir()
    if (path / WEIGHTS).exists() or ((path / CONFIG).exists() and not run_dir
                                     and not _is_run_config(path / CONFIG)):
        return path
    for name in ("best", "last"):
        if (path / "checkpoints" / name / CONFIG).exists():
            return path / "checkpoints" / name
    if run_dir or (path / CONFIG).exists():  # a run that has not saved a checkpoint (yet)
        raise CheckpointError(f"{path}: a training run without a checkpoint (no intact "
                              "checkpoints/best or checkpoints/last)")
    raise CheckpointError(f"{path}: not a refseg checkpoint or run directory (no {WEIGHTS})")


def _is_run_config(file: Path) -> bool:
    """Whether ``file`` is a run's config.json (the resolved config, with ``method`` at the
    top), not a checkpoint's (``format``, ``method``, ``config``, ...)."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError, RecursionError):
        return False  # read_meta names the problem
    return isinstance(data, dict) and "format" not in data and "train" in data


def read_meta(path: str | Path) -> dict:
    """The checkpoint's config.json, checked for being a refseg checkpoint."""
    file = Path(path) / CONFIG
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; not a refseg checkpoint") from None
    except (ValueError, RecursionError) as exc:  # ValueError: also an int over the digit limit
        raise CheckpointError(f"{file}: truncated or not JSON ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read ({exc.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: not a refseg checkpoint config (format != {FORMAT})")
    for key in ("method", "config", "thresholds"):  # "iteration" is optional
        if key not in meta:
            raise CheckpointError(f"{file}: missing key {key!r}")
    kinds = {"method": str, "config": dict, "thresholds": dict, "iteration": int}
    for key, kind in kinds.items():
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise CheckpointError(f"{file}: {key!r} must be a {kind.__name__}, "
                                  f"got {meta[key]!r:.60}")
    if meta.get("iteration", 0) < 0:
        raise CheckpointError(f"{file}: 'iteration' must be >= 0, got {meta['iteration']}")
    return meta


@dataclass
class Loaded:
    """A checkpoint brought back to life.

    Attributes:
        path: the checkpoint directory.
        config: the resolved run config it was trained with.
        model: the method's model with the saved weights, in eval mode, on ``device``.
        tokenizer: the saved tokenizer.
        thresholds: the saved decision thresholds.
        iteration: optimiser steps done when it was saved.
    """

    path: Path
    config: config_io.RunConfig
    model: Any
    tokenizer: Any
    thresholds: Thresholds
    iteration: int


def read_config(path: str | Path, meta: dict | None = None) -> config_io.RunConfig:
    """The run config a checkpoint was trained with: of the checkpoint's method, its model
    settings valid (the method config's ``validate``), and with the network input side a
    model can be run at."""
    from refseg.methods.registry import get_method

    meta = meta or read_meta(path)
    file = Path(path) / CONFIG
    inner = meta["config"].get("method")
    if inner != meta["method"]:
        raise CheckpointError(f"{file}: the config's method {inner!r} is not the checkpoint's "
                              f"{meta['method']!r}")
    try:
        method = get_method(meta["method"])
        config = config_io.from_dict(meta["config"], method.config_class, where=str(file))
        if hasattr(config.model, "validate"):
            config.model.validate()
        config_io.check_at_least(config.data, "data", ("image_size",), 1)
        return config
    except ConfigError as exc:
        message = str(exc)  # from_dict's messages name the file already
        raise CheckpointError(message if message.startswith(str(file))
                              else f"{file}: {message}") from None


def load_weights(model: torch.nn.Module, path: str | Path, method: str) -> None:
    """Strictly load ``<path>/model.safetensors`` into ``model`` (every key accounted for,
    every value finite)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = Path(path) / WEIGHTS
    try:
        state = load_file(str(file), device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: truncated or corrupt ({exc})") from None
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{file}: weights are not of a {method} model with this config "
            f"({len(missing)} missing, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})"
        )
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{file}: {len(wrong)} tensors of another shape, e.g. {k}: "
            f"{tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
        )
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:  # training stops on a non-finite loss before saving, so the bytes were damaged
        raise CheckpointError(f"{file}: {len(broken)} tensors hold NaN or inf values, e.g. "
                              f"{broken[0]} (a damaged file)")
    model.load_state_dict(state, strict=True)


def load_tokenizer(path: str | Path, config: config_io.RunConfig):
    from refseg.methods.registry import get_method

    where = Path(path) / TOKENIZER
    if not where.is_dir():
        raise CheckpointError(f"{where}: missing tokenizer directory")
    try:
        return get_method(config.method).load_tokenizer(config.model, str(where))
    except (OSError, ValueError, KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{where}: cannot load the tokenizer ({exc})") from None


def load(path: str | Path, device: str | torch.device = "cpu") -> Loaded:
    """Load a checkpoint (or a run directory's best/last) for evaluation or prediction."""
    from refseg.methods.registry import get_method

    path = resolve(path)
    meta = read_meta(path)
    config = read_config(path, meta)
    tokenizer = load_tokenizer(path, config)
    model = get_method(config.method).build_model(config.model, tokenizer)
    load_weights(model, path, config.method)
    model.to(device).eval()
    try:
        saved = meta["thresholds"]
        missing = [f.name for f in fields(Thresholds) if f.name not in saved]
        if missing:  # a default in their place would decide differently from the run
            raise CheckpointError(f"{path / CONFIG}: thresholds: missing {', '.join(missing)}")
        thresholds = Thresholds(**saved).check(f"{path / CONFIG}: thresholds")
    except TypeError as exc:
        raise CheckpointError(f"{path / CONFIG}: thresholds: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return Loaded(path, config, model, tokenizer, thresholds, int(meta.get("iteration", 0)))


def load_train_state(path: str | Path) -> dict:
    """``train_state.pt`` (weights_only: tensors and plain containers, no code)."""
    file = Path(path) / TRAIN_STATE
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: missing; this checkpoint cannot resume training") from None
    except Exception as exc:  # truncated zip, bad pickle opcode, disallowed global
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{file}: truncated or corrupt ({reason})") from None


# ---------------------------------------------------------------------------- RNG state
def capture_rng() -> dict:
    """Python, NumPy and torch (CPU and CUDA) generator states, weights_only-loadable."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
