"""Typed dataclass configs from YAML files with `key=value` overrides.

One dataclass per model or run; recipes in `configs/` and `tokenizers/*/`
fill it. Rules:

* A YAML file may name `base: other.yaml` (relative to itself); its keys are
  merged over the base's, recursively for nested sections.
* A nested section given in part keeps the defaults of its field for the rest (a trainer's
  `optim: {lr: 1e-3}` keeps that trainer's default betas and weight decay).
* Every key must be a field of the dataclass: an unknown key is a
  `ConfigError` that names the key, the file and the closest known keys.
* Values are checked against the field's type (int, float, bool, str,
  Optional, Literal, list, tuple, dict, nested dataclass); ints are accepted
  for floats, nothing else is coerced.
* Overrides are `a.b.c=value` strings; the value is parsed as YAML, so
  `lr=3e-4`, `dims=[1,2]` and `name=null` all work.

    cfg = load_config(TrainConfig, "configs/train/text.yaml", ["lr=1e-3"])
    d = to_dict(cfg)              # stored in checkpoints
    cfg = from_dict(TrainConfig, d, fill_missing=True)
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

from unitok.errors import ConfigError

T = TypeVar("T")
_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")

__all__ = ["load_config", "read_yaml", "from_dict", "to_dict", "apply_overrides", "parse_overrides", "merge"]


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a YAML mapping, resolving `base:` chains. Raises ConfigError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"config base cycle: {' -> '.join(map(str, _seen + (resolved,)))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file path")
    return merge(read_yaml(path.parent / base, _seen + (resolved,)), data)


def merge(base: dict, over: dict) -> dict:
    """`over`'s keys over `base`'s, recursively for nested mappings (neither is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: Iterable[str]) -> dict:
    """['a.b=1', 'c=x'] -> {'a': {'b': 1}, 'c': 'x'}."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return out


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    return merge(data, parse_overrides(overrides))


def load_config(cls: type[T], path: str | Path | None = None, overrides: Iterable[str] = ()) -> T:
    """Build `cls` from a YAML file (optional) and overrides, checking every key and type."""
    data = read_yaml(path) if path is not None else {}
    data = apply_overrides(data, overrides)
    return from_dict(cls, data, source=str(path) if path else "overrides")


def from_dict(cls: type[T], data: dict, *, source: str = "config", fill_missing: bool = True) -> T:
    """Build dataclass `cls` from a plain dict. Unknown keys are errors; missing keys
    take the field default (or are errors when `fill_missing` is False)."""
    return _build(cls, data, source, prefix="", fill_missing=fill_missing)


def to_dict(cfg: Any) -> dict:
    """A dataclass as plain YAML/JSON-serializable data (tuples become lists)."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(cfg)


def _build(cls, data, source, prefix, fill_missing):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"{source}: unknown config key '{prefix}{k}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            value = data[name]
            if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]) \
                    and f.default_factory is not dataclasses.MISSING and fill_missing:
                value = merge(to_dict(f.default_factory()), value)  # a partial block keeps this field's defaults
            kwargs[name] = _check(hints[name], value, source, prefix + name, fill_missing)
        elif (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING) or not fill_missing:
            if dataclasses.is_dataclass(hints[name]) and fill_missing:
                kwargs[name] = _build(hints[name], {}, source, prefix + name + ".", fill_missing)
            else:
                raise ConfigError(f"{source}: missing config key '{prefix}{name}'")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from None


def _check(tp, value, source, key, fill_missing):
    def bad(expected):
        return ConfigError(f"{source}: config key '{key}' expects {expected}, got {value!r}")

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return _build(tp, value, source, key + ".", fill_missing)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(a, value, source, key, fill_missing)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # `X | None`: what is wrong inside X (e.g. an unknown key of a nested block)
            raise errors[0]
        why = "; ".join(str(e).removeprefix(f"{source}: ") for e in errors)
        raise ConfigError(f"{source}: config key '{key}' fits none of its types: {why}")
    if origin is typing.Literal:
        if value not in args:
            raise bad("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise bad(f"a list of {len(args)} items")
            return tuple(_check(a, v, source, f"{key}[{i}]", fill_missing) for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        items = [_check(inner, v, source, f"{key}[{i}]", fill_missing) for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 5e-4 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value
