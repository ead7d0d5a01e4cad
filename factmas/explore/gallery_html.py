"""The gallery's files: ``index.html`` (plain HTML + inline CSS), ``img/<image index>.jpg``, plots.

``write_gallery(out_dir, data, runs, page)`` renders what ``factmas.explore.gallery.collect`` gathered. Marks
are ``<span class="mark right">✓</span>`` / ``<span class="mark wrong">✗</span>`` (the tests look for
them); every image is a relative ``img/…`` or plot path, so the folder can be moved or zipped. Each
file is written atomically and ``index.html`` last, so a page never points at a missing image.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from factmas.io import atomic_path, atomic_write_text

CSS = """
body{font-family:system-ui,sans-serif;margin:16px;color:#222;max-width:1360px}
h1{font-size:22px;margin:4px 0} h2{font-size:18px;margin:22px 0 6px;border-bottom:1px solid #ccc}
h3{font-size:15px;margin:12px 0 4px} p.note{color:#555;font-size:13px;margin:2px 0 8px}
table{border-collapse:collapse} td,th{border:1px solid #ddd;padding:4px 6px;vertical-align:top;font-size:12px}
th{background:#f4f4f4;text-align:left} ol{margin:0;padding-left:18px} li{white-space:nowrap}
img.photo{width:128px;height:128px;display:block} .truth{color:#555;font-size:11px;max-width:180px}
.mark{font-weight:bold;margin-right:3px} .right{color:#1a7f37} .wrong{color:#c62828}
.d{color:#777;font-size:11px} .strip{display:flex;gap:4px}
.cell{position:relative;width:96px;text-align:center;font-size:11px}
.cell img{width:96px;height:96px;display:block;border:3px solid #ddd}
.cell.right img{border-color:#1a7f37} .cell.wrong img{border-color:#c62828}
img.plot{max-width:100%;border:1px solid #eee}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,600px),1fr));gap:8px}
.card{width:100%;table-layout:fixed} .card th:first-child{width:136px} .card li{white-space:normal} .truth{max-width:128px;overflow-wrap:anywhere}
"""


def _mark(right: bool) -> str:
    return '<span class="mark right">✓</span>' if right else '<span class="mark wrong">✗</span>'


def _save_image(out: Path, data: Any, i: int, done: set) -> str:
    """Write dataset image ``i`` as img/<i>.jpg once; return its relative path."""
    from PIL import Image

    rel = f"img/{i}.jpg"
    if i not in done:
        with atomic_path(out / rel) as tmp:
            Image.fromarray(data.images[i]).save(tmp, format="JPEG", quality=85)
        done.add(i)
    return rel


def _dp(d: float, p: float | None) -> str:
    """The distance, and the probability when the run has a calibrator: "0.412 · p 0.63"."""
    return f"{d:.3f}" if p is None else f"{d:.3f} · p {p:.2f}"


def _calibration_note(runs: list[dict]) -> str:
    """What p is, and each run's abstention threshold p* (or that it has no calibrator)."""
    parts = [f"{html.escape(r['name'])}: p* = {r['calibrator'].threshold:.2f}"
             if r.get("calibrator") is not None else f"{html.escape(r['name'])}: no calibration.json"
             for r in runs]
    return ("<p class='note'>p = the probability that the fact is true of the photo at that distance, "
            "fitted on the val images of the run (factmas calibrate); factmas query shows only facts "
            "with p ≥ p* (" + "; ".join(parts) + ").</p>")


def _run_header(runs: list[dict]) -> str:
    rows = []
    for r in runs:
        res, cfg = r["results"], r["cfg"]
        e = res["metrics"][res["headline"]]
        final = e.get("final_all")
        lam = "—" if cfg.train.method in ("finetune", "joint") else f"{cfg.train.reg_lambda:g}"
        rows.append(f"<tr><td>{html.escape(r['name'])}</td><td>{html.escape(cfg.train.method)}</td>"
                    f"<td>{lam}</td><td>{html.escape(cfg.train.split)}</td>"
                    f"<td>{'—' if final is None else f'{100 * final:.2f}'}</td>"
                    "</tr>")
    head = "<tr><th>run</th><th>method</th><th>λ</th><th>split</th><th>final mAP (all facts, %)</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render(data: Any, runs: list[dict], page: dict, image_path) -> str:
    """The HTML text; ``image_path(i) -> str`` gives (and writes) the relative path of image i."""
    names = [html.escape(r["name"]) for r in runs]
    out = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
           "<title>factmas gallery</title><style>", CSS, "</style></head><body>",
           "<h1>factmas gallery: what each run retrieves</h1>", _run_header(runs),
           "<p class='note'>Distances are the wildcard distance D ∈ [0, 4] (smaller = closer). "
           f"{_mark(True)} = a true fact of the photo in the dataset {html.escape(Path(data.path).name)}, "
           f"{_mark(False)} = not among its facts (the mined facts are incomplete, so some ✗ are "
           "plausible).</p>", _calibration_note(runs),
           "<h2>(a) Test photos → top-5 facts</h2><div class='cards'>"]
    for p in page["photos"]:
        i = p["image"]
        truth = ", ".join(html.escape(t) for t in p["truth"][:6]) + (" …" if len(p["truth"]) > 6 else "")
        out.append(f"<table class='card'><tr><th>photo</th>" + "".join(f"<th>{n}</th>" for n in names)
                   + f"</tr><tr><td><img class='photo' src='{image_path(i)}' alt='test image {i}'>"
                   f"<div class='truth'>{html.escape(data.image_ids[i])}<br>true: {truth}</div></td>")
        for facts in p["runs"]:
            items = "".join(f"<li>{_mark(ok)}{html.escape(t)} <span class='d'>{_dp(d, p)}</span></li>"
                            for t, d, ok, p in facts)
            n_ok = sum(ok for _, _, ok, _ in facts)
            out.append(f"<td><ol>{items}</ol><div class='d'>{n_ok}/{len(facts)} right</div></td>")
        out.append("</tr></table>")
    out.append("</div><h2>(b) Facts of each task → top test images</h2>")
    for t in page["tasks"]:
        out.append(f"<h3>Task T{t['task'] + 1}</h3><table><tr><th>fact</th>"
                   + "".join(f"<th>{n}</th>" for n in names) + "</tr>")
        for f in t["facts"]:
            out.append(f"<tr><td>{html.escape(f['text'])}</td>")
            for imgs in f["runs"]:
                cells = "".join(
                    f"<div class='cell {'right' if ok else 'wrong'}'><img src='{image_path(i)}' "
                    f"alt='test image {i}'>{_mark(ok)}<span class='d'>{_dp(d, p)}</span></div>"
                    for i, d, ok, p in imgs)
                out.append(f"<td><div class='strip'>{cells}</div></td>")
            out.append("</tr>")
        out.append("</table>")
    out += ["<h2>(c) Each task after each training stage, runs on one scale</h2>",
            "<img class='plot' src='r_heatmaps.png' alt='R heat maps'><br>",
            "<img class='plot' src='map_per_task.png' alt='per-task curves'>", "</body></html>"]
    return "\n".join(out)


def _old_gallery(out: Path) -> bool:
    """A gallery folder written before manifests: index.html with the gallery's own title."""
    try:
        return "factmas" in (out / "index.html").read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return False


def check_out(out_dir: str | Path, overwrite: bool = False) -> None:
    """Refuse (GalleryError) an ``out_dir`` that is a file, holds a link, is a run's or someone
    else's folder, or holds a gallery already and ``overwrite`` is False; writes nothing."""
    from factmas.explore.gallery import GalleryError
    from factmas.outdir import OutputError, check_output
    out = Path(out_dir)
    try:                # a gallery written before manifests: its index.html is factmas's
        check_output(out, "gallery", legacy=_old_gallery(out))
    except OutputError as e:
        raise GalleryError(f"--out: {e}") from e
    if (out / "index.html").exists() and not overwrite:
        raise GalleryError(f"--out {out}: holds a gallery already; pass --overwrite to replace it or "
                           "choose another folder")


def write_gallery(out_dir: str | Path, data: Any, runs: list[dict], page: dict,
                  overwrite: bool = False) -> Path:
    """Write the gallery folder (module docstring); returns the path of index.html.

    Raises:
        OSError: ``out_dir`` cannot be written.  ValueError (GalleryError from plots): runs whose
            results cannot share a plot.  GalleryError: ``check_out`` refuses ``out_dir``.
    """
    from factmas.explore.gallery import GalleryError
    from factmas.explore.gallery_plots import write_comparison_plots

    from factmas.outdir import prepare_output
    check_out(out_dir, overwrite)
    out = prepare_output(out_dir, "gallery", legacy=_old_gallery(Path(out_dir)))
    (out / "img").mkdir(parents=True, exist_ok=True)
    try:
        write_comparison_plots([r["results"] for r in runs], [r["name"] for r in runs], out)
    except ValueError as e:
        raise GalleryError(str(e)) from e
    done: set = set()
    text = render(data, runs, page, lambda i: _save_image(out, data, i, done))
    atomic_write_text(out / "index.html", text)
    return out / "index.html"
