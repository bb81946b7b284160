"""Pairs and protocol v2: pair-aware splits and batches, holdable units (decoder families),
laundering, and the v2 summary. No training here: the pieces are checked on their own."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from dfx import datasets


def _png(path: Path, seed: int, size=(40, 40)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, "PNG")


@pytest.fixture(scope="module")
def paired_tree(tmp_path_factory) -> tuple[Path, Path]:
    """photos/real/{a,b} (30 + 20), photos/fake/gan (24); pseudo/fake/ae-tconv-x4 and
    ae-nearest-x8 reconstructions of every photo, linked by pseudo/pairs.jsonl."""
    root = tmp_path_factory.mktemp("pairs")
    photos, pseudo = root / "photos", root / "pseudo"
    for i in range(30):
        _png(photos / "real" / "a" / f"a{i:02d}.png", i)
    for i in range(20):
        _png(photos / "real" / "b" / f"b{i:02d}.png", 100 + i)
    for i in range(24):
        _png(photos / "fake" / "gan" / f"g{i:02d}.png", 200 + i)
    lines = []
    for decoder in ("ae-tconv-x4", "ae-nearest-x8"):
        for src in sorted((photos / "real").rglob("*.png")):
            fake = pseudo / "fake" / decoder / f"{src.parent.name}_{src.name}"
            fake.parent.mkdir(parents=True, exist_ok=True)
            fake.write_bytes(src.read_bytes())
            lines.append(json.dumps({"fake": str(fake.relative_to(pseudo)), "source": str(src.resolve()),
                                     "source_relative": os.path.relpath(src, pseudo), "decoder": decoder}))
    (pseudo / datasets.PAIRS_FILE).write_text("\n".join(lines) + "\n{\"cut short")  # a line cut by a kill is skipped
    return photos, pseudo


def test_discover_links_each_pseudo_fake_to_its_photo(paired_tree):
    photos, pseudo = paired_tree
    samples = datasets.discover([photos, pseudo])
    fakes = [s for s in samples if s.group.startswith("ae-")]
    assert len(fakes) == 100 and all(s.source and s.source.startswith(str(photos.resolve())) for s in fakes)
    assert all(s.source is None for s in samples if not s.group.startswith("ae-"))


def test_no_pair_straddles_train_and_val(paired_tree):
    photos, pseudo = paired_tree
    samples = datasets.discover([photos, pseudo])
    for seed in range(5):
        train, val = datasets.split(samples, 0.2, seed)
        in_val = {s.path for s in val}
        assert {s.path for s in train}.isdisjoint(in_val) and len(train) + len(val) == len(samples)
        for s in samples:
            if s.source:
                assert (s.path in in_val) == (s.source in in_val)
        # the real photos and generators split exactly as they do without the pseudo-fakes
        plain_train, plain_val = datasets.split(datasets.discover([photos]), 0.2, seed)
        assert [s.path for s in val if not s.source] == [s.path for s in plain_val]


def test_pseudo_fakes_without_their_photos_split_like_any_group(paired_tree, tmp_path):
    photos, pseudo = paired_tree
    samples = [s for s in datasets.discover([photos, pseudo]) if s.label == 1]
    train, val = datasets.split(samples, 0.2, 0)  # sources absent: stratified per group as before
    assert sum(s.group == "ae-tconv-x4" for s in val) == 10


def test_paired_batches_hold_both_sides_of_each_pair(paired_tree):
    from dfx.trainer.data import balanced_indices, group_shares, pair_share, paired_indices

    photos, pseudo = paired_tree
    samples = datasets.discover([photos, pseudo])
    batch = 32
    drawn = balanced_indices(samples, 4, 256, seed=0)
    paired = paired_indices(samples, drawn, batch)
    assert pair_share(samples, drawn, batch) < 0.35  # by chance a photo rarely meets its fake
    assert pair_share(samples, paired, batch) > 0.9  # short of 1 only where a batch drew more pseudo-fakes than reals
    labels = np.array([s.label for s in samples])
    for start in range(0, len(drawn), batch):  # the fakes drawn are untouched; only real slots change
        assert np.array_equal(np.sort(drawn[start : start + batch][labels[drawn[start : start + batch]] == 1]),
                              np.sort(paired[start : start + batch][labels[paired[start : start + batch]] == 1]))
    assert set(group_shares(samples)) == {"real/a", "real/b", "fake/gan", "fake/ae-tconv-x4", "fake/ae-nearest-x8"}


def test_paired_batches_keep_the_rescaled_copy_with_its_rescaled_photo(paired_tree):
    from dfx.trainer.data import balanced_indices, pair_share, paired_indices

    photos, pseudo = paired_tree
    samples = datasets.discover([photos, pseudo])
    doubled = samples * 2  # as with_rescaled stores them: variant 0, then the rescaled variant 1
    variant = np.repeat(np.array([0, 1]), len(samples))
    drawn = balanced_indices(doubled, 4, 256, seed=1)
    paired = paired_indices(doubled, drawn, 32, variant)
    n = len(samples)
    where = {s.path: i for i, s in enumerate(samples)}
    same = other = total = 0
    for start in range(0, len(paired), 32):
        batch = set(paired[start : start + 32].tolist())
        for i in paired[start : start + 32]:
            if doubled[i].source:
                j = where[doubled[i].source]
                total += 1
                same += (j + variant[i] * n) in batch
                other += (j + (1 - variant[i]) * n) in batch
    assert same / total > 0.9 and other / total < 0.35  # its photo in the same variant joined, not the other copy
    assert pair_share(doubled, paired, 32, variant) == pytest.approx(same / total)


def test_holdable_units_group_decoder_families(paired_tree):
    from dfx.trainer.protocol import holdable_units

    photos, pseudo = paired_tree
    units = holdable_units(datasets.discover([photos, pseudo]))
    assert units["ae-tconv"] == (1, frozenset({"ae-tconv-x4"}))
    assert units["ae-nearest"] == (1, frozenset({"ae-nearest-x8"}))
    assert units["gan"] == (1, frozenset({"gan"})) and units["a"] == (0, frozenset({"a"}))


def test_launder_is_deterministic_and_within_its_ranges(tmp_path):
    from PIL import Image

    from dfx.trainer.alterations import LAUNDER_LONG_SIDE, launder
    from dfx.trainer.reconstruct import estimate_quality

    big, small = tmp_path / "x" / "big.png", tmp_path / "x" / "small.png"
    _png(big, 1, size=(900, 600))
    _png(small, 2, size=(120, 100))
    sides, qualities = [], []
    for seed in range(6):
        data = launder(str(big), seed)
        assert data == launder(str(big), seed)  # one image, one alteration
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == "JPEG"
            sides.append(max(im.size))
            qualities.append(estimate_quality(im.quantization))
            assert abs(im.size[0] / im.size[1] - 1.5) < 0.02  # aspect kept
    assert all(LAUNDER_LONG_SIDE[0] <= s <= LAUNDER_LONG_SIDE[1] for s in sides) and len(set(sides)) > 1
    assert all(70 <= q <= 90 for q in qualities)
    with Image.open(io.BytesIO(launder(str(small), 0))) as im:  # small images are enlarged too: size says nothing
        assert LAUNDER_LONG_SIDE[0] <= im.size[0] <= LAUNDER_LONG_SIDE[1] and abs(im.size[0] / im.size[1] - 1.2) < 0.02


def test_rescaled_copy_shrinks_a_pair_alike(tmp_path):
    from dfx.trainer.alterations import rescaled

    a, b = tmp_path / "real" / "p.png", tmp_path / "fake" / "p_fake.png"
    _png(a, 1, size=(300, 200))
    _png(b, 2, size=(300, 200))
    sizes = {rescaled(str(a), 0.5, 0).size, rescaled(str(b), 0.5, 0, key=str(a)).size}
    assert len(sizes) == 1
    w, h = sizes.pop()
    assert 150 <= w < 300 and 100 <= h < 200


def test_summary_separates_generators_families_sources_and_laundered_rows():
    from dfx.trainer.protocol import IN_DISTRIBUTION, summarize

    rows = {
        IN_DISTRIBUTION: {"auc": 0.99},
        f"{IN_DISTRIBUTION} / half-size": {"auc": 0.9},
        f"{IN_DISTRIBUTION} / laundered": {"auc": 0.95, "baseline_auc": 0.6, "framing_baseline_auc": 0.9, "laundered_of": IN_DISTRIBUTION},
        "sd21": {"auc": 0.7, "held_out": "fake", "pseudo_fake_family": False, "held_out_fpr": 0.0},
        "sd21 / laundered": {"auc": 0.5, "held_out": "fake", "laundered_of": "sd21", "baseline_auc": 0.55},
        "ae-tconv": {"auc": 0.95, "held_out": "fake", "pseudo_fake_family": True, "held_out_fpr": 0.0},
        "aaf": {"auc": 0.8, "held_out": "real", "pseudo_fake_family": False, "held_out_fpr": 0.3},
    }
    s = summarize(rows)
    assert s["real_generator_mean_auc"] == pytest.approx(0.7)
    assert s["pseudo_family_mean_auc"] == pytest.approx(0.95)
    assert s["held_out_mean_auc"] == pytest.approx((0.7 + 0.95 + 0.8) / 3)  # laundered rows not counted
    assert s["photo_source_max_flagged"] == pytest.approx(0.3)
    assert s["half_size_drop"] == pytest.approx(0.09)
    assert s["worst_laundered_drop"] == pytest.approx(0.2)
    assert s["min_laundered_margin_over_baseline"] == pytest.approx(-0.05)
    rows["sd21 / laundered"]["framing_baseline_auc"] = 0.65  # the framing alone is the stronger baseline there
    assert summarize(rows)["min_laundered_margin_over_baseline"] == pytest.approx(-0.15)
    assert s["real_generator_mean_framing_matched_auc"] is None  # no framing-matched AUC in these rows
    rows["sd21"]["framing_matched_auc"] = 0.55
    rows["ae-tconv"]["framing_matched_auc"] = 0.9  # a pseudo-fake family: not a real generator
    assert summarize(rows)["real_generator_mean_framing_matched_auc"] == pytest.approx(0.55)


def test_framing_matched_auc_compares_only_images_framed_alike():
    """A cue that is the framing cannot raise the matched AUC; a trace that every fake carries does."""
    from dfx import metrics
    from dfx.trainer.protocol import FRAMING_CALIPER, _framing_matched, framing_matched_pairs

    rng = np.random.default_rng(0)
    n = 400
    labels = np.repeat([0, 1], n)
    # Reals framed tight (face 0.9 of the side), fakes with a margin (0.65); a fifth of each framed like the other.
    width = np.where(labels == 1, 0.65, 0.9) + rng.normal(0, 0.01, 2 * n)
    swap = rng.random(2 * n) < 0.2
    width[swap] += np.where(labels[swap] == 1, 0.25, -0.25)
    cues = np.stack([width, width, np.full(2 * n, 0.5), rng.uniform(0.45, 0.55, 2 * n), np.ones(2 * n)], 1)
    cues[:5] = cues[-3:] = [-1, -1, -1, -1, 0]  # no face found: paired only with each other

    pairs = framing_matched_pairs(labels, cues)
    fakes, reals = pairs[:, 0], pairs[:, 1]
    assert (labels[fakes] == 1).all() and (labels[reals] == 0).all()
    assert len(set(fakes)) == len(fakes) and len(set(reals)) == len(reals)  # each image in one pair at most
    assert (np.abs(cues[fakes, :4] - cues[reals, :4]).max(1) <= FRAMING_CALIPER + 1e-12).all()
    assert (cues[fakes, 4] == cues[reals, 4]).all() and sum(cues[fakes, 4] == 0) == 3
    assert 0.3 * n < len(pairs) < 0.5 * n  # a fifth of each side finds the other's framing, both ways
    np.testing.assert_array_equal(pairs, framing_matched_pairs(labels, cues))  # seeded: the same pairs every run

    framing_only = -np.abs(width - 0.65) + rng.normal(0, 0.001, 2 * n)  # reads the framing and nothing else
    assert metrics.auc(labels, framing_only) > 0.75
    trace = labels + rng.normal(0, 0.5, 2 * n)  # a trace that every fake carries, whatever its framing
    matched = _framing_matched(labels, trace, framing_only, cues)
    assert matched["framing_matched_pairs"] == len(pairs)
    assert matched["framing_matched_auc"] == pytest.approx(metrics.auc(labels, trace), abs=0.06)
    lo, hi = matched["framing_matched_auc_95"]
    assert lo < matched["framing_matched_auc"] < hi and hi - lo < 0.2
    assert matched["framing_matched_baseline_auc"] == pytest.approx(0.5, abs=0.1)
    nan_scores = trace.copy()
    nan_scores[-40:] = np.nan  # photos without a scored face are left out, as in the row
    assert _framing_matched(labels, nan_scores, framing_only, cues)["framing_matched_pairs"] < len(pairs)
    few = _framing_matched(labels[:420], trace[:420], framing_only[:420], cues[:420])  # 20 fakes: too few pairs for an AUC
    assert few["framing_matched_auc"] is None and few["framing_matched_pairs"] < 30


def test_train_with_pairs_records_the_sampling_in_the_manifest(paired_tree, tmp_path):
    pytest.importorskip("tensorflow", reason="training needs tensorflow (pip install 'dfx[train]')")
    from dfx.trainer.train import TrainConfig, train

    photos, pseudo = paired_tree
    config = TrainConfig(data=(str(photos), str(pseudo)), out=str(tmp_path / "b"), size=32, train_canvas=None, epochs=1,
                         epoch_size=128, batch_size=32, architecture="seed_cnn", augment="none", pairs=True,
                         scale_jitter=0.5, progress=False)
    m = train(config).manifest
    t = m["training"]
    assert t["sampling"] == "balanced+pairs" and t["scale_jitter"] == 0.5
    assert t["paired_fakes"] == 2 * 80  # 80 training pseudo-fakes, stored twice (as is and rescaled)
    assert t["pairs_in_same_batch"] > 0.8  # 128 draws: a batch with more pseudo-fakes than reals misses a few
    val = m["data"]["val"]["groups"]
    assert val["fake/ae-tconv-x4"] == val["real/a"] + val["real/b"]  # each val photo's fakes are in val too


def test_pairs_need_balanced_epochs(paired_tree, tmp_path):
    pytest.importorskip("tensorflow", reason="training needs tensorflow (pip install 'dfx[train]')")
    from dfx.errors import DfxError
    from dfx.trainer.train import TrainConfig, check_config

    with pytest.raises(DfxError, match="--pairs"):
        check_config(TrainConfig(data="x", out=str(tmp_path), pairs=True, balance=False))


def test_laundered_training_copies_leave_a_pair_alike_and_apart_from_the_protocol_rows(paired_tree):
    from PIL import Image

    from dfx.trainer.alterations import launder

    photos, pseudo = paired_tree
    photo = sorted((photos / "real" / "a").glob("*.png"))[3]
    fake = pseudo / "fake" / "ae-tconv-x4" / f"a_{photo.name}"
    big = Image.new("RGB", (600, 450), (90, 120, 150))  # long side 600: every draw resizes
    pair = [Image.open(io.BytesIO(launder(str(p), 0, image=big, key=str(photo), kind="launder-training"))).size for p in (photo, fake)]
    assert pair[0] == pair[1]  # one size (and quality) for both sides of the pair
    sizes = {Image.open(io.BytesIO(launder(f"x/{i}.png", 0, image=big, kind=k))).size for i in range(8) for k in ("launder", "launder-training")}
    assert len(sizes) > 4  # the draws differ from image to image and between training and the rows


def test_train_with_laundered_copies_records_them(paired_tree, tmp_path):
    pytest.importorskip("tensorflow", reason="training needs tensorflow (pip install 'dfx[train]')")
    from dfx.errors import DfxError
    from dfx.trainer.train import TrainConfig, check_config, train

    photos, pseudo = paired_tree
    config = TrainConfig(data=(str(photos), str(pseudo)), out=str(tmp_path / "b"), size=32, train_canvas=None, epochs=1,
                         epoch_size=128, batch_size=32, architecture="seed_cnn", augment="none", pairs=True,
                         launder_training="copy", progress=False)
    t = train(config).manifest["training"]
    assert t["launder_training"] == "copy"
    assert t["paired_fakes"] == 2 * 80  # every training pseudo-fake as stored and laundered
    assert t["pairs_in_same_batch"] > 0.8  # a laundered fake meets its laundered photo
    with pytest.raises(DfxError, match="--launder-training all"):
        check_config(TrainConfig(data="x", out=str(tmp_path), launder_training="all", scale_jitter=0.5))
    with pytest.raises(DfxError, match="--framing-jitter would add copies"):
        check_config(TrainConfig(data="x", out=str(tmp_path), launder_training="all", framing_jitter=True))
    with pytest.raises(DfxError, match="copy or all"):
        check_config(TrainConfig(data="x", out=str(tmp_path), launder_training="some"))
    with pytest.raises(DfxError, match="--pseudo-share"):
        check_config(TrainConfig(data="x", out=str(tmp_path), pseudo_share="half"))


def test_pseudo_fakes_can_share_one_generators_part_of_the_fake_half(paired_tree):
    from dfx.trainer.data import balanced_indices, group_shares

    photos, pseudo = paired_tree
    samples = datasets.discover([photos, pseudo])
    each = group_shares(samples)
    assert each["fake/gan"] == pytest.approx(0.5 / 3) and each["fake/ae-tconv-x4"] == pytest.approx(0.5 / 3)
    one = group_shares(samples, "one-generator")
    assert one["fake/gan"] == pytest.approx(0.25)  # the generator and the decoders together: one share each
    assert one["fake/ae-tconv-x4"] == one["fake/ae-nearest-x8"] == pytest.approx(0.125)
    assert one["real/a"] == one["real/b"] == pytest.approx(0.25) and sum(one.values()) == pytest.approx(1.0)
    drawn = balanced_indices(samples, 4, 512, seed=0, pseudo_share="one-generator")
    assert np.mean([samples[i].group == "gan" for i in drawn]) == pytest.approx(0.25, abs=0.03)


def test_pairs_of_whole_photos_match_face_by_face():
    """A whole photo is one sample per face: the k-th face of a pseudo-fake pairs with the k-th
    face of its photo (not every face with the photo's last), and per variant."""
    from dfx.datasets import Sample
    from dfx.trainer.data import _partners

    photo = [Sample("/p.jpg", 0, "a")] * 2  # two faces
    fake = [Sample("/f.jpg", 1, "ae-tconv-x4", source="/p.jpg")] * 3  # the finder found three
    lone = Sample("/g.jpg", 1, "stylegan2")
    samples = photo + fake + [lone] + photo + fake  # variant 0, then a rescaled copy (variant 1)
    variant = np.array([0] * 6 + [1] * 5)
    assert _partners(samples, variant).tolist() == [-1, -1, 0, 1, 1, -1, -1, -1, 6, 7, 7]
