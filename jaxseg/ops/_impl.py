"""Choosing an implementation by platform: the one place jaxseg decides Pallas vs XLA.

`IMPL_AUTO` holds, for each model argument that only chooses how an op is computed
(`IMPL_ARGS`: a model field passed on as an op's `impl=`), what `impl="auto"` means on each
platform. The ops resolve "auto" from it (`resolve_impl`) and `platform_choices` reports it,
so callers that need one platform's choices up front (export writes one signature per
platform; a workdir ignores these arguments when it compares runs) use `platform_choices`
and `IMPL_ARGS` and decide nothing themselves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax

# The platforms `platform_choices` knows: `jax.default_backend()` names.
PLATFORMS = ("cpu", "gpu", "tpu")

# impl="auto" per platform ("default": a platform not listed).
IMPL_AUTO: Mapping[str, Mapping[str, str]] = {
    # window / axial attention: the Pallas TPU kernel on TPU, einsum + softmax elsewhere.
    "attention_impl": {"tpu": "pallas", "default": "xla"},
    # depthwise conv: XLA:CPU runs feature_group_count=C convs ~10x slower than shifted adds.
    "depthwise_impl": {"cpu": "shifted", "default": "xla"},
    # per-sample conv: XLA:CPU runs grouped convs far slower than a loop of dense ones.
    "dynamic_impl": {"cpu": "map", "default": "grouped"},
    # selective scan (Mamba): the chunked SSD form on TPU (memory bounded by the chunk);
    # elsewhere the one measured faster on XLA:CPU (docs/kernels.md).
    "scan_impl": {"tpu": "chunked", "default": "sequential"},
}
IMPL_ARGS = tuple(IMPL_AUTO)


def _auto(auto: Mapping[str, str], platform: str) -> str:
    return auto.get(platform, auto["default"])


def resolve_impl(op: str, impl: str, valid: Sequence[str], auto: Mapping[str, str]) -> str:
    """Map `impl` to a concrete implementation name of `op`.

    `impl` is "auto" or one of `valid`. "auto" picks `auto[jax.default_backend()]`
    (falling back to `auto["default"]` for a backend not listed).
    """
    if impl == "auto":
        return _auto(auto, jax.default_backend())
    if impl not in valid:
        raise ValueError(
            f"jaxseg.ops.{op}: unknown impl={impl!r}; valid values are "
            f"{', '.join(repr(v) for v in ('auto', *valid))}."
        )
    return impl


def platform_choices(platform: str) -> dict[str, str]:
    """`{arg: impl}` for every `IMPL_ARGS` entry: what `impl="auto"` resolves to on `platform`
    ("cpu", "gpu" or "tpu"). Pass them to a model (`model.clone(**choices)`, keeping the
    fields it has) to build it for that platform from anywhere; the parameters stay the same.
    """
    if platform not in PLATFORMS:
        raise ValueError(
            f"jaxseg.ops.platform_choices: unknown platform {platform!r}; valid platforms are "
            f"{', '.join(map(repr, PLATFORMS))}."
        )
    return {arg: _auto(auto, platform) for arg, auto in IMPL_AUTO.items()}
