"""Config files as code: load `get_config()`, apply `--config.a.b=value` overrides.

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`. Every field
has a default there, so an override can only change a field, never add one: an unknown key
is an error that lists the valid keys at that level.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections

from jaxseg.errors import ConfigError

OVERRIDE_PREFIX = "--config."
# Sections whose keys are not fixed by the config file: a model's constructor arguments.
# New keys are allowed there and checked against the constructor when the model is built.
OPEN_SECTIONS = ("model.args",)


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads the config file at `path` and applies `overrides` ("a.b=value" strings)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config configs/NAME.py")
    spec = importlib.util.spec_from_file_location(f"_jaxseg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # A config file is user code: say which file broke.
        raise ConfigError(f"config file {path} failed to import: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config() function")
    config = module.get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config() in {path} returned {type(config).__name__}, not a ConfigDict"
        )
    for override in overrides:
        apply_override(config, override)
    config.lock()
    return config


def config_from_json(text: str) -> ml_collections.ConfigDict:
    """Rebuilds a config saved with `config.to_json()` (as written into a workdir)."""
    return _to_configdict(json.loads(text))


def _to_configdict(value: Any) -> Any:
    if isinstance(value, dict):
        return ml_collections.ConfigDict({k: _to_configdict(v) for k, v in value.items()})
    if isinstance(value, list):
        # JSON has no tuples; every sequence in a jaxseg config is a tuple.
        return tuple(_to_configdict(v) for v in value)
    return value


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Sets one "a.b.c=value" override in place, parsing value by the field's current type."""
    if override.startswith(OVERRIDE_PREFIX):
        override = override[len(OVERRIDE_PREFIX) :]
    if "=" not in override:
        raise ConfigError(f"config override {override!r} has no '=': write --config.a.b=value")
    dotted, raw = override.split("=", 1)
    *parents, leaf = dotted.split(".")
    node = config
    walked = []
    for key in parents:
        node = _child(node, key, walked)
        walked.append(key)
        if not isinstance(node, ml_collections.ConfigDict):
            raise ConfigError(
                f"config key {'.'.join(walked)} is a value, not a section; cannot set {dotted}"
            )
    if ".".join(parents) in OPEN_SECTIONS and leaf not in node:
        current = None
    else:
        current = _child(node, leaf, walked)
    with node.unlocked():
        node[leaf] = parse_value(raw, current, key=dotted)


def _child(node: ml_collections.ConfigDict, key: str, walked: list[str]) -> Any:
    if key in node:
        return node[key]
    where = ".".join(walked) or "the top level"
    valid = sorted(node.keys())
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"unknown config key {'.'.join(walked + [key])!r}.{hint} "
        f"Valid keys at {where}: {', '.join(valid)}"
    )


_UNTYPED_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(raw: str, current: Any, *, key: str) -> Any:
    """Parses an override string into the type of the field it replaces."""
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"config key {key} is a section; set one of its keys: "
            f"{', '.join(sorted(current.keys()))}"
        )
    if current is None and raw.lower() in _UNTYPED_WORDS:
        # A None-valued or new key has no type to parse by; `true`/`false`/`none` are the
        # spellings users write (as for bool keys), and the string 'false' would be truthy.
        return _UNTYPED_WORDS[raw.lower()]
    if isinstance(current, str) or (current is None and not _looks_literal(raw)):
        return raw
    if isinstance(current, bool):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key {key} is a bool; got {raw!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"config key {key}: cannot parse {raw!r} as {type(current).__name__}"
        ) from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(current, tuple) and isinstance(value, (list, int, float)):
        value = tuple(value) if isinstance(value, list) else (value,)
    if current is not None and not isinstance(value, type(current)):
        raise ConfigError(
            f"config key {key} is a {type(current).__name__}; got {raw!r} ({type(value).__name__})"
        )
    return value


def _looks_literal(raw: str) -> bool:
    try:
        ast.literal_eval(raw)
        return True
    except (ValueError, SyntaxError):
        return False


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.a.b=value` arguments from the rest of a command line."""
    overrides, rest = [], []
    for arg in argv:
        (overrides if arg.startswith(OVERRIDE_PREFIX) else rest).append(arg)
    return overrides, rest
