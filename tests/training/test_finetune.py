"""finetune.method: LoRA, adapters and decoder-only training, each checked against a
reference written here (the plain model, hand-counted parameters, a fresh optax Adam)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxseg import models
from jaxseg.defaults import base_config
from jaxseg.errors import ConfigError
from jaxseg.export.from_workdir import merged_lora
from jaxseg.models import peft
from jaxseg.training import finetune
from jaxseg.training import optimizer as optimizer_lib
from jaxseg.training.state import init_train_state
from jaxseg.training.steps import make_train_step
from jaxseg.workdir import RunInfo, TrainedRun, model_from_config

INFO = RunInfo(2, 1, 2, {0: "background", 1: "organ"}, ("MRI",), "")
PATCH = (16, 16)
# The Dense layers LoRA adapts by default, by name (the defaults' lora_targets).
LORA_NAMES = {"qkv", "proj", "out_proj", "fc1", "fc2", "linear1", "linear2"}


class Tiny(nn.Module):
    """A one-block Transformer segmenter with the zoo's layer names, compiled in a moment:
    conv stem, attention (qkv, proj), MLP (fc1, fc2), conv decoder, head. `[B, H, W, 1]`
    -> `[B, H, W, 2]`."""

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = nn.Conv(8, (3, 3), name="stem")(x)
        b, h, w, c = x.shape
        q, k, v = jnp.split(nn.Dense(3 * c, name="qkv")(nn.LayerNorm(name="norm1")(x)), 3, -1)
        q, k, v = (t.reshape(b, h * w, c) for t in (q, k, v))
        att = jax.nn.softmax(q @ k.transpose(0, 2, 1) / np.sqrt(c), axis=-1)
        x = x + nn.Dense(c, name="proj")((att @ v).reshape(b, h, w, c))
        y = nn.gelu(nn.Dense(2 * c, name="fc1")(nn.LayerNorm(name="norm2")(x)))
        x = x + nn.Dense(c, name="fc2")(y)
        x = nn.gelu(nn.Conv(8, (3, 3), name="decoder")(x))
        return nn.Dense(2, name="head")(x)


TINY_ENCODER = r"^(stem|norm|qkv|proj|fc)"


def _config(method: str, name: str = "tiny", **finetune_args) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name = name
    c.data.patch_size = PATCH
    c.data.batch_size = 2
    for key in c.augment:  # the step without augmentation: the property is the optimiser's
        if key.endswith("_prob"):
            c.augment[key] = 0.0
    c.train.warmup_steps = 0
    c.finetune.method = method
    c.finetune.encoder_paths = TINY_ENCODER if name == "tiny" else None
    for key, value in finetune_args.items():
        c.finetune[key] = value
    return c


def _model(config):
    if config.model.name == "tiny":
        return peft.finetune_model(Tiny(), config, "tiny")
    return model_from_config(config, INFO)


def _tiny(model) -> bool:
    return isinstance(getattr(model, "inner", model), Tiny)


def _init(model, key=0, patch=PATCH):
    x = jnp.zeros((1, *patch, 1))
    init = model.init if _tiny(model) else jax.jit(model.init)  # tiny: eager is quicker
    return init(jax.random.key(key), x)["params"]


def _apply(model, params, x):
    apply = model.apply if _tiny(model) else jax.jit(model.apply)
    return np.asarray(apply({"params": params}, x))


def _flat(tree) -> dict[str, np.ndarray]:
    return {
        "/".join(str(k.key) for k in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _without(tree, names):
    """The tree with every leaf named in `names` dropped (the base model's parameters)."""
    if not isinstance(tree, dict):
        return tree
    return {k: _without(v, names) for k, v in tree.items() if k not in names}


def _image(key=1):
    return jax.random.normal(jax.random.key(key), (2, *PATCH, 1))


def test_lora_and_adapters_at_init_are_the_base_model():
    """B = 0 and up-projections = 0: the adapted model's logits are the plain model's on
    the base parameters; LoRA sits in every targeted Dense layer, and B starts at zero."""
    x = _image()
    base = Tiny()
    base_params = None
    for method, added in (("lora", peft.LORA_PARAMS), ("adapter", peft.ADAPTER_PARAMS)):
        model = _model(_config(method))
        params = _init(model)
        if base_params is None:
            lora = _flat(params)
            base_params = _without(params, set(added))
            assert _flat(base_params).keys() == _flat(_init(base)).keys()
            want = _apply(base, base_params, x)
        # The adapted model on the same base parameters plus its new, zero-effect leaves.
        ours = {**_flat(params), **_flat(base_params)}
        params = jax.tree_util.tree_map_with_path(
            lambda path, _, ours=ours: ours["/".join(k.key for k in path)], params
        )
        # Op by op, y + (x A) 0 is y: the same bits.
        np.testing.assert_array_equal(_apply(model, params, x), want)
    adapted = {p.rsplit("/", 2)[-2] for p in lora if p.endswith("/lora_a")}
    assert adapted == {"qkv", "proj", "fc1", "fc2"}
    assert all(not v.any() for p, v in lora.items() if p.endswith("lora_b"))


def _randomise_lora(params, key=5):
    leaves = _flat(params)
    keys = iter(jax.random.split(jax.random.key(key), len(leaves)))

    def one(path, leaf):
        name = path[-1].key
        if name in peft.LORA_PARAMS:
            return 0.3 * jax.random.normal(next(keys), leaf.shape)
        return leaf

    return jax.tree_util.tree_map_with_path(one, params)


@pytest.mark.parametrize(
    "name, convs",
    [
        ("tiny", True),
        pytest.param("lightseg_tiny", True, marks=pytest.mark.slow),
        pytest.param("swinunetr", False, marks=pytest.mark.slow),
    ],
)
def test_merged_lora_runs_on_the_plain_model_as_the_unmerged_one(name, convs):
    """Random nonzero A and B: the export's merge (W + alpha/r A B) on the plain model
    gives the LoRA model's logits within 1e-5, for Dense and convolution kernels."""
    config = _config("lora", name, rank=4, alpha=8.0, lora_convs=convs)
    if name == "lightseg_tiny":  # two small stages
        config.model.args.embed_dims = (8, 16)
        config.model.args.depths = (1, 1)
        config.model.args.num_heads = (1, 2)
        config.model.args.stem_dims = (4, 8)
    if name == "swinunetr":
        config.model.args.feature_size = 12
        config.model.args.depths = (1, 1, 1, 1)
        config.model.args.num_heads = (1, 1, 1, 1)
        config.model.args.window_size = 4
        config.data.patch_size = (32, 32)
    x = jax.random.normal(jax.random.key(1), (2, *config.data.patch_size, 1))
    model = _model(config)
    params = _randomise_lora(_init(model, patch=config.data.patch_size))
    lora_a = {p.rsplit("/", 2)[-2]: v for p, v in _flat(params).items() if p.endswith("lora_a")}
    assert set(lora_a) & LORA_NAMES
    assert any(v.ndim == 4 for v in lora_a.values()) == convs  # [kh, kw, in, r]: a conv
    run = TrainedRun(None, config, INFO, model, params, 1, "latest")
    merged = merged_lora(run)
    assert not any(p.endswith(peft.LORA_PARAMS) for p in _flat(merged.params))
    plain = (
        Tiny()
        if name == "tiny"
        else models.build_model(name, dims=2, in_channels=1, num_classes=2, **config.model.args)
    )
    want = _apply(model, params, x)
    got = _apply(plain, merged.params, x)
    base = _apply(plain, _without(params, set(peft.LORA_PARAMS)), x)
    assert np.abs(want - base).max() > 1e-2  # the LoRA update is really there
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def _steps(config, n=3):
    model = _model(config)
    params = _init(model)
    trainable = finetune.trainable_mask(params, config)
    optimizer = optimizer_lib.make_optimizer(config.train, trainable)
    state = init_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, *PATCH, 1)))
    before = _flat(state.params)
    step = jax.jit(make_train_step(model, optimizer, config, trainable))
    label = (jax.random.uniform(jax.random.key(2), (2, *PATCH)) > 0.5).astype(jnp.int32)
    batch = {"image": _image(), "label": label}
    for _ in range(n):
        state, _ = step(state, batch, jax.random.key(3))
    return before, _flat(state.params), state


