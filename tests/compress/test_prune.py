"""Structured pruning: the sliced tree against hand slicing, the pruned forward against the
dense model with the dropped heads and channels masked out, Taylor scores against finite
differences, bad ratios, and a pruned workdir that loads as an ordinary run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg import losses
from jaxseg.compress import prune
from jaxseg.errors import ConfigError
from jaxseg.workdir import load_trained

# Per block: kept heads (stage 0 has 4 heads of width 4, stage 1 has 2 of width 8) and
# kept MLP channels (32 in stage 0, 32 in stage 1: mlp_ratio 2 on 16 channels).
PLAN = {
    "stage0_block0": {"heads": np.array([0, 2]), "channels": np.arange(0, 32, 2)},
    "stage0_block1": {"heads": np.array([1, 2, 3]), "channels": np.array([3, 5, 30])},
    "stage1_block0": {"heads": np.array([1]), "channels": np.arange(7, 27)},
}
HEADS = {"stage0_block0": (4, 4), "stage0_block1": (4, 4), "stage1_block0": (2, 8)}


def hand_sliced(params):
    out = jax.tree_util.tree_map(np.asarray, params)
    out = {k: dict(v) for k, v in out.items()}
    for name, keep in PLAN.items():
        h, d = HEADS[name]
        p = {k: dict(v) if isinstance(v, dict) else v for k, v in out[name].items()}
        c = p["qkv"]["kernel"].shape[0]
        p["qkv"]["kernel"] = (
            p["qkv"]["kernel"].reshape(c, 3, h, d)[:, :, keep["heads"]].reshape(c, -1)
        )
        p["qkv"]["bias"] = p["qkv"]["bias"].reshape(3, h, d)[:, keep["heads"]].reshape(-1)
        p["proj"]["kernel"] = p["proj"]["kernel"].reshape(h, d, -1)[keep["heads"]].reshape(-1, c)
        p["relative_position_bias_table"] = p["relative_position_bias_table"][:, keep["heads"]]
        p["fc1"]["kernel"] = p["fc1"]["kernel"][:, keep["channels"]]
        p["fc1"]["bias"] = p["fc1"]["bias"][keep["channels"]]
        p["fc2"]["kernel"] = p["fc2"]["kernel"][keep["channels"]]
        out[name] = p
    return out


def head_masked(params):
    """The dense tree with the dropped heads' outputs and channels zeroed (a 0/1 head mask
    on proj's input rows, a 0/1 channel mask on fc2's input rows)."""
    out = jax.tree_util.tree_map(np.array, params)
    for name, keep in PLAN.items():
        h, d = HEADS[name]
        head_mask = np.zeros(h, np.float32)
        head_mask[keep["heads"]] = 1
        w = out[name]["proj"]["kernel"]
        out[name]["proj"]["kernel"] = (w.reshape(h, d, -1) * head_mask[:, None, None]).reshape(
            w.shape
        )
        ch_mask = np.zeros(out[name]["fc2"]["kernel"].shape[0], np.float32)
        ch_mask[keep["channels"]] = 1
        out[name]["fc2"]["kernel"] = out[name]["fc2"]["kernel"] * ch_mask[:, None]
    return out


def test_pruned_tree_matches_hand_slicing_and_masked_forward(tiny_run):
    _, model, params = tiny_run
    args, pruned = prune.prune_params(model, params, PLAN)
    assert args == {"block_heads": (2, 3, 1), "block_mlp_hidden": (16, 3, 20)}
    ref = hand_sliced(params)
    assert jax.tree_util.tree_structure(pruned) == jax.tree_util.tree_structure(ref)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(pruned), jax.tree_util.tree_leaves(ref)
    ):
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))

    small = model.clone(**args)
    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 1))
    # The smaller architecture initialises to exactly the pruned tree's shapes.
    shapes = jax.eval_shape(lambda: small.init(jax.random.key(0), x)["params"])
    assert jax.tree_util.tree_map(lambda s: s.shape, shapes) == jax.tree_util.tree_map(
        np.shape, pruned
    )
    got = jax.jit(small.apply)({"params": pruned}, x)
    dense_fn = jax.jit(model.apply)
    want = dense_fn({"params": head_masked(params)}, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # ... and the masking is not vacuous: the unmasked dense model differs.
    dense = dense_fn({"params": params}, x)
    assert float(jnp.abs(dense - want).max()) > 1e-3


def test_taylor_head_and_channel_scores_match_finite_differences(tiny_run):
    _, model, params = tiny_run
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 1))
    labels = rng.integers(0, model.num_classes, size=(2, 32, 32)).astype(np.int32)
    scores = prune.taylor_scores(model, params, images.astype(np.float32), labels, batch_size=2)
    with jax.enable_x64(True):
        # Central differences of the loss in float64 (the f32 loss barely moves at eps).
        model64 = model.clone(dtype=jnp.float64)
        loss = jax.jit(
            lambda p: losses.dice_ce_loss(
                model64.apply({"params": p}, jnp.asarray(images)), jnp.asarray(labels)
            )[0]
        )

        def scaled(name, what, index, factor):
            p = jax.tree_util.tree_map(lambda a: np.array(a, np.float64), params)
            if what == "heads":
                h, d = HEADS[name]
                w = p[name]["proj"]["kernel"].reshape(h, d, -1)
                w[index] *= factor
                p[name]["proj"]["kernel"] = w.reshape(h * d, -1)
            else:
                p[name]["fc2"]["kernel"][index] *= factor
            return p

        eps = 1e-2
        for name, what, index in [
            ("stage0_block0", "heads", 1),
            ("stage1_block0", "heads", 0),
            # The channel with the largest effect: small ones vanish in the f32 loss.
            ("stage0_block1", "channels", int(np.argmax(scores["stage0_block1"]["channels"]))),
        ]:
            up = float(loss(scaled(name, what, index, 1 + eps)))
            down = float(loss(scaled(name, what, index, 1 - eps)))
            fd = abs(up - down) / (2 * eps)
            assert fd > 1e-7, (name, what, fd)
            assert scores[name][what][index] == pytest.approx(fd, rel=0.02), (name, what)


def test_plan_keeps_the_highest_scores_and_rejects_bad_ratios(tiny_run):
    _, model, params = tiny_run
    head_scores = {n: np.arange(h, dtype=float)[::-1] for n, (h, _) in HEADS.items()}
    channel_scores = prune.mlp_channel_importance(model, params, score="l1")
    # L1 of fc1's columns, from the weights alone.
    np.testing.assert_allclose(
        channel_scores["stage0_block0"],
        np.abs(np.asarray(params["stage0_block0"]["fc1"]["kernel"])).sum(0),
        rtol=1e-6,
    )
    plan = prune.pruning_plan(model, head_scores, channel_scores, heads=0.5, channels=0.25)
    assert plan["stage0_block0"]["heads"].tolist() == [0, 1]
    assert plan["stage1_block0"]["heads"].tolist() == [0]
    top = np.argsort(-channel_scores["stage0_block1"])[:24]
    assert plan["stage0_block1"]["channels"].tolist() == sorted(top.tolist())

    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="in \\[0, 1\\)"):
            prune.pruning_plan(model, head_scores, channel_scores, heads=bad, channels=0.0)
    # 0.8 of stage 1's 2 heads rounds to 2: none left, and the message names the block.
    with pytest.raises(ConfigError, match="stage1_block0.*2 heads would leave none"):
        prune.pruning_plan(model, head_scores, channel_scores, heads=0.8, channels=0.0)


def test_prune_workdir_writes_an_ordinary_smaller_run(tiny_run, tmp_path):
    workdir, model, params = tiny_run
    out = tmp_path / "pruned"
    summary = prune.prune_workdir(workdir, out, heads=0.5, channels=0.3, batches=1, batch_size=2)
    assert summary["params_after"] < summary["params_before"]
    run = load_trained(out)
    assert run.model.block_heads == (2, 2, 1)
    assert run.model.block_mlp_hidden == (22, 22, 22)
    assert run.config.compress.heads == 0.5
    x = jnp.ones((1, 32, 32, 1))
    assert run.model.apply({"params": run.params}, x).shape == (1, 32, 32, model.num_classes)
    kept = summary["kept"]["stage0_block0"]
    np.testing.assert_array_equal(
        np.asarray(run.params["stage0_block0"]["fc2"]["kernel"]),
        np.asarray(params["stage0_block0"]["fc2"]["kernel"])[kept["channels"]],
    )
    with pytest.raises(ConfigError, match="not empty"):
        prune.prune_workdir(workdir, out, heads=0.5, channels=0.0)
    with pytest.raises(ConfigError, match="\\[0, 1\\)"):
        prune.prune_workdir(workdir, tmp_path / "other", heads=1.0, channels=0.0)


def test_finetune_after_pruning_trains_the_pruned_model(tiny_run, tmp_path, capsys):
    """--finetune-steps: OUT/untuned is the pruned run; OUT trains it on through the loop,
    starting from exactly its parameters (step 0 of a fine-tune with learning rate 0)."""
    from jaxseg.compress.__main__ import main
    from jaxseg.training.setup import build_training, training_data

    workdir, _, _ = tiny_run
    out = tmp_path / "ft"
    args = ["prune", "--workdir", str(workdir), "--out", str(out), "--heads", "0.5"]
    assert main([*args, "--channels", "0.3", "--batches", "1", "--finetune-steps", "2"]) == 0
    assert '"finetuned"' in capsys.readouterr().out
    untuned, tuned = load_trained(out / "untuned"), load_trained(out)
    assert tuned.step == 2 and tuned.config.train.init_from == str(out / "untuned")
    assert tuned.model.block_heads == untuned.model.block_heads == (2, 2, 1)
    shapes = lambda p: jax.tree_util.tree_map(np.shape, p)  # noqa: E731
    assert shapes(tuned.params) == shapes(untuned.params)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(a - b).max()), tuned.params, untuned.params
    )
    assert max(jax.tree_util.tree_leaves(moved)) > 0  # it trained
    spec, splits = training_data(tuned.config)
    start = build_training(tuned.config, spec, splits).init_state(jax.random.key(5)).params
    jax.tree_util.tree_map(np.testing.assert_array_equal, start, untuned.params)
    with pytest.raises(ConfigError, match="finetune-steps must be >= 0"):
        main([*args, "--out", str(tmp_path / "x"), "--finetune-steps", "-1"])
