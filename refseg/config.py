"""Run configuration: typed dataclasses, `key=value` overrides, JSON round trip.

A run is ``RunConfig(method, model, data, train)``; ``model`` is the method's own config
dataclass (defaults = the paper's main setting). Named variants ("instalign-tiny", ...)
are functions in the methods' modules, registered in `refseg.methods.registry`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refseg.errors import ConfigError


@dataclass
class DataConfig:
    """Where the benchmark is and how samples become network inputs."""

    format: str = "grefcoco"
    root: str = ""  # folder with the refs file and instances.json
    images: str = ""  # image folder
    split_by: str = ""  # "" = the format's default
    train_split: str = "train"
    val_split: str = "val"
    image_size: int = 480  # square network input side S
    max_text_length: int = 20
    nsc_prob: float = 0.0  # non-referent sample conversion (DeRIS NSC), 0 = off
    num_workers: int = 2


@dataclass
class TrainConfig:
    """Optimisation, schedule, logging and checkpointing."""

    optimizer: str = "adamw"  # adamw | adam
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 32
    epochs: int = 20
    lr_schedule: str = "linear"  # linear decay to 0 | step | constant
    lr_steps: tuple[int, ...] = ()  # epochs at which "step" multiplies by lr_gamma
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    grad_clip: float = 0.0  # max grad norm, 0 = off
    amp: str = "none"  # none | bf16 | fp16 (GPU only)
    max_minutes: float = 0.0  # time budget, 0 = none
    max_iters: int = 0  # 0 = epochs decide
    eval_every: int = 0  # iterations between validations, 0 = end of each epoch
    eval_max_samples: int = 0  # 0 = whole val split
    checkpoint_every: int = 500  # iterations
    log_every: int = 20
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda


@dataclass
class RunConfig:
    method: str
    model: Any
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def check_choices(config, section: str, choices: Mapping[str, Sequence[str]]) -> None:
    """Raise ConfigError on the first field of ``config`` whose value is not one of its
    choices.

    Args:
        config: a config dataclass.
        section: its name in overrides (``model``, ``train``), the error's ``section.key``.
        choices: field name -> the values it may take.
    """
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value not in allowed:
            raise ConfigError(f"{section}.{name}={value!r}: expected one of {', '.join(allowed)}")


def check_at_least(config, section: str, names: Sequence[str], minimum: int) -> None:
    """Raise ConfigError on the first of the fields ``names`` of ``config`` below
    ``minimum`` (``section`` as in `check_choices`)."""
    for name in names:
        value = getattr(config, name)
        if value < minimum:
            raise ConfigError(f"{section}.{name}={value}: must be >= {minimum}")


def check_divides(config, section: str, pairs: Sequence[tuple[str, str]]) -> None:
    """Raise ConfigError on the first (width, heads) pair of field names of ``config``
    whose heads do not divide the width (attention splits the width over its heads);
    ``section`` as in `check_choices`."""
    for width, heads in pairs:
        if getattr(config, width) % getattr(config, heads):
            raise ConfigError(f"{section}.{heads}={getattr(config, heads)}: must divide "
                              f"{section}.{width}={getattr(config, width)}")


def _coerce(value: str, annotation, key: str):
    """Parse ``value`` (the text after '=') into ``annotation``'s type or raise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value.lower() in ("none", "null"):
            return None
        return _coerce(value, args[0], key)
    if origin is tuple:
        (item,) = typing.get_args(annotation)[:1]
        parts = [p for p in value.strip("()[] ").split(",") if p.strip()]
        return tuple(_coerce(p.strip(), item, key) for p in parts)
    try:
        if annotation is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float, str):
            return annotation(value)
    except ValueError:
        raise ConfigError(f"{key}={value}: expected {annotation.__name__}") from None
    raise ConfigError(f"{key}: cannot override a field of type {annotation}")


def _field_types(obj) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` overrides in place; unknown keys are an error."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides are key=value (e.g. train.lr=1e-4)")
        dotted, value = item.split("=", 1)
        *path, name = dotted.strip().split(".")
        target = config
        for part in path:
            if not dataclasses.is_dataclass(target) or part not in _field_types(target):
                raise ConfigError(f"{dotted}: unknown config key {part!r}")
            target = getattr(target, part)
        fields = _field_types(target) if dataclasses.is_dataclass(target) else {}
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{dotted}: unknown config key {name!r} (known: {known})")
        if dataclasses.is_dataclass(getattr(target, name)):
            raise ConfigError(f"{dotted}: is a section; set one of its keys")
        setattr(target, name, _coerce(value, fields[name], dotted))
    return config


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def _from_dict(cls, data: dict, where: str):
    """``cls`` (a config dataclass, nested ones included) from a saved object of keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown config keys {sorted(unknown)}")
    missing = [name for name in fields if name not in data]
    if missing:  # a saved config holds every key; a default here could be another config's
        raise ConfigError(f"{where}: missing config keys {missing}")
    kwargs = {}
    for name, value in data.items():
        annotation = fields[name]
        if dataclasses.is_dataclass(annotation):
            value = _from_dict(annotation, value, f"{where}.{name}")
        else:
            value = _checked(value, annotation, f"{where}.{name}")
        kwargs[name] = value
    return cls(**kwargs)


def _checked(value, annotation, key: str):
    """A JSON value checked against a field's type, as overrides are (``2.0`` is no int, ``"3"``
    no number); ints are accepted for floats and lists for tuples."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _checked(value, args[0], key)
    if origin is tuple and isinstance(value, (list, tuple)):
        (item,) = typing.get_args(annotation)[:1]
        return tuple(_checked(v, item, key) for v in value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(annotation)
    if origin is tuple or (ok is not None and not ok(value)):
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigError(f"{key}: expected {name}, got {value!r}")
    return float(value) if annotation is float else value


def from_dict(data: dict, model_class: type, where: str = "config") -> RunConfig:
    """Rebuild a RunConfig saved by `to_dict` (every key present, none unknown);
    ``model_class`` is the method's config."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of keys, got {type(data).__name__}")
    unknown = set(data) - {"method", "model", "data", "train"}
    if unknown:
        raise ConfigError(f"{where}: unknown config keys {sorted(unknown)}")
    try:
        return RunConfig(
            method=data["method"],
            model=_from_dict(model_class, data["model"], f"{where}: model"),
            data=_from_dict(DataConfig, data["data"], f"{where}: data"),
            train=_from_dict(TrainConfig, data["train"], f"{where}: train"),
        )
    except KeyError as exc:
        raise ConfigError(f"{where}: missing key {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def save(config: RunConfig, path: str | Path) -> None:
    from refseg.io.atomic import write_json

    write_json(path, to_dict(config))


def load_json(path: str | Path) -> dict:
    """A config file's JSON; unreadable text (not UTF-8, not JSON, nested too deeply, an
    integer over Python's digit limit) is a ConfigError naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid JSON (nested too deeply)") from None
