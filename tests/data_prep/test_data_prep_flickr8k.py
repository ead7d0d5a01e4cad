"""The Flickr8k builder end to end on a tiny captioned folder, and data_prep.inspect on its output."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from data_prep import flickr8k, inspect, mining
from factmas.data.dataset import read_dataset

RIDE = "A man is riding a horse ."
RUN = "A dog runs through the grass ."


@pytest.fixture(scope="module")
def nlp():
    return mining.load_nlp()


@pytest.fixture(autouse=True)
def _cached_nlp(nlp, monkeypatch):
    monkeypatch.setattr(mining, "load_nlp", lambda: nlp)  # load spaCy once per module


@pytest.fixture
def folder(tmp_path):
    """6 horse riders, 6 running dogs, 1 image without facts, 1 corrupt and 1 missing image."""
    img = tmp_path / "images"
    img.mkdir()
    rng = np.random.default_rng(0)
    lines = ["image,caption"]
    for i in range(12):
        name = f"{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(img / name)
        cap = RIDE if i < 6 else RUN
        lines += [f"{name},{cap}"] * 4 + [f'{name},"A photo, taken outside ."']
    Image.new("L", (32, 32), 9).save(img / "12.jpg")  # grayscale, no fact
    lines += ["12.jpg,It is sunny ."] * 5
    (img / "13.jpg").write_bytes(b"\xff\xd8\xff garbage")
    lines += [f"13.jpg,{RIDE}"] * 5
    lines += [f"14.jpg,{RUN}"] * 5  # listed but missing
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


def _run(folder, out, *extra, paths=True):
    args = ["--out", str(out), "--image-size", "16", "--min-images", "3", "--max-image-frac", "1",
            "--num-tasks", "2", "-q", *extra]
    if paths:
        args += ["--images", str(folder / "images"), "--captions", str(folder / "captions.txt")]
    return flickr8k.main(args)


def test_build_mines_thresholds_and_reports(folder, capsys):
    out = folder / "f.h5"
    assert _run(folder, out) == 0
    err = capsys.readouterr().err
    assert "13.jpg" in err and "14.jpg: missing file" in err
    d = read_dataset(out)
    assert set(zip(d.subject, d.predicate, d.object)) == {
        ("dog", "", ""), ("dog", "run", ""), ("dog", "run through", "grass"),
        ("person", "", ""), ("person", "ride", ""), ("person", "ride", "horse")}
    assert d.image_ids == [f"{i:02d}.jpg" for i in range(12)]  # 12.jpg has no fact: dropped
    assert len(d.pairs) == 12 * 3 and d.images.shape == (12, 16, 16, 3)
    c = d.provenance["counts"]
    assert c["images_skipped"] == 2 and c["images_without_fact"] == 1 and c["images_kept"] == 12
    assert {s["image"] for s in d.provenance["skipped"]} == {"13.jpg", "14.jpg"}
    assert d.provenance["timings"]["captions_parsed"] == 13 * 5
    assert set(d.splits) == {"random2_seed0", "random2_seed1", "random2_seed2", "semantic2",
                             "disjoint2_seed0", "disjoint2_seed1", "disjoint2_seed2"}
    assert c["threshold_images"] == "train"
    sem = d.splits["semantic2"]
    assert len({sem[f] for f in range(6) if d.subject[f] == "dog"}) == 1  # semantic: by subject

    assert inspect.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "facts: 6 (order 1 ⟨S⟩: 2, order 2 ⟨S,P⟩: 2, order 3 ⟨S,P,O⟩: 2)" in text
    assert "random2_seed0" in text and "semantic2" in text and "images: 12" in text


def test_frequent_and_rare_facts_dropped(folder):
    out = folder / "g.h5"
    assert _run(folder, out, "--max-image-frac", "0.45", "--min-images", "7", "--no-semantic",
                "--split-seeds", "0") != 0  # every fact is in 6 images: none passes --min-images 7
    assert not out.exists()
    # counted over all 9 images (as files built before --threshold-images, which also drew the
    # seeded image split): riders in 6 (> 0.45), dogs in 3
    assert _run(folder, out, "--max-image-frac", "0.45", "--limit-images", "9", "--min-images", "3",
                "--no-semantic", "--split-seeds", "0", "--threshold-images", "all",
                "--image-split", "seed") == 0
    d = read_dataset(out)
    assert set(d.subject) == {"dog"} and len(d.image_ids) == 3


def test_env_folder_and_missing_input(folder, monkeypatch, capsys):
    monkeypatch.setenv(flickr8k.ENV, str(folder))
    assert _run(folder, folder / "e.h5", paths=False) == 0
    monkeypatch.delenv(flickr8k.ENV)
    assert _run(folder, folder / "e2.h5", paths=False) == 2
    assert flickr8k.ENV in capsys.readouterr().err
    assert flickr8k.main(["--out", str(folder / "e3.h5"), "--images", str(folder / "images")]) == 2


def test_strict_and_bad_captions(folder, capsys):
    assert _run(folder, folder / "s.h5", "--strict") == 2
    assert "13.jpg" in capsys.readouterr().err
    (folder / "bad.txt").write_text("file,text\na.jpg,hello\n")
    with pytest.raises(flickr8k.CaptionsError, match=r"bad\.txt:1"):
        flickr8k.read_captions(folder / "bad.txt")
    (folder / "bad2.txt").write_text("image,caption\na.jpg,hello\nb.jpg\n")
    with pytest.raises(flickr8k.CaptionsError, match=r"bad2\.txt:3"):
        flickr8k.read_captions(folder / "bad2.txt")
    caps = flickr8k.read_captions(folder / "captions.txt")
    assert caps["00.jpg"][-1] == "A photo, taken outside ."


def test_kaggle_layout_images_capitalized(folder, monkeypatch):
    """The Kaggle copy spells the folder Images/: $FACTMAS_FLICKR8K finds it as well."""
    (folder / "images").rename(folder / "Images")
    monkeypatch.setenv(flickr8k.ENV, str(folder))
    assert _run(folder, folder / "k.h5", paths=False) == 0
    assert flickr8k.image_folder(folder) == folder / "Images"


def test_flickr8k_default_counts_14_training_images(capsys):
    """The default bar restates the earlier files' 20 images among all on the 0.7 that train."""
    import data_prep.flickr8k as f8k
    with pytest.raises(SystemExit):
        f8k.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "counted on the images of --threshold-images (14)" in text
    assert "--threshold-images {train,all}" in text and "fraction of those images (0.3)" in text


