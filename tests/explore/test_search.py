"""``factmas search`` (fact → images) on a tiny run: brute-force ranking, unknown words, folder index reuse."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from factmas.explore import search_index
from factmas.cli import search as search_cli
from factmas.config import ModelConfig, RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.imageio import load_image
from factmas.methods import make_method
from factmas.model import build_model, preprocess
from factmas.space import wildcard_distance
from factmas.data.synthetic import make_synthetic_dataset
from factmas.run.checkpoint import save_checkpoint
from factmas.run.rundir import prepare_run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory of a random tiny small_cnn model, and a folder of 6 PNG photos."""
    root = tmp_path_factory.mktemp("s")
    data_path = make_synthetic_dataset(root / "syn.h5", n_images=40, image_size=24, num_tasks=2)
    cfg = RunConfig(data=str(data_path), out=str(root / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8,
                                      fact_hidden=16, norm_groups=4))
    cfg.train.split = "random2_seed0"
    prepare_run_dir(cfg.out, cfg, command="test")
    data = read_dataset(data_path)
    torch.manual_seed(3)
    model = build_model(cfg.model, len(data.vocab))
    save_checkpoint(cfg.out, 0, model=model, optimizer=torch.optim.Adam(model.parameters()),
                    method=make_method("finetune"), completed_tasks=[0], config=cfg.to_dict(),
                    history=[], metrics_lines=0)
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        Image.fromarray(data.images[i]).resize((40, 30)).save(photos / f"p{i}.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    (photos / "notes.txt").write_text("not an image")
    return {"run": cfg.out, "model": model.eval(), "data": data, "photos": photos}


def _psi(run, words):
    vocab = run["data"].vocab
    tokens = torch.zeros(1, 3, run["data"].tokens.shape[2], dtype=torch.int64)
    for s, slot in enumerate(words):
        for j, w in enumerate(slot.split()):
            tokens[0, s, j] = vocab.index(w)
    order = torch.tensor([len(words)])
    with torch.no_grad():
        return run["model"].fact_branch(tokens, order), order


def test_dataset_search_equals_brute_force(run, capsys):
    assert search_cli.main(["--run", run["run"], "Dogs, running through, GRASS", "--k", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fact"] == "<dog, run through, grass>" and "smaller = closer" in out["distance"]
    data = run["data"]
    test_ids = np.flatnonzero(data.image_split == 2)
    psi, order = _psi(run, ["dog", "run through", "grass"])
    with torch.no_grad():
        x = preprocess(data.images[test_ids])      # the run's default eval.flip_average: the mirror mean
        phi = (run["model"].embed_pixels(x) + run["model"].embed_pixels(torch.flip(x, dims=[3]))) / 2
    d, i = torch.topk(wildcard_distance(phi, psi, order)[:, 0], 5, largest=False)
    assert [r["image_index"] for r in out["results"]] == test_ids[i.numpy()].tolist()
    np.testing.assert_allclose([r["distance"] for r in out["results"]], d.numpy(), atol=1e-5)
    f = out["fact_id"]
    truth = set(data.pairs[data.pairs[:, 1] == f, 0].tolist())
    assert [r["true"] for r in out["results"]] == [r["image_index"] in truth for r in out["results"]]


def test_unknown_words_and_bad_fact_exit_2(run, capsys):
    assert search_cli.main(["--run", run["run"], "dog, eat, zebra"]) == 2
    err = capsys.readouterr().err
    assert "'eat'" in err and "'zebra'" in err and "vocabulary" in err and "Traceback" not in err
    assert search_cli.main(["--run", run["run"], "Children, ride", "--json"]) == 0      # as mined: person
    assert json.loads(capsys.readouterr().out)["fact"] == "<person, ride>"
    assert search_cli.main(["--run", run["run"], "dog,,grass"]) == 2
    assert "comma-separated" in capsys.readouterr().err
    assert search_cli.main(["--run", run["run"], "dog", "--images", str(run["photos"] / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_folder_index_reused_and_rebuilt(run, capsys, monkeypatch):
    args = ["--run", run["run"], "person, ride", "--images", str(run["photos"]), "--k", "4", "--json"]
    assert search_cli.main(args) == 0
    cap = capsys.readouterr()
    first = json.loads(cap.out)
    assert "skipped unreadable image broken.jpg" in cap.err
    assert first["index_reused"] is False and len(first["results"]) == 4
    assert [u.split(":")[0] for u in first["unreadable"]] == ["broken.jpg"]
    # brute force over the folder's photos
    files = sorted(run["photos"].glob("p*.png"))
    with torch.no_grad():
        x = preprocess(np.stack([load_image(p, 24) for p in files]))
        phi = (run["model"].embed_pixels(x) + run["model"].embed_pixels(torch.flip(x, dims=[3]))) / 2
    psi, order = _psi(run, ["person", "ride"])
    d, i = torch.topk(wildcard_distance(phi, psi, order)[:, 0], 4, largest=False)
    assert [r["image"] for r in first["results"]] == [str(files[j]) for j in i.tolist()]
    np.testing.assert_allclose([r["distance"] for r in first["results"]], d.numpy(), atol=1e-5)

    calls = []
    real = search_index.embed_files
    monkeypatch.setattr(search_index, "embed_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert search_cli.main(args) == 0
    second = json.loads(capsys.readouterr().out)
    assert calls == [] and second["index_reused"] is True and second["results"] == first["results"]

    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(files[0])      # a photo changes
    os.utime(files[0], ns=(1, 1))
    assert search_cli.main(args) == 0
    third = json.loads(capsys.readouterr().out)
    assert calls == [1] and third["index_reused"] is False
    assert len(list((run["photos"] / search_index.INDEX_DIR).glob("*.npz"))) == 1


def test_unwritable_folder_still_searched(run, tmp_path, capsys, monkeypatch):
    photos = tmp_path / "ro"
    photos.mkdir()
    Image.fromarray(run["data"].images[0]).save(photos / "a.png")

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(search_index, "atomic_path", refuse)
    assert search_cli.main(["--run", run["run"], "dog", "--images", str(photos), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in out["results"]] == [str(photos / "a.png")]
    assert not list(photos.glob(".factmas-index/*.npz"))


def test_search_shows_probabilities_with_a_calibrator(run, capsys):
    from factmas.cli import calibrate
    from factmas.evaluation.calibration import load_calibrator
    assert search_cli.main(["--run", run["run"], "dog", "--k", "3", "--json"]) == 0
    cap = capsys.readouterr()
    out = json.loads(cap.out)
    assert out["probability"] is None and all(r["probability"] is None for r in out["results"])
    assert "no calibration" in cap.err
    assert calibrate.main(["--run", run["run"]]) == 0
    cal = load_calibrator(f"{run['run']}/calibration.json")
    capsys.readouterr()
    assert search_cli.main(["--run", run["run"], "dog", "--k", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == cal.threshold and "val images" in out["probability"]
    np.testing.assert_allclose([r["probability"] for r in out["results"]],
                               cal.predict([r["distance"] for r in out["results"]]))
    assert search_cli.main(["--run", run["run"], "dog", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "p:" in lines[1] and len(lines) == 5
    p_text = lines[2].split()[2]
    assert p_text == f"{out['results'][0]['probability']:4.2f}".strip()


def test_silent_wrong_index_keyed_by_content_and_planted_names_refused(run, tmp_path, capsys, monkeypatch):
    """Issue 30: a photo replaced by another of the same name, size and mtime gets a new index; an
    index whose stored names are not the folder's photos (``../../etc/passwd``) is neither trusted
    nor printed."""
    photos = tmp_path / "ph"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(run["data"].images[i]).save(photos / f"q{i}.png")
    args = ["--run", run["run"], "dog", "--images", str(photos), "--k", "3", "--json"]
    assert search_cli.main(args) == 0
    first = json.loads(capsys.readouterr().out)
    target = photos / "q0.png"
    st = target.stat()
    data = bytearray(target.read_bytes())
    other = Image.fromarray(run["data"].images[5])
    other.save(photos / "tmp.png")
    new = (photos / "tmp.png").read_bytes()
    (photos / "tmp.png").unlink()
    new = new[:len(data)] + b"\0" * max(0, len(data) - len(new))         # same size
    target.write_bytes(new)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))                 # same mtime
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    calls = []
    real = search_index.embed_files
    monkeypatch.setattr(search_index, "embed_files", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert search_cli.main(args) == 0
    assert calls == [1] and json.loads(capsys.readouterr().out)["index_reused"] is False
    # a planted index under the current key, naming a file outside the folder
    index = next((photos / search_index.INDEX_DIR).glob("*.npz"))
    with np.load(index) as z:
        phi = z["phi"]
    with open(index, "wb") as f:
        np.savez(f, names=np.array(["../../../../etc/passwd", "q1.png", "q2.png"]), phi=phi,
                 failed=np.array([], dtype=str))
    assert search_cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["index_reused"] is False and calls == [1, 1]
    assert all("passwd" not in r["image"] for r in out["results"])
    assert search_index.names_inside(["q1.png"], [photos / "q1.png"])
    assert not search_index.names_inside(["../q1.png"], [photos / "q1.png"])
