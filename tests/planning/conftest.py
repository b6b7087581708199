"""Fixtures of the planning tests: a fake memory measurement with a known formula, and
the real measurement with augmentation off (to keep compiles short)."""

import math

import pytest

from jaxseg.defaults import base_config
from jaxseg.planning import memory

from .helpers import PER_VOXEL, STATE


class _FakeMeasure(list):
    """Train-step memory = STATE + PER_VOXEL * batch * patch voxels; the calls are kept
    (the list of (patch, batch) measured)."""

    def __call__(self, config, info):
        vox = config.data.batch_size * math.prod(config.data.patch_size)
        self.append((tuple(config.data.patch_size), config.data.batch_size))
        return {"bytes": STATE + PER_VOXEL * vox, "state": STATE}


@pytest.fixture
def fake_memory():
    """A `measure` for make_plan with a known formula (`_FakeMeasure`)."""
    return _FakeMeasure()


@pytest.fixture
def no_augmentation(monkeypatch):
    def config():
        c = base_config()
        for key in list(c.augment.keys()):
            if key.endswith("_prob"):
                c.augment[key] = 0.0
        return c

    monkeypatch.setattr(memory, "base_config", config)