def test_redirected_build_logs_progress_of_decoding_and_parsing(folder, capsys, monkeypatch):
    """Without -q and with stderr not a terminal, the two long stages print lines with their rate
    (every 30 s in a real build; every update here)."""
    from factmas import progress
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    args = ["--out", str(folder / "p.h5"), "--image-size", "16", "--min-images", "3",
            "--max-image-frac", "1", "--num-tasks", "2", "--images", str(folder / "images"),
            "--captions", str(folder / "captions.txt")]
    assert flickr8k.main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(" parsing captions done: 65 cap in " in x for x in err) or any(
        re.search(r" parsing captions: 65/65 cap \(100%\)", x) for x in err), err
    for stage, unit in (("decoding images", "img"), ("parsing captions", "cap")):
        assert any(f" {stage}: " in x and f" {unit}/s" in x and " left" in x for x in err), (stage, err)
    assert not any("\r" in x for x in err)


# The folder above built by the code before the hash default (commit 872c018, default options but
# the ones of _run): its image split (one label per kept image 00.jpg..11.jpg) and semantic split.
OLD_DEFAULT_SPLIT = [0, 2, 0, 0, 0, 0, 0, 0, 2, 1, 0, 2]
OLD_DEFAULT_SEMANTIC = [1, 1, 1, 1, 0, 0]


def test_default_is_the_hash_split_and_seed_rebuilds_the_older_file(folder):
    from data_prep import splits
    assert _run(folder, folder / "new.h5") == 0
    new = read_dataset(folder / "new.h5")
    assert np.array_equal(new.image_split, splits.hash_image_split(new.image_ids))
    assert new.provenance["options"]["image_split"] == "hash"
    assert _run(folder, folder / "old.h5", "--image-split", "seed") == 0
    old = read_dataset(folder / "old.h5")
    assert old.image_ids == new.image_ids == [f"{i:02d}.jpg" for i in range(12)]
    assert old.image_split.tolist() == OLD_DEFAULT_SPLIT                # exactly the older file
    assert old.splits["semantic2"].tolist() == OLD_DEFAULT_SEMANTIC
    assert new.image_split.tolist() != OLD_DEFAULT_SPLIT
