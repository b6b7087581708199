"""lightseg_fusion: multimodal LightSeg with cross-scale cross-modal attention (the blocks
are in `jaxseg.models.fusion_blocks`).

Each input channel is one modality (CT and MRI, PET and CT, the MRI sequences of BraTS):
x `[B, *S, M]`. Layout:

  encoders  LightSeg's stem and stages (`LightSeg._encode`) on every modality alone, one
            encoder per modality or one shared (`share_encoders`): maps at strides
            1, 2 (stem) and 4 * 2^s (stage s), per modality.
  cross     at every stage s, `CrossModalAttention`: the tokens of modality m, in windows of
            the stage's window size w, attend to the tokens of the allowed modalities
            (`modality_mask[m]`) in the same window at stage s AND at stage s + 1 (the
            coarser map, whose w/2 tokens per axis cover the same region). A learnt
            positional encoding, a small MLP on the window-normalised coordinates of the
            token centres (fine: (p + 1/2) / w, coarse: (2q + 1) / w, both mapped to
            [-1, 1]), puts both grids into one frame; a learnt modality embedding tells the
            keys apart. The deepest stage has same-scale keys only.
  fusion    at every level (stem and stages), `AdaptiveFusion`: learnt softmax weights per
            modality and level, then a grouped 1x1 (or kxk) conv, groups = M, into the
            decoder's skip (`fusion="dense"`: one dense conv over all modalities instead).
  decoder   LightSeg's decoder and head (`LightSeg._decode`) on the fused maps.
  class     optional (`num_case_classes` > 0): LayerNorm + Dense on the fused deepest map,
            mean-pooled over the tokens that hold image.

Missing modalities: `presence` `[B, M]` bool. An absent modality's channel is replaced by
zeros (so NaNs there are harmless), its tokens are masked out of every attention's keys,
and its fusion weight is 0 with the others renormalised (softmax over the present ones).
Nothing of an absent channel reaches the output. `modality_dropout` drops each modality of
each training sample with that probability (never all of a sample's present ones).

Cost (T tokens of a stage per modality, C channels, window N = w^d tokens, M modalities,
all pairs allowed): the queries of all M modalities of a window attend together to
M (N + N / 2^d) keys, so the attention costs ~4 T M^2 N (1 + 2^-d) C flops a stage, i.e.
about M (1 + 2^-d) times one window-attention block's attention on each modality's
tokens; the projections ~2 T M C^2 (q, kv, out) + 4 (T / 2^d) M (2C) C (coarse kv). A
modality mask with zeros saves nothing (masked keys are computed, then get weight 0).
The fusion costs ~2 T C C_out flops a level grouped against ~2 T M C C_out dense.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models.fusion_blocks import (
    AdaptiveFusion,
    CrossModalAttention,
    drop_modalities,
    fusion_out_features,
    fusion_weights,
)
from jaxseg.models.layers import check_input, crop_to, pad_to_multiple
from jaxseg.models.lightseg import LightSeg, default_window_sizes

__all__ = [
    "AdaptiveFusion",
    "CrossModalAttention",
    "LightSegFusion",
    "drop_modalities",
    "fusion_out_features",
    "fusion_weights",
]

Dtype = Any
FUSIONS = ("grouped", "dense")
# LightSeg fields a fusion model passes to its encoders and decoder unchanged (pruning's
# per-block widths are left out: structured pruning supports plain LightSeg only).
BACKBONE_FIELDS = (
    "embed_dims",
    "depths",
    "num_heads",
    "window_sizes",
    "stem_dims",
    "mlp_ratio",
    "drop_path",
    "shift_windows",
    "halo",
    "cross_window_layers",
    "global_tokens",
    "topk",
    "topk_windows",
    "share_params",
    "rank",
    "norm",
    "depthwise_kernel",
    "decoder_refine_kernel",
    "attention_impl",
    "depthwise_impl",
    "dtype",
    "remat",
)


class _ModalityEncoder(LightSeg):
    """LightSeg's stem and stages on one modality `[B, *S, 1]` (S a multiple of the total
    stride) -> its maps at every level: [stride 1, stride 2, stage 0, ..., stage K-1]."""

    training: bool = False

    @nn.compact
    def __call__(self, x):
        deepest, skips = self._encode(x, self.training)
        return [*skips, deepest]


class _Decoder(LightSeg):
    """LightSeg's decoder and head on the fused maps of `_ModalityEncoder`'s levels."""

    @nn.compact
    def __call__(self, levels, shape):
        return self._decode(levels[-1], levels[:-1], shape)


class LightSegFusion(nn.Module):
    """Multimodal LightSeg (see the module docstring): one encoder per modality, cross-scale
    cross-modal attention, adaptive grouped fusion, LightSeg's decoder; optional case
    classification head.

    Args:
      dims: 2 or 3 spatial axes.
      in_channels: M, the modalities (one channel each), in dataset.json's channel order.
      num_classes: K segmentation classes (background included).
      share_encoders: one encoder's weights for every modality (modalities are folded into
        the batch) instead of M encoders (stacked weights `[M, ...]`, run by `nn.vmap`).
      cross_attention: the cross-scale cross-modal attention at every stage; False: the
        encoders meet only in the fusion.
      modality_mask: `[M, M]` tuple of tuples of 0/1, row m = the modalities whose tokens
        modality m's queries may attend to; the diagonal must be 1 (a modality always sees
        itself, so a present modality always has keys). None = all ones.
        `((1, 0), (0, 1))`: no cross-modal attention, each modality attends to itself.
      pos_hidden: hidden units of the positional-encoding MLP.
      fusion: "grouped" (groups = M) or "dense", the conv of every `AdaptiveFusion`.
      fusion_kernel: its kernel size (odd); 1 = a (grouped) matmul.
      modality_dropout: in training (train=True, the "dropout" rng), the probability that
        each modality of a sample is dropped; never all of them. In [0, 1).
      num_case_classes: classes of the case classification head on the pooled bottleneck;
        0 = no head.
      embed_dims, depths, num_heads, window_sizes, ...: LightSeg's (`BACKBONE_FIELDS`),
        passed to every encoder and the decoder. The stage windows (but the deepest's) must
        be even: the coarse keys are the w / 2 tokens of stage s + 1 under a window.

    Call: `model.apply(variables, x, train=False, presence=None, with_class_logits=False)`,
    x `[B, *S, M]` float, presence `[B, M]` bool (default all present) -> logits
    `[B, *S, K]` float32, or `(logits, class_logits [B, num_case_classes])` with
    `with_class_logits=True`. A presence row with no modality is a ValueError when its
    values are known (outside jit); inside jit it gives NaN logits.

    Examples::

        >>> model = LightSegFusion(dims=2, in_channels=2, num_classes=3, num_case_classes=2)
        >>> x = jnp.zeros((1, 64, 64, 2))
        >>> variables = model.init(jax.random.key(0), x)
        >>> seg = model.apply(variables, x)  # [1, 64, 64, 3]
        >>> present = jnp.array([[True, False]])  # modality 1 missing
        >>> seg, cls = model.apply(variables, x, presence=present, with_class_logits=True)
    """

    dims: int
    in_channels: int
    num_classes: int
    share_encoders: bool = False
    cross_attention: bool = True
    modality_mask: tuple[tuple[int, ...], ...] | None = None
    pos_hidden: int = 32
    fusion: str = "grouped"
    fusion_kernel: int = 1
    modality_dropout: float = 0.0
    num_case_classes: int = 0
    # LightSeg's fields (BACKBONE_FIELDS), with LightSeg's defaults; see jaxseg.models.lightseg.
    embed_dims: tuple[int, ...] = LightSeg.embed_dims
    depths: tuple[int, ...] = LightSeg.depths
    num_heads: tuple[int, ...] = LightSeg.num_heads
    window_sizes: tuple | None = LightSeg.window_sizes
    stem_dims: tuple[int, int] = LightSeg.stem_dims
    mlp_ratio: float = LightSeg.mlp_ratio
    drop_path: float = LightSeg.drop_path
    shift_windows: bool | None = LightSeg.shift_windows
    halo: int | tuple[int, ...] = LightSeg.halo
    cross_window_layers: tuple[int, ...] | None = LightSeg.cross_window_layers
    global_tokens: int = LightSeg.global_tokens
    topk: int | None = LightSeg.topk
    topk_windows: int | None = LightSeg.topk_windows
    share_params: bool = LightSeg.share_params
    rank: int | None = LightSeg.rank
    norm: str = LightSeg.norm
    depthwise_kernel: int = LightSeg.depthwise_kernel
    decoder_refine_kernel: int | tuple[int, ...] | None = LightSeg.decoder_refine_kernel
    attention_impl: str = LightSeg.attention_impl
    depthwise_impl: str = LightSeg.depthwise_impl
    dtype: Dtype = jnp.float32
    remat: bool = LightSeg.remat
    model_name: str = "lightseg_fusion"  # registry name, used in error messages

    def __post_init__(self):
        mask = self.modality_mask
        if isinstance(mask, (list, tuple)) and all(isinstance(r, (list, tuple)) for r in mask):
            # Read back from config.json, the rows are lists: hashable tuples, as configs give.
            object.__setattr__(self, "modality_mask", tuple(tuple(r) for r in mask))
        super().__post_init__()
        self._validate()

    def _backbone(self, cls, **kwargs) -> LightSeg:
        """An (unbound unless named) LightSeg-derived module with this model's backbone fields."""
        fields = {f: getattr(self, f) for f in BACKBONE_FIELDS}
        return cls(dims=self.dims, model_name=self.model_name, **fields, **kwargs)

    def mask(self) -> np.ndarray:
        """`modality_mask` resolved: bool `[M, M]`."""
        m = self.in_channels
        if self.modality_mask is None:
            return np.ones((m, m), bool)
        return np.asarray(self.modality_mask, bool)

    def _validate(self):
        n, m = self.model_name, self.in_channels
        # The backbone's own checks (ConfigError naming the LightSeg field).
        self._backbone(
            LightSeg, in_channels=1, num_classes=self.num_classes, parent=None
        )._validate()
        mask = self.modality_mask
        if mask is not None:
            rows = [tuple(r) for r in mask] if isinstance(mask, (tuple, list)) else None
            if rows is None or len(rows) != m or any(len(r) != m for r in rows):
                raise ConfigError(
                    f"{n}: modality_mask must be {m} rows of {m} (one per modality, in_channels="
                    f"{m}); got {mask!r}."
                )
            if any(v not in (0, 1) or isinstance(v, float) for r in rows for v in r):
                raise ConfigError(f"{n}: modality_mask entries must be 0 or 1; got {mask!r}.")
            lonely = [i for i in range(m) if rows[i][i] != 1]
            if lonely:
                raise ConfigError(
                    f"{n}: modality_mask[{lonely[0]}][{lonely[0]}] is 0: a modality always "
                    "attends to its own tokens (so a lone present modality still has keys); "
                    f"set the diagonal to 1 (use ((1, 0), (0, 1)) for no cross-modal "
                    f"attention); got {mask!r}."
                )
        if self.fusion not in FUSIONS:
            raise ConfigError(
                f"{n}: fusion must be one of {', '.join(map(repr, FUSIONS))}; got {self.fusion!r}."
            )
        k = self.fusion_kernel
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ConfigError(f"{n}: fusion_kernel must be an odd int >= 1; got {k!r}.")
        r = self.modality_dropout
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0.0 <= r < 1.0:
            raise ConfigError(f"{n}: modality_dropout must be in [0, 1); got {r!r}.")
        c = self.num_case_classes
        if not isinstance(c, int) or isinstance(c, bool) or c < 0 or c == 1:
            raise ConfigError(
                f"{n}: num_case_classes must be 0 (no classification head) or >= 2; got {c!r}."
            )
        if self.pos_hidden < 1:
            raise ConfigError(f"{n}: pos_hidden must be >= 1; got {self.pos_hidden!r}.")
        if self.cross_attention:
            windows = self._windows()
            odd = [i for i, w in enumerate(windows[:-1]) if any(v % 2 for v in w)]
            if odd:
                raise ConfigError(
                    f"{n}: window_sizes of stage {odd[0]} is {windows[odd[0]]}: with "
                    "cross_attention the windows of every stage but the deepest must be even "
                    "(the coarse keys are the w / 2 tokens of the next stage under a window)."
                )

    def _windows(self) -> list[tuple[int, ...]]:
        ws = self.window_sizes or default_window_sizes(self.dims, len(self.embed_dims))
        return [(w,) * self.dims if isinstance(w, int) else tuple(w) for w in ws]

    @property
    def total_stride(self) -> int:
        return 4 * 2 ** (len(self.embed_dims) - 1)

    def _presence(self, presence, batch: int):
        """`presence` -> `[B, M]` bool (jnp), checked: shape; no empty row when concrete."""
        m = self.in_channels
        p = jnp.asarray(presence).astype(bool)
        if p.shape != (batch, m):
            raise ValueError(
                f"{self.model_name}: presence must be [B, M] = [{batch}, {m}] (one bool per "
                f"sample and modality); got shape {tuple(p.shape)}."
            )
        try:
            known = np.asarray(p)
        except jax.errors.TracerArrayConversionError:
            return p  # traced: an empty row shows as NaN logits
        empty = np.flatnonzero(~known.any(axis=1))
        if empty.size:
            raise ValueError(
                f"{self.model_name}: presence row {int(empty[0])} marks every modality absent; "
                "at least one modality per sample must be present."
            )
        return p

    @nn.compact
    def __call__(self, x, *, train: bool = False, presence=None, with_class_logits: bool = False):
        """x `[B, *S, M]` -> logits `[B, *S, K]` float32 (and class logits `[B, C]`)."""
        check_input(x, model=self.model_name, dims=self.dims, in_channels=self.in_channels)
        if with_class_logits and not self.num_case_classes:
            raise ConfigError(
                f"{self.model_name}: with_class_logits=True needs a classification head; set "
                "num_case_classes (model.args.num_case_classes) to the number of case classes."
            )
        m, b, dt = self.in_channels, x.shape[0], self.dtype
        present = None if presence is None else self._presence(presence, b)
        if train and self.modality_dropout > 0:
            full = jnp.ones((b, m), bool) if present is None else present
            present = drop_modalities(self.make_rng("dropout"), full, self.modality_dropout)
        x = x.astype(dt)
        if present is not None:  # an absent channel may hold anything, NaN included
            x = jnp.where(present.reshape(b, *(1,) * self.dims, m), x, 0)
        x, shape = pad_to_multiple(x, self.total_stride)
        per_mod = jnp.moveaxis(x, -1, 0)[..., None]  # [M, B, *S, 1]

        enc_args = dict(in_channels=1, num_classes=1, training=train, name="encoder")
        if self.share_encoders:  # modalities folded into the batch: one set of weights
            levels = self._backbone(_ModalityEncoder, **enc_args)(
                per_mod.reshape(m * b, *x.shape[1:-1], 1)
            )
            levels = [f.reshape(m, b, *f.shape[1:]) for f in levels]
        else:
            encoders = nn.vmap(
                _ModalityEncoder,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=0,
                out_axes=0,
                axis_size=m,
            )
            levels = self._backbone(encoders, **enc_args)(per_mod)

        stages = levels[2:]
        if self.cross_attention:
            mask = tuple(tuple(int(v) for v in r) for r in self.mask())
            stages = [
                CrossModalAttention(
                    dim,
                    heads,
                    win,
                    mask,
                    self.pos_hidden,
                    self.attention_impl,
                    dt,
                    name=f"cross{s}",
                )(f, stages[s + 1] if s + 1 < len(stages) else None, present)
                for s, (f, dim, heads, win) in enumerate(
                    zip(stages, self.embed_dims, self.num_heads, self._windows())
                )
            ]
        widths = (*self.stem_dims, *self.embed_dims)
        fused = [
            AdaptiveFusion(c, self.fusion, self.fusion_kernel, dt, name=f"fusion{level}")(
                f, present
            )
            for level, (f, c) in enumerate(zip([*levels[:2], *stages], widths))
        ]
        decoder = self._backbone(
            _Decoder, in_channels=m, num_classes=self.num_classes, name="decoder"
        )
        logits = decoder(fused, shape)
        if not with_class_logits:
            if self.num_case_classes:  # the head's params exist whichever way the model is called
                self._classify(fused[-1], shape)
            return logits
        return logits, self._classify(fused[-1], shape)

    def _classify(self, deepest, shape):
        """Class logits `[B, num_case_classes]` float32 from the fused deepest map, mean-pooled
        over the tokens that cover image (not only the padding to the total stride)."""
        valid = crop_to(deepest, [-(-n // self.total_stride) for n in shape])
        pooled = valid.mean(axis=tuple(range(1, valid.ndim - 1)))
        pooled = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="class_norm")(pooled)
        return nn.Dense(self.num_case_classes, dtype=self.dtype, name="class_head")(pooled).astype(
            jnp.float32
        )
