"""YAML configs with typed `key.sub=value` overrides, checked before any work starts.

Every task (pre-training, fine-tuning) declares its defaults as a nested dict; a config file and the
command-line overrides may only set keys that exist there, with values of the same type. Semantic
checks (impossible sizes, empty ratio sets, ...) live with each task and raise ConfigError naming
the key.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Iterable, List, Optional

import yaml

from .errors import ConfigError  # raised from here by every task (fitgap.config.ConfigError)
from .files import atomic_write_text


def _type_name(v):
    return type(v).__name__


_KINDS = ((bool, "true/false"), (int, "an integer"), (float, "a number"), (str, "a string"), (list, "a list"),
          (dict, "a mapping"))


def _coerce(key: str, value: Any, default: Any, nullable: bool = False) -> Any:
    """Check `value` against the type of `default`. A key whose task default is null (`nullable`)
    takes null (one of its documented choices); any other key refuses it."""
    if value is None and nullable:
        return value
    if default is None:
        return value
    if value is None:
        kind = next(name for t, name in _KINDS if isinstance(default, t)) if isinstance(
            default, tuple(t for t, _ in _KINDS)) else type(default).__name__
        raise ConfigError(f"{key}: null is not a choice here; expected {kind} (default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def merge(defaults: Dict[str, Any], updates: Dict[str, Any], prefix: str = "",
          schema: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Deep-merge `updates` into a copy of `defaults`, refusing unknown keys and wrong types.
    `schema` (default: `defaults`) holds the task's own defaults: null is accepted where they are null."""
    schema = defaults if schema is None else schema
    out = copy.deepcopy(defaults)
    if not isinstance(updates, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {updates!r}")
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in defaults:
            valid = ", ".join(sorted(f"{prefix}{x}" for x in defaults))
            raise ConfigError(f"unknown key {key!r}; valid keys here: {valid}")
        d = defaults[k]
        sd = schema.get(k) if isinstance(schema, dict) else None
        if isinstance(d, dict) and d and isinstance(v, dict):
            out[k] = merge(d, v, key + ".", sd if isinstance(sd, dict) else d)
        else:
            out[k] = _coerce(key, v, d, nullable=k in schema and sd is None if isinstance(schema, dict) else False)
    return out


def parse_overrides(items: Iterable[str]) -> Dict[str, Any]:
    """`a.b=value` strings -> nested dict; values are parsed as YAML (numbers, lists, true/false)."""
    nested: Dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_config(path: Optional[str], overrides: Iterable[str], defaults: Dict[str, Any]) -> Dict[str, Any]:
    """Defaults <- YAML file <- overrides, every key and type checked."""
    cfg = copy.deepcopy(defaults)
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path) as f:
            try:
                data = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        cfg = merge(cfg, data, schema=defaults)
    return merge(cfg, parse_overrides(overrides), schema=defaults)


def get(cfg: Dict[str, Any], dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}")


def dump(cfg: Dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def save(cfg: Dict[str, Any], path: str) -> None:
    atomic_write_text(path, dump(cfg))


def flatten(cfg: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out += flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out
