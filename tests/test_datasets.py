"""dfx.datasets: layouts, labels files, deterministic stratified splits."""

from __future__ import annotations

import pytest

from dfx import datasets
from dfx.datasets import DatasetError


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_label_tree_with_groups_and_flat(tmp_path):
    _touch(tmp_path / "t", "real/ffhq/1.jpg", "real/celeba/2.png", "fake/stylegan2/3.jpg", "fake/stylegan2/sub/4.jpg", "fake/.hidden/5.jpg")
    samples = datasets.discover(tmp_path / "t")
    assert [(s.label, s.group) for s in samples] == [(1, "stylegan2"), (1, "stylegan2"), (0, "celeba"), (0, "ffhq")]
    _touch(tmp_path / "f", "real/1.jpg", "fake/2.jpg", "fake/readme.txt")
    assert [(s.label, s.group) for s in datasets.discover(tmp_path / "f")] == [(1, "fake"), (0, "real")]


def test_seed_layout_known_names_and_mapping(tmp_path):
    _touch(tmp_path, "celeba/1.jpg", "ffhq/2.jpg", "attgan/3.jpg", "stargan/4.jpg", "other/5.jpg")
    auto = datasets.discover(tmp_path)
    assert {(s.group, s.label) for s in auto} == {("celeba", 0), ("ffhq", 0), ("attgan", 1), ("stargan", 1)}
    mapped = datasets.discover(tmp_path, real=["celeba", "other"], fake=["attgan"])
    assert {(s.group, s.label) for s in mapped} == {("celeba", 0), ("other", 0), ("attgan", 1)}
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.discover(tmp_path, real=["nope"], fake=["attgan"])


def test_labels_file_csv_and_tsv(tmp_path):
    _touch(tmp_path, "img/a.jpg", "img/b.jpg")
    (tmp_path / "l.csv").write_text("path,label\nimg/a.jpg,real\nimg/b.jpg,1,stylegan\n")
    samples = datasets.discover(tmp_path / "l.csv")
    assert [(s.label, s.group) for s in samples] == [(0, "real"), (1, "stylegan")]
    assert samples[0].path == str((tmp_path / "img/a.jpg").resolve())
    (tmp_path / "l.tsv").write_text("img/a.jpg\t0\nimg/b.jpg\tfake\n")
    assert [s.label for s in datasets.discover(tmp_path / "l.tsv")] == [0, 1]
    (tmp_path / "bad.csv").write_text("img/a.jpg,maybe\n")
    with pytest.raises(DatasetError, match="label"):
        datasets.discover(tmp_path / "bad.csv")


def test_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        datasets.discover(tmp_path / "nope")
    _touch(tmp_path / "x", "stuff/1.jpg")
    with pytest.raises(DatasetError) as info:
        datasets.discover(tmp_path / "x")
    assert "--real" in info.value.hint
    _touch(tmp_path / "y", "real/1.jpg")
    with pytest.raises(DatasetError, match="no fake images"):
        datasets.discover(tmp_path / "y")


def _many(root):
    names = [f"real/a/{i}.jpg" for i in range(30)] + [f"real/b/{i}.jpg" for i in range(10)]
    names += [f"fake/g/{i}.jpg" for i in range(50)] + [f"fake/h/{i}.jpg" for i in range(5)]
    _touch(root, *names)
    return datasets.discover(root)


def test_split_is_deterministic_stratified_and_disjoint(tmp_path):
    samples = _many(tmp_path)
    train, val = datasets.split(samples, 0.2, seed=0)
    assert datasets.split(samples, 0.2, seed=0) == (train, val)
    assert datasets.split(list(reversed(samples)), 0.2, seed=0) == (train, val)
    assert {s.path for s in train}.isdisjoint({s.path for s in val}) and len(train) + len(val) == len(samples)
    assert datasets.summary(val)["groups"] == {"real/a": 6, "real/b": 2, "fake/g": 10, "fake/h": 1}
    assert datasets.split(samples, 0.2, seed=1)[1] != val
    with pytest.raises(ValueError):
        datasets.split(samples, 1.5)


def test_balanced_sample_and_record(tmp_path):
    samples = _many(tmp_path)
    chosen = datasets.balanced_sample(samples, 20, seed=0)
    summary = datasets.summary(chosen)
    assert summary["real"] == 10 and summary["fake"] == 10
    assert summary["groups"]["fake/h"] == 5 and summary["groups"]["real/b"] == 5  # spread over groups
    record = datasets.data_record(tmp_path, None, None, 0.2, 0)
    assert datasets.splits_from_record(record) == datasets.split(samples, 0.2, 0)
    with pytest.raises(DatasetError, match="not on this machine"):
        datasets.splits_from_record({**record, "root": str(tmp_path / "gone")})
