"""Each rule of the plan on a constructed dataset whose right plan is known.

The memory-driven rules (patch shrinking, batch growth, downsampling of large 2D images)
run against a memory function with a known formula (`fake_memory`: state + bytes per
voxel), so the right patch is computable by hand; test_memory.py measures the real
compiled train step. The written config is checked against its consumers, `load_config`
and `Preprocessing.from_config`."""

import math

import numpy as np
import pytest

from jaxseg.config import load_config
from jaxseg.data.dataset import load_dataset
from jaxseg.data.preprocess import Preprocessing
from jaxseg.errors import ConfigError
from jaxseg.planning import fingerprint_dataset, make_plan, write_config
from jaxseg.planning import plan as plan_lib
from jaxseg.planning.depth import model_depth

from .helpers import STATE, TINY_UNET, fp_dict, run_info
from .helpers import fake_budget as _budget
from .test_fingerprint import write_cases

# ----------------------------------------------------------------------------- spacing


def test_anisotropic_coarse_axis_takes_the_10th_percentile(tmp_path):
    # 11 cases of 16 x 16 x 4 voxels at 0.8 x 0.8 x z mm: z is > 3x coarser and has < 1/3
    # of the voxels, so z takes the 10th percentile of its spacings (the 2nd smallest of 11).
    zs = [2.5, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 5.0, 5.0, 5.0, 6.0]
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(16, 16, 4)), np.ones((16, 16, 4)), (0.8, 0.8, z), ()) for z in zs]
    fp = fingerprint_dataset(load_dataset(write_cases(tmp_path, cases)), progress=False)
    spacing, reason = plan_lib.target_spacing(fp)
    assert spacing == pytest.approx([0.8, 0.8, 3.0], rel=1e-6)
    assert "10th percentile" in reason


def test_target_spacing_median_and_nnunet_guards():
    iso = fp_dict([(40, 50, 30)] * 3, [(1.0, 1.0, 1.2), (1.0, 1.1, 1.0), (0.9, 1.0, 1.0)])
    assert plan_lib.target_spacing(iso)[0] == pytest.approx([1.0, 1.0, 1.0])
    # Coarse, but with as many voxels along z as in-plane: the median stays (nnU-Net).
    deep = fp_dict([(100, 100, 90)] * 3, [(1, 1, 4), (1, 1, 5), (1, 1, 6)])
    assert plan_lib.target_spacing(deep)[0] == pytest.approx([1, 1, 5])
    # The 10th percentile may not go finer than the other axes: their spacing + 1e-5.
    zs = [0.5, 0.5] + [4.0] * 9
    fine = fp_dict([(100, 100, 10)] * 11, [(1.0, 1.0, z) for z in zs])
    assert plan_lib.target_spacing(fine)[0] == pytest.approx([1.0, 1.0, 1.00001], abs=1e-9)


# ----------------------------------------------------------------------------- normalisation


def test_ct_plans_the_numpy_foreground_statistics_mri_plans_none(tmp_path):
    rng = np.random.default_rng(4)
    cases = []
    for _ in range(3):
        img = rng.normal(60, 300, size=(9, 8, 7))
        lab = (rng.random((9, 8, 7)) < 0.1).astype(np.uint8)
        cases.append((img, lab, (1, 1, 1), ()))
    fg = np.concatenate([img.astype(np.float32)[lab > 0] for img, lab, *_ in cases]).astype(float)
    want = (*np.percentile(fg, [0.5, 99.5]), fg.mean(), fg.std())
    ct = fingerprint_dataset(
        load_dataset(write_cases(tmp_path / "ct", cases, modality=("CT",))), progress=False
    )
    channels, stats, crop, _ = plan_lib.normalization(ct)
    assert stats[0] == pytest.approx(want, rel=1e-9)
    assert channels[0]["scheme"] == "CTNormalization" and not crop
    mri = fingerprint_dataset(load_dataset(write_cases(tmp_path / "mr", cases)), progress=False)
    channels, stats, crop, _ = plan_lib.normalization(mri)
    assert stats is None and channels[0]["scheme"] == "ZScoreNormalization"


def test_nonzero_mask_and_crop_when_cropping_removes_a_quarter():
    props = {
        "0": {"num_samples": 5, "percentile_00_5": -1, "percentile_99_5": 1, "mean": 0, "std": 1},
        "1": {"num_samples": 0},
    }
    two = ("CT", "T2")
    channels, stats, crop, _ = plan_lib.normalization(
        fp_dict([(10, 10)], [(1, 1)], modalities=two, rel=0.74, props=props)
    )
    assert crop and [c["use_nonzero_mask"] for c in channels] == [False, True]  # CT: never
    assert stats == ((-1, 1, 0, 1), None)
    _, _, crop, _ = plan_lib.normalization(
        fp_dict([(10, 10)], [(1, 1)], modalities=two, rel=0.75, props=props)
    )
    assert not crop


# ----------------------------------------------------------------------------- depth, dims


