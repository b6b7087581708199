"""lightseg_fusion: shapes, missing modalities, the modality mask, parameter formulas.

Every numerical test uses random parameters of the right shapes (from `jax.eval_shape`, so
no init is compiled) and a tiny 2-stage model; expected values come from a numpy
reference, from LightSeg's own parameter count, or from the formulas in the docstrings.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import build_model
from jaxseg.models.fusion import LightSegFusion
from jaxseg.models.fusion_blocks import CrossModalAttention, drop_modalities
from jaxseg.models.lightseg import LightSeg
from tests.models.test_lightseg import _count, _x

# Stride 8; at 32 x 40 the stage maps are 8 x 10 (window 4: padded to 8 x 12) and 4 x 5.
TINY = dict(
    embed_dims=(8, 16),
    depths=(1, 1),
    num_heads=(2, 2),
    window_sizes=(4, 4),
    stem_dims=(4, 8),
    mlp_ratio=1.0,
)


def _shapes(model, *args):
    return jax.eval_shape(model.init, jax.random.key(0), *args)["params"]


def _random_params(model, *args, seed=0):
    """Random finite parameters of the model's shapes (scale 0.3): no init to compile."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype), _shapes(model, *args)
    )


def _fusion(**kw):
    return LightSegFusion(**{"dims": 2, "in_channels": 2, "num_classes": 3, **TINY, **kw})


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("dims, shape", [(2, (40, 36)), (3, (16, 12, 20))])
def test_output_shapes(dims, shape):
    model = _fusion(dims=dims, in_channels=3, num_case_classes=4)
    x = jnp.zeros((2, *shape, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    seg = jax.eval_shape(lambda v: model.apply(v, x), variables)
    present = jnp.array([[True, False, True], [False, False, True]])
    seg2, cls = jax.eval_shape(
        lambda v: model.apply(v, x, presence=present, with_class_logits=True), variables
    )
    assert seg.shape == seg2.shape == (2, *shape, 3) and seg.dtype == jnp.float32
    assert cls.shape == (2, 4) and cls.dtype == jnp.float32


def test_registry_builds_and_rejects_unknown_args():
    model = build_model("lightseg_fusion", dims=2, in_channels=2, num_classes=2)
    assert isinstance(model, LightSegFusion) and model.embed_dims == (48, 96, 192, 384)
    with pytest.raises(ConfigError, match="unknown model argument.*share_encoder"):
        build_model("lightseg_fusion", dims=2, in_channels=2, num_classes=2, share_encoder=True)
    with pytest.raises(ConfigError, match="num_case_classes"):
        _fusion().apply({"params": {}}, jnp.zeros((1, 32, 32, 2)), with_class_logits=True)


# --------------------------------------------------------------------------- missing modalities


def _encoder_noise_interceptor(noise):
    """Adds `noise` to modality 1's encoder maps (rows B.. of the shared encoder's output)."""

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if (
            type(context.module).__name__ == "_ModalityEncoder"
            and context.method_name == "__call__"
        ):
            half = out[0].shape[0] // 2
            out = [
                f.at[half:].add(noise * jnp.cos(jnp.arange(f.size // 2)).reshape(f[half:].shape))
                for f in out
            ]
        return out

    return intercept


def test_absent_modality_has_no_effect_shared_encoder():
    """Shared encoder: sample 0 lacks modality 1. Neither its input channel (NaN included)
    nor its encoder maps (perturbed inside the model) change sample 0's outputs by a bit;
    sample 1, with both present, does change (the perturbation reaches the output)."""
    model = _fusion(share_encoders=True, num_case_classes=2)
    x = _x((2, 32, 40, 2))
    present = jnp.array([[True, False], [True, True]])
    params = _random_params(model, x)

    @jax.jit
    def run(x, noise):
        with nn.intercept_methods(_encoder_noise_interceptor(noise)):
            return model.apply({"params": params}, x, presence=present, with_class_logits=True)

    seg, cls = run(x, 0.0)
    for x2, noise in [
        (x, 5.0),
        (x.at[0, ..., 1].set(jnp.nan), 0.0),
        (x.at[0, ..., 1].mul(-7), 0.0),
    ]:
        seg2, cls2 = run(x2, noise)
        np.testing.assert_array_equal(np.asarray(seg2[0]), np.asarray(seg[0]))
        np.testing.assert_array_equal(np.asarray(cls2[0]), np.asarray(cls[0]))
    seg2, _ = run(x, 5.0)
    assert np.abs(np.asarray(seg2[1] - seg[1])).max() > 1e-4


def test_absent_modality_unshared_and_all_present_equals_none():
    model = _fusion(share_encoders=False)
    x = _x((2, 32, 40, 2), seed=1)
    params = _random_params(model, x, seed=1)
    with_presence = jax.jit(lambda x, p: model.apply({"params": params}, x, presence=p))
    seg = with_presence(x, jnp.ones((2, 2), bool))
    seg_none = jax.jit(lambda x: model.apply({"params": params}, x))(x)
    np.testing.assert_array_equal(np.asarray(seg), np.asarray(seg_none))
    present = jnp.array([[False, True], [True, True]])
    a = with_presence(x, present)
    b = with_presence(x.at[0, ..., 0].set(_x((32, 40), seed=9)), present)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert np.abs(np.asarray(a[0] - seg[0])).max() > 1e-4  # dropping modality 0 matters


def test_bad_presence_is_a_clear_error():
    model = _fusion()
    x = jnp.zeros((2, 32, 32, 2))
    with pytest.raises(ValueError, match="presence row 1 marks every modality absent"):
        model.apply({"params": {}}, x, presence=np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match=r"presence must be \[B, M\] = \[2, 2\]"):
        model.apply({"params": {}}, x, presence=np.ones((2, 3), bool))


def test_modality_dropout_keeps_a_present_modality():
    present = jnp.asarray(np.random.default_rng(0).random((4000, 3)) < 0.7).at[:, 2].set(True)
    kept = np.asarray(jax.jit(drop_modalities, static_argnums=2)(jax.random.key(0), present, 0.5))
    present = np.asarray(present)
    assert kept.any(axis=1).all() and not (kept & ~present).any()
    # Rows with 2+ present modalities: each kept with p 0.5, plus the fallback for empty draws.
    rows = present.sum(1) == 3
    frac = kept[rows].sum() / present[rows].sum()
    assert abs(frac - (0.5 + 0.125 / 3)) < 0.03


# --------------------------------------------------------------------------- cross attention


def _layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _dense(x, p):
    return x @ p["kernel"] + p["bias"]


def _reference_cross(p, fine, coarse, present, mask, win, heads):
    """Token-by-token numpy cross-scale cross-modal attention (2D)."""
    p = jax.tree.map(np.asarray, p)
    m, b, X, Y, c = fine.shape
    hd = c // heads
    wx, wy = (min(w, n) for w, n in zip(win, (X, Y)))

    def pos(cx, cy):
        h = np.asarray(jax.nn.gelu(_dense(np.array([cx, cy], np.float32), p["pos_in"])))
        return _dense(h, p["pos_out"])

    hf, hc = _layer_norm(fine, p["norm0"]), _layer_norm(coarse, p["norm1"])
    out = np.zeros_like(fine)
    for mi, bi, i, j in np.ndindex(m, b, X, Y):
        pi, pj = i % wx, j % wy
        q = _dense(hf[mi, bi, i, j], p["q"]) + pos((pi + 0.5) / wx * 2 - 1, (pj + 0.5) / wy * 2 - 1)
        q = (q + p["modality_q"][mi]) * hd**-0.5
        keys, vals = [], []
        for n in range(m):
            if not mask[mi][n] or not present[bi, n]:
                continue
            for a, e in np.ndindex(X, Y):  # fine tokens of the same window
                if a // wx == i // wx and e // wy == j // wy:
                    kv = _dense(hf[n, bi, a, e], p["kv0"])
                    pe = pos((a % wx + 0.5) / wx * 2 - 1, (e % wy + 0.5) / wy * 2 - 1)
                    keys.append(kv[:c] + pe + p["modality_k"][n])
                    vals.append(kv[c:])
            for a, e in np.ndindex(X // 2, Y // 2):  # coarse tokens under the window
                if a // (wx // 2) == i // wx and e // (wy // 2) == j // wy:
                    kv = _dense(hc[n, bi, a, e], p["kv1"])
                    pe = pos(
                        (2 * (a % (wx // 2)) + 1) / wx * 2 - 1,
                        (2 * (e % (wy // 2)) + 1) / wy * 2 - 1,
                    )
                    keys.append(kv[:c] + pe + p["modality_k"][n])
                    vals.append(kv[c:])
        k, v = np.stack(keys), np.stack(vals)
        o = []
        for h in range(heads):
            s = slice(h * hd, (h + 1) * hd)
            logits = k[:, s] @ q[s]
            w = np.exp(logits - logits.max())
            o.append((w / w.sum()) @ v[:, s])
        out[mi, bi, i, j] = fine[mi, bi, i, j] + _dense(np.concatenate(o), p["proj"])
    return out


def test_cross_attention_matches_token_by_token_reference():
    """6 x 10 fine map, window 4 (padded to 8 x 12; coarse 3 x 5 -> 4 x 6), an asymmetric
    modality mask, sample 0 without modality 2: against the per-token numpy reference."""
    mask = ((1, 1, 0), (0, 1, 1), (1, 0, 1))
    layer = CrossModalAttention(8, 2, (4, 4), mask, pos_hidden=5)
    fine, coarse = _x((3, 2, 6, 10, 8), seed=2), _x((3, 2, 3, 5, 16), seed=3)
    present = np.array([[True, True, False], [True, True, True]])
    params = _random_params(layer, fine, coarse, jnp.asarray(present), seed=4)
    got = np.asarray(jax.jit(layer.apply)({"params": params}, fine, coarse, jnp.asarray(present)))
    want = _reference_cross(params, np.asarray(fine), np.asarray(coarse), present, mask, (4, 4), 2)
    rows = [(mi, bi) for mi in range(3) for bi in range(2) if present[bi, mi]]
    for mi, bi in rows:  # an absent modality's own rows are discarded by the fusion
        np.testing.assert_allclose(got[mi, bi], want[mi, bi], rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("mask, blocked", [(((1, 0), (0, 1)), True), (((1, 1), (1, 1)), False)])
def test_modality_mask_cuts_the_dependency(mask, blocked):
    """With mask [[1, 0], [0, 1]], modality 0's attended features have an exactly zero
    gradient with respect to modality 1's maps (fine and coarse); with all ones, they do not."""
    layer = CrossModalAttention(8, 2, (4, 4), mask)
    fine, coarse = _x((2, 1, 8, 8, 8), seed=5), _x((2, 1, 4, 4, 16), seed=6)
    params = _random_params(layer, fine, coarse)
    grads = jax.jit(
        jax.grad(lambda f, c: layer.apply({"params": params}, f, c)[0].sum(), argnums=(0, 1))
    )(fine, coarse)
    for g in grads:
        assert np.any(np.asarray(g[0]) != 0)
        assert (np.all(np.asarray(g[1]) == 0)) == blocked


# --------------------------------------------------------------------------- parameter counts


def test_shared_encoders_save_exactly_one_encoder():
    x = jnp.zeros((1, 32, 32, 2))
    shared = _count(_shapes(_fusion(share_encoders=True), x))
    unshared = _count(_shapes(_fusion(share_encoders=False), x))
    # One encoder = LightSeg on one channel without its decoder (fuse*) and head.
    lightseg = _shapes(LightSeg(dims=2, in_channels=1, num_classes=3, **TINY), x[..., :1])
    encoder = _count({k: v for k, v in lightseg.items() if not k.startswith(("fuse", "head"))})
    assert unshared - shared == encoder
    x3 = jnp.zeros((1, 32, 32, 3))
    three = _count(_shapes(_fusion(in_channels=3), x3))
    three_shared = _count(_shapes(_fusion(in_channels=3, share_encoders=True), x3))
    assert three - three_shared == 2 * encoder


@pytest.mark.parametrize("m, kernel", [(2, 1), (3, 1), (2, 3)])
def test_grouped_fusion_params_against_formula(m, kernel):
    x = jnp.zeros((1, 32, 32, m))
    grouped = _shapes(_fusion(in_channels=m, fusion_kernel=kernel), x)
    dense = _shapes(_fusion(in_channels=m, fusion_kernel=kernel, fusion="dense"), x)
    widths = (*TINY["stem_dims"], *TINY["embed_dims"])  # the fused levels' channels per modality
    for level, c in enumerate(widths):
        out = -(-c // m) * m  # rounded up to a multiple of M
        assert _count(grouped[f"fusion{level}"]) == kernel**2 * c * out + m  # + the M weights
        assert _count(dense[f"fusion{level}"]) == kernel**2 * m * c * out + m
    saving = sum((m - 1) * kernel**2 * c * (-(-c // m) * m) for c in widths)
    assert _count(dense) - _count(grouped) == saving


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(modality_mask=((1, 1),)), "modality_mask must be 2 rows of 2"),
        (dict(modality_mask=((1, 2), (1, 1))), "modality_mask entries must be 0 or 1"),
        (dict(modality_mask=((0, 1), (1, 1))), r"modality_mask\[0\]\[0\] is 0"),
        (dict(modality_dropout=1.0), "modality_dropout must be in"),
        (dict(modality_dropout=-0.1), "modality_dropout must be in"),
        (dict(fusion="sum"), "fusion must be one of"),
        (dict(fusion_kernel=2), "fusion_kernel must be an odd int"),
        (dict(num_case_classes=1), "num_case_classes must be 0"),
        (dict(window_sizes=(3, 4)), "window_sizes of stage 0"),
        (dict(num_heads=(3, 2)), "not divisible by num_heads"),  # LightSeg's own check
    ],
)
def test_construction_validates(kw, field):
    with pytest.raises(ConfigError, match=field):
        _fusion(**kw)


def test_no_cross_attention_allows_odd_windows():
    model = _fusion(window_sizes=(3, 3), cross_attention=False)
    assert not any(k.startswith("cross") for k in _shapes(model, jnp.zeros((1, 32, 32, 2))))


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_trains_through_jaxseg_train_on_two_modality_phantoms(tmp_path):
    """configs/lightseg_fusion_2d.py, shrunk to TINY, trains 2 steps (modality dropout on)
    on 2-modality phantoms through the unchanged jaxseg.train, validates and checkpoints."""
    from pathlib import Path

    from jaxseg.config import load_config
    from jaxseg.data import synthetic
    from jaxseg.training.loop import train

    root = synthetic.write_dataset(
        tmp_path / "mm", dims=2, num_cases=5, shape=(32, 32), seed=1, modalities=2
    )
    path = Path(__file__).resolve().parents[2] / "configs" / "lightseg_fusion_2d.py"
    config = load_config(
        path,
        [
            f"--config.data.root={root}",
            "--config.data.patch_size=(32, 32)",
            "--config.data.batch_size=2",
            "--config.data.num_threads=1",
            "--config.train.steps=2",
            "--config.train.warmup_steps=1",
            "--config.train.log_every=1",
            "--config.train.eval_every=2",
            "--config.train.checkpoint_every=2",
            "--config.eval.max_val_cases=1",
            "--config.eval.tta=False",
            "--config.model.args.window_sizes=(4, 4)",
        ],
    )
    with config.unlocked():
        config.model.args.update(TINY)
    result = train(config, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
