import pytest

from jaxseg.data.dataset import Case
from jaxseg.data.splits import labelled_subset, make_splits, split_cases
from jaxseg.errors import ConfigError, DataError


def _fake_cases(n_patients, per_patient=1):
    return [
        Case(f"p{p}_{k}", (), None, f"p{p}") for p in range(n_patients) for k in range(per_patient)
    ]


def _ids(splits):
    return {name: [c.case_id for c in cases] for name, cases in splits.items()}


def _assert_patient_level(splits):
    owner = {}
    for name, cases in splits.items():
        for c in cases:
            assert owner.setdefault(c.patient_id, name) == name, (c, owner[c.patient_id], name)


def test_split_determinism_grouping_ratios():
    cases = _fake_cases(50, per_patient=2)
    a = split_cases(cases, seed=3)
    b = split_cases(list(reversed(cases)), seed=3)
    assert {k: set(v) for k, v in _ids(a).items()} == {k: set(v) for k, v in _ids(b).items()}
    assert {k: len(v) for k, v in a.items()} == {"train": 70, "val": 10, "test": 20}
    _assert_patient_level(a)
    assert sum(len(v) for v in a.values()) == 100
    c = split_cases(cases, seed=4)
    assert set(_ids(c)["test"]) != set(_ids(a)["test"])
    for n in (3, 4, 5, 7):
        s = split_cases(_fake_cases(n), seed=0)
        assert all(len(v) >= 1 for v in s.values()), (n, s)


def test_split_is_pinned():
    """The split of a seed never changes: existing workdirs' splits.json must be reproduced."""
    assert _ids(split_cases(_fake_cases(10), seed=0)) == {
        "train": ["p2_0", "p3_0", "p4_0", "p5_0", "p6_0", "p7_0", "p9_0"],
        "val": ["p0_0"],
        "test": ["p1_0", "p8_0"],
    }
    cases = [Case(f"c{i}", (), None, f"p{i % 7}") for i in range(20)]
    assert _ids(split_cases(cases, seed=3)) == {
        "train": ["c1", "c2", "c4", "c5", "c6", "c8", "c9", "c11", "c12", "c13", "c15", "c16"]
        + ["c18", "c19"],
        "val": ["c3", "c10", "c17"],
        "test": ["c0", "c7", "c14"],
    }


@pytest.mark.parametrize("n,per_patient,seed", [(3, 1, 0), (10, 1, 0), (23, 3, 7), (50, 2, 3)])
def test_fold_none_is_split_cases(n, per_patient, seed):
    cases = _fake_cases(n, per_patient)
    assert make_splits(cases, seed=seed) == split_cases(cases, seed=seed)
    assert make_splits(cases, seed=seed, fold=None, num_folds=3) == split_cases(cases, seed=seed)


@pytest.mark.parametrize("num_folds", [2, 5])
def test_folds_partition_the_training_pool(num_folds):
    cases = [Case(f"c{i}", (), None, f"p{i % 29}") for i in range(70)]  # 2-3 cases a patient
    base = split_cases(cases, seed=1)
    pool = base["train"] + base["val"]
    folds = [make_splits(cases, seed=1, fold=k, num_folds=num_folds) for k in range(num_folds)]
    for s in folds:
        assert list(s) == ["train", "val", "test"]
        assert s["test"] == base["test"]  # the held-out cases, the same ones, in the same order
        _assert_patient_level(s)
        assert sorted(_ids(s)["train"] + _ids(s)["val"]) == sorted(c.case_id for c in pool)
        assert all(s[name] for name in s)
    vals = [c.case_id for s in folds for c in s["val"]]
    assert sorted(vals) == sorted(c.case_id for c in pool)  # each pool case in val exactly once
    patients = [len({c.patient_id for c in s["val"]}) for s in folds]
    assert max(patients) - min(patients) <= 1
    assert make_splits(cases, seed=2, fold=0, num_folds=num_folds) != folds[0]


def test_folds_do_not_depend_on_input_order():
    cases = _fake_cases(20, per_patient=2)
    a = make_splits(cases, seed=5, fold=3)
    b = make_splits(list(reversed(cases)), seed=5, fold=3)
    assert {k: set(v) for k, v in _ids(a).items()} == {k: set(v) for k, v in _ids(b).items()}


