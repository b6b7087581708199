"""platform_choices: for every platform, exactly what each op's impl="auto" resolves to."""

import types

import jax.numpy as jnp
import pytest

from jaxseg import ops
from jaxseg.ops import _impl, attention, conv, scan


class _Resolved(Exception):
    pass


def _auto_resolution(monkeypatch, platform, call):
    """What `call()` (an op with impl="auto") resolves "auto" to when the backend is
    `platform`; it stops at the resolution, so no kernel runs."""
    monkeypatch.setattr(_impl, "jax", types.SimpleNamespace(default_backend=lambda: platform))

    def spy(*args, **kwargs):
        raise _Resolved(_impl.resolve_impl(*args, **kwargs))

    for module in (attention, conv, scan):
        monkeypatch.setattr(module, "resolve_impl", spy)
    with pytest.raises(_Resolved) as e:
        call()
    return e.value.args[0]


_q = jnp.ones((2, 1, 4, 8))
_bias = jnp.zeros((1, 4, 4))
# Each IMPL_ARGS entry and the public ops that take it as `impl=`.
OPS = {
    "attention_impl": {
        "window_attention": lambda: ops.window_attention(_q, _q, _q, _bias),
        "axial_attention": lambda: ops.axial_attention(_q, _q, _q, _bias),
        "window_attention_routed": lambda: ops.window_attention_routed(
            _q, _q, _q, _bias, windows_per_image=2, topk_windows=1
        ),
    },
    "depthwise_impl": {
        "depthwise_conv": lambda: ops.depthwise_conv(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 2)))
    },
    "dynamic_impl": {
        "dynamic_conv": lambda: ops.dynamic_conv(jnp.ones((2, 4, 4, 2)), jnp.ones((2, 3, 3, 2, 3)))
    },
    "scan_impl": {
        "selective_scan": lambda: ops.selective_scan(
            *(jnp.ones(s) for s in ((1, 4, 2), (1, 4, 2), (2, 3), (1, 4, 3), (1, 4, 3), (2,)))
        )
    },
}


def test_every_impl_arg_has_its_ops():
    assert set(OPS) == set(ops.IMPL_ARGS)


@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu"])
@pytest.mark.parametrize("arg,op", [(a, o) for a, fns in OPS.items() for o in fns])
def test_platform_choices_is_what_auto_resolves_to(monkeypatch, platform, arg, op):
    choice = ops.platform_choices(platform)[arg]
    assert _auto_resolution(monkeypatch, platform, OPS[arg][op]) == choice


def test_platform_choices_values():
    # The choices export and workdir relied on before they moved here, plus dynamic_impl.
    assert ops.platform_choices("tpu") == {
        "attention_impl": "pallas",
        "depthwise_impl": "xla",
        "dynamic_impl": "grouped",
        "scan_impl": "chunked",
    }
    assert ops.platform_choices("cpu") == {
        "attention_impl": "xla",
        "depthwise_impl": "shifted",
        "dynamic_impl": "map",
        "scan_impl": "sequential",
    }
    assert ops.platform_choices("gpu") == {
        "attention_impl": "xla",
        "depthwise_impl": "xla",
        "dynamic_impl": "grouped",
        "scan_impl": "sequential",
    }
    choices = ops.platform_choices("cpu")
    choices["attention_impl"] = "pallas"  # a fresh dict each call: callers may edit theirs
    assert ops.platform_choices("cpu")["attention_impl"] == "xla"


def test_unknown_platform_names_it_and_the_valid_ones():
    with pytest.raises(ValueError, match=r"'metal'.*'cpu', 'gpu', 'tpu'"):
        ops.platform_choices("metal")
