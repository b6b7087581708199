"""Model registry: config names -> Flax modules.

`build_model(name, dims=, in_channels=, num_classes=, **kwargs)` calls the factory
registered under `name`; kwargs are the model's constructor fields (a config's
`model.args`). Unknown names and unknown kwargs raise `ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from jaxseg.errors import ConfigError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_CORE = ("dims", "in_channels", "num_classes")


def register_model(name: str, factory: Callable[..., nn.Module] | None = None):
    """Register `factory(*, dims, in_channels, num_classes, **kwargs) -> nn.Module` under `name`.

    Usable directly (`register_model("x", f)`) or as a decorator (`@register_model("x")`).
    Registering a name twice raises ValueError.
    """

    def add(f):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered.")
        _REGISTRY[name] = f
        return f

    return add(factory) if factory is not None else add


def available_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def _fields(module_cls) -> list[str]:
    return [
        f.name
        for f in dataclasses.fields(module_cls)
        if f.name not in ("parent", "name") and f.init
    ]


def model_factory(module_cls, **defaults: Any) -> Callable[..., nn.Module]:
    """A factory building `module_cls` with `defaults`, overridden by kwargs; an unknown kwarg
    raises ConfigError listing the valid ones."""
    valid = _fields(module_cls)

    def build(*, dims: int, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        unknown = sorted(set(kwargs) - set(valid) | set(kwargs) & set(_CORE))
        if unknown:
            allowed = [v for v in valid if v not in _CORE and v not in defaults.get("_hidden", ())]
            raise ConfigError(
                f"{module_cls.__name__}: unknown model argument(s) {unknown}; valid arguments are "
                f"{', '.join(allowed)}."
            )
        args = {k: v for k, v in defaults.items() if k != "_hidden"}
        args.update({k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
        return module_cls(dims=dims, in_channels=in_channels, num_classes=num_classes, **args)

    return build


def build_model(
    name: str, *, dims: int, in_channels: int, num_classes: int, **kwargs: Any
) -> nn.Module:
    """Build the model registered as `name`; see `available_models()`."""
    if name not in _REGISTRY:
        raise ConfigError(
            f"unknown model {name!r}; registered models are: {', '.join(available_models())}. "
            "Set model.name to one of them."
        )
    if dims not in (2, 3):
        raise ConfigError(f"model {name!r}: dims must be 2 or 3; got {dims!r}.")
    if in_channels < 1 or num_classes < 1:
        raise ConfigError(
            f"model {name!r}: in_channels and num_classes must be >= 1; got "
            f"{in_channels} and {num_classes}."
        )
    return _REGISTRY[name](dims=dims, in_channels=in_channels, num_classes=num_classes, **kwargs)
