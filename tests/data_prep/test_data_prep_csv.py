"""The annotated-fact importer (data_prep.from_csv): CSV and JSONL, its errors, and the build."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from data_prep import from_csv
from factmas.data.dataset import read_dataset


def _images(root, n):
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(root / f"im{i:02d}.png")


def _rows(n):
    """Each image gets ⟨dog⟩ or ⟨person⟩ plus one ⟨S,P⟩ and ⟨S,P,O⟩; deterministic."""
    rows = []
    for i in range(n):
        s = ["dog", "person", "bird", "car"][i % 4]
        rows += [(f"im{i:02d}.png", s, "", ""), (f"im{i:02d}.png", s, "sit on", ""),
                 (f"im{i:02d}.png", s, "sit on", ["bench", "grass"][i % 2])]
    return rows


def _write_csv(path, rows, header="image,S,P,O"):
    path.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def test_csv_and_aliases_and_jsonl_agree(tmp_path):
    rows = _rows(4)
    a = from_csv.read_annotations(_write_csv(tmp_path / "a.csv", rows))
    b = from_csv.read_annotations(_write_csv(tmp_path / "b.csv", rows, "image_path,subject,predicate,object"))
    (tmp_path / "c.jsonl").write_text("".join(
        json.dumps({"image": r[0], "S": r[1], "P": r[2] or None, "O": r[3]}) + "\n" for r in rows))
    c = from_csv.read_annotations(tmp_path / "c.jsonl")
    assert [x[:2] for x in a] == [x[:2] for x in b] == [x[:2] for x in c]
    assert a[2][:2] == ("im00.png", ("dog", "sit on", "bench")) and a[2][2] == 4  # line numbers


def test_words_are_normalized(tmp_path):
    p = _write_csv(tmp_path / "n.csv", [("x.png", " Big  Dog ", "Runs  On", "GRASS")])
    assert from_csv.read_annotations(p)[0][1] == ("big dog", "runs on", "grass")


@pytest.mark.parametrize("text,match", [
    ("image,S,P\nx.png,dog,run\n", r"n\.csv:1: missing column 'O'"),
    ("image,S,P,O\nx.png,dog,run\n", r"n\.csv:2: 3 columns"),
    ("image,S,P,O\nx.png,dog,,\nx.png,,run,\n", r"n\.csv:3: empty subject"),
    ("image,S,P,O\nx.png,dog,,ball\n", r"n\.csv:2: object 'ball' without a predicate"),
    ("image,S,P,O\n,dog,,\n", r"n\.csv:2: empty image path"),
    ("image,S,P,O\nx.png,dog,a b c d e,\n", r"n\.csv:2: P 'a b c d e' has more than"),
    ("image,S,P,O\n", "no annotation rows"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, match):
    (tmp_path / "n.csv").write_text(text)
    with pytest.raises(from_csv.AnnotationError, match=match):
        from_csv.read_annotations(tmp_path / "n.csv")


def test_jsonl_errors_name_line(tmp_path):
    (tmp_path / "j.jsonl").write_text('{"image": "a.png", "S": "dog"}\n{"image": "a.png", "S": "dog", "P": "", "O": ""}\n')
    with pytest.raises(from_csv.AnnotationError, match=r"j\.jsonl:1: missing column 'P'"):
        from_csv.read_annotations(tmp_path / "j.jsonl")
    (tmp_path / "k.jsonl").write_text('{"image": "a.png", "S": "dog", "P": "", "O": ""}\n{oops\n')
    with pytest.raises(from_csv.AnnotationError, match=r"k\.jsonl:2: not valid JSON"):
        from_csv.read_annotations(tmp_path / "k.jsonl")
    with pytest.raises(from_csv.AnnotationError, match="not found"):
        from_csv.read_annotations(tmp_path / "missing.csv")


def _args(tmp_path, csv, out, *extra):
    return ["--csv", str(csv), "--image-root", str(tmp_path / "img"), "--out", str(out), "--image-size", "8",
            "--num-tasks", "2", "-q", *extra]


def test_build_round_trip_with_corrupt_image(tmp_path, capsys):
    _images(tmp_path / "img", 24)
    (tmp_path / "img" / "im03.png").write_bytes(b"\x89PNG broken")
    csv = _write_csv(tmp_path / "a.csv", _rows(24))
    out = tmp_path / "a.h5"
    assert from_csv.main(_args(tmp_path, csv, out)) == 0
    err = capsys.readouterr().err
    assert "im03.png" in err and "skipped 1 image" in err
    d = read_dataset(out)
    assert len(d.image_ids) == 23 and "im03.png" not in d.image_ids
    assert d.images.shape == (23, 8, 8, 3)
    facts = set(zip(d.subject, d.predicate, d.object))
    assert ("dog", "sit on", "bench") in facts and ("person", "", "") in facts
    # every annotated pair of a usable image is stored (naive check)
    stored = {(d.image_ids[i], (d.subject[f], d.predicate[f], d.object[f])) for i, f in d.pairs}
    assert stored == {(r[0], r[1:]) for r in _rows(24) if r[0] != "im03.png"}
    assert set(d.splits) == {"random2_seed0", "random2_seed1", "random2_seed2", "semantic2",
                             "disjoint2_seed0", "disjoint2_seed1", "disjoint2_seed2"}
    assert set(d.split_images) == {"disjoint2_seed0", "disjoint2_seed1", "disjoint2_seed2"}
    assert d.provenance["skipped"][0]["image"] == "im03.png"
    assert d.provenance["counts"]["images_skipped"] == 1

    # same inputs and seed → identical fact table and splits
    out2 = tmp_path / "b.h5"
    assert from_csv.main(_args(tmp_path, csv, out2)) == 0
    d2 = read_dataset(out2)
    assert (d2.subject, d2.predicate, d2.object) == (d.subject, d.predicate, d.object)
    assert all(np.array_equal(d.splits[k], d2.splits[k]) for k in d.splits)
    assert all(np.array_equal(d.split_images[k], d2.split_images[k]) for k in d.split_images)
    assert np.array_equal(d.image_split, d2.image_split) and np.array_equal(d.pairs, d2.pairs)

    # --strict makes the corrupt image an error; an existing output needs --overwrite
    assert from_csv.main(_args(tmp_path, csv, tmp_path / "c.h5", "--strict")) == 2
    assert "im03.png" in capsys.readouterr().err and not (tmp_path / "c.h5").exists()
    assert from_csv.main(_args(tmp_path, csv, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert from_csv.main(_args(tmp_path, csv, out, "--overwrite")) == 0


def test_empty_result_says_which_setting(tmp_path, capsys):
    _images(tmp_path / "img", 4)
    csv = _write_csv(tmp_path / "a.csv", _rows(4))
    assert from_csv.main(_args(tmp_path, csv, tmp_path / "x.h5", "--min-images", "50")) == 2
    assert "--min-images" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_implied_lower_orders(tmp_path):
    _images(tmp_path / "img", 2)
    csv = _write_csv(tmp_path / "a.csv", [("im00.png", "dog", "run through", "grass"), ("im01.png", "cat", "", "")])
    assert from_csv.main(_args(tmp_path, csv, tmp_path / "a.h5", "--implied", "--num-tasks", "1",
                                 "--threshold-images", "all", "--no-disjoint")) == 0
    d = read_dataset(tmp_path / "a.h5")
    got = {(d.image_ids[i], d.fact_text(f)) for i, f in d.pairs}
    assert got == {("im00.png", "<dog>"), ("im00.png", "<dog, run through>"),
                   ("im00.png", "<dog, run through, grass>"), ("im01.png", "<cat>")}


def test_inspect_counts_match_naive(tmp_path, capsys):
    from data_prep import inspect

    _images(tmp_path / "img", 24)
    csv = _write_csv(tmp_path / "a.csv", _rows(24))
    assert from_csv.main(_args(tmp_path, csv, tmp_path / "a.h5", "--split-seeds", "5", "--no-semantic")) == 0
    d = read_dataset(tmp_path / "a.h5")
    rows = inspect.task_table(d, "random2_seed5")
    task = d.splits["random2_seed5"]
    for r in rows:  # naive per-pair loop
        imgs = {i for i, f in d.pairs if task[f] == r["task"] and d.image_split[i] == 0}
        assert r["train_images"] == len(imgs) and r["facts"] == int((task == r["task"]).sum())
    assert inspect.main([str(tmp_path / "a.h5")]) == 0
    out = capsys.readouterr().out
    assert "images: 24" in out and "pairs: 72" in out and "random2_seed5" in out
    assert inspect.main([str(tmp_path / "missing.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
