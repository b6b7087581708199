"""train.init_from: a run starts from another run's trained parameters (as orbax stored
them), and refuses one whose architecture differs, naming the parameter."""

import jax
import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.errors import ConfigError
from jaxseg.training.loop import train
from jaxseg.training.setup import build_training, training_data
from jaxseg.workdir import load_trained
from tests.tiny_config import write_tiny_config


def test_init_from_starts_at_the_source_parameters_and_checks_the_architecture(
    phantom_2d, tmp_path
):
    source = tmp_path / "a"
    cfg = write_tiny_config(tmp_path / "a.py", phantom_2d, steps=2, features=(4, 8))
    train(load_config(cfg), source)
    trained = load_trained(source).params

    def start(features):
        path = tmp_path / f"b{len(features)}{features[0]}.py"
        settings = {"train.init_from": str(source)}
        write_tiny_config(path, phantom_2d, steps=2, features=features, settings=settings)
        config = load_config(path)
        spec, splits = training_data(config)
        return build_training(config, spec, splits).init_state(jax.random.key(9)).params

    got = start((4, 8))
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_src = dict(jax.tree_util.tree_leaves_with_path(trained))
    assert len(flat_got) == len(flat_src)
    for path, leaf in flat_got:
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat_src[path]))
    with pytest.raises(ConfigError, match="parameter .*kernel.* same architecture"):
        start((8, 16))
