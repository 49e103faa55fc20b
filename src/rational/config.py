"""Stage configs: one dataclass per stage is the schema of its recipe section, its command line and its Python API.

Every setting is declared once, as a dataclass field made with `setting(...)`, which carries the help text and
what a resumed run may change::

    @dataclass
    class TrainConfig:
        lora_alpha: int = setting(32, "LoRA scaling numerator (alpha / r scales the update).", same_on_resume=True)

From that one declaration:
  * `rational train --lora-alpha 64` works (options are generated from the fields, see `stage_command`);
  * a recipe's `train:` section may set `lora_alpha: 64`;
  * a dotted override works on every command line, as in torchtune: `rational train train.lora_alpha=64`
    (or `lora_alpha=64`), and `rational run train.lora_alpha=64` reaches the train stage of a run;
  * `resume_keys(TrainConfig)` lists the fields that must match when a stage resumes into an existing folder.

A recipe is a YAML file with one section per stage plus shared top-level keys::

    # rational run --config recipes/demo-cpu.yaml
    model: qwen2.5-coder-0.5b-instruct
    generate: {n_samples: 1, max_new_tokens: 256}
    train: {epochs: 2, learning_rate: 2.0e-4}

Precedence, as in TRL: dataclass defaults < recipe < dotted overrides < flags. Unknown keys are errors that name
the file and the key, never silently ignored. Range and consistency checks live in each config's `__post_init__`,
so a bad value fails the same way from a flag, a recipe or Python.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import types
import typing
from dataclasses import MISSING
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Callable

import typer
import yaml

from .common import library_versions, write_json
from .errors import UserError

# Top-level keys every stage may read from a recipe, besides its own section.
SHARED_KEYS = ("model", "seed", "backend", "dtype", "reasoning_open", "reasoning_close")
# `dpo` and `circuit-breakers` are TrainConfig sections too: the train stages of `rational run` that use them;
# `attack` and `redteam`: adaptive attacks (attack.py) and the red-team loop (redteam.py).
SECTIONS = ("data", "generate", "pairs", "train", "dpo", "circuit-breakers", "eval", "run", "report", "chat",
            "judge-check", "serve", "attack", "redteam")


# ------------------------------------------------------------------------------------------- fields


def setting(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, same_on_resume: bool = False,
            old_flags: tuple[str, ...] = (), positional: bool = False, cli: bool = True) -> Any:
    """A config field with its help text (shown by `--help`) and its resume rule.

    same_on_resume: the value changes what the stage writes, so resuming into a folder made with another value is
        refused (`resume_keys`).
    old_flags: earlier spellings of the flag, still accepted for a release with a deprecation line.
    positional: taken from the command line as positional arguments instead of an option (e.g. report folders).
    cli: False for values that only make sense in a recipe or from Python.
    """
    if not help:
        raise ValueError("every setting needs a help text")
    meta = {"help": help, "same_on_resume": same_on_resume, "old_flags": tuple(old_flags), "positional": positional,
            "cli": cli}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def resume_keys(cls: type) -> tuple[str, ...]:
    """Fields that must be equal for a stage to resume into a folder written with other settings."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("same_on_resume"))


def old_flags(cls: type) -> list[tuple[str, str, str]]:
    """(field, old spelling, current flag) for the deprecated flags of a config.

    An entry of `old_flags` is the old spelling ("--lr"), or "old=new" when it maps to the negative form of a
    boolean flag ("--hide-reasoning=--no-show-reasoning").
    """
    out = []
    for f in dataclasses.fields(cls):
        for entry in f.metadata.get("old_flags", ()):
            old, _, new = entry.partition("=")
            out.append((f.name, old, new or flag_name(f.name)))
    return out


def check(ok: bool, message: str) -> None:
    """Raise a one-line UserError unless `ok` (used by the configs' `__post_init__`)."""
    if not ok:
        raise UserError(message)


def check_range(cfg: Any, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False, allow: tuple = ()) -> None:
    """`cfg.<name>` must lie in [lo, hi] (open ends where asked); values in `allow` (e.g. None, -1) pass."""
    v = getattr(cfg, name)
    if v in allow:
        return
    bad = (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi)))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        extra = f" (or {', '.join(map(str, allow))})" if allow else ""
        raise UserError(f"'{name}' is {v!r}; it must be in {span}{extra}")


