"""Bad inputs and misuse, one row per case: every command refuses with the documented exit status, a
message naming what was wrong, and leaves every file that existed before byte-identical (and writes
nothing new). Add a row for every bug of this kind (issue 13).

Each case is (id, command, argv with {placeholders} for the fixture's paths, exit status, words the
output must contain). ``CASES`` below; the count is printed by ``test_case_count``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from factmas.config import RunConfig
from factmas.data.schema import CHECKSUM_KEY, image_checksums
from factmas.data.synthetic import make_synthetic_dataset
from factmas.trainer import train

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 8, "word_dim": 8, "fact_hidden": 16, "norm_groups": 4}


def _edit(path, fn):
    with h5py.File(path, "a") as h:
        fn(h)
    return path


def _replace(h, key, data):
    attrs = dict(h[key].attrs)
    del h[key]
    h.create_dataset(key, data=data)
    for k, v in attrs.items():
        h[key].attrs[k] = v


def _set(key, index, value):
    def fn(h):
        a = h[key][()]
        a[index] = value
        _replace(h, key, a)
    return fn


def _png_header_only(path, w, h):
    """A tiny PNG whose header claims w × h pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def _run(data, out, limit=None):
    cfg = RunConfig.from_dict({"data": str(data), "out": str(out), "model": TINY_MODEL,
                               "train": {"split": "random2_seed0", "method": "finetune", "epochs": 1,
                                         "batch_size": 32}})
    train(cfg, progress=False, limit_tasks=limit)
    return out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    p = {"root": root}
    data = p["data"] = make_synthetic_dataset(root / "data.h5", n_images=80, image_size=8, num_tasks=2)
    other = p["other"] = make_synthetic_dataset(root / "other.h5", n_images=80, image_size=8,
                                                num_tasks=2, seed=3)
    for name, fn in (("short_split", lambda h: _replace(h, "image_split", h["image_split"][()][:-1])),
                     ("neg_fact", _set("pairs", (0, 1), -1)),
                     ("far_task", _set("splits/random2_seed0", 0, 50)),
                     ("empty_task", lambda h: _replace(h, "splits/random2_seed0", np.zeros(
                         h["splits/random2_seed0"].shape, np.int16))),
                     ("flipped", lambda h: h["images"].__setitem__((5, 1, 1, 0),
                                                                   h["images"][5, 1, 1, 0] ^ 0xFF))):
        p[name] = _edit(shutil.copy(data, root / f"{name}.h5"), fn)
    def same_fact(h):                                   # fact 1 made a copy of fact 0
        for key in ("facts/subject", "facts/predicate", "facts/object"):
            vals = [x.decode() if isinstance(x, bytes) else x for x in h[key][()]]
            vals[1] = vals[0]
            del h[key]
            h.create_dataset(key, data=vals, dtype=h5py.string_dtype("utf-8"))
        for key in ("facts/order", "facts/tokens"):
            a = h[key][()]
            a[1] = a[0]
            _replace(h, key, a)

    def swapped_tokens(h):                              # fact 0's words under fact 1's text
        a = h["facts/tokens"][()]
        j = next(i for i in range(1, len(a)) if (a[i] != a[0]).any() and
                 h["facts/order"][i] == h["facts/order"][0])
        a[[0, j]] = a[[j, 0]]
        _replace(h, "facts/tokens", a)

    def dot_slash(h):                                   # image 1 named ./<image 0>
        ids = [x.decode() if isinstance(x, bytes) else x for x in h["image_ids"][()]]
        ids[1] = "./" + ids[0]
        del h["image_ids"]
        h.create_dataset("image_ids", data=ids, dtype=h5py.string_dtype("utf-8"))

    def no_images(h):
        for key in ("images", CHECKSUM_KEY, "image_split", "pairs"):
            a = h[key][()]
            _replace(h, key, a[:0])
        del h["image_ids"]
        h.create_dataset("image_ids", data=[], dtype=h5py.string_dtype("utf-8"))
        for name in list(h.get("split_images", {})):
            _replace(h, f"split_images/{name}", h[f"split_images/{name}"][()][:0])

    def pair_twice(h):
        a = h["pairs"][()]
        a[1] = a[0]
        _replace(h, "pairs", a)
    for name, fn in (("dup_fact", same_fact), ("swapped_tokens", swapped_tokens),
                     ("dot_slash", dot_slash), ("no_images", no_images), ("dup_pair", pair_twice)):
        p[name] = _edit(shutil.copy(data, root / f"{name}.h5"), fn)
    (root / "junk.h5").write_text("not hdf5")
    p["junk"] = root / "junk.h5"
    p["run"] = _run(data, root / "run")
    p["run_other"] = _run(other, root / "run_other")
    p["cut"] = _run(data, root / "cut", limit=1)
    p["gap"] = root / "gap"
    shutil.copytree(p["run"], p["gap"])
    (p["gap"] / "checkpoints" / "task0.pt").unlink()
    p["locked"] = root / "locked"
    p["locked"].mkdir()
    (p["locked"] / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    # a run whose dataset's pixels were changed since (and its checksums rebuilt to match)
    p["moving"] = shutil.copy(data, root / "moving.h5")
    p["resumable"] = _run(p["moving"], root / "resumable", limit=1)

    def repaint(h):
        imgs = h["images"][()]
        imgs[3] = 255 - imgs[3]
        h["images"][3] = imgs[3]
        h[CHECKSUM_KEY][...] = image_checksums(imgs)
    _edit(p["moving"], repaint)
    p["afile"] = root / "afile.txt"
    p["afile"].write_text("I am a file\n")
    configs = {"cfg_temp": {"loss": {"temperature": 0}},
               "cfg_accum": {"train": {"omega_accumulate": "max"}},
               "cfg_gamma": {"train": {"method": "ewc", "ewc_gamma": 2}},
               "cfg_gamma_new": {"train": {"method": "ewc", "options": {"ewc": {"gamma": 2}}}},
               "cfg_option_typo": {"train": {"options": {"mas": {"gama": 1}}}},
               "cfg_option_method": {"train": {"options": {"rwalk2": {}}}},
               "cfg_apk": {"eval": {"ap_k": 0}},
               "cfg_groups": {"model": {**TINY_MODEL, "norm_groups": 3}},
               "cfg_backbone": {"model": {"backbone": "vgg"}},
               "cfg_pool": {"eval": {"image_pool": "some"}},
               "cfg_alpha": {"train": {"omega_alpha": 1.5}},
               "cfg_unknown": {"train": {"learning_rate": 0.1}},
               "cfg_nan": {"train": {"reg_lambda": float("nan")}}}
    for name, c in configs.items():
        p[name] = root / f"{name}.json"
        p[name].write_text(json.dumps(c))
    (root / "broken.json").write_text("{oops")
    p["cfg_broken"] = root / "broken.json"
    # images and annotations for the builders
    imgs = root / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.new("RGB", (12, 12), (60 * i, 10, 10)).save(imgs / f"{i}.png")
    p["imgs"] = imgs
    p["good"] = imgs / "0.png"
    p["csv_ok"] = root / "facts.csv"
    p["csv_ok"].write_text("image,S,P,O\n" + "".join(f"{i}.png,dog,run,\n" for i in range(4)))
    p["csv_dotslash"] = root / "dotslash.csv"
    p["csv_dotslash"].write_text("image,S,P,O\n" + "".join(f"{i}.png,dog,run,\n" for i in range(4))
                                 + "./0.png,cat,sit,\n")
    p["csv_latin1"] = root / "latin1.csv"
    p["csv_latin1"].write_bytes(b"image,S,P,O\n0.png,dog,,\n1.png,caf\xe9,,\n")
    (root / "caps").mkdir()
    p["captions_latin1"] = root / "caps" / "captions.txt"
    p["captions_latin1"].write_bytes(b"image,caption\n0.png,a dog\n1.png,a caf\xe9\n")
    p["bomb"] = _png_header_only(root / "bomb.png", 100_000, 100_000)
    p["exists"] = root / "exists.h5"
    p["exists"].write_bytes(b"keep me")
    # ---- issue 30: folders with links inside, folders of the user's own files
    for name in ("elsewhere", "elsewhere2", "elsewhere3"):
        (root / name).mkdir()
        (root / name / "victim.pt").write_bytes(b"the user's file")
    p["linked_new"] = root / "linked_new"                 # a new run folder whose checkpoints/ is a link
    p["linked_new"].mkdir()
    (p["linked_new"] / "checkpoints").symlink_to(root / "elsewhere")
    p["linked_run"] = root / "linked_run"                 # a run whose checkpoints/ was replaced by a link
    shutil.copytree(p["run"], p["linked_run"])
    shutil.rmtree(p["linked_run"] / "checkpoints")
    (p["linked_run"] / "checkpoints").symlink_to(root / "elsewhere2")
    p["linked_imgs"] = root / "linked_imgs"               # photos whose .factmas-index is a link
    shutil.copytree(imgs, p["linked_imgs"])
    (p["linked_imgs"] / ".factmas-index").symlink_to(root / "elsewhere3")
    p["userdir"] = root / "userdir"                        # the user's own results, not a run
    p["userdir"].mkdir()
    (p["userdir"] / "results.json").write_text('{"mine": 1}')
    (p["userdir"] / "metrics.jsonl").write_text('{"mine": 1}\n')
    (p["userdir"] / "sub").mkdir()
    (p["userdir"] / "sub" / "keep.txt").write_text("keep")
    p["edited"] = root / "edited"                          # a cut run whose config.json was edited since
    shutil.copytree(p["cut"], p["edited"])
    rec = json.loads((p["edited"] / "config.json").read_text())
    rec["config"]["train"]["lr"] = rec["config"]["train"]["lr"] * 10
    rec["config"]["train"]["epochs"] = 2
    (p["edited"] / "config.json").write_text(json.dumps(rec))
    p["bad_results"] = root / "bad_results"               # a finished run whose results.json is mangled
    shutil.copytree(p["run"], p["bad_results"])
    res = json.loads((p["bad_results"] / "results.json").read_text())
    res["metrics"] = ["oops"]
    (p["bad_results"] / "results.json").write_text(json.dumps(res))
    p["wider"] = root / "wider"                            # config.json's model edited after training
    shutil.copytree(p["run"], p["wider"])
    rec = json.loads((p["wider"] / "config.json").read_text())
    rec["config"]["model"]["width"] = 16
    (p["wider"] / "config.json").write_text(json.dumps(rec))
    p["cfg_latin1"] = root / "cfg_latin1.json"
    p["cfg_latin1"].write_bytes(b'{"train": {"method": "caf\xe9"}}')
    import fractions

    import torch
    p["pickled"] = root / "pickled.pt"                     # a pickled object, not a state dict
    torch.save({"w": fractions.Fraction(1, 2)}, p["pickled"])
    p["cfg_pickled"] = root / "cfg_pickled.json"
    p["cfg_pickled"].write_text(json.dumps({"model": {"backbone": "resnet18", "embed_dim": 8,
                                                      "pretrained_path": str(p["pickled"])}}))
    p["compare_old"] = root / "table"
    (root / "table.md").write_text("my table")
    return p


def _main(command):
    if command == "train":
        from factmas.cli.train import main
    elif command == "evaluate":
        from factmas.cli.evaluate import main
    elif command == "compare":
        from factmas.cli.compare import main
    elif command == "query":
        from factmas.cli.query import main
    elif command == "search":
        from factmas.cli.search import main
    elif command == "gallery":
        from factmas.cli.gallery import main
    elif command == "paper_table":
        from factmas.cli.paper import main
    elif command == "inspect":
        from data_prep.inspect import main
    elif command == "from_csv":
        from data_prep.from_csv import main
    else:
        from data_prep.flickr8k import main
    return main


T = ["--data", "{data}", "--out", "{root}/new_run", "--split", "random2_seed0", "--no-progress", "-q"]
BUILD = ["--csv", "{csv_ok}", "--image-root", "{imgs}", "--out", "{root}/built.h5", "-q",
         "--split-seeds", "0", "--num-tasks", "1", "--no-semantic"]

# (id, command, argv, exit status, words in stderr/stdout)
CASES = [
    # ---- train: command-line values
    ("limit-tasks negative", "train", T + ["--limit-tasks", "-1"], 2, ["--limit-tasks", ">= 1"]),
    ("limit-tasks zero", "train", T + ["--limit-tasks", "0"], 2, ["--limit-tasks"]),
    ("lambda negative", "train", T + ["--reg-lambda", "-1"], 2, ["--reg-lambda", ">= 0"]),
    ("lambda nan", "train", T + ["--reg-lambda", "nan"], 2, ["--reg-lambda", "finite"]),
    ("lambda inf", "train", T + ["--reg-lambda", "inf"], 2, ["--reg-lambda", "finite"]),
    ("lr nan", "train", T + ["--lr", "nan"], 2, ["--lr", "finite"]),
    ("lr inf", "train", T + ["--lr", "inf"], 2, ["--lr"]),
    ("lr zero", "train", T + ["--lr", "0"], 2, ["--lr", "> 0"]),
    ("lr negative", "train", T + ["--lr", "-0.001"], 2, ["--lr"]),
    ("omega-data unknown", "train", T + ["--omega-data", "banana"], 2, ["--omega-data", "banana"]),
    ("omega-data repeated", "train", T + ["--omega-data", "train+train"], 2, ["--omega-data"]),
    ("epochs zero", "train", T + ["--epochs", "0"], 2, ["--epochs"]),
    ("batch size zero", "train", T + ["--batch-size", "0"], 2, ["--batch-size"]),
    ("seed negative", "train", T + ["--seed", "-1"], 2, ["--seed"]),
    ("threads zero", "train", T + ["--threads", "0"], 2, ["--threads"]),
    ("method unknown", "train", T + ["--method", "sgd"], 2, ["'sgd'", "finetune"]),
    ("split unknown", "train", T[:4] + ["--split", "random9", "-q"], 2, ["unknown split", "random9"]),
    ("out is a file", "train", ["--data", "{data}", "--out", "{afile}", "-q"], 2, ["afile.txt",
                                                                                 "is a file"]),
    ("epochs not a number", "train", T + ["--epochs", "two"], 2, ["--epochs"]),
    ("no out", "train", ["--data", "{data}"], 2, ["--out"]),
    # ---- train: configuration files
    ("config temperature 0", "train", T + ["--config", "{cfg_temp}"], 2, ["loss.temperature"]),
    ("config accumulate", "train", T + ["--config", "{cfg_accum}"], 2,
     ["train.options.mas.accumulate (--omega-accumulate)", "'max'"]),
    ("config ewc gamma, old flat key", "train", T + ["--config", "{cfg_gamma}"], 2,
     ["train.options.ewc.gamma (--ewc-gamma)", "got 2"]),
    ("config ewc gamma", "train", T + ["--config", "{cfg_gamma_new}"], 2,
     ["train.options.ewc.gamma (--ewc-gamma)", "<= 1"]),
    ("config option unknown", "train", T + ["--config", "{cfg_option_typo}"], 2,
     ["train.options.mas.gama", "accumulate"]),
    ("config options of no method", "train", T + ["--config", "{cfg_option_method}"], 2,
     ["train.options.rwalk2", "unknown method"]),
    ("option flag of another method", "train", T + ["--ewc-gamma", "0.5"], 2,
     ["--ewc-gamma", "method mas has no option 'gamma'", "ewc"]),
    ("option flag out of range", "train", T + ["--method", "si", "--si-xi", "0"], 2,
     ["train.options.si.xi (--si-xi)", "> 0"]),
    ("config ap_k", "train", T + ["--config", "{cfg_apk}"], 2, ["eval.ap_k"]),
    ("config norm groups", "train", T + ["--config", "{cfg_groups}"], 2, ["norm_groups"]),
    ("config backbone", "train", T + ["--config", "{cfg_backbone}"], 2, ["model.backbone", "vgg"]),
    ("config image pool", "train", T + ["--config", "{cfg_pool}"], 2, ["eval.image_pool"]),
    ("config omega alpha", "train", T + ["--config", "{cfg_alpha}"], 2, ["train.options.mas.alpha"]),
    ("config unknown key", "train", T + ["--config", "{cfg_unknown}"], 2, ["train.learning_rate"]),
    ("config lambda NaN", "train", T + ["--config", "{cfg_nan}"], 2, ["train.reg_lambda"]),
    ("config not JSON", "train", T + ["--config", "{cfg_broken}"], 2, ["broken.json"]),
    # ---- train: data files
    ("data missing", "train", ["--data", "{root}/nope.h5", "--out", "{root}/new_run"], 2,
     ["nope.h5", "no such dataset"]),
    ("data not hdf5", "train", ["--data", "{junk}", "--out", "{root}/new_run"], 2, ["junk.h5"]),
    ("data image_split short", "train", ["--data", "{short_split}", "--out", "{root}/new_run"], 2,
     ["short_split.h5", "'image_split'", "N = 80"]),
    ("data negative fact id", "train", ["--data", "{neg_fact}", "--out", "{root}/new_run"], 2,
     ["neg_fact.h5", "'pairs'", "fact id -1"]),
    ("data task far outside", "train", ["--data", "{far_task}", "--out", "{root}/new_run"], 2,
     ["far_task.h5", "'splits/random2_seed0'", "task 50"]),
    ("data empty task", "train", ["--data", "{empty_task}", "--out", "{root}/new_run"], 2,
     ["'splits/random2_seed0'", "task 1 has no fact"]),
    ("data flipped pixels", "train", ["--data", "{flipped}", "--out", "{root}/new_run", "--split",
                                      "random2_seed0"], 2,             # pixels are checked as read
     ["flipped.h5", "checksum", "syn_00005.png"]),
    # ---- train: run directories
    ("existing run", "train", ["--data", "{data}", "--out", "{run}", "--split", "random2_seed0"], 2,
     ["holds a run", "--resume"]),
    ("locked run dir", "train", ["--data", "{data}", "--out", "{locked}", "--split", "random2_seed0"],
     2, ["in use by process"]),
    ("resume changed pixels", "train", ["--resume", "{resumable}", "-q", "--no-progress"], 2,
     ["moving.h5", "other pixels"]),
    ("resume limit negative", "train", ["--resume", "{cut}", "--limit-tasks", "-2"], 2,
     ["--limit-tasks"]),
    ("resume with overwrite", "train", ["--resume", "{cut}", "--overwrite"], 2, ["--overwrite"]),
    # drift bug of issue 29: options the run's config.json fixes were silently ignored
    ("silent wrong: resume with another backbone", "train",
     ["--resume", "{cut}", "--backbone", "resnet50"], 2, ["--backbone", "config.json"]),
    ("silent wrong: resume with another optimizer", "train",
     ["--resume", "{cut}", "--optimizer", "sgd"], 2, ["--optimizer"]),
    ("silent wrong: resume with other frozen stages", "train",
     ["--resume", "{cut}", "--freeze-stages", "2"], 2, ["--freeze-stages"]),
    # ---- evaluate
    ("evaluate into the run", "evaluate", ["{run}", "--out", "{run}", "-q"], 2,
     ["--replace-results"]),
    ("evaluate missing stage", "evaluate", ["{gap}", "-q"], 2, ["lacks task0.pt", "--stages 1"]),
    ("evaluate unfinished", "evaluate", ["{cut}", "-q"], 2, ["lacks task1.pt"]),
    ("evaluate stage absent", "evaluate", ["{run}", "--stages", "5", "-q"], 2, ["--stages", "5"]),
    ("evaluate stages garbage", "evaluate", ["{run}", "--stages", "a,b", "-q"], 2, ["--stages"]),
    ("evaluate out is a file", "evaluate", ["{run}", "--out", "{afile}", "-q"], 2, ["is a file"]),
    ("evaluate not a run", "evaluate", ["{imgs}", "-q"], 2, ["config.json"]),
    # ---- compare
    ("compare datasets", "compare", ["{run}", "{run_other}"], 2, ["differ in dataset"]),
    ("compare unfinished", "compare", ["{run}", "{cut}"], 2, ["unfinished", "cut"]),
    ("compare nothing", "compare", ["{imgs}"], 2, ["no results.json"]),
    # ---- query
    ("query bomb among good", "query", ["--run", "{run}", "{bomb}", "{good}", "--k", "2"], 1,
     ["bomb.png", "too large", "1 of 2", "0.png"]),
    ("query missing among good", "query", ["--run", "{run}", "{root}/none.png", "{good}"], 1,
     ["none.png", "missing file"]),
    ("query k zero", "query", ["--run", "{run}", "{good}", "--k", "0"], 2, ["--k"]),
    ("query not a run", "query", ["--run", "{imgs}", "{good}"], 2, ["config.json"]),
    # ---- issue 30: writes outside the folder asked for (through a link inside it)
    ("write outside folder: symlinked checkpoints", "train",
     ["--data", "{data}", "--out", "{linked_new}", "--split", "random2_seed0", "-q", "--no-progress"],
     2, ["checkpoints", "symbolic link"]),
    ("write outside folder: overwrite through a linked checkpoints", "train",
     ["--data", "{data}", "--out", "{linked_run}", "--split", "random2_seed0", "--overwrite", "-q",
      "--no-progress"], 2, ["checkpoints", "symbolic link"]),
    ("write outside folder: search index is a link", "search",
     ["--run", "{run}", "--images", "{linked_imgs}", "dog"], 2, [".factmas-index", "symbolic link"]),
    # ---- issue 30: user data lost
    ("user data lost: train into a folder of the user's files", "train",
     ["--data", "{data}", "--out", "{userdir}", "--split", "random2_seed0", "-q", "--no-progress"], 2,
     ["userdir", "not a factmas run", "results.json"]),
    ("user data lost: overwrite a folder that holds no run", "train",
     ["--data", "{data}", "--out", "{userdir}", "--split", "random2_seed0", "--overwrite", "-q",
      "--no-progress"], 2, ["userdir", "not a factmas run"]),
    ("user data lost: compare into a run", "compare", ["{run}", "--out", "{run}/results"], 2,
     ["results.md", "run"]),
    ("user data lost: compare over a file", "compare", ["{run}", "--out", "{compare_old}"], 2,
     ["table.md", "--overwrite"]),
    ("user data lost: gallery into a run", "gallery", ["{run}", "--out", "{run}"], 2,
     ["--out", "holds a factmas run"]),
    ("user data lost: evaluate into the user's folder", "evaluate", ["{run}", "--out", "{userdir}",
                                                                     "-q"], 2, ["userdir"]),
    ("user data lost: paper_table into the user's folder", "paper_table",
     ["--data", "{data}", "--out", "{userdir}", "--random-prefix", "random2", "--seeds", "0",
      "--semantic-seeds", "", "--disjoint-seeds", "", "--methods", "finetune", "-q"], 2,
     ["userdir", "did not write"]),
    ("traceback: paper_table --out is a file", "paper_table",
     ["--data", "{data}", "--out", "{afile}", "--random-prefix", "random2", "--seeds", "0",
      "--semantic-seeds", "", "--disjoint-seeds", "", "--methods", "finetune", "-q"], 2,
     ["afile.txt", "is a file"]),
    # ---- issue 30: results that do not say what they were computed on
    ("silent wrong: evaluate on another dataset", "evaluate", ["{run}", "--data", "{other}", "-q"], 2,
     ["other.h5", "not the dataset", "--other-data"]),
    ("silent wrong: resume after config.json was edited", "train", ["--resume", "{edited}", "-q",
                                                                   "--no-progress"], 2,
     ["config.json", "train.lr", "train.epochs", "task0.pt"]),
    ("silent wrong: duplicate facts", "train", ["--data", "{dup_fact}", "--out", "{root}/new_run"], 2,
     ["dup_fact.h5", "rows 0 and 1 are the same fact"]),
    ("silent wrong: duplicate pairs", "train", ["--data", "{dup_pair}", "--out", "{root}/new_run"], 2,
     ["dup_pair.h5", "'pairs'", "same pair"]),
    ("silent wrong: tokens disagree with the text", "train",
     ["--data", "{swapped_tokens}", "--out", "{root}/new_run"], 2,
     ["swapped_tokens.h5", "'facts/tokens' row 0", "the fact's text says"]),
    ("silent wrong: a.jpg beside ./a.jpg", "train", ["--data", "{dot_slash}", "--out", "{root}/new_run"],
     2, ["dot_slash.h5", "rows 0 and 1 name the same image", "./syn_00000.png"]),
    ("traceback: a dataset of 0 images", "train", ["--data", "{no_images}", "--out", "{root}/new_run"],
     2, ["no_images.h5", "0 images"]),
    ("traceback: inspect a dataset of 0 images", "inspect", ["{no_images}"], 2, ["0 images"]),
    ("traceback: --config not UTF-8", "train", T + ["--config", "{cfg_latin1}"], 2,
     ["cfg_latin1.json", "UTF-8"]),
    ("traceback: pretrained_path not a state dict", "train", T + ["--config", "{cfg_pickled}"], 2,
     ["pickled.pt", "weights-only"]),
    # ---- issue 30: unclear messages
    ("unclear: malformed results.json is not an unfinished run", "compare", ["{run}", "{bad_results}"],
     2, ["bad_results", "malformed", "metrics"]),
    ("unclear: --checkpoint ../../etc/passwd", "evaluate", ["{run}", "--checkpoint",
                                                           "../../../../../../etc/passwd", "-q"], 2,
     ["etc/passwd", "not a factmas checkpoint"]),
    ("unclear: checkpoint of another model", "evaluate", ["{wider}", "-q"], 2,
     ["model.width 8 in the checkpoint, 16 in the run"]),
    # ---- issue 30: options silently ignored
    ("silent wrong: evaluate --json without --checkpoint", "evaluate", ["{run}", "--json", "-q"], 2,
     ["--json", "--checkpoint"]),
    ("silent wrong: --limit-tasks with joint", "train", T + ["--method", "joint", "--limit-tasks", "1"],
     2, ["--limit-tasks", "joint"]),
    ("silent wrong: paper_table --image-fraction 0", "paper_table",
     ["--data", "{data}", "--out", "{root}/pt", "--image-fraction", "0", "-q"], 2,
     ["--image-fraction", "got 0"]),
    ("silent wrong: paper_table --epochs 0", "paper_table",
     ["--data", "{data}", "--out", "{root}/pt", "--epochs", "0", "-q"], 2, ["--epochs", "got 0"]),
    # ---- inspect
    ("inspect inconsistent", "inspect", ["{short_split}"], 2, ["'image_split'"]),
    ("inspect task outside", "inspect", ["{far_task}"], 2, ["task 50"]),
    ("inspect verify flipped", "inspect", ["{flipped}", "--verify"], 2, ["checksum", "syn_00005.png"]),
    ("inspect facts negative", "inspect", ["{data}", "--facts", "-1"], 2, ["--facts"]),
    # ---- dataset builders
    ("csv not utf-8", "from_csv", ["--csv", "{csv_latin1}", "--image-root", "{imgs}", "--out",
                                   "{root}/built.h5"], 2, ["latin1.csv:3", "UTF-8"]),
    ("captions not utf-8", "flickr8k", ["--captions", "{captions_latin1}", "--images", "{imgs}",
                                        "--out", "{root}/built.h5"], 2, ["captions.txt:3", "UTF-8"]),
    ("silent wrong: csv names a.jpg and ./a.jpg", "from_csv",
     ["--csv", "{csv_dotslash}", "--image-root", "{imgs}", "--out", "{root}/built.h5", "-q",
      "--split-seeds", "0", "--num-tasks", "1", "--no-semantic"], 2, ["0.png", "same image"]),
    ("build out is a dir", "from_csv", BUILD[:4] + ["--out", "{imgs}"], 2, ["is a directory"]),
    ("build out exists", "from_csv", BUILD[:4] + ["--out", "{exists}"], 2, ["exists", "--overwrite"]),
    ("build seed negative", "from_csv", BUILD + ["--seed", "-1"], 2, ["--seed"]),
    ("build split seeds negative", "from_csv", BUILD[:-5] + ["--split-seeds", "-2"], 2,
     ["--split-seeds"]),
    ("build max frac nan", "from_csv", BUILD + ["--max-image-frac", "nan"], 2, ["--max-image-frac"]),
    ("build batch size zero", "flickr8k", ["--captions", "{captions_latin1}", "--images", "{imgs}",
                                           "--out", "{root}/built.h5", "--batch-size", "0"], 2,
     ["--batch-size"]),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _call(main, argv):
    try:
        return main(argv)
    except SystemExit as e:              # argparse inside a builder's main
        return int(e.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(env, case, capsys):
    name, command, argv, code, words = case
    argv = [a.format(**env) for a in argv]
    before = _snapshot(env["root"])
    status = _call(_main(command), argv)
    cap = capsys.readouterr()
    text = cap.err + cap.out
    assert status == code, (name, status, text[-2000:])
    assert "Traceback" not in text
    for w in words:
        assert w in text, (name, w, text[-2000:])
    if os.environ.get("FACTMAS_SHOW_MESSAGES"):
        print(f"\n[{name}] exit {status}: {cap.err.strip().splitlines()[-1] if cap.err.strip() else ''}",
              file=sys.__stderr__)
    after = _snapshot(env["root"])
    assert after.keys() == before.keys(), (name, sorted(set(after) ^ set(before)))
    changed = [k for k in before if before[k] != after[k]]
    assert not changed, (name, changed)


def test_interrupt_during_the_hdf5_write_leaves_nothing_and_exits_130(env, monkeypatch, capsys):
    """Ctrl-C while h5py writes (which can swallow it): held until the file is closed, then the
    temporary file is removed and the build exits 130. The SIGINT handler is set to Python's default
    first: a test run started in the background (CI, nohup) inherits SIGINT ignored."""
    from data_prep import from_csv
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        real = h5py.Group.create_dataset
        calls = {"n": 0}

        def interrupted(self, name, *a, **k):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
            return real(self, name, *a, **k)

        monkeypatch.setattr(h5py.Group, "create_dataset", interrupted)
        before = _snapshot(env["root"])
        argv = [a.format(**env) for a in BUILD]
        assert from_csv.main(argv) == 130
        assert "interrupted" in capsys.readouterr().err and calls["n"] > 3   # the write went on
        assert _snapshot(env["root"]) == before                              # no file, no temp file
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        monkeypatch.setattr(h5py.Group, "create_dataset", real)
        assert from_csv.main(argv) == 0                                     # the same build, uninterrupted
        (env["root"] / "built.h5").unlink()
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_case_count():
    assert len(CASES) >= 60
    print(f"{len(CASES) + 1} bad-input cases")


# ---- issue 30: one error base class, caught once at the command line ---------------------------------

def _cli(argv):
    from factmas.cli import main
    return main(argv)


def _no_temp_files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*.tmp")]


def test_traceback_error_classes_share_one_base_with_exit_2():
    from factmas.config import ConfigError
    from factmas.data.schema import DatasetError
    from factmas.machine.device import UsageError as OldName
    from factmas.errors import FactmasError, UsageError, user_message
    from factmas.run.checkpoint import CheckpointError
    from factmas.run.load import RunLoadError
    from factmas.run.rundir import RunDirError
    from factmas.explore.search import SearchError
    from factmas.trainer.loop import TrainingError
    assert OldName is UsageError and issubclass(UsageError, ValueError)     # old names still work
    for cls in (ConfigError, DatasetError, UsageError, CheckpointError, RunLoadError, RunDirError,
                SearchError):
        assert issubclass(cls, FactmasError) and user_message(cls("x.json: bad"))[0] == 2, cls
    assert user_message(TrainingError("non-finite loss"))[0] == 1
    assert user_message(KeyError("bug")) is None and user_message(ZeroDivisionError()) is None


def test_traceback_disk_full_while_writing_a_checkpoint(env, tmp_path, monkeypatch, capsys):
    """ENOSPC from the checkpoint write (reported at fsync, as a file system with delayed allocation
    does): one line naming the file, exit 2, no temporary file left."""
    import errno

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "full_run"
    status = _cli(["train", "--data", str(env["data"]), "--out", str(out), "--split", "random2_seed0",
                   "--no-progress", "-q", "--epochs", "1", "--config", str(_tiny_config(tmp_path))])
    err = capsys.readouterr().err
    assert status == 2, err
    assert "no space left" in err and ".pt" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not _no_temp_files(tmp_path)


def test_traceback_read_only_output_folder(env, tmp_path, monkeypatch, capsys):
    """EROFS when the run folder is created (a read-only mount; chmod does not stop root)."""
    import errno
    real = Path.mkdir

    def ro(self, *a, **k):
        if "ro_run" in str(self):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", ro)
    status = _cli(["train", "--data", str(env["data"]), "--out", str(tmp_path / "ro_run"), "--split",
                   "random2_seed0", "--no-progress", "-q", "--config", str(_tiny_config(tmp_path))])
    err = capsys.readouterr().err
    assert status == 2 and "read-only" in err.lower() and "ro_run" in err and "Traceback" not in err, err


def test_traceback_file_size_limit_in_a_subprocess(env, tmp_path):
    """RLIMIT_FSIZE (ulimit -f): the write fails with EFBIG (Python ignores SIGXFSZ); one line, exit 2."""
    import resource
    import subprocess

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
    out = tmp_path / "big_run"
    cfg = _tiny_config(tmp_path, model={**TINY_MODEL, "width": 16, "embed_dim": 64})
    env_vars = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
                "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "factmas.cli", "train", "--data", str(env["data"]),
                        "--out", str(out), "--split", "random2_seed0", "--no-progress", "-q",
                        "--config", str(cfg)], capture_output=True, text=True, preexec_fn=limit,
                       env=env_vars, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "file too large" in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert not _no_temp_files(tmp_path)


def test_traceback_dead_torchrun_peer_names_the_rank(monkeypatch, capsys):
    """gloo's RuntimeError of a peer that died is a line naming this process's rank, exit 1."""
    import factmas.cli.train as cli_train

    def dead(argv):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed "
                           "by peer [127.0.0.1]:29500")
    monkeypatch.setattr(cli_train, "main", dead)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert _cli(["train", "--resume", "x"]) == 1
    err = capsys.readouterr().err
    assert "process 1" in err and "Connection closed by peer" in err and "Traceback" not in err
    monkeypatch.setenv("WORLD_SIZE", "1")          # outside torchrun a RuntimeError is a bug
    with pytest.raises(RuntimeError):
        _cli(["train", "--resume", "x"])


def test_silent_wrong_terminal_escapes_in_names_are_escaped(env, tmp_path, capsys):
    from factmas.errors import printable
    assert printable("a\x1b[2Jb\nc\rd\x9b\x7f.png") == "a\\x1b[2Jb\\nc\\rd\\x9b\\x7f.png"
    assert printable("café ✓ 犬.png") == "café ✓ 犬.png"
    evil = tmp_path / "x\x1b[31mred\x07.png"
    shutil.copy(env["good"], evil)
    assert _cli(["query", "--run", str(env["run"]), str(evil), "--k", "1"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[31mred\\x07.png" in out


def _tiny_config(tmp_path, model=None):
    p = tmp_path / "tiny.json"
    p.write_text(json.dumps({"model": model or TINY_MODEL, "train": {"epochs": 1, "batch_size": 32}}))
    return p


def test_user_data_lost_overwrite_deletes_only_what_factmas_wrote(env, tmp_path, capsys):
    """--overwrite on a run: the files its manifest lists are deleted, the user's own are kept."""
    out = tmp_path / "own_run"
    cfg = ["--data", str(env["data"]), "--split", "random2_seed0", "--no-progress", "-q",
           "--config", str(_tiny_config(tmp_path))]
    assert _cli(["train", "--out", str(out)] + cfg) == 0
    manifest = (out / ".factmas-written").read_text().splitlines()
    assert manifest[0].startswith("# factmas run") and "checkpoints/task1.pt" in manifest
    assert "config.json" in manifest and "metrics.jsonl" in manifest and "results.json" in manifest
    (out / "my_notes.txt").write_text("mine")
    (out / "checkpoints" / "my_best.pt").write_bytes(b"mine")
    old_created = json.loads((out / "config.json").read_text())["created"]
    assert _cli(["train", "--out", str(out), "--overwrite"] + cfg) == 0
    assert (out / "my_notes.txt").read_text() == "mine"
    assert (out / "checkpoints" / "my_best.pt").read_bytes() == b"mine"
    assert (out / "checkpoints" / "task1.pt").is_file()
    assert json.loads((out / "config.json").read_text())["created"] >= old_created
    capsys.readouterr()


def test_unclear_orphaned_temp_files_are_removed_on_resume(env, tmp_path, capsys):
    """A write killed half-way leaves .NAME.XXXXXXXX.tmp; the next resume (which holds the lock)
    removes it. Files that only look alike (no 8-character tag) are kept."""
    run = tmp_path / "cut"
    shutil.copytree(env["cut"], run)
    orphan = run / "checkpoints" / ".task1.pt.ab12cd34.tmp"
    orphan.write_bytes(b"half")
    keep = run / "checkpoints" / "notes.tmp"
    keep.write_text("mine")
    assert _cli(["train", "--resume", str(run), "-q", "--no-progress"]) == 0
    assert not orphan.exists() and keep.read_text() == "mine"
    assert (run / "checkpoints" / "task1.pt").is_file()
    capsys.readouterr()


def test_write_outside_folder_manifest_naming_outside_paths_deletes_nothing(tmp_path):
    from factmas import outdir
    root = outdir.claim(tmp_path / "r", "run")
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    with open(root / outdir.MANIFEST, "a") as f:
        f.write("../victim.txt\n")
    with pytest.raises(outdir.OutputError, match="outside"):
        outdir.remove_written(root)
    assert victim.read_text() == "mine"


def test_silent_wrong_evaluate_other_data_on_purpose_records_its_fingerprint(env, tmp_path, capsys):
    out = tmp_path / "ev"
    assert _cli(["evaluate", str(env["run"]), "--data", str(env["other"]), "--other-data", "--out",
                 str(out), "-q"]) == 0
    ev = json.loads((out / "results.json").read_text())["evaluated"]
    run_fp = json.loads((env["run"] / "config.json").read_text())["data_fingerprint"]
    assert ev["other_data_fingerprint"]["sha256"] != run_fp["sha256"]
    assert ev["data"] == str(env["other"].resolve()) or ev["data"].endswith("other.h5")
    capsys.readouterr()


def test_unclear_checkpoint_of_another_backbone_says_which():
    from factmas.run.checkpoint import mismatch_message
    msg = mismatch_message("run/checkpoints/last.pt", {"config": {"model": {"backbone": "small_cnn"}}},
                           {"backbone": "efficientnet_lite0"}, RuntimeError("Missing key(s) " + "x" * 11000))
    assert msg == ("run/checkpoints/last.pt: this checkpoint is small_cnn, the run is "
                   "efficientnet_lite0; use a checkpoint of this run")
    long = mismatch_message("p.pt", {}, {"backbone": "small_cnn"}, RuntimeError("k" * 11000))
    assert len(long) < 400


def test_unclear_compare_runs_that_differ_only_in_split_says_split(env, tmp_path, capsys):
    cfg = RunConfig.from_dict({"data": str(env["data"]), "out": str(tmp_path / "sem"), "model": TINY_MODEL,
                               "train": {"split": "disjoint2_seed0", "method": "finetune", "epochs": 1,
                                         "batch_size": 32}})
    train(cfg, progress=False)
    from factmas.cli.compare import main as compare
    capsys.readouterr()
    assert compare([str(env["run"]), str(tmp_path / "sem")]) == 2
    err = capsys.readouterr().err
    assert "differ in split" in err and "differ in dataset" not in err, err


def test_silent_wrong_sigterm_to_paper_table_stops_its_workers(tmp_path):
    """SIGTERM to paper_table is passed on to its worker processes, which it waits for: none trains
    on after the parent has exited (exit 143)."""
    import re
    import subprocess
    import time
    data = make_synthetic_dataset(tmp_path / "syn.h5", n_images=80, image_size=16, num_tasks=4)
    cfg = tmp_path / "base.json"
    cfg.write_text(json.dumps({"model": TINY_MODEL, "train": {"batch_size": 32}}))
    env_vars = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    script = Path(__file__).resolve().parents[2] / "eval" / "paper_table.py"
    proc = subprocess.Popen([sys.executable, str(script), "--data", str(data), "--out",
                             str(tmp_path / "table"), "--quick", "--jobs", "2", "--config", str(cfg),
                             "--methods", "finetune,mas,joint",
                             "--grid", "mas=0.5,5,50,500,5000,50000,500000"],
                            stderr=subprocess.PIPE, text=True, env=env_vars)
    try:
        deadline = time.time() + 120
        seen = ""
        while not re.search(r"\[1/\d+\]", seen) and time.time() < deadline:   # a run finished: the
            seen += proc.stderr.readline()          # workers are busy, the search and the λ-free finals to go
        proc.send_signal(signal.SIGTERM)
        err = seen + proc.stderr.read()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 143, err[-2000:]
    m = re.search(r"SIGTERM sent to worker\(s\) ([0-9, ]+);", err)
    assert m, err[-2000:]
    for pid in map(int, m.group(1).split(", ")):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)                   # gone (and reaped) before the parent exited
    assert "Traceback" not in err and "terminated" in err


def test_traceback_disk_full_while_writing_a_png_names_the_png(env, tmp_path, monkeypatch, capsys):
    """ENOSPC inside matplotlib's PNG write (at the end of training): one line naming the PNG."""
    import errno

    import matplotlib.figure

    def full(self, fname, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    status = _cli(["train", "--data", str(env["data"]), "--out", str(tmp_path / "png_run"), "--split",
                   "random2_seed0", "--no-progress", "-q", "--config", str(_tiny_config(tmp_path))])
    err = capsys.readouterr().err
    assert status == 2 and "no space left" in err and ".png" in err and ".tmp" not in err, err
    assert not _no_temp_files(tmp_path)


def test_silent_wrong_escape_sequences_in_error_messages(tmp_path, capsys):
    evil = tmp_path / "r\x1b]0;pwned\x07"
    evil.write_text("a file")
    assert _cli(["train", "--data", str(evil), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\\x1b]0;pwned\\x07" in err, err


def test_write_outside_folder_through_a_linked_subfolder_of_a_run(tmp_path):
    """Any write under a factmas folder (evaluate's default RUN/evaluations/..., a plot, a results
    file) is refused when a link lies on the way; nothing lands in the link's target."""
    from factmas import outdir
    from factmas.io import atomic_write_text
    root = outdir.claim(tmp_path / "run", "run")
    (tmp_path / "else").mkdir()
    (root / "evaluations").symlink_to(tmp_path / "else")
    with pytest.raises(outdir.OutputError, match="evaluations is a symbolic link"):
        outdir.prepare_output(root / "evaluations" / "test", "evaluation")
    with pytest.raises(outdir.OutputError, match="symbolic link"):
        atomic_write_text(root / "evaluations" / "test" / "results.json", "x")
    assert not any((tmp_path / "else").iterdir())
    atomic_write_text(root / "results.md", "ok")                # a plain write is recorded
    assert "results.md" in outdir.written(root)


def test_user_data_lost_evaluate_overwrite_replaces_only_a_factmas_results_file(env, tmp_path, capsys):
    """--overwrite replaces an evaluation folder factmas wrote before manifests existed (its
    results.json has factmas's format), never a folder whose results.json is the user's."""
    old = tmp_path / "old_eval"
    old.mkdir()
    shutil.copy(env["run"] / "results.json", old / "results.json")
    assert _cli(["evaluate", str(env["run"]), "--out", str(old), "--overwrite", "-q"]) == 0
    assert "results.json" in (old / ".factmas-written").read_text()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"mine": 1}')
    assert _cli(["evaluate", str(env["run"]), "--out", str(mine), "--overwrite", "-q"]) == 2
    assert (mine / "results.json").read_text() == '{"mine": 1}' and sorted(os.listdir(mine)) == ["results.json"]
    capsys.readouterr()


def test_traceback_disk_full_before_an_hdf5_write(env, tmp_path, monkeypatch, capsys):
    """h5py can crash on a full disk, so the dataset builder checks the room first: one line naming
    the file, exit 2, nothing written."""
    import collections

    from data_prep import from_csv
    from factmas.errors import guarded_main
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10_000, 9_000, 1_000))
    out = tmp_path / "built.h5"
    argv = [a.format(**env) for a in BUILD[:5]] + [str(out)] + BUILD[6:]
    assert guarded_main("data_prep.from_csv", from_csv.main, argv) == 2
    err = capsys.readouterr().err
    assert "built.h5" in err and "no space left" in err.lower() and "Traceback" not in err, err
    assert not list(tmp_path.iterdir())


def test_silent_wrong_sigterm_between_paper_table_phases_exits_143():
    """SIGTERM while no worker pool is running (between the λ search and the final runs) is handled
    too: exit 143 with one line, not a death by the signal (which CI once saw, exit -15)."""
    import subprocess
    code = ("import os, signal, sys, time\n"
            "from factmas.cli import paper\n"
            "from factmas.errors import guarded_main\n"
            "def between_phases(argv):\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    time.sleep(30)\n"
            "    return 0\n"
            "paper._main = between_phases\n"
            "sys.exit(guarded_main('paper_table', paper.main, []))\n")
    env_vars = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=env_vars)
    assert out.returncode == 143, (out.returncode, out.stderr[-2000:])
    assert "paper_table: terminated" in out.stderr


@pytest.mark.parametrize("module, args", [("factmas.cli", ["--help"]),
                                          ("data_prep.inspect", ["{data}", "--facts", "50"])])
def test_output_into_a_closed_pipe_ends_quietly(env, module, args):
    """``... | head``: the reader goes away before the command has written; no traceback, status 141
    (as a death by SIGPIPE), for the ``factmas`` usage text and a data_prep command."""
    import subprocess
    env_vars = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    r_fd, w_fd = os.pipe()
    os.close(r_fd)                                   # the reader has gone before the first write
    argv = [a.replace("{data}", str(env["data"])) for a in args]
    with os.fdopen(w_fd, "wb") as w:
        r = subprocess.run([sys.executable, "-m", module, *argv], stdout=w, stderr=subprocess.PIPE,
                           text=True, env=env_vars, timeout=120)
    assert r.returncode == 141, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr[-3000:]
