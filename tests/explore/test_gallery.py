"""``factmas gallery`` on two tiny trained runs: the HTML's images exist, marks are right, Chromium renders it."""
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factmas.cli import gallery as gallery_cli
from factmas.config import ModelConfig, RunConfig
from factmas.data.dataset import read_dataset
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """Two 1-epoch runs (finetune, mas) of a tiny small_cnn on synthetic data, and their gallery."""
    root = tmp_path_factory.mktemp("g")
    data_path = make_synthetic_dataset(root / "syn.h5", n_images=60, image_size=24, num_tasks=2)
    runs = []
    for method in ("finetune", "mas"):
        cfg = RunConfig(data=str(data_path), out=str(root / method),
                        model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8,
                                          fact_hidden=16, norm_groups=4))
        cfg.train.split, cfg.train.method, cfg.train.epochs = "random2_seed0", method, 1
        cfg.train.batch_size, cfg.train.device = 16, "cpu"
        train(cfg)
        runs.append(cfg.out)
    out = root / "gallery"
    assert gallery_cli.main([*runs, "--out", str(out), "--photos", "4", "--facts-per-task", "2",
                         "--top-images", "3"]) == 0
    return {"out": out, "data": read_dataset(data_path), "runs": runs}


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.marks, self._mark = [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        if tag == "span" and "mark" in (a.get("class") or "").split():
            self._mark = a["class"].split()[1]

    def handle_data(self, data):
        if self._mark:
            self.marks.append((self._mark, data))
            self._mark = None


def test_html_images_exist_and_marks(page):
    text = (page["out"] / "index.html").read_text(encoding="utf-8")
    p = _Collect()
    p.feed(text)
    assert "http" not in text.replace("http-equiv", "")            # nothing from the internet
    for src in p.imgs:
        path = page["out"] / src
        assert path.is_file(), src
        with Image.open(path) as im:
            assert im.size[0] > 0
    assert {"r_heatmaps.png", "map_per_task.png"} <= set(p.imgs)
    data = page["data"]
    thumbs = [s for s in p.imgs if s.startswith("img/")]
    assert len(set(thumbs)) >= 4 and all(data.image_split[int(Path(s).stem)] == 2 for s in thumbs)
    marks = [m for m in p.marks[2:]]                                  # after the legend's two
    # (a) 4 photos × 2 runs × 5 facts, (b) 2 tasks × 2 facts × 2 runs × 3 images
    assert len(marks) == 4 * 2 * 5 + 2 * 2 * 2 * 3
    assert all((c, s) in {("right", "✓"), ("wrong", "✗")} for c, s in marks)
    assert any(c == "right" for c, _ in marks)


def test_marks_agree_with_the_dataset(page):
    from factmas.explore.gallery import collect, load_runs
    data, runs = load_runs(page["runs"], None, "cpu")
    got = collect(data, runs, 4, 2, 3, 0)
    truth = set(map(tuple, data.pairs.tolist()))
    ids = {data.fact_text(f): f for f in range(data.num_facts)}
    for p in got["photos"]:
        for facts in p["runs"]:
            assert [ok for _, _, ok, _ in facts] == [(p["image"], ids[t]) in truth for t, *_ in facts]
            assert [d for _, d, _, _ in facts] == sorted(d for _, d, _, _ in facts)


def test_training_calibrates_and_the_page_shows_p(page):
    """The trainer wrote calibration.json after the last task, for the weights of last.pt; the page
    shows p = the calibrator's P(true | D) beside each distance."""
    from factmas.explore.calibrate import run_calibrator
    from factmas.explore.gallery import collect, load_runs
    data, runs = load_runs(page["runs"], None, "cpu")
    for r in runs:
        cal, why = run_calibrator(r["dir"], r["model"].state_dict())
        assert why is None and r["calibrator"] is not None
        assert cal.meta["fitted_on"]["images"] == int((data.image_split == 1).sum())
    got = collect(data, runs, 4, 2, 3, 0)
    for p in got["photos"]:
        for facts, r in zip(p["runs"], runs):
            np.testing.assert_allclose([x[3] for x in facts],
                                       r["calibrator"].predict([x[1] for x in facts]))
    text = (page["out"] / "index.html").read_text(encoding="utf-8")
    assert text.count(" · p ") == 4 * 2 * 5 + 2 * 2 * 2 * 3 and "p* = " in text


def test_bad_inputs_exit_2(page, tmp_path, capsys):
    assert gallery_cli.main([str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert gallery_cli.main([page["runs"][0], "--out", str(tmp_path / "g"), "--photos", "0"]) == 2
    assert "--photos" in capsys.readouterr().err


def _shot(page, tmp_path, width: int, height: int) -> np.ndarray:
    """The gallery rendered by headless Chromium in a width × height window: uint8 [height, width, 3]
    as int."""
    shot = tmp_path / f"shot{width}.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", f"--screenshot={shot}",
                    f"--window-size={width},{height}", (page["out"] / "index.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(shot).convert("RGB")).astype(int)


def _near(a: np.ndarray, c) -> float:
    """Fraction of the pixels of ``a`` within 90 (L1 over RGB) of colour ``c``."""
    return (np.abs(a - np.array(c)).sum(-1) < 90).mean()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_renders_thumbnails(page, tmp_path):
    a = _shot(page, tmp_path, 1200, 1400)
    # the synthetic photos' blue (0,130,200) and orange (245,130,48) bands must show up rendered
    near = lambda c: _near(a, c)
    assert near((0, 130, 200)) + near((245, 130, 48)) > 0.005
    assert near((26, 127, 55)) > 0 or near((198, 40, 40)) > 0          # ✓/✗ colours or borders


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_chromium_photo_cards_two_columns_beside_a_scrollbar(page, tmp_path):
    """Section (a) keeps two columns of photo cards in a 1,400-px window whose page is taller than
    the window (Chromium draws a scrollbar, ~15 px): the first row of cards has a photo in the right
    half too. The cards once had a fixed width of 676 px, two of which needed 1,392 px of the
    1,385 left, and fell to one column with the right half empty."""
    a = _shot(page, tmp_path, 1400, 900)
    assert (a[400:600, -15:] != 255).any(), "no scrollbar drawn: the page no longer overflows"
    row = a[150:450]                                   # the first row of cards, below the header
    # any of the synthetic photos' band colours (factmas.data.synthetic._COLOURS)
    photo = lambda part: sum(_near(part, c) for c in ((230, 25, 75), (60, 180, 75), (0, 130, 200),
                                                      (245, 130, 48)))
    assert photo(row[:, :600]) > 0.01
    assert photo(row[:, 700:]) > 0.01, "section (a) fell to one column"


SCREENSHOT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot_gallery.py"


def test_screenshot_script_refuses_a_folder_without_a_gallery(tmp_path):
    r = subprocess.run([sys.executable, str(SCREENSHOT), str(tmp_path), "--out", str(tmp_path / "s.png")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "index.html: not found" in r.stderr
    assert not (tmp_path / "s.png").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed")
def test_screenshot_script_writes_the_png(page, tmp_path):
    out = tmp_path / "docs" / "gallery.png"
    r = subprocess.run([sys.executable, str(SCREENSHOT), str(page["out"]), "--out", str(out),
                        "--height", "700"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.size == (1400, 700)
    assert [p.name for p in out.parent.iterdir()] == ["gallery.png"]      # no temporary left
