"""Every file in configs/ trains through `jaxseg.train`'s loop, with its own model settings.

Only the data and schedule are shrunk (a tiny phantom set, small patches, two steps with a
validation pass and a checkpoint); the model section of each config is used as shipped, so
a config whose model arguments do not fit its model fails here.
"""

from pathlib import Path

import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.data import synthetic
from jaxseg.training.loop import train

pytestmark = pytest.mark.e2e

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))
# Each config costs 20-60 s of compilation on 2 cores (minutes for the 3D ones), so make test
# trains the project's own model and make test-all trains every config.
DEFAULT_SUITE = {"lightseg_small_2d"}


@pytest.fixture(scope="module")
def phantoms(phantom_3d, tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    two = synthetic.write_dataset(root / "2d", dims=2, num_cases=5, shape=(72, 64), seed=1)
    return {2: two, 3: phantom_3d}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.stem, marks=[] if p.stem in DEFAULT_SUITE else [pytest.mark.slow])
        for p in CONFIGS
    ],
)
def test_config_trains(path, phantoms, tmp_path):
    dims = len(load_config(path).data.patch_size)
    # 64 per axis: the deepest model stride is 32, so every model sees at least a 2^d map.
    patch = (64,) * dims
    config = load_config(
        path,
        [
            f"--config.data.root={phantoms[dims]}",
            f"--config.data.patch_size={patch}",
            "--config.data.batch_size=2",
            "--config.data.num_threads=1",
            "--config.train.steps=2",
            "--config.train.warmup_steps=1",
            "--config.train.log_every=1",
            "--config.train.eval_every=2",
            "--config.train.checkpoint_every=2",
            "--config.eval.max_val_cases=1",
        ],
    )
    result = train(config, tmp_path / "run")
    assert result["step"] == 2 and np.isfinite(result["loss"])
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
    assert len(list((tmp_path / "run" / "best").iterdir())) == 1
