"""The building blocks of lightseg_fusion (`jaxseg.models.fusion`): presence handling,
cross-scale cross-modal window attention and adaptive (grouped) fusion.

All work on the modality-major layout `[M, B, *S, C]` (modality m's maps in row m).
"""

from __future__ import annotations

import itertools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg import ops
from jaxseg.models.layers import (
    MASK_VALUE,
    crop_to,
    pad_to_multiple,
    window_key_mask,
    window_partition_heads,
    window_reverse_heads,
)

Dtype = Any


# --------------------------------------------------------------------------- presence


def fusion_weights(logits, present):
    """Softmax weights over the present modalities.

    logits `[M]`; present `[B, M]` bool or None (all present) -> `[B, M]` (or `[1, M]`)
    float32, each row summing to 1 over its present modalities, exactly 0 on absent ones.
    A row with no present modality is NaN (checked before, where the values are known)."""
    logits = logits.astype(jnp.float32)[None]
    if present is None:
        return jax.nn.softmax(logits, axis=-1)
    return jax.nn.softmax(jnp.where(present, logits, -jnp.inf), axis=-1)


def drop_modalities(key, present, rate: float):
    """Modality dropout: each True of `present` `[B, M]` bool turns False with probability
    `rate`; a row that would lose all its present modalities keeps one of them, chosen
    uniformly. Returns `[B, M]` bool."""
    u = jax.random.uniform(key, present.shape)
    keep = present & (u >= rate)
    # The present modality with the largest draw: uniform among the present ones.
    fallback = jax.nn.one_hot(jnp.argmax(jnp.where(present, u, -1.0), axis=-1), present.shape[1])
    return jnp.where(keep.any(axis=-1, keepdims=True), keep, fallback.astype(bool))


