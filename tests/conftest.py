"""Phantom datasets shared by the whole test session (`jaxseg.data.synthetic`), written once.

They are read-only: a test that writes into its dataset folder copies it first
(`shutil.copytree(phantom_2d, tmp_path / "ds")`). Tests that need another size, case count
or seed write their own with `synthetic.write_dataset`.
"""

import pytest

from jaxseg.data import synthetic


@pytest.fixture(scope="session")
def phantom_2d(tmp_path_factory):
    """2D: 10 training cases of 40 x 48 (seed 3) and one test case (imagesTs/, labelsTs/)."""
    root = tmp_path_factory.mktemp("phantom_2d")
    return synthetic.write_dataset(root, dims=2, num_cases=10, shape=(40, 48), seed=3, num_test=1)


@pytest.fixture(scope="session")
def phantom_3d(tmp_path_factory):
    """3D: 5 training cases of 36 x 32 x 32 (seed 1)."""
    root = tmp_path_factory.mktemp("phantom_3d")
    return synthetic.write_dataset(root, dims=3, num_cases=5, shape=(36, 32, 32), seed=1)