@pytest.mark.parametrize(
    "method, trains",
    [
        ("lora", lambda p: p.endswith(("/lora_a", "/lora_b"))),
        ("adapter", lambda p: p.rsplit("/", 1)[-1].startswith("adapter_")),
        ("decoder_only", lambda p: p.startswith(("decoder/", "head/"))),
    ],
)
def test_frozen_leaves_stay_bit_identical_and_only_trainable_ones_hold_moments(method, trains):
    before, after, state = _steps(_config(method))
    trained = {p for p in before if trains(p)}
    assert trained and len(trained) < len(before)
    for path in before:
        if path in trained:
            assert not np.array_equal(before[path], after[path]), path
        else:
            assert before[path].tobytes() == after[path].tobytes(), path
    # Adam keeps mu and nu per trainable scalar and nothing for a frozen one; the rest of
    # the optimiser state is step counters.
    n_trained = sum(before[p].size for p in trained)
    arrays = [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state) if leaf.size > 1]
    assert sum(a.size for a in arrays) == 2 * n_trained


def test_lora_rank_8_on_lightseg_small_trains_under_5_percent():
    """The trainable count is r (d_in + d_out) per targeted kernel of the base model, and
    the optimiser state shrinks with it (Adam: two float32 moments per trainable scalar)."""
    config = _config("lora", "lightseg_small")
    config.model.args = ml_collections.ConfigDict()
    config.data.patch_size = (64, 64)
    x = jax.ShapeDtypeStruct((1, 64, 64, 1), jnp.float32)
    base = models.build_model("lightseg_small", dims=2, in_channels=1, num_classes=2)
    shapes = jax.eval_shape(lambda x: base.init(jax.random.key(0), x), x)["params"]
    base_shapes = {
        "/".join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
    }
    want = sum(
        8 * (shape[0] + shape[1])
        for path, shape in base_shapes.items()
        if path.endswith("/kernel") and path.split("/")[-2] in LORA_NAMES
    )
    total = sum(math.prod(s) for s in base_shapes.values()) + want
    model = model_from_config(config, INFO)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)["params"]
    facts = finetune.summary(shapes, finetune.trainable_mask(shapes, config), config.train)
    assert (facts["trainable"], facts["total"]) == (want, total)
    assert facts["fraction"] <= 0.05
    assert facts["opt_state_bytes"] <= 2 * 4 * want + 64  # + the step counters
    assert facts["full_opt_state_bytes"] >= 2 * 4 * total


def test_bad_finetune_configs_are_config_errors_naming_the_key():
    with pytest.raises(ConfigError, match="finetune.method='prefix'"):
        _model(_config("prefix"))
    unet = _config("lora", "unet")
    unet.model.args.features = (4, 8)
    x = jax.ShapeDtypeStruct((1, *PATCH, 1), jnp.float32)
    with pytest.raises(ConfigError, match="model 'unet' has no layer .*lora_targets"):
        jax.eval_shape(model_from_config(unet, INFO).init, jax.random.key(0), x)
    unet.finetune.method = "decoder_only"
    shapes = jax.eval_shape(model_from_config(unet, INFO).init, jax.random.key(0), x)
    with pytest.raises(ConfigError, match="finetune.encoder_paths.*'unet'"):
        finetune.trainable_mask(shapes["params"], unet)
    with pytest.raises(ConfigError, match="finetune.rank=0"):
        _model(_config("lora", rank=0))
