"""The learning-rate schedule against its published formula."""

import math

import ml_collections
import numpy as np

from jaxseg.training.optimizer import decay_mask, learning_rate_schedule


def test_warmup_then_cosine_matches_formula():
    train = ml_collections.ConfigDict(
        dict(steps=1000, warmup_steps=100, learning_rate=2e-3, end_learning_rate_fraction=0.01)
    )
    schedule = learning_rate_schedule(train)
    peak, end = 2e-3, 2e-5
    for step in (0, 10, 50, 100, 101, 400, 999, 1000):
        if step <= 100:
            expected = peak * step / 100
        else:
            progress = (step - 100) / 900
            expected = end + (peak - end) * 0.5 * (1 + math.cos(math.pi * progress))
        np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5, atol=1e-9)


def test_weight_decay_skips_vectors():
    params = {
        "dense": {"kernel": np.zeros((3, 4)), "bias": np.zeros(4)},
        "norm": {"scale": np.zeros(4)},
    }
    mask = decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}}
