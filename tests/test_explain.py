"""Explanation maps (jaxseg.explain_maps, python -m jaxseg.explain) against references that
do not come from the code under test:

- MONAI 1.6.1's `monai.visualize.GradCAM` on a small 2D classifier whose weights are
  copied from torch into the same network in Flax (as tests/models/test_monai_parity.py
  copies SwinUNETR's): the raw upsampled maps and MONAI's normalised ones;
- a hand-built model whose Seg-Grad-CAM is known in closed form (map = the input);
- every registry model, 2D and 3D: layers found, default layer before the head, a map;
- lightseg window attention: the recomputed weights times the values are the block's own
  attention output (the model's `ops.window_attention`), and the keys sit where the
  block's qkv projection put them;
- a tiny trained run on the 2D phantoms: the Adebayo et al. 2018 randomisation check,
  the map's mass inside the true structure against outside, and the command line end
  to end (NIfTI shape and affine as the input's, PNG, one-line errors with exit 2).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from jaxseg import cli, explain
from jaxseg import explain_maps as em
from jaxseg.config import load_config
from jaxseg.models import available_models, build_model
from tests.tiny_config import write_tiny_config

# --------------------------------------------------------------------------- MONAI's GradCAM


class _FlaxClassifier(nn.Module):
    """conv 3x3 (1 -> 4) - ReLU - conv 3x3 stride 2 (4 -> 6) - ReLU - global mean - dense 3."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), name="conv1")(x))
        x = nn.Conv(6, (3, 3), strides=2, padding=((1, 1), (1, 1)), name="conv2")(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(3, name="fc")(x)


def test_grad_cam_matches_monai_on_a_2d_classifier():
    torch = pytest.importorskip("torch")
    pytest.importorskip("monai", minversion="1.6.1")
    from monai.visualize import GradCAM

    torch.manual_seed(0)
    ref = torch.nn.Sequential()
    ref.add_module("conv1", torch.nn.Conv2d(1, 4, 3, padding=1))
    ref.add_module("relu1", torch.nn.ReLU())
    ref.add_module("conv2", torch.nn.Conv2d(4, 6, 3, stride=2, padding=1))
    ref.add_module("relu2", torch.nn.ReLU())
    ref.add_module("pool", torch.nn.AdaptiveAvgPool2d(1))
    ref.add_module("flat", torch.nn.Flatten())
    ref.add_module("fc", torch.nn.Linear(6, 3))
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    conv = lambda n: {"kernel": sd[f"{n}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"{n}.bias"]}
    params = {
        "conv1": conv("conv1"),
        "conv2": conv("conv2"),
        "fc": {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]},
    }
    x = np.random.default_rng(0).normal(size=(2, 16, 24, 1)).astype(np.float32)  # [B, X, Y, C]
    x_torch = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
    k = 2
    ours = em.grad_cam(
        _FlaxClassifier(), {"params": params}, x, "conv2", lambda logits: logits[:, k].sum()
    )
    raw = GradCAM(ref, target_layers="conv2", postprocessing=lambda m: m)(x_torch, class_idx=k)
    raw = raw.detach().numpy()[:, 0]  # [B, X, Y]
    assert raw.max() > 0
    # float32 on both sides; the maps are O(0.1): 1e-5 is a few ulps of their sums.
    np.testing.assert_allclose(np.asarray(ours), raw, rtol=1e-4, atol=1e-5)
    # MONAI's default normaliser maps (min, max) to (1, 0); ours to (0, 1).
    flipped = GradCAM(ref, target_layers="conv2")(x_torch, class_idx=k).detach().numpy()[:, 0]
    np.testing.assert_allclose(em.normalize_map(ours), 1.0 - flipped, atol=1e-4)


# --------------------------------------------------------------------------- a known answer


class _Scaled(nn.Module):
    """Logits [B, *S, 2]: class 0 = 0, class 1 = a * feature, feature = the input."""

    a: float = 3.0

    @nn.compact
    def __call__(self, x, train=False):
        feature = _Identity(name="feature")(x)
        return jnp.concatenate([jnp.zeros_like(feature), self.a * feature], axis=-1)


class _Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


@pytest.mark.parametrize("dims", [2, 3])
def test_seg_grad_cam_has_the_closed_form_answer(dims):
    """Score = sum_region a * A, so dScore/dA = a * region, w = a * |region| / |S| and the
    map is ReLU(w * A): the positive part of the input, scaled."""
    rng = np.random.default_rng(1)
    shape = (1, *(8,) * dims, 1)
    x = rng.normal(size=shape).astype(np.float32)
    region = np.zeros(shape[:-1], np.float32)
    region[(0, *(slice(2, 5),) * dims)] = 1.0
    cam = np.asarray(em.grad_cam(_Scaled(), {}, x, "feature", em.seg_score, (1, region)))
    expected = 3.0 * region.sum() / region.size * np.maximum(x[..., 0], 0)
    np.testing.assert_allclose(cam, expected, rtol=1e-6, atol=1e-7)
    # Class 0 does not depend on the feature: no evidence anywhere.
    assert not np.asarray(em.grad_cam(_Scaled(), {}, x, "feature", em.seg_score, (0, region))).any()


# --------------------------------------------------------------------------- the registry


_GRID = {2: (1, 32, 32, 1), 3: (1, 16, 16, 16, 1)}
_2D_ONLY = ("deeplabv3plus", "transunet")


_FAST = ("unet",)  # the default suite's Grad-CAM; the others compile for 10-40 s each


def _registry_cases(fast=lambda name, dims: dims == 2):
    for name in available_models():
        for dims in (2, 3):
            if dims == 3 and name in _2D_ONLY:
                continue
            marks = [] if fast(name, dims) else [pytest.mark.slow]
            yield pytest.param(name, dims, marks=marks)


def _tiny(name, dims):
    extra = {"img_size": _GRID[dims][1]} if name == "unetr" else {}
    return build_model(name, dims=dims, in_channels=1, num_classes=3, **extra)


@pytest.mark.parametrize("name,dims", list(_registry_cases()))
def test_registry_model_has_layers_and_a_default_before_the_head(name, dims):
    """Shapes only (nothing compiled)."""
    model = _tiny(name, dims)
    x = jnp.zeros(_GRID[dims])
    layers = em.feature_layers(model, None, x, train=False)  # traced through init
    names = [layer.name for layer in layers]
    default = em.default_layer(layers, 3)
    assert all(len(layer.shape) == dims + 2 for layer in layers)
    # Everything called after the default layer is the head (num_classes channels).
    after = layers[names.index(default) + 1 :]
    assert after and all(layer.channels == 3 for layer in after), (default, after)


@pytest.mark.parametrize(
    "name,dims", list(_registry_cases(lambda name, dims: dims == 2 and name in _FAST))
)
def test_registry_model_gives_a_grad_cam(name, dims):
    model = _tiny(name, dims)
    x = jnp.asarray(np.random.default_rng(0).normal(size=_GRID[dims]).astype(np.float32))
    key = jax.random.key(0, impl="unsafe_rbg")  # compiles faster than threefry
    variables = jax.jit(lambda x: model.init(key, x, train=False))(x)
    layer = em.default_layer(em.feature_layers(model, variables, x, train=False), 3)
    region = np.ones(_GRID[dims][:-1], np.float32)
    cam = np.asarray(
        em.grad_cam(model, variables, x, layer, em.seg_score, (1, region), train=False)
    )
    assert cam.shape == _GRID[dims][:-1] and np.isfinite(cam).all() and cam.min() >= 0
    assert cam.max() > 0


# --------------------------------------------------------------------------- window attention


def _block_outputs(model, variables, x, block):
    """The block's qkv output and its proj input (= the attention output, heads
    concatenated), captured by this test's own interceptor."""

    def run(variables, x):
        seen = {}

        def interceptor(next_fun, args, kwargs, context):
            name = "/".join(context.module.path)
            if context.method_name == "__call__" and name == f"{block}/proj":
                seen["attended"] = args[0]
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and name == f"{block}/qkv":
                seen["qkv"] = out
            return out

        with nn.intercept_methods(interceptor):
            model.apply(variables, x, train=False)
        return seen["qkv"], seen["attended"]

    qkv, attended = jax.jit(run)(variables, x)
    return np.asarray(qkv), np.asarray(attended)


@pytest.mark.parametrize(
    "dims,block,shift,args",
    [
        pytest.param(2, "stage0_block0", (0, 0), {}, marks=pytest.mark.slow),  # plain windows
        (2, "stage0_block1", (4, 4), {}),  # shifted windows (w = 8 on a 16 x 16 map)
        (2, "stage0_block1", (0, 0), {"halo": 2}),  # halo keys, no shift
        (3, "stage0_block1", (2, 2, 2), {}),  # 3D shifted (w = 4 on 8^3)
    ],
)
def test_attention_weights_reproduce_the_blocks_attention(dims, block, shift, args):
    # One stage of two blocks (as lightseg_tiny's first): a small graph compiles fast.
    small = dict(embed_dims=(16,), depths=(2,), num_heads=(2,), stem_dims=(8, 8))
    model = build_model("lightseg_tiny", dims=dims, in_channels=1, num_classes=2, **small, **args)
    size = 64 if dims == 2 else 32
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, *(size,) * dims, 1)), jnp.float32)
    # Random parameters straight from numpy: compiling `init` would cost more than the test.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(3)
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(0.3 * rng.normal(size=a.shape), a.dtype), shapes
    )
    qkv, attended = _block_outputs(model, variables, x, block)
    axes = tuple(range(1, dims + 1))
    # The block works on the map rolled by -shift; roll back to the map's own positions.
    qkv, attended = np.roll(qkv, shift, axes)[0], np.roll(attended, shift, axes)[0]
    inner = attended.shape[-1]
    heads = 2
    for query in [(0,) * dims, (size - 1,) * dims, (13, 30, 20)[:dims]]:
        att = em.query_attention(model, variables, x, block, query)
        token = tuple(q // 4 for q in query)  # stage 0 has stride 4
        np.testing.assert_allclose(att.weights.sum(-1), 1.0, rtol=1e-5)
        got = np.einsum("hm,hmd->hd", att.weights, att.values).reshape(-1)
        np.testing.assert_allclose(got, attended[token], rtol=2e-4, atol=2e-5)
        # The values are the qkv projection at the keys' positions (valid keys).
        pos = att.positions[att.valid]
        v_ref = qkv[tuple(pos.T)][:, 2 * inner :].reshape(len(pos), heads, -1)
        np.testing.assert_allclose(
            att.values[:, att.valid], v_ref.transpose(1, 0, 2), rtol=1e-5, atol=1e-5
        )
        amap = em.attention_map(model, variables, x, block, query)
        assert amap.shape == x.shape[1:-1] and np.isclose(amap.max(), amap.max()) and amap.max() > 0


def test_attention_blocks_of_a_model_without_window_attention_are_none():
    model = build_model("unet", dims=2, in_channels=1, num_classes=2)
    x = jnp.zeros((1, 32, 32, 1))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    assert em.attention_blocks(model, variables, x) == []


# --------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def run(phantom_2d, tmp_path_factory):
    """A tiny U-Net trained on the 2D phantoms, with a 48 x 48 patch so that one window
    holds a whole 40 x 48 case."""
    from jaxseg.training.loop import train

    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    write_tiny_config(
        path,
        phantom_2d,
        steps=40,
        every=40,
        patch_size=(48, 48),
        batch_size=4,
        settings={"eval.tta": False, "train.learning_rate": 3e-3},
    )
    workdir = tmp_path_factory.mktemp("run") / "w"
    train(load_config(path), workdir)
    return workdir


@pytest.fixture(scope="module")
def case(phantom_2d):
    image = phantom_2d / "imagesTs" / "phantom_010.nii.gz"
    label = phantom_2d / "labelsTs" / "phantom_010.nii.gz"
    return image, label


def _mass_ratio(cam: np.ndarray, inside: np.ndarray) -> float:
    """Map mass per unit area inside the structure over that outside it."""
    return float(cam[inside].mean() / max(cam[~inside].mean(), 1e-12))


def _corr(a, b) -> float:
    a, b = np.ravel(a) - np.mean(a), np.ravel(b) - np.mean(b)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def test_map_changes_when_the_weights_are_randomised_and_sits_on_the_structure(run, case):
    from jaxseg.data import io

    explainer = em.Explainer(run)
    image = io.read_image(case[0], dims=2)
    label = io.read_label(case[1], dims=2)[0]
    organ = label > 0  # the organ with its lesion: class 1's structure
    trained = explainer.explain(image, 1, roi=organ)
    assert trained.shape == label.shape and 0 <= trained.min() and trained.max() == 1
    assert _mass_ratio(trained, organ) > 1.5
    # Re-initialised weights (jitted, with a key that compiles fast: eager init is ~10 s).
    model, x = explainer.run.model, jnp.zeros((1, 48, 48, 1))
    key = jax.random.key(1, impl="unsafe_rbg")
    explainer.variables = jax.jit(lambda k: model.init(k, x, train=False))(key)
    randomised = _corr(trained, explainer.explain(image, 1, roi=organ))
    assert randomised < 0.5, randomised


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.run(explain.main, argv)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_cli_writes_an_aligned_map_and_an_overlay(run, case, tmp_path, capsys):
    image, label = case
    out = tmp_path / "maps" / "organ.nii.gz"
    code, stdout, _ = _cli(
        ["--workdir", str(run), "--input", str(image), "--class", "organ", "--output", str(out)],
        capsys,
    )
    assert code == 0
    written = stdout.split()
    assert written[0] == str(out) and written[1] == str(tmp_path / "maps" / "organ_slice0.png")
    src, got = nib.load(image), nib.load(out)
    assert got.shape == src.shape and got.get_data_dtype() == np.float32
    np.testing.assert_allclose(got.affine, src.affine)
    cam = np.asarray(got.dataobj)
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0)
    # Aligned: on the files as stored, the map's mass sits on the labelled organ.
    assert _mass_ratio(cam, np.asarray(nib.load(label).dataobj) > 0) > 1.5
    from PIL import Image

    # The overlay shows the canonical (RAS) slice: x across, y up.
    assert Image.open(written[1]).size == nib.as_closest_canonical(src).shape[:2]
    code, stdout, _ = _cli(["--workdir", str(run), "--list-layers"], capsys)
    assert code == 0 and "(default)" in stdout and "head" in stdout


