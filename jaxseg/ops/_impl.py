"""Choosing an implementation by platform: the one place jaxseg decides Pallas vs XLA."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax


def resolve_impl(op: str, impl: str, valid: Sequence[str], auto: Mapping[str, str]) -> str:
    """Map `impl` to a concrete implementation name of `op`.

    `impl` is "auto" or one of `valid`. "auto" picks `auto[jax.default_backend()]`
    (falling back to `auto["default"]` for a backend not listed).
    """
    if impl == "auto":
        backend = jax.default_backend()
        return auto.get(backend, auto["default"])
    if impl not in valid:
        raise ValueError(
            f"jaxseg.ops.{op}: unknown impl={impl!r}; valid values are "
            f"{', '.join(repr(v) for v in ('auto', *valid))}."
        )
    return impl
