"""Models: registry, shapes, gradients, overfitting, window helpers, masks, bf16."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxseg import ops
from jaxseg.errors import ConfigError
from jaxseg.models import available_models, build_model, layers, register_model, registry

SHAPES = {2: (2, 40, 56, 1), 3: (1, 24, 20, 16, 1)}
NUM_CLASSES = 4


def _batch(dims, seed=0):
    rng = np.random.default_rng(seed)
    shape = SHAPES[dims]
    x = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=shape[:-1]).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(labels)


_PARAMS = {}


def _params(name, dims, **kwargs):
    """Initial params of a registered model (1 in-channel, NUM_CLASSES classes), cached: the
    params do not depend on the spatial shape or the compute dtype, and compiling `init` is
    a large part of these tests' time."""
    key = (name, dims)
    if key not in _PARAMS:
        model = build_model(name, dims=dims, in_channels=1, num_classes=NUM_CLASSES, **kwargs)
        x, _ = _batch(dims)
        _PARAMS[key] = jax.jit(model.init)(jax.random.key(0, impl="unsafe_rbg"), x)["params"]
    return _PARAMS[key]


def _loss(model, params, x, labels, train=False):
    logits = model.apply({"params": params}, x, train=train, rngs={"dropout": jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


def test_registry_names():
    assert {"unet", "lightseg_tiny", "lightseg_small", "lightseg_base"} <= set(available_models())


def test_unknown_model_lists_names():
    with pytest.raises(ConfigError) as e:
        build_model("swin_huge", dims=2, in_channels=1, num_classes=2)
    for name in available_models():
        assert name in str(e.value)


def test_unknown_kwarg_lists_valid_ones():
    with pytest.raises(ConfigError, match="embed_dims"):
        build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2, embed_dim=3)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The model registry as a copy for this test: what the test registers is gone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_register_model_twice_fails(scratch_registry):
    register_model("_test_dummy", lambda **kw: None)
    with pytest.raises(ValueError, match="already registered"):
        register_model("_test_dummy", lambda **kw: None)


def test_package_docstring_lists_every_model():
    import re

    import jaxseg.models

    assert set(re.findall(r'"(\w+)"', jaxseg.models.__doc__)) == set(available_models())


def test_register_leaves_the_real_registry_alone():
    assert "_test_dummy" not in available_models()


def test_impl_args_are_every_models_impl_fields():
    """`jaxseg.ops.IMPL_ARGS` names exactly the `*_impl` fields the registered models have."""
    seen = set()
    for name in available_models():
        model = build_model(name, dims=2, in_channels=1, num_classes=2)
        impl_fields = {f.name for f in dataclasses.fields(model) if f.name.endswith("_impl")}
        assert impl_fields <= set(ops.IMPL_ARGS), name
        seen |= impl_fields
    assert seen == set(ops.IMPL_ARGS)


_SLOW = pytest.mark.slow  # the larger models take ~20-40 s each to compile on 2 cores


@pytest.mark.parametrize(
    "name,dims",
    [
        pytest.param(n, d, marks=[_SLOW] if n in ("lightseg_small", "lightseg_base") else [])
        for n, d in itertools.product(
            ["unet", "lightseg_tiny", "lightseg_small", "lightseg_base"], [2, 3]
        )
    ],
)
def test_forward_and_every_parameter_gets_gradient(name, dims):
    model = build_model(name, dims=dims, in_channels=1, num_classes=NUM_CLASSES)
    x, labels = _batch(dims)

    params = _params(name, dims)
    (loss, logits), grads = jax.jit(
        jax.value_and_grad(lambda p: _loss(model, p, x, labels), has_aux=True)
    )(params)
    assert logits.shape == x.shape[:-1] + (NUM_CLASSES,)
    assert logits.dtype == jnp.float32
    assert np.isfinite(float(loss))
    zero = []
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        key = jax.tree_util.keystr(path)
        if "relative_position_bias_table" in key:
            # A window clamped to a small feature map uses only part of its table, so check that
            # some entry gets a gradient -- unless the stage's map is one token (the deepest
            # stage of a 4-stage model on this tiny 3D input): a softmax over one key is constant.
            stage = int(key.split("stage")[1].split("_")[0])
            stride = 4 * 2**stage
            total = model.total_stride
            padded = [-(-n // total) * total for n in x.shape[1:-1]]
            if all(n // stride == 1 for n in padded):
                continue
        if not np.isfinite(np.asarray(g)).all() or not np.any(np.asarray(g) != 0):
            zero.append(key)
    assert not zero, f"parameters without a finite non-zero gradient: {zero}"


@pytest.mark.parametrize("name", ["unet", "lightseg_tiny"])
def test_wrong_dims_or_channels_raises(name):
    model = build_model(name, dims=3, in_channels=1, num_classes=2)
    x2, _ = _batch(2)
    with pytest.raises(ConfigError, match="dims=3"):
        jax.eval_shape(model.init, jax.random.key(0), x2)
    model = build_model(name, dims=2, in_channels=2, num_classes=2)
    with pytest.raises(ConfigError, match="in_channels=2"):
        jax.eval_shape(model.init, jax.random.key(0), x2)


@pytest.mark.parametrize("name", ["unet", "lightseg_tiny"])
def test_overfits_one_batch(name):
    model = build_model(name, dims=2, in_channels=1, num_classes=NUM_CLASSES)
    yy, xx = np.mgrid[:32, :32]
    labels = np.zeros((2, 32, 32), np.int32)
    labels[0][(yy - 12) ** 2 + (xx - 15) ** 2 < 40] = 1
    labels[1][(yy - 20) ** 2 + (xx - 25) ** 2 < 60] = 2
    labels[1][:6, :8] = 1
    rng = np.random.default_rng(0)
    x = (labels[..., None] * 0.7 + 0.3 * rng.normal(size=labels.shape + (1,))).astype(np.float32)
    x, labels = jnp.asarray(x), jnp.asarray(labels)
    params = _params(name, 2)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(lambda p: _loss(model, p, x, labels)[0])(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    losses = []
    for _ in range(30):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses


# bf16 against f32 logits of the same params: bf16 rounds each op to 8 significant bits
# (unit roundoff 2^-9 = 0.2%), compounded over the network's ~10-30 layers. Measured
# (2 cores, XLA:CPU): largest |difference| 1.0% (unet), 2.9% (lightseg_tiny 2D), 1.6% (3D)
# of the largest |logit|; RMS difference 1.0-1.8% of the RMS logit; argmax agrees on 98.7-99.4%
# of voxels. A layer computed wrongly or skipped in bf16 is off by O(100%).
BF16_MAX_REL, BF16_RMS_REL, BF16_ARGMAX = 0.08, 0.05, 0.95


def assert_bf16_close(logits16, logits32):
    a, b = np.asarray(logits16, np.float64), np.asarray(logits32, np.float64)
    assert np.isfinite(a).all()
    assert np.abs(a - b).max() <= BF16_MAX_REL * np.abs(b).max()
    assert np.sqrt(np.mean((a - b) ** 2)) <= BF16_RMS_REL * np.sqrt(np.mean(b**2))
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= BF16_ARGMAX


@pytest.mark.parametrize("name,dims", [("unet", 2), ("lightseg_tiny", 2), ("lightseg_tiny", 3)])
def test_bf16_compute_dtype(name, dims):
    model = build_model(name, dims=dims, in_channels=1, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
    x, _ = _batch(dims)
    params = _params(name, dims)
    shapes = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(shapes))
    logits = jax.jit(model.apply)({"params": params}, x)
    assert logits.dtype == jnp.float32 and logits.shape == x.shape[:-1] + (NUM_CLASSES,)
    f32 = build_model(name, dims=dims, in_channels=1, num_classes=NUM_CLASSES)
    assert_bf16_close(logits, jax.jit(f32.apply)({"params": params}, x))


def test_lightseg_custom_config_and_validation():
    model = build_model(
        "lightseg_tiny",
        dims=2,
        in_channels=2,
        num_classes=2,
        embed_dims=[16, 32],
        depths=[1, 2],
        num_heads=[2, 4],
        window_sizes=[(4, 2), 4],
        mlp_ratio=2.0,
    )
    x = jnp.ones((1, 20, 12, 2))
    assert jax.eval_shape(model.init_with_output, jax.random.key(0), x)[0].shape == (1, 20, 12, 2)
    bad = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2, num_heads=(3, 4, 8))
    with pytest.raises(ConfigError, match="not divisible"):
        jax.eval_shape(bad.init, jax.random.key(0), jnp.ones((1, 16, 16, 1)))
    bad = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2, depths=(2, 2))
    with pytest.raises(ConfigError, match="one entry per stage"):
        jax.eval_shape(bad.init, jax.random.key(0), jnp.ones((1, 16, 16, 1)))


def test_lightseg_padding_does_not_leak():
    """Logits inside the image do not depend on what the (cropped) padding would contain:
    an image padded by the caller with zeros gives the same logits on the original region
    as the model's own internal padding."""
    model = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=NUM_CLASSES)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 40, 56, 1)), jnp.float32)
    variables = {"params": _params("lightseg_tiny", 2)}
    a = jax.jit(model.apply)(variables, x)
    b = jax.jit(model.apply)(variables, jnp.pad(x, ((0, 0), (0, 8), (0, 8), (0, 0))))[:, :40, :56]
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4)


