"""docs/api.md runs: every ```python block of the page, in order and in one namespace, on the tiny
runs of ``api_runs`` (the page's variables MAIN and PHOTOS through FACTMAS_MAIN and FACTMAS_PHOTOS)."""
from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_python_block_of_docs_api_md_runs(api_runs, monkeypatch, capsys):
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.setenv("FACTMAS_MAIN", str(api_runs["main"]))
    monkeypatch.setenv("FACTMAS_PHOTOS", str(api_runs["photos"]))
    code = blocks(PAGE.read_text(encoding="utf-8"))
    assert len(code) >= 8, "the page lost its code blocks"
    namespace: dict = {"__name__": "docs_api"}
    for i, block in enumerate(code):
        try:
            exec(compile(block, f"{PAGE}:block{i + 1}", "exec"), namespace)
        except Exception as e:                      # name the block that failed
            raise AssertionError(f"docs/api.md block {i + 1} failed: {type(e).__name__}: {e}\n{block}") from e
    out = capsys.readouterr().out
    assert len(namespace["answers"]) == 15 and "D = " in out           # three photos, 5 facts each
    assert namespace["val"].image_split == "val" and "|" in namespace["table"].markdown()
    import matplotlib.pyplot as plt
    plt.close("all")