@pytest.mark.parametrize("fold", [-1, 5, 1.0, True, "0"])
def test_fold_out_of_range(fold):
    with pytest.raises(
        ConfigError, match=rf"data\.fold = {fold!r}.*0\.\.4 \(data\.num_folds = 5\)"
    ):
        make_splits(_fake_cases(20), seed=0, fold=fold)


@pytest.mark.parametrize("num_folds", [1, 0, 2.5])
def test_num_folds_below_two(num_folds):
    with pytest.raises(ConfigError, match=rf"data\.num_folds = {num_folds!r}.*>= 2"):
        make_splits(_fake_cases(20), seed=0, fold=0, num_folds=num_folds)


def test_fewer_pool_patients_than_folds():
    # 6 patients: 7:1:2 holds out 1 for test, the pool has 5.
    cases = _fake_cases(6, per_patient=2)
    make_splits(cases, seed=0, fold=4, num_folds=5)
    with pytest.raises(
        DataError,
        match=r"needs at least 6 patients.*holds 5 \(12 training cases of 6 patients, 1 held out",
    ):
        make_splits(cases, seed=0, fold=0, num_folds=6)


@pytest.mark.parametrize("n_patients,per_patient", [(0, 1), (1, 4), (2, 1)])
@pytest.mark.parametrize("fold", [None, 0])
def test_too_few_patients_for_every_split(n_patients, per_patient, fold):
    """Not an empty split (which evaluation would report as "nan over 0 cases"): an error."""
    n_cases = n_patients * per_patient
    with pytest.raises(
        DataError,
        match=rf"^{n_cases} training case\(s\) of {n_patients} patient\(s\).*at least 3 patients",
    ):
        make_splits(_fake_cases(n_patients, per_patient), seed=0, fold=fold, num_folds=2)


@pytest.mark.parametrize("n_patients", [0, 1, 2])
def test_split_cases_refuses_an_empty_split(n_patients):
    """split_cases itself (not only make_splits) never returns an empty split silently."""
    cases = _fake_cases(n_patients, per_patient=2)
    with pytest.raises(
        DataError,
        match=rf"^{2 * n_patients} case\(s\) of {n_patients} patient\(s\).*at least 3 patients",
    ):
        split_cases(cases, seed=0)


def test_split_cases_with_a_zero_share_needs_fewer_patients():
    """(0.5, 0.5, 0) asks for two splits: 2 patients are enough, 1 is not."""
    s = split_cases(_fake_cases(2), seed=0, fractions=(0.5, 0.5, 0.0))
    assert [len(s[k]) for k in ("train", "val", "test")] == [1, 1, 0]
    # 0.9 / 0.1 of 2 patients rounds val to 0: it must still get one.
    s = split_cases(_fake_cases(2), seed=0, fractions=(0.9, 0.1, 0.0))
    assert [len(s[k]) for k in ("train", "val", "test")] == [1, 1, 0]
    with pytest.raises(DataError, match="needs at least 2 patients"):
        split_cases(_fake_cases(1), seed=0, fractions=(0.5, 0.5, 0.0))


def test_split_requirement_names_what_each_split_needs():
    from jaxseg.data.splits import split_requirement

    assert "at least 3 patients" in split_requirement(None)
    assert "at least 3 patients and 4 in the training pool" in split_requirement(1, 4)


@pytest.mark.parametrize("fraction, patients", [(0.1, 2), (0.25, 5), (0.01, 1), (1.0, 20)])
def test_labelled_subset_keeps_whole_patients(fraction, patients):
    """ceil(fraction x 20 patients), at least one, every case of each, in input order; the
    same seed gives the same subset."""
    cases = _fake_cases(20, per_patient=3)
    subset = labelled_subset(cases, fraction, seed=4)
    assert len({c.patient_id for c in subset}) == patients
    assert len(subset) == 3 * patients
    assert [c for c in cases if c in subset] == list(subset)
    assert subset == labelled_subset(cases, fraction, seed=4)
    if fraction < 1:
        assert {c.patient_id for c in labelled_subset(cases, 0.5, seed=5)} != {
            c.patient_id for c in labelled_subset(cases, 0.5, seed=4)
        }
    with pytest.raises(ConfigError, match="data.train_fraction"):
        labelled_subset(cases, 0.0, seed=4)