def test_tiny_shapes_patch_is_the_median_rounded_up_with_fewer_stages(fake_memory):
    # The case: median 36 x 50 x 35 -> 40 x 56 x 40, total stride 8 (2 stages).
    fp = fp_dict([(36, 50, 35)] * 5, [(1, 1, 1)] * 5)
    plan = make_plan(fp, model="lightseg_small", memory_budget=10**12, measure=fake_memory)
    assert plan["dims"] == 3 and plan["patch_size"] == [40, 56, 40]
    assert plan["stages"] == 2 and plan["total_stride"] == 8
    assert plan["model_args"] == {"embed_dims": (48, 96), "depths": (2, 2), "num_heads": (3, 6)}
    assert len(fake_memory) == 1  # it fits: one measurement


def test_thin_anisotropic_3d_stays_3d_and_records_the_2d_preference(fake_memory):
    # 12 slices of 4 mm: the 3D lightseg gets its minimum of one stage (even at stride 4,
    # ceil(12 / 4) = 3 < 4 voxels), 200 x 200 slices four (ceil(200 / 32) = 7). The rule
    # prefers 2D on slices across axis 2; the pipeline cannot train on slices yet: 3D.
    fp = fp_dict([(200, 200, 12)] * 4, [(0.8, 0.8, 4.0)] * 4)
    plan = make_plan(fp, model="lightseg_small", memory_budget=10**12, measure=fake_memory)
    assert (plan["dims"], plan["preferred_slice_axis"]) == (3, 2)
    assert "1 stage(s) in 3D, the slices across axis 2 allow 4 in 2D" in plan["dims_reason"]
    assert "not supported yet" in plan["dims_reason"]
    assert plan["target_spacing"] == pytest.approx([0.8, 0.8, 4.0])
    assert plan["patch_size"] == [200, 200, 12] and plan["stages"] == 1  # stride 4
    assert "slice_axis" not in plan  # no key the pipeline would not read
    forced = make_plan(
        fp, model="lightseg_small", memory_budget=10**12, dims=3, measure=fake_memory
    )
    assert forced["patch_size"] == plan["patch_size"]  # --dims 3 is the data's own: no change
    with pytest.raises(ConfigError, match="2D training on slices of 3D volumes is not supp"):
        make_plan(fp, model="lightseg_small", memory_budget=10**12, dims=2, measure=fake_memory)
    iso = fp_dict([(40, 50, 36)] * 4, [(1, 1, 1)] * 4)
    iso_plan = make_plan(iso, model="lightseg_small", memory_budget=10**12, measure=fake_memory)
    assert iso_plan["dims"] == 3 and iso_plan["preferred_slice_axis"] is None
    with pytest.raises(ConfigError, match="dims=3"):
        make_plan(fp_dict([(40, 50)], [(1, 1)]), dims=3, measure=fake_memory)


# ----------------------------------------------------------------------------- patch, batch


def test_candidates_shrink_the_axis_largest_relative_to_the_median():
    depth = model_depth("lightseg_tiny", 3, run_info(3))
    median = (60, 90, 30)
    cands = plan_lib.patch_candidates(depth, median, (1, 1, 1))
    for (k0, p0), (k1, p1) in zip(cands, cands[1:]):
        assert math.prod(p1) < math.prod(p0)
        changed = [i for i in range(3) if p1[i] != p0[i]]
        # among the axes that can lose a stride (the smallest patch axis is one stride 4)
        ratios = [p / m if p - depth.stride(k0) >= 4 else 0 for p, m in zip(p0, median)]
        assert ratios[changed[0]] == max(ratios)
        assert all(p % depth.stride(k1) == 0 for p in p1)
    # The median rounded up to stride 8: 2 stages leave ceil(30 / 8) = 4 voxels, 3 only 2.
    assert cands[0] == (2, (64, 96, 32))


def test_patch_is_the_first_candidate_that_fits(fake_memory):
    fp = fp_dict([(64, 64)] * 3, [(1, 1)] * 3)
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=_budget(48, 48), measure=fake_memory
    )
    # Shrinking alternates the axes (64x62, 62x62, ...); 50x48 needs more, 48x48 fits.
    assert plan["patch_size"] == [48, 48]
    assert plan["memory"]["train_step_bytes"] <= _budget(48, 48)
    assert len(fake_memory) <= 5  # guided by the fitted memory, not one compile per candidate
    with pytest.raises(ConfigError, match="smallest patch"):
        make_plan(fp, model="unet", model_args=TINY_UNET, memory_budget=STATE, measure=fake_memory)


@pytest.mark.parametrize(
    "cases, budget, batch",
    [
        (100, 10**12, 5),  # 5% of 100 cases of 64^2 voxels: 5 patches
        (100, _budget(64, 64, batch=3), 3),  # memory allows 3
        (10, 10**12, 2),  # 5% of 10 cases is half a patch: the minimum of 2
    ],
)
def test_batch_grows_to_memory_and_five_percent_of_the_data(fake_memory, cases, budget, batch):
    fp = fp_dict([(64, 64)] * 3, [(1, 1)] * 3, n_cases=cases)
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=budget, measure=fake_memory
    )
    assert plan["patch_size"] == [64, 64] and plan["batch_size"] == batch