def check_choice(cfg: Any, name: str, choices: tuple) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise UserError(f"unknown {name} {v!r}; use one of: {', '.join(map(str, choices))}")


# ------------------------------------------------------------------------------------------- recipes


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: recipe file not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise UserError(f"{p}: not valid YAML{where}; fix the syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{p}: not a UTF-8 text file; a recipe is YAML text") from None
    if not isinstance(data, dict):
        raise UserError(f"{p}: a recipe must be a mapping of keys to values")
    return data


def parse_overrides(tokens: list[str] | None) -> dict[str, Any]:
    """`["train.lora_alpha=64", "seed=1"]` -> {"train.lora_alpha": 64, "seed": 1} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for tok in tokens or []:
        key, eq, raw = tok.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not key:
            raise UserError(f"override '{tok}' must look like key=value (e.g. train.lora_alpha=64)")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key] = raw
    return out


@dataclasses.dataclass
class Recipe:
    """A recipe file (or none) plus dotted overrides from the command line, ready to build stage configs."""

    path: Path | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    preset: str | None = None  # the preset name when the recipe came from --preset

    @classmethod
    def load(cls, path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
             section: str | None = None) -> Recipe:
        """`section`: the command's own section; an undotted override that is not a shared key belongs to it."""
        data = load_yaml(path) if path is not None else {}
        unknown = [k for k in data if k not in SHARED_KEYS and k not in SECTIONS]
        if unknown:
            raise UserError(f"{path}: unknown top-level key '{unknown[0]}'; allowed: "
                            f"{', '.join(SHARED_KEYS + SECTIONS)}")
        for s in SECTIONS:
            if data.get(s) is not None and not isinstance(data[s], dict):
                raise UserError(f"{path}: section '{s}' must be a mapping of keys to values")
        ovr = {}
        for key, value in (overrides if isinstance(overrides, dict) else parse_overrides(overrides)).items():
            if "." not in key and key not in SHARED_KEYS:
                if section is None:
                    raise UserError(f"override '{key}': name its section, e.g. train.{key}")
                key = f"{section}.{key}"
            head = key.split(".", 1)[0]
            if "." in key and head not in SECTIONS:
                raise UserError(f"override '{key}': unknown section '{head}'; use one of {', '.join(SECTIONS)}")
            ovr[key] = value
        return cls(Path(path) if path is not None else None, data, ovr)

    @property
    def source(self) -> str:
        return str(self.path) if self.path else "command line"

    def move_keys(self, src: str, dst: str, keys: set[str]) -> None:
        """Move `keys` from section `src` to `dst` (recipes written before a section was split), with a warning."""
        old = dict(self.data.get(src) or {})
        moved = [k for k in old if k in keys]
        if moved:
            print(f"warning: {self.source}: {src}.{moved[0]}" + (f" (and {len(moved) - 1} more)" if len(moved) > 1
                  else "") + f" belong in the `{dst}:` section now; moved there for this run", file=sys.stderr)
            self.data[dst] = {**{k: old.pop(k) for k in moved}, **(self.data.get(dst) or {})}
            self.data[src] = old

    def section(self, name: str) -> dict[str, Any]:
        """Shared keys plus the section's own values, flattened, then the overrides that reach it."""
        values = {k: self.data[k] for k in SHARED_KEYS if k in self.data}
        values.update(self.data.get(name) or {})
        values.update({k: v for k, v in self.overrides.items() if "." not in k})  # shared keys (seed=1)
        values.update({k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.split(".", 1)[0] == name
                       and "." in k})
        return values

    def build(self, cls: type, section: str, flags: dict[str, Any] | None = None) -> Any:
        """defaults < recipe section < dotted overrides < flags (None in `flags` means "not given")."""
        values = self.section(section)
        values.update({k: v for k, v in (flags or {}).items() if v is not None})
        names = {f.name for f in dataclasses.fields(cls)}
        # Shared keys a stage does not use are allowed in recipes and overrides; drop them.
        values = {k: v for k, v in values.items() if k in names or k not in SHARED_KEYS}
        return build_config(cls, values, self.source)