def _window_coords(window, step: int) -> np.ndarray:
    """Token centres of one window, row-major, in the window's frame mapped to [-1, 1]:
    `[prod(w / step), d]`; step 1: the window's own tokens, step 2: the coarser map's."""
    axes = [(np.arange(w // step) * step + step / 2) / w * 2 - 1 for w in window]
    return np.array(list(itertools.product(*axes)), np.float32).reshape(-1, len(window))


def cross_attention_mask(modality_mask, key_valid: np.ndarray, n_q: int, present=None):
    """The additive mask (0 / MASK_VALUE) of `CrossModalAttention`'s one attention call.

    Query row m * n_q + i is query token i of modality m; key column n * K + j is key j of
    modality n (K = key_valid.shape[1], the fine then the coarse keys of one window). A key
    is allowed when `modality_mask[m][n]`, `key_valid[w, j]` (not padding) and, given
    `present` `[B, M]`, the key's modality is present in the sample. Returns None (nothing
    masked), a static numpy `[nW, M n_q, M K]`, or with `present` `[B nW, M n_q, M K]`."""
    pairs = np.asarray(modality_mask, bool)
    m, n_k = pairs.shape[0], key_valid.shape[1]
    static = (
        pairs.repeat(n_q, axis=0).repeat(n_k, axis=1)[None] & np.tile(key_valid, (1, m))[:, None]
    )
    if present is None:
        return None if static.all() else np.where(static, 0.0, MASK_VALUE).astype(np.float32)
    key_present = jnp.repeat(present, n_k, axis=1)[:, None, None, :]  # [B, 1, 1, M K]
    ok = jnp.asarray(static)[None] & key_present
    return jnp.where(ok, 0.0, MASK_VALUE).astype(jnp.float32).reshape(-1, *static.shape[1:])


# --------------------------------------------------------------------------- modules


class CrossModalAttention(nn.Module):
    """Cross-scale cross-modal window attention at one stage.

    fine `[M, B, *F, C]` (every modality's stage-s map), coarse `[M, B, *F/2, C']` or None
    (stage s + 1), present `[B, M]` bool or None -> `[M, B, *F, C]`: fine + proj(attention).
    In each window (`window`, clamped to F, F padded to a multiple of it), the queries of
    modality m attend to the fine and coarse tokens of the modalities n with
    `modality_mask[m][n]`; padded and absent keys are masked. One set of projections for all
    modalities, with a learnt modality embedding on queries and keys and the positional MLP
    (`pos_hidden` units) on both grids (see the module docstring).
    """

    dim: int
    num_heads: int
    window: tuple[int, ...]
    modality_mask: tuple[tuple[int, ...], ...]
    pos_hidden: int = 32
    attention_impl: str = "auto"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, fine, coarse=None, present=None):
        m, b, *f = fine.shape[:-1]
        c, heads, dt = self.dim, self.num_heads, self.dtype
        hd = c // heads
        win = tuple(min(w, n) for w, n in zip(self.window, f))
        scales = [(fine, win, 1)]
        if coarse is not None:
            scales.append((coarse, tuple(w // 2 for w in win), 2))
        pos_in = nn.Dense(self.pos_hidden, dtype=dt, name="pos_in")
        pos_out = nn.Dense(c, dtype=dt, name="pos_out")
        mod_q = self.param("modality_q", nn.initializers.truncated_normal(0.02), (m, c))
        mod_k = self.param("modality_k", nn.initializers.truncated_normal(0.02), (m, c))

        def heads_of(x, groups, w):  # [M, B, *s, G * C] -> [G, M, B * nW, H, N, hd]
            x = window_partition_heads(x.reshape(m * b, *x.shape[2:]), w, groups, heads)
            return x.reshape(groups, m, -1, *x.shape[2:])

        def with_pos(x, coords, emb):  # x [M, W, H, N, hd] + pos [N, C] + modality [M, C]
            pos = (
                pos_out(nn.gelu(pos_in(jnp.asarray(coords, dt))))
                .reshape(-1, heads, hd)
                .transpose(1, 0, 2)
            )
            return x + pos[None, None] + emb.astype(dt).reshape(m, 1, heads, 1, hd)

        keys, values, valid = [], [], []
        for i, (x, w, step) in enumerate(scales):
            shape = x.shape[2:-1]
            x, _ = pad_to_multiple(x.reshape(m * b, *shape, x.shape[-1]), w)
            x = x.reshape(m, b, *x.shape[1:])
            h = nn.LayerNorm(epsilon=1e-5, dtype=dt, name=f"norm{i}")(x)
            coords = _window_coords(win, step)
            if i == 0:
                q = heads_of(nn.Dense(c, dtype=dt, name="q")(h), 1, w)[0]
                q = with_pos(q, coords, mod_q) * jnp.asarray(hd**-0.5, dt)
                padded = x.shape[2:-1]
            k, v = heads_of(nn.Dense(2 * c, dtype=dt, name=f"kv{i}")(h), 2, w)
            keys.append(with_pos(k, coords, mod_k))
            values.append(v)
            key_mask = window_key_mask(x.shape[2:-1], shape, w)  # padded keys: [nW, N_i]
            valid.append(None if key_mask is None else key_mask == 0)
        num_w, n_q = q.shape[1], q.shape[3]
        nw = num_w // b
        key_valid = np.concatenate(
            [
                np.ones((nw, key.shape[3]), bool) if ok is None else ok
                for ok, key in zip(valid, keys)
            ],
            axis=1,
        )
        # Queries [W, H, M * N, hd] and keys [W, H, M * (N + N'), hd], both modality-major.
        q = q.transpose(1, 2, 0, 3, 4).reshape(num_w, heads, m * n_q, hd)
        k = jnp.concatenate(keys, axis=3).transpose(1, 2, 0, 3, 4).reshape(num_w, heads, -1, hd)
        v = jnp.concatenate(values, axis=3).transpose(1, 2, 0, 3, 4).reshape(k.shape)
        mask = cross_attention_mask(self.modality_mask, key_valid, n_q, present)
        o = ops.window_attention(q, k, v, None, mask, impl=self.attention_impl)
        o = o.reshape(-1, heads, m, n_q, hd).transpose(2, 0, 1, 3, 4).reshape(-1, heads, n_q, hd)
        o = window_reverse_heads(o, win, padded)  # [M * B, *padded, C]
        o = crop_to(nn.Dense(c, dtype=dt, name="proj")(o), f)
        return fine + o.reshape(fine.shape).astype(fine.dtype)


def fusion_out_features(features: int, num_modalities: int) -> int:
    """Channels of a fused skip: `features` rounded up to a multiple of the modalities, so
    every group of the grouped conv has the same width."""
    return -(-features // num_modalities) * num_modalities


class AdaptiveFusion(nn.Module):
    """Learnt softmax-weighted modalities, then a grouped (or dense) conv.

    feats `[M, B, *F, C]`, present `[B, M]` bool or None -> `[B, *F, out]`,
    out = `fusion_out_features(features, M)`. Weights: softmax of a learnt `[M]` (zeros at
    init: equal weights) over the present modalities. "grouped": M groups of C -> out / M
    (kernel_size^d * C * out params); "dense": M C -> out (kernel_size^d * M * C * out). No
    bias: the decoder normalises right after. A 1x1 grouped conv is computed as one batched
    matmul (XLA:CPU runs feature_group_count convs far slower).
    """

    features: int
    mode: str = "grouped"
    kernel_size: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, feats, present=None):
        m, b, *f, c = feats.shape
        out = fusion_out_features(self.features, m)
        logits = self.param("modality_logits", nn.initializers.zeros, (m,))
        w = fusion_weights(logits, present).astype(self.dtype)  # [B or 1, M]
        x = feats.astype(self.dtype) * w.T.reshape(m, -1, *(1,) * (len(f) + 1))
        grouped = self.mode == "grouped"
        if grouped and self.kernel_size == 1:
            kernel = self.param(
                "kernel", nn.initializers.lecun_normal(batch_axis=(0,)), (m, c, out // m)
            )
            y = jnp.einsum("m...c,mcg->...mg", x, kernel.astype(self.dtype))
            return y.reshape(b, *f, out)
        x = jnp.moveaxis(x, 0, -2).reshape(b, *f, m * c)  # channels modality-major
        if self.kernel_size == 1:
            return nn.Dense(out, use_bias=False, dtype=self.dtype, name="dense")(x)
        return nn.Conv(
            out,
            (self.kernel_size,) * len(f),
            padding="SAME",
            feature_group_count=m if grouped else 1,
            use_bias=False,
            dtype=self.dtype,
            name="conv",
        )(x)
