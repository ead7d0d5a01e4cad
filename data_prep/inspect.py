"""Print the summary of a factmas HDF5 file: images, facts by order, pairs, splits and per-task counts.

    python -m data_prep.inspect FILE.h5 [--facts N] [--verify]
    python -m data_prep.inspect FILE.h5 --image-split-rule      # prints hash, seed or unknown

The whole file is validated first (``factmas.data.schema``: keys, dtypes, shapes, id ranges,
tasks); an inconsistent file is an error (exit 2) naming the key, never a summary of false counts.
``--verify`` also reads every image and compares it with its stored CRC-32 checksum (exit 2 naming
the images that differ). The summary names the file's image split rule (``hash`` or ``seed``, from
its provenance; a data_prep file without the ``image_split`` option is ``seed``:
``data_prep.splits.provenance_image_split``); ``--image-split-rule`` prints that word alone, for
scripts (``scripts/main_job.sh`` rebuilds a file whose rule is not the default).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

import numpy as np

from factmas.data.dataset import SPLIT_NAMES, DatasetError, FactData, read_dataset

from .splits import provenance_image_split

RULE_TEXT = {"hash": "hash (stable: from each image's file name)",
             "seed": "seed (a permutation drawn with --seed, as every file built before --image-split)",
             "unknown": "unknown (no data_prep build options in the provenance)"}


def image_split_rule(data: FactData) -> str:
    """"hash", "seed" or "unknown": how ``data``'s train/val/test images were drawn (its provenance;
    ``provenance_image_split``). Raises DatasetError naming the file on a malformed recorded value."""
    try:
        return provenance_image_split(data.provenance) or "unknown"
    except ValueError as e:
        raise DatasetError(f"{data.path}: {e}") from None


def task_table(data: FactData, split: str) -> list[dict]:
    """Per task of ``split``: facts, facts by order, train/val/test images (distinct) and train pairs."""
    task = data.task_of_facts(split)
    rows = []
    for t in range(int(task.max()) + 1 if len(task) else 0):
        members = task == t
        row = {"task": t, "facts": int(members.sum()),
               "by_order": [int((members & (data.order == o)).sum()) for o in (1, 2, 3)]}
        for name in SPLIT_NAMES:
            p = data.task_pairs(split, t, name)
            row[f"{name}_images"] = int(len(np.unique(p[:, 0])))
            row[f"{name}_pairs"] = int(len(p))
        rows.append(row)
    return rows


def summary(data: FactData, top_facts: int = 10) -> str:
    """The text printed by ``python -m data_prep.inspect``."""
    lines = []
    n = len(data.image_ids)
    h = data.images.shape[1] if data.images.ndim == 4 else "?"
    split_n = {name: int((data.image_split == i).sum()) for i, name in enumerate(SPLIT_NAMES)}
    lines.append(f"file: {data.path}")
    lines.append(f"images: {n} ({h}x{h} RGB); " + ", ".join(f"{k} {v}" for k, v in split_n.items()))
    rule = image_split_rule(data)
    lines.append(f"image split: {RULE_TEXT[rule]}")
    by_order = Counter(int(o) for o in data.order)
    lines.append(f"facts: {data.num_facts} (order 1 ⟨S⟩: {by_order.get(1, 0)}, order 2 ⟨S,P⟩: "
                 f"{by_order.get(2, 0)}, order 3 ⟨S,P,O⟩: {by_order.get(3, 0)}); vocabulary {len(data.vocab) - 1} words")
    per_image = np.bincount(data.pairs[:, 0], minlength=n) if len(data.pairs) else np.zeros(n, int)
    lines.append(f"pairs: {len(data.pairs)} image-fact pairs ({per_image.mean():.2f} facts per image, "
                 f"max {per_image.max() if n else 0}; {int((per_image == 0).sum())} images without a fact)")
    if top_facts and len(data.pairs):
        per_fact = np.bincount(data.pairs[:, 1], minlength=data.num_facts)
        top = np.argsort(-per_fact, kind="stable")[:top_facts]
        lines.append("most frequent facts: " + ", ".join(f"{data.fact_text(f)} {per_fact[f]}" for f in top))
    prov = data.provenance
    if prov:
        c = prov.get("counts", {})
        t = prov.get("timings", {})
        lines.append(f"built by: {prov.get('command', '?')} (git {prov.get('git_commit', '?')})")
        if c:
            lines.append(f"build: {c.get('images_in', '?')} images in, {c.get('images_skipped', '?')} skipped, "
                         f"{c.get('images_without_fact', '?')} without a kept fact dropped; "
                         f"{c.get('facts_before_thresholds', '?')} candidate facts")
        if t:
            lines.append(f"timings: {t.get('images_per_second', '?')} images/s decoded, "
                         f"{t.get('captions_parsed', '?')} captions parsed in {t.get('parse_seconds', '?')} s")
    lines.append(f"splits: {', '.join(sorted(data.splits)) or '(none)'}")
    for name in sorted(data.splits):
        attrs = data.split_attrs.get(name, {})
        lines.append(f"  {name} (kind {attrs.get('kind', '?')}, seed {attrs.get('seed', '?')}):")
        lines.append("    task  facts  (o1/o2/o3)   train img  val img  test img  train pairs")
        for r in task_table(data, name):
            o = "/".join(map(str, r["by_order"]))
            lines.append(f"    {'T' + str(r['task'] + 1):>4}  {r['facts']:>5}  ({o:>9})  {r['train_images']:>9}  "
                         f"{r['val_images']:>7}  {r['test_images']:>8}  {r['train_pairs']:>11}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line entry; returns 0, or 2 when the file cannot be read."""
    p = argparse.ArgumentParser(prog="python -m data_prep.inspect", description=__doc__.split("\n")[0])
    p.add_argument("path", help="factmas .h5 file")
    p.add_argument("--facts", type=int, default=10, help="how many of the most frequent facts to list (10)")
    p.add_argument("--verify", action="store_true",
                   help="read every image and check it against its stored checksum")
    p.add_argument("--image-split-rule", action="store_true",
                   help="print only the file's image split rule (hash, seed or unknown) and exit")
    a = p.parse_args(argv)
    if a.facts < 0:
        print(f"error: --facts must be >= 0, got {a.facts}", file=sys.stderr)
        return 2
    try:
        data = read_dataset(a.path, load_images=a.verify, verify=a.verify)
        if a.verify and not isinstance(data.images, np.ndarray):
            data.images.verify_all()                 # one streaming pass over the pixels
        if a.image_split_rule:
            print(image_split_rule(data))
            return 0
        text = summary(data, a.facts)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    if a.verify:
        print(f"checksums: {len(data.image_ids)} images match their stored CRC-32" if
              data.image_crc32 is not None else
              "checksums: none stored (file built before image checksums); pixels not verified")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("data_prep.inspect", main))
