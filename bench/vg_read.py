"""Reading Visual Genome's relationships.json: ``json.load`` against the streaming reader of
``data_prep.jsonstream``, and the whole of ``data_prep.visual_genome.read_facts`` (reading plus word
normalisation), in peak memory and speed against the number of images.

    .venv/bin/python bench/vg_read.py [--images 5000,20000] [--rels-per-image 21] [--out FILE]

For each size a synthetic file in VG's format is written (seeded; 21 relationships per image as in
VG 1.4: 2.3 M over 108,077 images; subject and object with box, name and synsets as the release
has them), then each reader runs in a fresh Python process, which reports its wall time and its peak
RSS (VmHWM) less its RSS before reading (the interpreter and imports). Results:
``bench/results/vg_read.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

NOUNS = ["man", "Men", "woman", "shirt", "white shirt", "tree", "trees", "sky", "building", "window",
         "car", "table", "plate", "dog", "grass", "hand", "head", "leaves", "people", "street", "sign",
         "hat", "wall", "floor", "pole", "bus", "horse", "cloud", "water", "light"]
PREDICATES = ["on", "ON", "has", "wearing", "in", "of", "near", "behind", "holding", "sitting on",
              "in front of", "riding", "standing on", "is on", "next to", "above", "has a", "parked on"]


def write_vg(path: Path, n_images: int, per_image: int, seed: int = 0) -> int:
    """A relationships.json of ``n_images`` records; returns its size in bytes."""
    rnd = random.Random(seed)

    def obj(oid):
        name = rnd.choice(NOUNS)
        return {"object_id": oid, "x": rnd.randint(0, 500), "y": rnd.randint(0, 500), "w": rnd.randint(1, 300),
                "h": rnd.randint(1, 300), "name": name, "synsets": [name.split()[-1].lower() + ".n.01"]}

    with open(path, "w") as fh:
        fh.write("[")
        for i in range(n_images):
            rels = [{"relationship_id": i * 100 + j, "predicate": rnd.choice(PREDICATES),
                     "synsets": ["on.r.01"], "subject": obj(2 * j), "object": obj(2 * j + 1)}
                    for j in range(per_image)]
            fh.write(("," if i else "") + json.dumps({"image_id": i + 1, "relationships": rels}))
        fh.write("]")
    return path.stat().st_size


def child(method: str, path: str) -> dict:
    """Run one reader in this process; its seconds, peak RSS above the start, items read."""
    from data_prep import jsonstream, visual_genome

    start = common.rss_bytes()
    common.reset_peak_rss()
    t0 = time.perf_counter()
    if method == "json_load":
        with open(path) as fh:
            data = json.load(fh)
        n = sum(len(r["relationships"]) for r in data)
    elif method == "stream":
        n = sum(len(r["relationships"]) for _, r in jsonstream.iter_records(path, ValueError))
    else:
        by_image, skips, _ = visual_genome.read_facts({"relationships": path})
        n = sum(len(v) for v in by_image.values())
    seconds = time.perf_counter() - t0
    peak = (common.peak_rss_bytes() - start) / common.MiB
    return {"method": method, "seconds": seconds, "peak_above_start_mib": peak, "items": n}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default="5000,20000", help="image counts, comma-separated")
    p.add_argument("--rels-per-image", type=int, default=21)
    p.add_argument("--out", default=str(common.RESULTS / "vg_read.json"))
    p.add_argument("--child", nargs=2, metavar=("METHOD", "FILE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child)))
        return 0
    info = common.machine_info()
    rows = []
    with tempfile.TemporaryDirectory(prefix="factmas_vg_") as tmp:
        for n in (int(x) for x in a.images.split(",")):
            path = Path(tmp) / f"relationships_{n}.json"
            size = write_vg(path, n, a.rels_per_image)
            for method in ("json_load", "stream", "read_facts"):
                out = subprocess.run([sys.executable, __file__, "--child", method, str(path)], check=True,
                                     capture_output=True, text=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                r.update(images=n, relationships=n * a.rels_per_image, file_mib=size / common.MiB,
                         relationships_per_s=n * a.rels_per_image / r["seconds"])
                rows.append(r)
                print(f"{n:>7} images {size / common.MiB:7.1f} MiB  {method:<10} {r['seconds']:7.2f} s  "
                      f"{r['relationships_per_s']:>9,.0f} rel/s  peak +{r['peak_above_start_mib']:7.1f} MiB",
                      flush=True)
            path.unlink()
    print(common.load_line(info))
    common.write_results(a.out, {"machine": info, "rels_per_image": a.rels_per_image, "rows": rows,
                                 "load_after": [round(x, 2) for x in os.getloadavg()]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
