"""jaxseg.pretrain: a SimMIM run trains through the training loop on images alone (and an
unlabelled folder), resumes, writes reconstruction images, and a segmentation run started
from it with train.init_from begins at exactly its stored encoder."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxseg import pretrain as pretrain_cli
from jaxseg.config import load_config
from jaxseg.data.dataset import load_dataset
from jaxseg.data.splits import make_splits
from jaxseg.training.setup import build_training, training_data
from jaxseg.workdir import read_params
from tests.tiny_config import write_tiny_config

_TINY = {
    "model.name": "lightseg_tiny",
    "model.args.embed_dims": (8, 16),
    "model.args.depths": (1, 1),
    "model.args.num_heads": (1, 2),
    "model.args.stem_dims": (4, 8),
    "pretrain.mask_patch": 8,
    "augment.rotation_prob": 0.0,
    "augment.elastic_prob": 0.0,
}


def _config(tmp_path, root, name, **settings):
    path = tmp_path / f"{name}.py"
    values = {**_TINY, **settings}
    write_tiny_config(path, root, steps=4, every=2, features=None, settings=values)
    return path


def test_pretrain_then_init_from(phantom_2d, tmp_path, capsys):
    unlabelled = tmp_path / "scans"
    unlabelled.mkdir()
    for i, f in enumerate(sorted((phantom_2d / "imagesTs").iterdir())):
        shutil.copy(f, unlabelled / f"scan_{i:03d}.nii.gz")
    cfg = _config(tmp_path, phantom_2d, "pre", **{"data.unlabelled": (str(unlabelled),)})
    pre = tmp_path / "pre"
    assert pretrain_cli.main(["--config", str(cfg), "--workdir", str(pre)]) == 0
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step"] == 4 and np.isfinite(result["loss"]) and "sample_l1" in result
    splits = json.loads((pre / "splits.json").read_text())
    # The 10 training cases less the 7:1:2 test split's 2, the imagesTs case (labels
    # unused) and the unlabelled scan.
    held_out = make_splits(load_dataset(phantom_2d).training, seed=0)["test"]
    assert sorted(splits["train"]) == sorted(
        [
            f"phantom_{i:03d}"
            for i in range(11)
            if f"phantom_{i:03d}" not in {c.case_id for c in held_out}
        ]
        + ["scan_000"]
    )
    assert any(p.name.startswith("events") for p in (pre / "tensorboard").iterdir())
    # A rerun with more steps resumes from step 4.
    assert (
        pretrain_cli.main(["--config", str(cfg), "--workdir", str(pre), "--config.train.steps=6"])
        == 0
    )
    assert "Resuming" in capsys.readouterr().out

    stored = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(read_params(pre)[0])
    }
    assert "mask_token" in stored and any(k.startswith("simmim_head") for k in stored)
    seg = _config(tmp_path, phantom_2d, "ft", **{"train.init_from": str(pre)})
    config = load_config(seg)
    spec, splits = training_data(config)
    params = build_training(config, spec, splits).init_state(jax.random.key(5)).params
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    }
    shared = [k for k in flat if k in stored]
    assert any(k.startswith("stage1_block0/") for k in shared)
    for k in shared:
        np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(stored[k]))
    assert any(k.startswith("head") or "dec" in k for k in set(flat) - set(stored))


def test_pretrain_refuses_a_bad_mask_and_an_empty_folder(phantom_2d, tmp_path):
    from jaxseg.errors import ConfigError, DataError
    from jaxseg.training.pretrain import pretrain

    bad = load_config(_config(tmp_path, phantom_2d, "bad", **{"pretrain.mask_patch": 12}))
    with pytest.raises(ConfigError, match=r"valid sizes are \[4, 8, 16, 32\]"):
        pretrain(bad, tmp_path / "bad")
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg = load_config(_config(tmp_path, phantom_2d, "e", **{"data.unlabelled": (str(empty),)}))
    with pytest.raises(DataError, match="empty: no readable image files"):
        pretrain(cfg, tmp_path / "e")