def test_cli_bad_input_exits_2_with_one_line(run, case, tmp_path, capsys):
    image, _ = case
    base = ["--workdir", str(run), "--input", str(image), "--output", str(tmp_path / "m.nii.gz")]
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((10, 10), np.uint8), np.eye(4)), small)
    cases = [
        (["--class", "7"], ["--class 7", "0 background", "1 organ", "3 core"]),
        (["--class", "1", "--layer", "nope"], ["'nope'", "head"]),
        (["--class", "1", "--roi", str(small)], ["(10, 10)", "differs from the input"]),
        (["--class", "1", "--method", "attention", "--query", "3,4"], ["unet", "no window"]),
    ]
    for extra, words in cases:
        code, _, err = _cli(base + extra, capsys)
        assert code == 2 and err.count("\n") == 1, (extra, err)
        assert all(w in err for w in words), (extra, err)
    same = ["--workdir", str(run), "--input", str(image), "--class", "1", "--output", str(image)]
    code, _, err = _cli(same, capsys)
    assert code == 2 and "is the input" in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_attention_map_of_a_lightseg_run(phantom_2d, tmp_path, capsys):
    """A 2-step lightseg_tiny run: --method attention writes an aligned map whose support
    is around the query (the shifted and plain windows of stage 0 hold it)."""
    from jaxseg.training.loop import train

    config = write_tiny_config(
        tmp_path / "light.py",
        phantom_2d,
        steps=2,
        features=None,
        patch_size=(32, 32),
        settings={"model.name": "lightseg_tiny", "eval.tta": False},
    )
    workdir = tmp_path / "w"
    train(load_config(config), workdir)
    image = phantom_2d / "imagesTs" / "phantom_010.nii.gz"
    out = tmp_path / "att.nii.gz"
    argv = ["--workdir", str(workdir), "--input", str(image), "--class", "1"]
    code, stdout, _ = _cli(
        [*argv, "--output", str(out), "--method", "attention", "--query", "20,20"], capsys
    )
    assert code == 0, stdout
    src, got = nib.load(image), nib.load(out)
    assert got.shape == src.shape
    np.testing.assert_allclose(got.affine, src.affine)
    cam = np.asarray(got.dataobj)[..., 0] if got.ndim == 3 else np.asarray(got.dataobj)
    assert cam[20, 20] > 0 and cam.max() == pytest.approx(1.0)
    code, stdout, _ = _cli(
        ["--workdir", str(workdir), "--list-layers", "--method", "attention"], capsys
    )
    assert code == 0 and "stage0_block1  [1, 8, 8, 32]  (default)" in stdout