# --------------------------------------------------------------------------- window helpers


@pytest.mark.parametrize("shape,window", [((2, 8, 12, 3), (4, 3)), ((2, 4, 6, 8, 5), (2, 3, 4))])
def test_window_partition_round_trip(shape, window):
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    w = layers.window_partition(x, window)
    n_windows = np.prod([s // k for s, k in zip(shape[1:-1], window)])
    assert w.shape == (shape[0] * n_windows, np.prod(window), shape[-1])
    np.testing.assert_array_equal(
        np.asarray(layers.window_reverse(w, window, shape[1:-1])), np.asarray(x)
    )
    # first window = the top-left block, row-major
    block = np.asarray(x)[(0, *(slice(0, k) for k in window))].reshape(-1, shape[-1])
    np.testing.assert_array_equal(np.asarray(w[0]), block)


@pytest.mark.parametrize("shape,window", [((2, 8, 12), (4, 3)), ((1, 4, 6, 8), (2, 3, 4))])
def test_window_partition_heads_matches_partition(shape, window):
    g, h, d = 3, 2, 4
    x = jnp.asarray(np.random.default_rng(0).normal(size=(*shape, g * h * d)), jnp.float32)
    fused = layers.window_partition_heads(x, window, g, h)  # [G, W, H, N, D]
    plain = layers.window_partition(x, window)  # [W, N, G*H*D]
    expect = plain.reshape(*plain.shape[:2], g, h, d).transpose(2, 0, 3, 1, 4)
    np.testing.assert_array_equal(np.asarray(fused), np.asarray(expect))
    back = layers.window_reverse_heads(fused[1], window, shape[1:])
    np.testing.assert_array_equal(np.asarray(back), np.asarray(x[..., h * d : 2 * h * d]))


def test_params_do_not_depend_on_input_size():
    model = build_model("lightseg_tiny", dims=2, in_channels=1, num_classes=2)
    small = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 16, 16, 1)))
    large = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 256, 192, 1)))
    assert jax.tree.map(lambda a: a.shape, small) == jax.tree.map(lambda a: a.shape, large)


