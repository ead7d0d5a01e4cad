"""factmas.progress: a line with the rate every interval when the output is not a terminal, a tqdm bar
on a terminal, nothing when disabled; and the long stages (epochs, Ω, evaluation, feature cache,
caption parsing) print such lines in a redirected run."""
import io
import re
import time

import numpy as np
import pytest
import torch
from tqdm import tqdm

from factmas import progress
from factmas.progress import LogLines, progress_bar

LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<desc>.+?): (?P<n>[\d,]+)(/(?P<total>[\d,]+))? (?P<unit>\S+)"
                  r"( \((?P<pct>\d+)%\))?, (?P<rate>[\d,.]+) (?P=unit)/s, \d\d:\d\d elapsed(, (\d\d:\d\d|\?) left)?")


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _lines(stream):
    text = stream.getvalue()
    assert "\r" not in text                         # whole lines, no bar redrawn in place
    return text.splitlines()


def test_non_terminal_prints_lines_with_rate_and_time_left():
    f = io.StringIO()
    with progress_bar(total=30, desc="feature cache", unit="img", interval=0.02, file=f) as bar:
        for i in range(30):
            time.sleep(0.005)
            bar.update(1)
            bar.set_postfix(loss=f"{i:.1f}")        # refreshes: must not print a line each time
    lines = _lines(f)
    assert 2 <= len(lines) <= 30 * 0.005 / 0.02 + 3, lines
    for line in lines[:-1]:
        m = LINE.match(line)
        assert m and m["desc"] == "feature cache" and m["total"] == "30" and m["unit"] == "img", line
        assert float(m["rate"].replace(",", "")) > 0 and " left" in line
    counts = [int(LINE.match(x)["n"]) for x in lines if LINE.match(x)]
    assert counts == sorted(counts) and counts[-1] <= 30
    assert lines[-1].split(" ", 1)[1].startswith("feature cache") and ", loss=" in lines[-1]


def test_final_line_gives_the_mean_rate_once():
    f = io.StringIO()
    t0 = time.perf_counter()
    with progress_bar(total=100, desc="parsing captions", unit="cap", interval=0.03, file=f) as bar:
        for _ in range(10):
            time.sleep(0.01)
            bar.update(9)                           # 90 of 100: the last line is not the whole count
    seconds = time.perf_counter() - t0
    last = _lines(f)[-1]
    m = re.search(r"parsing captions done: 90 cap in \d\d:\d\d, ([\d.]+) cap/s", last)
    assert m, last
    assert float(m[1]) == pytest.approx(90 / seconds, rel=0.35)


def test_unknown_total_and_iterables():
    f = io.StringIO()
    with progress_bar(desc="MAS Ω (images)", unit="image", interval=0.01, file=f, leave=False) as bar:
        for _ in range(8):
            time.sleep(0.005)
            bar.update(4)
    got = [LINE.match(x) for x in _lines(f)]
    assert any(m and m["total"] is None and m["n"] != "0" for m in got), _lines(f)
    g = io.StringIO()
    assert list(progress_bar(range(20), desc="decoding images", interval=0.0, file=g)) == list(range(20))
    assert len(_lines(g)) >= 2 and all("decoding images" in x for x in _lines(g))


def test_short_stage_is_silent_disabled_prints_nothing_terminal_gets_a_bar():
    f = io.StringIO()
    with progress_bar(total=10, desc="short", interval=30, file=f) as bar:
        bar.update(10)
    assert f.getvalue() == ""
    g = io.StringIO()
    bar = progress_bar(total=10, desc="off", interval=0, file=g, enabled=False)
    assert bar.disable
    with bar:
        bar.update(10)
    assert g.getvalue() == ""
    t = _Terminal()
    bar = progress_bar(total=10, desc="tty", interval=0, file=t)
    assert type(bar) is tqdm
    bar.close()
    assert isinstance(progress_bar(total=1, file=io.StringIO()), LogLines)
    with pytest.raises(ValueError, match="interval"):
        progress_bar(total=1, interval=-1, file=io.StringIO())


