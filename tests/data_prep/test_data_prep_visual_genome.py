"""The Visual Genome importer (data_prep.visual_genome) on tiny files in VG's JSON format that the tests
write: facts, orders, pairs and splits against a hand-computed expectation and against the annotated-
fact importer (the same thresholds and splits), bad records, and the streaming JSON reader."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from PIL import Image

from data_prep import from_csv, jsonstream, vg_words, visual_genome
from factmas.data.dataset import read_dataset

RIDE = [("person", "", ""), ("person", "ride", ""), ("person", "ride", "horse"), ("horse", "", ""),
        ("person", "smile", ""), ("person", "tall", "")]
DOG = [("dog", "", ""), ("dog", "on", "grass"), ("grass", "", "")]


def _obj(name, key="name", oid=0):
    return {"object_id": oid, "x": 1, "y": 2, "w": 3, "h": 4, key: name if key == "name" else [name],
            "synsets": []}


def _rel(subject, predicate, obj, subject_key="name"):
    return {"relationship_id": 1, "predicate": predicate, "synsets": [],
            "subject": _obj(subject, subject_key), "object": _obj(obj, "names")}


def _write(path, records):
    path.write_text(json.dumps(records, indent=1))
    return path


@pytest.fixture
def vg(tmp_path):
    """Images 1-12 annotated (1-6: a man riding a horse, smiling and tall; 7-12: a dog on grass, 9-12
    also a tree), image 13 annotated but without a file, image 14 a corrupt file; five bad annotations."""
    rng = np.random.default_rng(0)
    for i in range(1, 15):
        folder = tmp_path / "images" / ("VG_100K" if i < 10 else "VG_100K_2")
        folder.mkdir(parents=True, exist_ok=True)
        if i == 14:
            (folder / "14.jpg").write_bytes(b"\xff\xd8\xff garbage")
        elif i != 13:
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
    rels = []
    for i in range(1, 15):
        items = [_rel("Man", "riding", "Horses") if i <= 6 or i >= 13 else
                 _rel("dog", "ON", "grass", subject_key="names")]
        rels.append({"image_id": i, "relationships": items})
    rels[0]["relationships"].append(_rel("man", "  ", "horse"))                 # empty predicate
    rels[1]["relationships"].append({"predicate": "on", "subject": _obj("man")})  # no 'object'
    rels[2]["relationships"].append(_rel("background", "behind", "man"))         # no usable noun
    rels[3]["relationships"].append("man riding horse")                          # not an object
    attrs = [{"image_id": i, "attributes": [{**_obj("man", "names"), "attributes": ["smiling", " Tall "]}]}
             for i in range(1, 7)]
    attrs.append({"image_id": 7, "attributes": [{**_obj("dog", "names"), "attributes": [5]}]})  # bad
    attrs.append({"image_id": 8, "attributes": [_obj("dog", "names")]})          # no attributes key
    objs = [{"id": i, "objects": [_obj("trees", "names")]} for i in range(9, 13)]  # 'id' as in v1.2
    return {"rel": _write(tmp_path / "relationships.json", rels),
            "attr": _write(tmp_path / "attributes.json", attrs),
            "obj": _write(tmp_path / "objects.json", objs), "root": tmp_path}


def expected_facts(i: int) -> set:
    """Hand-computed facts of image i (before thresholds)."""
    if i <= 6 or i >= 13:
        return set(RIDE) if i <= 6 else set(RIDE) - {RIDE[4], RIDE[5]}
    return set(DOG) | ({("tree", "", "")} if i >= 9 else set())


def _args(vg, out, *extra, files=("rel", "attr", "obj"), thresholds=("--min-images", "2")):
    opt = {"rel": "--relationships", "attr": "--attributes", "obj": "--objects"}
    return [a for f in files for a in (opt[f], str(vg[f]))] + [
        "--images", str(vg["root"] / "images"), "--out", str(out), "--image-size", "8", "--num-tasks", "2",
        *thresholds, "--max-image-frac", "1", "-q", *extra]


def test_read_facts_hand_computed_and_bad_records_counted(vg):
    by_image, skips, records = visual_genome.read_facts(
        {"relationships": vg["rel"], "attributes": vg["attr"], "objects": vg["obj"]})
    assert records == {"relationships": 14, "attributes": 8, "objects": 4, "images_without_fact": 0}
    only_bad = _write(vg["root"] / "bad_only.json", [{"image_id": 99, "relationships": [_rel("man", "", "x")]}])
    assert visual_genome.read_facts({"relationships": only_bad})[0::2] == ({}, {"relationships": 1,
                                                                               "images_without_fact": 1})
    assert by_image == {i: expected_facts(i) for i in range(1, 15)}
    assert dict(skips.counts) == {"empty predicate": 1, "relationship without 'object'": 1,
                                  "subject name without a usable noun": 1,
                                  "relationship is not an object": 1, "attribute is not text": 1}
    assert skips.examples[0].endswith("record 0 relationships[1]: empty predicate '  '")


def test_build_facts_pairs_splits(vg, capsys):
    out = vg["root"] / "vg.h5"
    assert visual_genome.main(_args(vg, out)) == 0
    err = capsys.readouterr().err
    assert "skipped 5 annotation(s)" in err and "13.jpg: missing file" in err and "14.jpg" in err
    d = read_dataset(out)
    facts = list(zip(d.subject, d.predicate, d.object))
    assert facts == sorted(set(RIDE) | set(DOG) | {("tree", "", "")})
    assert list(d.order) == [1 + bool(p) + bool(o) for _, p, o in facts]
    assert d.image_ids == [f"VG_100K/{i}.jpg" for i in range(1, 10)] + ["VG_100K_2/10.jpg", "VG_100K_2/11.jpg",
                                                                         "VG_100K_2/12.jpg"]
    stored = {(d.image_ids[i], facts[f]) for i, f in d.pairs}
    assert stored == {(name, f) for i, name in zip(range(1, 13), d.image_ids) for f in expected_facts(i)}
    prov = d.provenance
    assert prov["source"]["annotations_skipped"]["empty predicate"] == 1
    assert prov["counts"]["images_skipped"] == 2 and prov["options"]["min_images"] == 2
    assert set(d.splits) == {"random2_seed0", "random2_seed1", "random2_seed2", "semantic2",
                             "disjoint2_seed0", "disjoint2_seed1", "disjoint2_seed2"}

    # the same pairs through the annotated-fact importer: the same file contents (thresholds, image
    # split, task splits are build.assemble's, shared with the Flickr8k builder)
    csv = vg["root"] / "same.csv"
    csv.write_text("image,S,P,O\n" + "".join(f"{d.image_ids[i]},{','.join(facts[f])}\n" for i, f in d.pairs))
    ref = vg["root"] / "ref.h5"
    assert from_csv.main(["--csv", str(csv), "--image-root", str(vg["root"] / "images"), "--out", str(ref),
                          "--image-size", "8", "--num-tasks", "2", "--min-images", "2",
                          "--max-image-frac", "1", "-q"]) == 0
    r = read_dataset(ref)
    assert (r.subject, r.predicate, r.object, r.image_ids) == (d.subject, d.predicate, d.object, d.image_ids)
    assert np.array_equal(r.pairs, d.pairs) and np.array_equal(r.image_split, d.image_split)
    assert np.array_equal(r.images, d.images)
    for k in d.splits:
        assert np.array_equal(r.splits[k], d.splits[k]), k
    for k in d.split_images:
        assert np.array_equal(r.split_images[k], d.split_images[k]), k


def test_flickr8k_thresholds_by_default(vg, capsys):
    """Without --min-images the Flickr8k bar (14 training images) applies: 12 images pass nothing."""
    assert visual_genome.main(_args(vg, vg["root"] / "x.h5", thresholds=())) == 2
    assert "--min-images 14" in capsys.readouterr().err and not (vg["root"] / "x.h5").exists()


def test_limit_and_synset_names(vg):
    recs = [{"image_id": i, "relationships": [{
        "predicate": "wears", "subject": {"name": "guy", "synsets": ["man.n.01"]},
        "object": {"name": "tee", "synsets": ["t_shirt.n.01"]}}]} for i in range(1, 13)]
    path = _write(vg["root"] / "syn.json", recs)
    by_image, skips, _ = visual_genome.read_facts({"relationships": path}, names="synset")
    assert by_image[1] == {("person", "wear", "t shirt"), ("person", "", ""), ("t shirt", "", ""),
                           ("person", "wear", "")} and not skips.counts
    by_name, _, _ = visual_genome.read_facts({"relationships": path})
    assert ("person", "wear", "tee") in by_name[1]          # 'guy' is a people word
    out = vg["root"] / "syn.h5"
    assert visual_genome.main(["--relationships", str(path), "--images", str(vg["root"] / "images"),
                               "--out", str(out), "--names", "synset", "--limit-images", "8",
                               "--image-size", "8", "--num-tasks", "1", "--min-images", "1",
                               "--max-image-frac", "1", "--no-disjoint", "-q"]) == 0
    assert read_dataset(out).image_ids == [f"VG_100K/{i}.jpg" for i in range(1, 9)]


@pytest.mark.parametrize("records,match", [
    ({"image_id": 1}, r"x\.json: expected a JSON array"),
    ([{"image_id": 1, "relationships": []}, [1]], r"x\.json: record 1: expected a JSON object"),
    ([{"relationships": []}], r"x\.json: record 0: missing key 'image_id'"),
    ([{"image_id": "7", "relationships": []}], r"record 0: 'image_id' must be an integer >= 0, got '7'"),
    ([{"image_id": 7, "objects": []}], r"record 0 \(image_id 7\): expected a list under 'relationships', "
                                       r"got no such key"),
    ([{"image_id": 7, "relationships": {}}], r"expected a list under 'relationships', got dict"),
])
def test_bad_records_refused_with_file_and_index(tmp_path, records, match):
    path = _write(tmp_path / "x.json", records)
    with pytest.raises(visual_genome.VisualGenomeError, match=match):
        visual_genome.read_facts({"relationships": path})


def test_bad_input_exit_2_names_the_problem(vg, capsys):
    root = vg["root"]
    (root / "broken.json").write_text('[{"image_id": 1, "relationships": []},\n {"image_id": 2, "rel')
    cases = [
        (["--relationships", str(root / "broken.json")],
         r"broken\.json: record 1 \(character \d+\): not valid JSON"),
        (["--relationships", str(root / "none.json")], r"none\.json: file not found"),
        (["--relationships", str(vg["rel"]), "--strict"],
         r"record 0 relationships\[1\]: empty predicate '  ' \(--strict"),
        ([], "no annotations: give --relationships"),
    ]
    for files, match in cases:
        args = files + ["--images", str(root / "images"), "--out", str(root / "e.h5"), "-q"]
        assert visual_genome.main(args) == 2, files
        err = capsys.readouterr().err
        assert re.search(match, err), (match, err)
        assert not (root / "e.h5").exists()
    assert visual_genome.main(["--relationships", str(vg["rel"]), "--images", str(root / "nope"),
                               "--out", str(root / "e.h5")]) == 2
    assert "--images folder not found" in capsys.readouterr().err


def test_missing_image_is_an_error_under_strict(vg, capsys):
    ok = [{"image_id": i, "relationships": [_rel("man", "riding", "horse")]} for i in (12, 13)]
    path = _write(vg["root"] / "ok.json", ok)
    args = ["--relationships", str(path), "--images", str(vg["root"] / "images"), "--out",
            str(vg["root"] / "s.h5"), "--strict", "-q", "--min-images", "1", "--num-tasks", "1"]
    assert visual_genome.main(args) == 2
    assert "13.jpg: missing file (--strict)" in capsys.readouterr().err


@pytest.mark.parametrize("text,want", [
    ("Man", "person"), ("tall men", "person"), ("group of People", "person"), ("pile of snow", "snow"),
    ("side of building", "building"), ("hand of man", "hand"), ("White T-Shirt", "t-shirt"),
    ("leaves", "leaf"), ("glasses", "glasses"), ("the sky", "sky"), ("background", None), ("123", None),
    ("picture", "picture"), ("crowd", "person"),
])
def test_noun_rules(text, want):
    assert vg_words.noun(text) == want


@pytest.mark.parametrize("text,want", [
    ("ON", ("on", None)), ("wearing", ("wear", "wear")), ("is Sitting on", ("sit on", "sit")),
    ("has a", ("have", None)), ("parked on", ("parked on", None)), ("to the left of", ("to left of", None)),
    ("in front of", ("in front of", None)), ("standing next to the", ("stand next to", "stand")),
    ("riding on top of a", ("ride on top of", "ride")), ("v w x y z", None), ("!!", None),
])
def test_predicate_rules(text, want):
    assert vg_words.predicate(text) == want


def test_attribute_and_synset_rules():
    assert [vg_words.attribute(a) for a in (" Smiling ", "striped", "dark blue", "", "v w x y z")] == \
        ["smile", "striped", "dark blue", None, None]
    assert [vg_words.synset_noun(s) for s in ("man.n.01", "stop_sign.n.01", "tree", ".n.01")] == \
        ["person", "stop sign", None, None]


def test_stream_equals_json_load(tmp_path, monkeypatch):
    """Random arrays, written compact and indented, read through a 7-character buffer."""
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    rnd = random.Random(0)
    for n in (0, 1, 3, 50):
        recs = [{"image_id": i, "s": "é\"x" * rnd.randint(0, 30),
                 "v": [1.5, None, True, -3] * rnd.randint(0, 9)} for i in range(n)]
        for indent in (None, 2):
            p = tmp_path / "a.json"
            p.write_text(json.dumps(recs, indent=indent, ensure_ascii=indent is None))
            got = list(jsonstream.iter_records(p, ValueError))
            assert got == list(enumerate(json.load(p.open())))


@pytest.mark.parametrize("text,match", [
    ('[{"a": 1} {"b": 2}]', r"after record 0: expected ',' or '\]' at character 10, found '\{'"),
    ('[{"a": 1}] x', r"text after the closing '\]' at character 11"),
    ('[{"a": 1},', r"record 1 \(character 10\): not valid JSON"),
    ("   ", "expected a JSON array of per-image records at character 3, found 'the end of the file'"),
])
def test_stream_errors(tmp_path, monkeypatch, text, match):
    p = tmp_path / "a.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        list(jsonstream.iter_records(p, ValueError))
    p.write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(ValueError, match="not UTF-8"):
        list(jsonstream.iter_records(p, ValueError))
    monkeypatch.setattr(jsonstream, "CHUNK", 7)
    p.write_text('[{"a": "' + "x" * 100 + '"}]')
    with pytest.raises(ValueError, match="record 0 .*longer than 50 characters"):
        list(jsonstream.iter_records(p, ValueError, max_record=50))


def test_command_line_exit_status_without_traceback(vg):
    """``python -m data_prep.visual_genome``: --help works; a bad file is one error line, exit 2."""
    import subprocess
    import sys

    run = [sys.executable, "-m", "data_prep.visual_genome"]
    assert subprocess.run(run + ["--help"], capture_output=True).returncode == 0
    bad = _write(vg["root"] / "bad.json", [{"image_id": 1}])
    r = subprocess.run(run + ["--relationships", str(bad), "--images", str(vg["root"] / "images"), "--out",
                              str(vg["root"] / "c.h5"), "-q"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "bad.json: record 0 (image_id 1): expected a list under 'relationships'" in r.stderr


@pytest.mark.slow       # about 40 s on a loaded 2-core machine: four processes that import torch
def test_bench_vg_read_smoke(tmp_path):
    """bench/vg_read.py at a tiny size: every reader sees every relationship, results written."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "bench" / "vg_read.py"
    out = tmp_path / "vg_read.json"
    done = subprocess.run([sys.executable, str(script), "--images", "30", "--rels-per-image", "3", "--out",
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"json_load", "stream", "read_facts"}
    assert rows["json_load"]["items"] == rows["stream"]["items"] == 90
    assert rows["read_facts"]["items"] > 0 and all(r["peak_above_start_mib"] >= 0 for r in rows.values())
