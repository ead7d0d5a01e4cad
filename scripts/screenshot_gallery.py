"""Screenshot of a gallery page with headless Chromium: the README's docs/gallery.png.

usage: python scripts/screenshot_gallery.py GALLERY_DIR [--out docs/gallery.png] [--width 1400]
                                            [--height 2000] [--chromium PATH]

GALLERY_DIR is what ``factmas gallery`` wrote (index.html inside), e.g. runs/main/gallery after
scripts/main_job.sh. The page is rendered in a window of --width × --height CSS pixels (the top of the
page; 1400 px: a laptop's browser window, with its scrollbar) and written to --out through a
temporary file, so an earlier screenshot is replaced only by a complete one.
Exit status: 0 written, 2 bad input (no index.html, no Chromium, Chromium failed).
Chromium: Debian's ``apt-get install -y chromium``; --chromium or $CHROMIUM names another binary.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium(given: str | None) -> str | None:
    """The Chromium binary: ``given``, $CHROMIUM, else the first of BROWSERS on PATH (None: none)."""
    for name in ([given] if given else []) + ([os.environ["CHROMIUM"]] if os.environ.get("CHROMIUM") else []) \
            + list(BROWSERS):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(index: Path, out: Path, width: int, height: int, chromium: str, timeout: float = 120) -> None:
    """Render ``index`` (an HTML file) headless in a ``width`` × ``height`` window into PNG ``out``
    (written to a temporary file beside it, then renamed). Raises RuntimeError when Chromium fails or
    writes no PNG."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".shot-") as tmp:
        shot = Path(tmp) / "shot.png"
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             f"--window-size={width},{height}", f"--screenshot={shot}",
             index.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not shot.is_file() or shot.stat().st_size == 0:
            raise RuntimeError(f"{chromium} exited {proc.returncode} without a screenshot: "
                               f"{proc.stderr.strip()[-400:]}")
        os.replace(shot, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/screenshot_gallery.py", description=__doc__.split("\n")[0])
    p.add_argument("gallery", help="folder written by factmas gallery (holds index.html)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "gallery.png"),
                   help="PNG to write (default docs/gallery.png)")
    p.add_argument("--width", type=int, default=1400, help="window width in CSS pixels (1400)")
    p.add_argument("--height", type=int, default=2000, help="window height in CSS pixels (2000)")
    p.add_argument("--chromium", help="Chromium binary (default $CHROMIUM, else chromium on PATH)")
    args = p.parse_args(argv)
    index = Path(args.gallery) / "index.html"
    if not index.is_file():
        print(f"screenshot_gallery: {index}: not found; give the folder factmas gallery wrote "
              "(e.g. runs/main/gallery)", file=sys.stderr)
        return 2
    if args.width < 200 or args.height < 200:
        print(f"screenshot_gallery: --width/--height must be >= 200, got {args.width}×{args.height}",
              file=sys.stderr)
        return 2
    chromium = find_chromium(args.chromium)
    if chromium is None:
        print("screenshot_gallery: no Chromium found (install it: apt-get install -y chromium; or give "
              "--chromium PATH)", file=sys.stderr)
        return 2
    try:
        screenshot(index, Path(args.out), args.width, args.height, chromium)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"screenshot_gallery: {e}", file=sys.stderr)
        return 2
    print(f"screenshot_gallery: wrote {args.out} ({args.width}×{args.height} px of {index})")
    return 0


if __name__ == "__main__":
    from factmas.errors import guarded_main
    sys.exit(guarded_main("screenshot_gallery", main))
