"""Config files as code: loading, overrides, and the errors a user sees."""

import pytest

from jaxseg.config import load_config, split_overrides
from jaxseg.errors import ConfigError

CONFIG = """
import ml_collections
def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.train = ml_collections.ConfigDict()
    c.train.steps = 100
    c.train.learning_rate = 1e-3
    c.train.use_ema = False
    c.data = ml_collections.ConfigDict()
    c.data.patch_size = (64, 64)
    c.data.root = "data/x"
    c.model = ml_collections.ConfigDict()
    c.model.name = "unet"
    c.model.args = ml_collections.ConfigDict()
    return c
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "exp.py"
    path.write_text(CONFIG)
    return path


def test_overrides_parse_by_field_type(config_file):
    c = load_config(
        config_file,
        [
            "train.steps=250",
            "--config.train.learning_rate=3e-4",
            "train.use_ema=true",
            "data.patch_size=(96,80)",
            "data.root=/tmp/y",
            "train.learning_rate=1",
        ],
    )
    assert c.train.steps == 250 and isinstance(c.train.steps, int)
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)
    assert c.train.use_ema is True
    assert c.data.patch_size == (96, 80)
    assert c.data.root == "/tmp/y"


def test_unknown_key_lists_valid_keys(config_file):
    with pytest.raises(ConfigError) as e:
        load_config(config_file, ["train.stpes=5"])
    msg = str(e.value)
    assert "train.stpes" in msg and "Did you mean 'steps'" in msg
    assert "learning_rate" in msg and "use_ema" in msg


def test_unknown_section_and_bad_values(config_file):
    with pytest.raises(ConfigError, match="optim"):
        load_config(config_file, ["optim.lr=1"])
    with pytest.raises(ConfigError, match="train.steps is a int"):
        load_config(config_file, ["train.steps=1.5"])
    with pytest.raises(ConfigError, match="bool"):
        load_config(config_file, ["train.use_ema=maybe"])
    with pytest.raises(ConfigError, match="no '='"):
        load_config(config_file, ["train.steps"])
    with pytest.raises(ConfigError, match="section"):
        load_config(config_file, ["train=3"])


def test_model_args_accept_new_keys(config_file):
    c = load_config(config_file, ["model.args.features=(16,32)", "model.args.norm=group"])
    assert c.model.args.features == (16, 32) and c.model.args.norm == "group"


def test_untyped_keys_read_true_false_none_as_python_values(config_file):
    # A new model arg has no type to parse by: 'false' must not become a (truthy) string.
    c = load_config(
        config_file,
        [
            "model.args.remat=false",
            "model.args.share_params=True",
            "model.args.topk=None",
            "model.args.rank=null",
        ],
    )
    assert c.model.args.remat is False and c.model.args.share_params is True
    assert c.model.args.topk is None and c.model.args.rank is None


def test_loaded_config_is_locked(config_file):
    c = load_config(config_file)
    with pytest.raises(AttributeError):
        c.train.new_field = 1


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="bad.py failed to import"):
        load_config(bad)
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="no get_config"):
        load_config(empty)


def test_split_overrides():
    o, rest = split_overrides(["--config", "a.py", "--config.x=1", "--workdir", "w"])
    assert o == ["--config.x=1"] and rest == ["--config", "a.py", "--workdir", "w"]


def test_shipped_configs_load():
    import pathlib

    for path in sorted(pathlib.Path(__file__).parents[1].glob("configs/*.py")):
        c = load_config(path)
        assert c.model.name and c.train.steps > 0, path
