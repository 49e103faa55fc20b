"""YAML recipes and CLI overrides for the stage configs.

Each stage has a plain dataclass config (`GenerateConfig`, `TrainConfig`, `EvalConfig`, ...). A recipe
is a YAML file with one section per stage plus shared top-level keys::

    # rational run --config recipes/demo-cpu.yaml
    model: qwen2.5-coder-0.5b-instruct
    generate: {n_samples: 1, max_new_tokens: 256}
    train: {epochs: 2, learning_rate: 2.0e-4}

Precedence, as in TRL: dataclass defaults < recipe < command-line flags. Unknown keys are errors that
name the file and the key, never silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

# Top-level keys every stage may read from a recipe, besides its own section.
SHARED_KEYS = ("model", "seed", "backend", "dtype", "reasoning_open", "reasoning_close")
SECTIONS = ("generate", "train", "eval", "run", "report")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: recipe file not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"{p}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of keys to values")
    return data


def recipe_section(path: str | Path | None, section: str) -> dict[str, Any]:
    """The values a stage takes from a recipe: shared keys plus its own section, flattened."""
    if path is None:
        return {}
    data = load_yaml(path)
    unknown = [k for k in data if k not in SHARED_KEYS and k not in SECTIONS]
    if unknown:
        raise UserError(
            f"{path}: unknown top-level key '{unknown[0]}'; allowed: {', '.join(SHARED_KEYS + SECTIONS)}"
        )
    values = {k: data[k] for k in SHARED_KEYS if k in data}
    own = data.get(section) or {}
    if not isinstance(own, dict):
        raise UserError(f"{path}: section '{section}' must be a mapping")
    values.update(own)
    return values


def _coerce(value: Any, annotation: Any, name: str, source: str) -> Any:
    """Convert YAML/CLI values to the field's type where it is unambiguous."""
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _coerce(value, args[0], name, source)
    try:
        if annotation is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if annotation is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if annotation is bool and isinstance(value, str):
            if value.lower() in ("true", "1", "yes"):
                return True
            if value.lower() in ("false", "0", "no"):
                return False
            raise ValueError(value)
        if origin is list and isinstance(value, (str, tuple)):
            return [value] if isinstance(value, str) else list(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: '{name}' has value {value!r}, which is not a valid {annotation}") from None
    return value


def build_config(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Instantiate dataclass `cls` from `values`, rejecting unknown keys with a one-line error."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            close = [n for n in fields if n.startswith(key[:4])][:3]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise UserError(f"{source}: unknown key '{key}' for {cls.__name__}{hint}")
        kwargs[key] = _coerce(value, hints[key], key, source)
    return cls(**kwargs)


def resolve_config(cls: type, config_path: str | Path | None, section: str, overrides: dict[str, Any]) -> Any:
    """defaults < recipe section < overrides (None values in overrides mean "not given")."""
    values = recipe_section(config_path, section)
    source = str(config_path) if config_path else "command line"
    values.update({k: v for k, v in overrides.items() if v is not None})
    # Shared keys a stage does not use are allowed in recipes; drop them.
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if k in names or k not in SHARED_KEYS}
    return build_config(cls, values, source)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to a stage's outputs (YAML, reloadable as a recipe section)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg), default=str)), sort_keys=False))


def library_versions() -> dict[str, str]:
    """Python, platform and the versions of the libraries a result depends on (recorded next to every run)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.processor()}
    for pkg in ("rational", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
