"""The real compiled train step's memory (a tiny U-Net, augmentation off): it holds the
AdamW state, counted by hand from the parameter shapes, grows with the batch, and bounds
the plan's patch; the per-platform budgets are the documented table."""

import math

import jax
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.planning import make_plan
from jaxseg.planning.memory import MemoryProbe, default_memory_budget
from jaxseg.training.memory import measure_train_step
from jaxseg.workdir import model_from_config

from .helpers import TINY_UNET, fp_dict, run_info


def test_measured_memory_holds_the_adam_state_and_grows_with_the_batch(no_augmentation):
    probe = MemoryProbe("unet", run_info(2), {}, measure_train_step)
    two = probe.measure(TINY_UNET, (32, 32), 2)
    four = probe.measure(TINY_UNET, (32, 32), 4)
    model = model_from_config(probe.config(TINY_UNET, (32, 32), 2), run_info(2))
    params = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 32, 32, 1), np.float32))
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
    state = probe.entry(TINY_UNET, (32, 32), 2)["state"]
    assert 3 * param_bytes <= state < 3 * param_bytes + 64  # params, Adam mu and nu, counters
    assert state < two < four
    assert probe.step_seconds(TINY_UNET, (32, 32), 2) > 0


def test_patch_shrinks_to_a_measured_budget(no_augmentation):
    fp = fp_dict([(96, 96)] * 4, [(1, 1)] * 4)
    whole = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=10**12, measure=measure_train_step
    )
    assert whole["patch_size"] == [96, 96]
    full = whole["memory"]["train_step_bytes"]
    budget = full // 2
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=budget, measure=measure_train_step
    )
    assert math.prod(plan["patch_size"]) < 96 * 96
    assert plan["memory"]["train_step_bytes"] <= budget
    assert any(m["bytes"] > budget for m in plan["memory"]["measurements"])


def test_default_budgets_per_platform():
    if jax.devices()[0].platform != "cpu":
        pytest.skip("the local default is checked on CPU")
    assert default_memory_budget()[0] == 3 * 2**30
    assert default_memory_budget("tpu")[0] == 16 * 2**30  # a v5e chip
    assert default_memory_budget("gpu")[0] == 8 * 2**30  # nnU-Net's default target
    with pytest.raises(ConfigError, match="platform"):
        default_memory_budget("abacus")
