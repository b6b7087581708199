import numpy as np

from jaxseg.data import pipeline


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
    img = b["image"][0, ..., 0]
    assert (img == img.min()).sum() >= 24 * 24 - 10 * 12  # padded with the per-channel minimum


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
    assert (
        image.data.shape == (40, 36, 1)
        and abs(float(image.data.mean())) < 1e-4
        and label.shape == (40, 36)
    )


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