def test_relative_position_index_clamped_window_uses_sub_table():
    full = layers.relative_position_index((4, 4))
    sub = layers.relative_position_index((2, 4), (4, 4))
    np.testing.assert_array_equal(sub, full[:8, :8])


def test_relative_position_index_small():
    idx = layers.relative_position_index((2, 2))
    # tokens (0,0),(0,1),(1,0),(1,1); table over dy, dx in [-1, 1] -> (dy+1)*3 + (dx+1)
    expect = np.array([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    np.testing.assert_array_equal(idx, expect)


def test_shift_mask_hand_built():
    # 2 x 4 map, window 2 x 2, shift (0, 1): window 0 = rolled cols 0-1 (original cols 1, 2),
    # window 1 = rolled cols 2-3 (original cols 3, 0): col 0 must not see col 3.
    m = layers.window_attention_mask((2, 4), (2, 4), (2, 2), (0, 1))
    ok = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], bool)
    expect = np.stack([np.zeros((4, 4)), np.where(ok, 0.0, layers.MASK_VALUE)])
    np.testing.assert_array_equal(m, expect)
    assert layers.window_attention_mask((2, 4), (2, 4), (2, 2), (0, 0)) is None


@pytest.mark.parametrize(
    "padded,valid,window,shift",
    [
        ((8, 12), (8, 12), (4, 4), (2, 2)),
        ((8, 12), (7, 10), (4, 4), (2, 2)),
        ((8, 8), (6, 8), (4, 4), (0, 0)),
        ((4, 6, 4), (3, 6, 4), (2, 3, 2), (1, 1, 0)),
    ],
)
def test_shift_and_pad_mask_against_geometry(padded, valid, window, shift):
    """Independent reference: after the roll, two tokens of a window may interact iff their
    true displacement equals their displacement in the rolled map (no wrap-around), and the
    key is not padding."""
    d = len(padded)
    rolled = np.stack(np.meshgrid(*[np.arange(n) for n in padded], indexing="ij"), -1)
    orig = (rolled + np.array(shift)) % np.array(padded)
    rw = np.asarray(layers.window_partition(jnp.asarray(rolled[None]), window))
    ow = np.asarray(layers.window_partition(jnp.asarray(orig[None]), window))
    same = ((ow[:, None, :, :] - ow[:, :, None, :]) == (rw[:, None, :, :] - rw[:, :, None, :])).all(
        -1
    )
    key_valid = (ow < np.array(valid)).all(-1)  # [nW, N]
    allowed = same.transpose(0, 2, 1) & key_valid[:, None, :]
    m = layers.window_attention_mask(padded, valid, window, shift)
    if allowed.all():
        assert m is None
    else:
        np.testing.assert_array_equal(m, np.where(allowed, 0.0, layers.MASK_VALUE))
    assert d in (2, 3)
