"""The LFL importer (data_prep.lfl) on a tiny folder in the layout of LFL's public loaders that the
test writes: pairs, facts and the given task splits against a hand-computed expectation; errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data_prep import lfl
from factmas.data.dataset import read_dataset

DOG = [("dog", "", ""), ("dog", "run", ""), ("dog", "run on", "grass")]
PERSON = [("person", "", ""), ("person", "ride", "horse")]
# (id, type, S, P, O) per task file; the semantic folder numbers the same facts differently
RANDOM = {1: [(1, "S", "Dog", "", ""), (2, "SP", "dog", "run", "nan"), (5, "SPO", "person", "ride", "horse")],
          2: [(3, "SPO", "dog", "run  on", "grass"), (4, "S", "person", "nan", "nan")]}
SEMANTIC = {1: [(10, "S", "dog", "", ""), (11, "SP", "dog", "run", ""), (12, "SPO", "dog", "run on", "grass")],
            2: [(13, "S", "person", "", ""), (14, "SPO", "person", "ride", "horse")]}


def _csv(path, header, rows):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def _image_rows(ids, images):
    """image_links,NLP_links,SPO,id,w_s,w_p,w_o rows of (image, fact id) with the slot flags."""
    return [(im, f"nlp/{i}.txt", "x", i, 1, int(bool(f[1])), int(bool(f[2])))
            for im in images for i, f in ids.items()]


def make_folder(root, name, tasks):
    """6 dog photos (train/d0..d5) with the dog facts, 6 person photos with the person facts; each
    (image, fact) row goes to the train or test file of its fact's task (d5 and p5 to test)."""
    rng = np.random.default_rng(0)
    for sub in ("train", "test"):
        (root / "images" / sub).mkdir(parents=True, exist_ok=True)
    dogs = [f"train/d{i}.jpg" for i in range(5)] + ["test/d5.jpg"]
    people = [f"train/p{i}.jpg" for i in range(5)] + ["test/p5.jpg"]
    for im in dogs + people:
        path = root / "images" / im
        if im == "test/p5.jpg":
            path = path.with_suffix(".png")      # listed as .jpg, stored as .png (as a few 6DS photos)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
    folder = root / "splits" / name
    folder.mkdir(parents=True)
    header = "image_links,NLP_links,SPO,id,w_s,w_p,w_o"
    for k, facts in tasks.items():
        _csv(folder / f"B{k}_facts.csv", "id,type,S,P,O", facts)
        words = {i: (s.lower(), "" if p == "nan" else " ".join(p.split()), "" if o == "nan" else o)
                 for i, _, s, p, o in facts}
        rows = [r for r in _image_rows({i: f for i, f in words.items() if f[0] == "dog"}, dogs)
                + _image_rows({i: f for i, f in words.items() if f[0] == "person"}, people)]
        _csv(folder / f"B{k}_train.csv", header, [r for r in rows if r[0].startswith("train/")])
        _csv(folder / f"B{k}_test.csv", header, [r for r in rows if r[0].startswith("test/")])
    return folder


def _args(root, out, *extra):
    return ["--root", str(root), "--out", str(out), "--image-size", "8", "--num-tasks", "2", "-q", *extra]


def test_import_pairs_facts_and_given_splits(tmp_path):
    make_folder(tmp_path, "2tasks_random", RANDOM)
    make_folder(tmp_path, "2tasks_semantic", SEMANTIC)
    out = tmp_path / "lfl.h5"
    assert lfl.main(_args(tmp_path, out)) == 0
    d = read_dataset(out)
    facts = list(zip(d.subject, d.predicate, d.object))
    assert facts == sorted(DOG + PERSON)
    stored = {(d.image_ids[i], facts[f]) for i, f in d.pairs}
    want = {(f"train/d{i}.jpg" if i < 5 else "test/d5.jpg", f) for i in range(6) for f in DOG} | \
           {(f"train/p{i}.jpg" if i < 5 else "test/p5.jpg", f) for i in range(6) for f in PERSON}
    assert stored == want
    task = {DOG[0]: 0, DOG[1]: 0, PERSON[1]: 0, DOG[2]: 1, PERSON[0]: 1}      # RANDOM's B1, B2
    assert list(d.splits["lfl_2tasks_random"]) == [task[f] for f in facts]
    assert list(d.splits["lfl_2tasks_semantic"]) == [0 if f[0] == "dog" else 1 for f in facts]
    assert d.split_attrs["lfl_2tasks_random"]["kind"] == "given"
    assert int(d.split_attrs["lfl_2tasks_semantic"]["num_tasks"]) == 2
    assert {"random2_seed0", "semantic2", "disjoint2_seed0"} <= set(d.splits)
    # --splits picks one folder
    assert lfl.main(_args(tmp_path, tmp_path / "one.h5", "--splits", "2tasks_semantic")) == 0
    assert "lfl_2tasks_random" not in read_dataset(tmp_path / "one.h5").splits