def _large_2d(root, draw):
    cases = []
    for i in range(3):
        lab = np.zeros((256, 256), np.uint8)
        draw(lab, i)
        img = np.where(lab > 0, 100.0, 20.0) + np.random.default_rng(i).normal(0, 5, lab.shape)
        cases.append((img, lab, (1.0, 1.0), ()))
    return fingerprint_dataset(load_dataset(write_cases(root, cases, dims=2)), progress=False)


def _disc(lab, i):
    x, y = np.ogrid[:256, :256]
    lab[(x - 128 - i) ** 2 + (y - 120) ** 2 < 90**2] = 1


def _lines(lab, i):
    lab[:, 20 + i :: 16] = 1  # vessels 1 pixel wide
    lab[:, 21 + i :: 16] = 1


def test_large_2d_images_with_a_large_structure_are_downsampled(tmp_path, fake_memory):
    # At full resolution only 64 x 64 fits: 6% of the 256 x 256 median image. Spacing x2
    # makes the median 128 x 128, which the same 64 x 64 patch covers by 25%.
    fp = _large_2d(tmp_path, _disc)
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=_budget(64, 64), measure=fake_memory
    )
    assert plan["downsampling"]["applied"]
    assert plan["target_spacing"] == pytest.approx([2.0, 2.0])
    assert plan["median_shape"] == [128, 128] and plan["patch_size"] == [64, 64]


def test_large_2d_images_with_thin_structures_keep_their_resolution(tmp_path, fake_memory):
    fp = _large_2d(tmp_path, _lines)
    assert fp["class_thickness_mm"][1] == pytest.approx(2.0)
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=_budget(64, 64), measure=fake_memory
    )
    assert not plan["downsampling"]["applied"]
    assert plan["target_spacing"] == pytest.approx([1.0, 1.0]) and plan["patch_size"] == [64, 64]


def test_training_length(fake_memory):
    fp = fp_dict([(16, 16)], [(1, 1)])
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=10**12, measure=fake_memory
    )
    assert plan["training"]["steps"] == 50_000  # 200 nnU-Net epochs of 250 steps
    assert (plan["training"]["warmup_steps"], plan["training"]["eval_every"]) == (500, 1000)
    short = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=10**12, steps=300, measure=fake_memory
    )
    assert (short["training"]["steps"], short["training"]["warmup_steps"]) == (300, 50)
    assert short["training"]["eval_every"] == 250
    with pytest.raises(ConfigError, match="steps"):
        make_plan(
            fp,
            model="unet",
            model_args=TINY_UNET,
            memory_budget=10**12,
            steps=-1,
            measure=fake_memory,
        )


# ----------------------------------------------------------------------------- config file


def test_config_file_loads_feeds_the_preprocessing_and_says_why(tmp_path, fake_memory):
    # CT + T2, 3D, cropping leaves 70% (< 75%): crop, CT statistics for channel 0 only.
    props = {
        "0": {
            "num_samples": 9,
            "percentile_00_5": -980.5,
            "percentile_99_5": 1650.25,
            "mean": 40.125,
            "std": 310.5,
        },
        "1": {"num_samples": 9},
    }
    fp = fp_dict(
        [(40, 48, 30)] * 3,
        [(0.7, 0.7, 2.5)] * 3,
        modalities=("CT", "T2"),
        cropped=[(30, 36, 24)] * 3,
        rel=0.7,
        props=props,
    )
    plan = make_plan(
        fp, model="unet", model_args=TINY_UNET, memory_budget=10**12, steps=400, measure=fake_memory
    )
    path = write_config(plan, tmp_path / "config.py")
    config = load_config(path)
    assert config.data.target_spacing == (0.7, 0.7, 2.5)
    assert all(type(v) is float for v in config.data.target_spacing)
    assert config.data.crop_nonzero is True
    assert config.data.intensity_stats == ((-980.5, 1650.25, 40.125, 310.5), None)
    assert list(config.data.patch_size) == plan["patch_size"] and config.train.steps == 400
    prep = Preprocessing.from_config(config.data, ("CT", "T2"))
    assert prep.crop_nonzero and prep.target_spacing == (0.7, 0.7, 2.5)
    assert prep.intensity_stats == ((-980.5, 1650.25, 40.125, 310.5), None)
    # Every assignment has a comment above it; the steps say they were not timed here.
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("    c."):
            assert lines[i - 1].startswith("    # "), line
    text = " ".join(line.strip().removeprefix("# ") for line in lines)  # comments unwrapped
    assert "3D: 3D data; the shortest axis" in text
    assert "multiple of the total stride 2 of 2 stages" in text
    assert "not timed" in text