def test_tqdm_write_between_lines_leaves_no_carriage_returns():
    f = io.StringIO()
    with progress_bar(total=5, desc="x", interval=0, file=f) as bar:
        for _ in range(5):
            bar.update(1)
            tqdm.write("a log message", file=f)
    assert "\r" not in f.getvalue() and f.getvalue().count("a log message") == 5


def test_redirected_training_run_prints_progress_of_epochs_omega_and_evaluation(tmp_path, capsys,
                                                                                  monkeypatch):
    from factmas.config import ModelConfig, RunConfig
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.trainer import train
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)       # every update
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=40, image_size=16, num_tasks=2)
    cfg = RunConfig(data=str(data), out=str(tmp_path / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8,
                                      fact_hidden=16, norm_groups=4))
    cfg.train.split, cfg.train.method, cfg.train.epochs = "random2_seed0", "mas", 1
    cfg.train.batch_size, cfg.train.device = 8, "cpu"
    train(cfg, progress=True)
    lines = [x.split(" ", 1)[1] for x in capsys.readouterr().err.splitlines() if LINE.match(x)]
    for stage in ("task 1/2 epoch 1/1", "task 2/2 epoch 1/1", "MAS Ω (images", "MAS Ω (facts",
                  "evaluation: embedding the test images"):
        assert any(x.startswith(stage) and "/s" in x for x in lines), (stage, lines)


def test_redirected_training_without_progress_prints_none(tmp_path, capsys, monkeypatch):
    from factmas.config import ModelConfig, RunConfig
    from factmas.data.synthetic import make_synthetic_dataset
    from factmas.trainer import train
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=30, image_size=16, num_tasks=2)
    cfg = RunConfig(data=str(data), out=str(tmp_path / "run"),
                    model=ModelConfig(backbone="small_cnn", embed_dim=8, width=8, word_dim=8,
                                      fact_hidden=16, norm_groups=4))
    cfg.train.split, cfg.train.method, cfg.train.epochs = "random2_seed0", "mas", 1
    cfg.train.batch_size, cfg.train.device = 8, "cpu"
    train(cfg, progress=False)
    assert not [x for x in capsys.readouterr().err.splitlines() if LINE.match(x)]      # Ω, evaluation too


def test_feature_cache_prints_progress_when_redirected(capsys, monkeypatch):
    from factmas.model.features import compute_features
    monkeypatch.setattr(progress, "LOG_INTERVAL", 0.0)
    stem = torch.nn.Conv2d(3, 2, 3, stride=4)
    images = np.random.default_rng(0).integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    out = compute_features(stem, images, batch=4, progress=True)
    assert out.shape[:2] == (20, 2)
    lines = [x for x in capsys.readouterr().err.splitlines() if LINE.match(x)]
    assert lines and all(LINE.match(x)["desc"] == "feature cache" for x in lines)
    assert LINE.match(lines[-1])["total"] == "40"


def test_switched_off_silences_bars_within_the_block_only():
    f = io.StringIO()
    with progress.switched_off():
        with progress.switched_off(False):
            assert progress_bar(total=3, interval=0, file=f).disable
    assert not progress_bar(total=3, interval=0, file=f).disable
    with progress.switched_off(False):
        assert not progress_bar(total=3, interval=0, file=f).disable


def test_done_line_also_when_the_last_update_printed_a_line():
    """interval 0: every update prints a line, the last one too; the stage still ends with its
    "done" line and mean rate (before, a loaded machine could end a stage without it)."""
    f = io.StringIO()
    with progress_bar(total=5, desc="cache", unit="img", interval=0.0, file=f) as bar:
        for _ in range(5):
            bar.update(1)
    lines = _lines(f)
    assert "cache: 5/5 img" in lines[-2], lines
    assert re.search(r"cache done: 5 img in \d\d:\d\d, [\d.,]+ img/s$", lines[-1]), lines
