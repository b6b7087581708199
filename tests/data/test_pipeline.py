import numpy as np
import pytest

from jaxseg import inference
from jaxseg.data import dataset, pipeline, preprocess, resample


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_shapes_and_determinism(spec2d):
    kw = dict(patch_size=(16, 16), batch_size=4, seed=7)
    a = _take(pipeline.train_batches(spec2d, spec2d.training, **kw), 6)
    b = _take(pipeline.train_batches(spec2d, spec2d.training, num_threads=1, prefetch=1, **kw), 6)
    assert a[0]["image"].shape == (4, 16, 16, 1) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].shape == (4, 16, 16) and a[0]["label"].dtype == np.int32
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    resumed = _take(pipeline.train_batches(spec2d, spec2d.training, start_step=4, **kw), 2)
    for x, y in zip(a[4:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    other = next(
        pipeline.train_batches(spec2d, spec2d.training, patch_size=(16, 16), batch_size=4, seed=8)
    )
    assert not np.array_equal(other["image"], a[0]["image"])


def test_padding_small_image(spec2d):
    small = [c for c in spec2d.training if c.case_id == "small"]
    b = next(
        pipeline.train_batches(
            spec2d, small, patch_size=(24, 24), batch_size=3, seed=0, foreground_fraction=1.0
        )
    )
    assert b["image"].shape == (3, 24, 24, 1)
    assert np.all((b["label"] == 1).sum(axis=(1, 2)) == 1)  # the single fg voxel is in every patch
    for patch in b["image"][..., 0]:
        # everything outside the 10 x 12 image is PAD_VALUE, the value inference pads with
        assert (patch == preprocess.PAD_VALUE).sum() >= 24 * 24 - 10 * 12


def test_training_and_inference_pad_a_small_image_alike(spec2d):
    """A case smaller than the patch: every training patch (at its random offset) and the
    one sliding window over the case hold the same values outside the case, and the
    window's inside is the case itself (the reference is numpy's constant padding)."""
    small = [c for c in spec2d.training if c.case_id == "small"]
    [arrays] = pipeline.load_training_arrays(spec2d, small)
    h, w = arrays.image.shape[:2]
    seen = []

    def record(windows):
        seen.append(np.array(windows))
        return np.ones((*windows.shape[:-1], 2), np.float32) / 2

    inference.sliding_window_predict(
        arrays.image, record, patch_size=(24, 24), num_classes=2, batch_size=1
    )
    [window] = seen[0]
    diff = [p - s for p, s in zip((24, 24), arrays.image.shape[:2])]
    before = [d // 2 for d in diff]
    expected = np.pad(
        arrays.image,
        [(b, d - b) for b, d in zip(before, diff)] + [(0, 0)],
        constant_values=float(arrays.image.min()) - 1.0,  # a value neither side may use
    )
    outside = expected == float(arrays.image.min()) - 1.0
    np.testing.assert_array_equal(window[~outside], expected[~outside])
    window_pad = np.unique(window[outside])
    rng = np.random.default_rng(0)
    for _ in range(8):
        patch = pipeline.sample_patch(arrays, (24, 24), rng, foreground_fraction=0.0)["image"]
        inside = np.zeros(patch.shape, bool)
        for offset in np.ndindex(*[d + 1 for d in diff]):
            box = (slice(offset[0], offset[0] + h), slice(offset[1], offset[1] + w))
            if np.array_equal(patch[box], arrays.image):
                inside[box] = True
                break
        assert inside.any(), "the case is not inside the training patch"
        np.testing.assert_array_equal(np.unique(patch[~inside]), window_pad)


def test_foreground_oversampling_rate(spec2d):
    cases = [c for c in spec2d.training if c.case_id != "small"]
    kw = dict(patch_size=(8, 8), batch_size=32, seed=1)

    def rate(frac):
        it = pipeline.train_batches(spec2d, cases, foreground_fraction=frac, **kw)
        labs = np.concatenate([next(it)["label"] for _ in range(20)])
        return float(np.mean((labs > 0).any(axis=(1, 2))))

    r0, r1, r33 = rate(0.0), rate(1.0), rate(0.33)
    assert r1 == 1.0
    assert r0 < 0.2
    expected = 0.33 + 0.67 * r0
    assert abs(r33 - expected) < 0.07, (r0, r33)


def test_eval_cases(spec2d):
    out = list(pipeline.eval_cases(spec2d, spec2d.training[:2]))
    assert [o[0] for o in out] == ["c0", "c1"]
    cid, image, label = out[0]
    read, truth = dataset.load_case(spec2d, spec2d.training[0])
    # as read, on the file's grid: inference preprocesses (inference.predict_case)
    np.testing.assert_array_equal(image.data, read.data)
    np.testing.assert_array_equal(label, truth)
    assert image.data.shape == (40, 36, 1) and label.shape == (40, 36)


def test_per_process_shards_partition_the_global_batch(spec2d, monkeypatch):
    kw = dict(patch_size=(12, 12), batch_size=6, seed=3)
    glob = _take(pipeline.train_batches(spec2d, spec2d.training, **kw), 3)

    class FakeShard:
        def __init__(self, index):
            self.shard_index, self.shard_count = index, 2

    for p in range(2):
        monkeypatch.setattr(pipeline.grain.sharding, "ShardByJaxProcess", lambda p=p: FakeShard(p))
        local = _take(pipeline.train_batches(spec2d, spec2d.training, start_step=1, **kw), 2)
        for k, batch in enumerate(local, start=1):
            assert batch["image"].shape == (3, 12, 12, 1)
            # Process p holds rows p*3 .. p*3+2: the rows its devices hold in the global array.
            np.testing.assert_array_equal(batch["image"], glob[k]["image"][3 * p : 3 * p + 3])
            np.testing.assert_array_equal(batch["label"], glob[k]["label"][3 * p : 3 * p + 3])


def test_training_arrays_are_resampled_and_a_vanished_class_is_named(spec2d):
    """data.target_spacing (4, 4) on 1 mm cases: every array is on the coarser grid
    (resample.target_shape), labels hold only classes the case had, and the "small" case,
    whose one foreground voxel cannot survive a 4x downsampling, is warned about by name."""
    prep = preprocess.Preprocessing(spec2d.modalities, target_spacing=(4.0, 4.0))
    with pytest.warns(UserWarning, match=r"case 'small': class 1 .* vanished"):
        arrays = pipeline.load_training_arrays(spec2d, spec2d.training, prep)
    for case, a in zip(spec2d.training, arrays):
        image, label = dataset.load_case(spec2d, case)
        shape = resample.target_shape(label.shape, image.spacing, (4.0, 4.0))
        assert a.image.shape == (*shape, 1) and a.label.shape == shape
        assert set(np.unique(a.label)) <= set(np.unique(label))