def _break(folder, name, old, new):
    path = folder / name
    path.write_text(path.read_text().replace(old, new, 1))


@pytest.mark.parametrize("name,old,new,match", [
    ("B1_facts.csv", "id,type,S,P,O", "id,type,S,P", r"B1_facts\.csv:1: missing column 'O'"),
    ("B1_facts.csv", "1,S,Dog", "1,S,", r"B1_facts\.csv:2: empty subject"),
    ("B2_facts.csv", "3,SPO,dog,run  on,grass", "3,SPO,dog,,grass", r"B2_facts\.csv:2: object 'grass' without"),
    ("B2_facts.csv", "4,S,person", "2,S,person",
     r"B2_facts\.csv:3: fact id 2 is \('person', '', ''\), earlier"),
    ("B2_facts.csv", "4,S,person", "4,S,dog", r"B2_facts\.csv:3: fact .*'dog'.* is in B2 and in B1"),
    ("B1_train.csv", ",1,1,0,0", ",1,1,1,0", r"B1_train\.csv:2: w_p=1 but fact 1 is \('dog', '', ''\)"),
    ("B1_train.csv", ",1,1,0,0", ",99,1,0,0", r"B1_train\.csv:2: fact id 99 is in no B\*_facts\.csv"),
    ("B1_train.csv", ",1,1,0,0", ",x,1,0,0", r"B1_train\.csv:2: id must be an integer, got 'x'"),
    ("B1_train.csv", "train/d0.jpg", "", r"B1_train\.csv:2: empty image_links"),
])
def test_errors_name_file_and_line(tmp_path, capsys, name, old, new, match):
    folder = make_folder(tmp_path, "2tasks_random", RANDOM)
    _break(folder, name, old, new)
    with pytest.raises(lfl.LFLError, match=match):
        lfl.read_split(2, lfl.split_folders(tmp_path, None)["2tasks_random"][1])
    assert lfl.main(_args(tmp_path, tmp_path / "x.h5")) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x.h5").exists()


def test_layout_errors(tmp_path, capsys):
    assert lfl.main(_args(tmp_path, tmp_path / "x.h5")) == 2
    assert "images folder not found" in capsys.readouterr().err
    folder = make_folder(tmp_path, "2tasks_random", RANDOM)
    assert lfl.main(_args(tmp_path, tmp_path / "x.h5", "--splits", "4tasks_random")) == 2
    assert "no folder" in capsys.readouterr().err
    (folder / "B2_test.csv").unlink()
    assert lfl.main(_args(tmp_path, tmp_path / "x.h5")) == 2
    assert "missing B2_test.csv" in capsys.readouterr().err
    # a second folder that lacks a fact the first one's rows use
    make_folder(tmp_path / "b", "2tasks_random", RANDOM)
    other = make_folder(tmp_path / "b", "2tasks_semantic", {1: SEMANTIC[1], 2: SEMANTIC[2][:1]})
    assert other.is_dir()
    assert lfl.main(_args(tmp_path / "b", tmp_path / "y.h5")) == 2
    assert "2tasks_semantic has no task for fact ('person', 'ride', 'horse')" in capsys.readouterr().err


def test_command_line_exit_status_without_traceback(tmp_path):
    import subprocess
    import sys

    folder = make_folder(tmp_path, "2tasks_random", RANDOM)
    _break(folder, "B1_train.csv", ",1,1,0,0", ",99,1,0,0")
    r = subprocess.run([sys.executable, "-m", "data_prep.lfl", *_args(tmp_path, tmp_path / "x.h5")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "fact id 99" in r.stderr