def _coerce(value: Any, annotation: Any, name: str, source: str) -> Any:
    """Convert YAML/CLI values to the field's type where it is unambiguous; a wrong shape is a one-line error."""
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]

    def bad() -> UserError:
        return UserError(f"{source}: '{name}' has value {value!r}, which is not a valid {_type_name(annotation)}")

    if origin in (typing.Union, types.UnionType):
        if len(args) == 1:
            return _coerce(value, args[0], name, source)
        for a in args:  # e.g. str | list[str]: the first type that takes the value as it is
            if (a is str and isinstance(value, str)) or (typing.get_origin(a) is list and isinstance(value, list)):
                return _coerce(value, a, name, source)
        raise bad()
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise bad()
    if annotation is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad() from None
        raise bad()
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad()
        try:
            return float(value)
        except ValueError:
            raise bad() from None
    if annotation is str:
        if isinstance(value, (dict, list, bool)):
            raise bad()
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad()
        inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else str
        return [_coerce(v, inner, name, source) for v in value]
    if annotation is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                raise bad() from None
        if not isinstance(value, dict):
            raise bad()
        return value
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


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
    try:
        return cls(**kwargs)
    except UserError as e:  # a __post_init__ check: say where the value came from
        raise UserError(f"{source}: {e}") from None


def resolve_config(cls: type, config_path: str | Path | None, section: str, overrides: dict[str, Any]) -> Any:
    """defaults < recipe section < overrides (None values in overrides mean "not given")."""
    return Recipe.load(config_path).build(cls, section, overrides)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config next to a stage's outputs (YAML, reloadable as a recipe section)."""
    Path(path).write_text(yaml.safe_dump(json.loads(json.dumps(to_dict(cfg), default=str)), sort_keys=False))


# -------------------------------------------------------------------------------------- command lines


