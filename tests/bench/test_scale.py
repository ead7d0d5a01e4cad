"""bench/scale.py (issue 28: peak RSS and throughput of each stage against N) and its dataset writer
bench/scale_data.py. bench/ is not a package, so the checks of its functions run in a subprocess
started in bench/ (where ``import scale_data`` resolves, as for the scripts themselves)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

CHECK = r'''
import json, sys
import numpy as np
import scale_data, scale
from factmas.data.dataset import read_dataset

path, n, f = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
info = scale_data.write_streamed(path, n, f, image_size=12, chunk=7)      # chunks that do not divide n
data = read_dataset(path, in_memory=True)                                 # validates schema and CRCs
out = {"info": info, "facts": data.num_facts, "unique": len(set(zip(data.subject, data.predicate, data.object)))}
# the brute-force reference: each image's 3 facts are one <S,P,O> and the <S,P>, <S> it implies
pairs = data.pairs
ok_pairs = len(pairs) == 3 * n and bool(np.all(np.bincount(pairs[:, 0], minlength=n) == 3))
bands = []
facts, spo_ids, implied = scale_data.make_facts(f, 0)
for i in range(n):
    fs = sorted(pairs[pairs[:, 0] == i, 1].tolist())
    by_order = {int(data.order[x]): x for x in fs}
    s, p, o = (data.subject[by_order[3]], data.predicate[by_order[3]], data.object[by_order[3]])
    ok_pairs &= sorted(by_order) == [1, 2, 3]
    ok_pairs &= (data.subject[by_order[2]], data.predicate[by_order[2]], data.object[by_order[2]]) == (s, p, "")
    ok_pairs &= (data.subject[by_order[1]], data.predicate[by_order[1]], data.object[by_order[1]]) == (s, "", "")
    # the pixels show the <S,P,O>'s words as band colours (noise sd 20: band means within 15)
    img = data.images[i].astype(np.float64)
    for k, (word, band) in enumerate(zip((s, p, o), (slice(0, 4), slice(4, 8), slice(8, 12)))):
        want = scale_data._palette(int(max(int(x[k][1:]) for x in facts if x[k]) + 1), k)[int(word[1:])]
        bands.append(float(np.abs(np.clip(want, 0, 255) - img[band].mean((0, 1))).max()))
out.update(ok_pairs=bool(ok_pairs), worst_band=max(bands), splits=sorted(data.splits),
           tasks=np.bincount(data.splits["random4_seed0"]).tolist(),
           image_split=np.bincount(data.image_split, minlength=3).tolist())
nan = float("nan")
a = {"m": {"all": 0.5, 0: nan}, "embedding": {"mean_cosine": 0.1}, "timing": {"x": 1.0}}
b = {"m": {"all": 0.5, 0: nan}, "embedding": {"mean_cosine": 0.1 + 1e-12}, "timing": {"x": 9.0}}
c = {"m": {"all": 0.5 + 1e-15, 0: nan}, "embedding": {"mean_cosine": 0.1}, "timing": {"x": 1.0}}
d = {"m": {"all": 0.5}, "embedding": {"mean_cosine": 0.1}}
out["same"] = [scale.same_metrics(a, b)[0], scale.same_metrics(a, c)[0], scale.same_metrics(a, d)[0]]
try:
    scale_data.write_streamed(path + ".bad", 5, f)
    out["small_refused"] = False
except ValueError:
    out["small_refused"] = True
print(json.dumps(out))
'''


def test_scale_dataset_streams_a_valid_file_whose_facts_and_pixels_agree(tmp_path):
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path / "s.h5"), "60", "300"], cwd=BENCH,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["facts"] == out["unique"] == 300 and out["info"]["pairs"] == 180
    assert out["ok_pairs"]
    assert out["worst_band"] < 15, out["worst_band"]
    assert out["splits"] == ["random4_seed0"] and min(out["tasks"]) > 0 and sum(out["tasks"]) == 300
    assert sum(out["image_split"]) == 60 and out["image_split"][0] > out["image_split"][2] > 0
    assert out["same"] == [True, False, False]      # cosine within 1e-9; any metric difference; keys
    assert out["small_refused"]


@pytest.mark.slow           # six fresh Python processes (one of them 2 torchrun ranks): about 40 s idle
def test_scale_runs_at_a_tiny_size_and_writes_json(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--quick", "--sizes", "300", "--out",
                           str(out), "--tmp", str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    for key in ("cpu", "loadavg_1_5_15", "date_utc", "torch"):
        assert key in res["machine"], key
    assert res["numpy"] and res["torch"] and res["loadavg_end"]
    assert res["settings"]["sizes"] == [300] and res["settings"]["facts"] == 200
    stages = {r["stage"] for r in res["rows"]}
    assert stages == {"build", "cache", "train", "omega", "eval", "eval2"}
    for r in res["rows"]:
        assert r["peak_rss"] >= r["rss_ready"] > 0 and r["per_s"] > 0, r["stage"]
        assert r["loadavg_before"] and r["loadavg_after"]
    assert set(res["growth"]) == stages
    assert res["eval_2proc_equal"]["300"]["equal"] is True
    eval2 = next(r for r in res["rows"] if r["stage"] == "eval2")
    assert eval2["world"] == 2 and len(eval2["ranks"]) == 2


def test_scale_refuses_unknown_stages():
    done = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--stages", "build,fly"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "fly" in done.stderr