def _cli_type(annotation: Any) -> Any:
    """The type typer parses for a field: Optional unwrapped, unions and dicts given as text."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        return _cli_type(args[0]) if len(args) == 1 else str  # str | list[str]: "a,b" text, split by the stage
    if annotation is dict or origin is dict:
        return str  # YAML text, e.g. '{data: 60, generate: 400}'
    if origin is list:
        return list[str] if not args or args[0] is str else list[args[0]]
    return annotation


def config_parameters(cls: type) -> list[inspect.Parameter]:
    """One typer option (or argument) per CLI field of `cls`, default None = "not given on the command line"."""
    hints = typing.get_type_hints(cls)
    params = []
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        typ = _cli_type(hints[f.name])
        for i, (_, old, new) in enumerate(old_flags(cls)):  # hidden, still accepted, with a warning when used
            if _ == f.name:
                old_type = bool if new.startswith("--no-") else typ
                params.append(inspect.Parameter(f"_old_{i}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                                annotation=Annotated[old_type | None, typer.Option(
                                                    old, hidden=True, show_default=False)]))
        help_text = f.metadata.get("help", "")
        if f.metadata.get("positional"):
            info = typer.Argument(help=help_text, show_default=False)
        elif typ is bool:
            info = typer.Option(f"{flag_name(f.name)}/--no-{f.name.replace('_', '-')}", help=help_text,
                                show_default=False)
        else:
            info = typer.Option(flag_name(f.name), help=help_text, show_default=False)
        default = ... if f.metadata.get("positional") else None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=Annotated[typ | None, info]))
    return params


def stage_command(cls: type, section: str, run: Callable[..., Any], *,
                  presets: Callable[[], dict[str, Path]] | None = None, default_preset: str | None = None,
                  prepare: Callable[[Recipe], None] | None = None, recipe_option: bool = True) -> Callable[..., None]:
    """A typer command whose options are the fields of `cls`, plus `--config RECIPE` and `KEY=VALUE` overrides.

    `run(cfg)` is called with the resolved config; when it takes a second parameter it also gets the `Recipe`
    (the `run` command builds the other stages' configs from it). `presets` (name -> recipe file, looked up when
    used) adds `--preset NAME`; `default_preset` applies when neither --preset nor --config is given. `prepare`
    may adjust the loaded recipe before the config is built.
    """
    params = config_parameters(cls)
    has_positional = any(f.metadata.get("positional") for f in dataclasses.fields(cls))
    extra: list[inspect.Parameter] = []
    if recipe_option:
        extra.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, typer.Option("--config", help=f"YAML recipe (its `{section}:` section and shared keys); "
                                                        "flags and KEY=VALUE overrides win.", show_default=False)]))
    if presets:
        extra.append(inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            str | None, typer.Option("--preset", help="A packaged recipe (see README)"
                                     + (f"; default {default_preset}." if default_preset else "."),
                                     show_default=False)]))
    if recipe_option and not has_positional:
        extra.append(inspect.Parameter("overrides", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            list[str] | None, typer.Argument(metavar="KEY=VALUE", show_default=False, help=(
                f"Overrides in YAML syntax, e.g. {section}.seed=1 (dotted keys reach a recipe section; "
                "undotted ones this stage or a shared key)."))]))
    wants_recipe = len(inspect.signature(run).parameters) > 1

    def command(**kwargs: Any) -> None:
        for i, (name, old, new) in enumerate(old_flags(cls)):
            value = kwargs.pop(f"_old_{i}", None)
            if value is not None:
                print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)
                if kwargs.get(name) is None:
                    kwargs[name] = (not value) if new.startswith("--no-") else value
        path = kwargs.pop("config", None)
        preset = kwargs.pop("preset", None)
        overrides = kwargs.pop("overrides", None)
        if presets is not None:
            if preset and path:
                raise UserError("pass either --preset or --config, not both")
            preset = preset or (default_preset if not path else None)
            if preset:
                known = presets()
                if preset not in known:
                    raise UserError(f"unknown preset '{preset}'; use one of: {', '.join(known)}")
                path = known[preset]
        recipe = Recipe.load(path, overrides, section)
        recipe.preset = preset
        if prepare is not None:
            prepare(recipe)
        cfg = recipe.build(cls, section, kwargs)
        if wants_recipe:
            run(cfg, recipe)
        else:
            run(cfg)

    command.__signature__ = inspect.Signature(params + extra)  # typer reads the options from here
    command.__doc__ = cls.__doc__
    return command


# ----------------------------------------------------------------------------------------- provenance


@dataclasses.dataclass(frozen=True)
class Difference:
    key: str  # the setting (or input file) that differs
    text: str  # "model='a' (now 'b')"


def resume_difference(out: str | Path, cfg: Any, inputs: dict[str, str] | None = None,
                      added_later: dict[str, Any] | None = None) -> Difference | None:
    """What differs between the settings that made OUT's outputs and `cfg`, or None (same, or no record yet).

    Compares the `same_on_resume` fields with OUT/config.yaml and the input files' sha256 with
    OUT/provenance.json. `added_later`: settings introduced after older folders were written, with the value
    those folders behaved like.
    """
    out = Path(out)
    saved = out / "config.yaml"
    if not saved.is_file():
        return None
    try:
        old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        return Difference("config.yaml", "an unreadable config.yaml")
    new = json.loads(json.dumps(to_dict(cfg), default=str))
    for k in resume_keys(type(cfg)):
        before = old.get(k, (added_later or {}).get(k))
        if before != new.get(k):
            return Difference(k, f"{k}={before!r} (now {new.get(k)!r})")
    prov = out / "provenance.json"
    if inputs and prov.is_file():
        try:
            old_inputs = json.loads(prov.read_text(encoding="utf-8")).get("inputs") or {}
        except (ValueError, UnicodeDecodeError):
            return Difference("provenance.json", "an unreadable provenance.json")
        for path, digest in inputs.items():
            if path in old_inputs and old_inputs[path] != digest:
                return Difference(path, f"another version of the input file {path} (its sha256 changed)")
    return None


def record_provenance(out: str | Path, cfg: Any, inputs: dict[str, str] | None = None,
                      extra: dict[str, Any] | None = None) -> None:
    """Write OUT/config.yaml (the resolved config, reloadable as a recipe section) and OUT/provenance.json (the
    command, library versions, input files' sha256 and whatever else made the outputs)."""
    save_config(cfg, Path(out) / "config.yaml")
    write_json(Path(out) / "provenance.json", {
        "command": sys.argv, "config": to_dict(cfg), "inputs": inputs or {}, **(extra or {}),
        "versions": library_versions(), "written": datetime.now(timezone.utc).isoformat(timespec="seconds")})
