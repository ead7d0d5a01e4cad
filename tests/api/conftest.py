"""Fixtures of the API tests: ``api_runs``, two tiny runs (finetune and MAS) trained through
``factmas.train`` on a synthetic dataset, in the main job's layout (``ROOT/main/{finetune,mas}``),
and three JPEG photos (``ROOT/photos``)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

TINY_MODEL = {"backbone": "small_cnn", "width": 8, "embed_dim": 8, "word_dim": 8, "fact_hidden": 16,
              "norm_groups": 4}


@pytest.fixture(scope="session")
def api_runs(tmp_path_factory):
    import factmas
    from factmas.data.dataset import read_dataset
    from factmas.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("api")
    data = make_synthetic_dataset(root / "syn.h5", n_images=80, image_size=16, num_tasks=2)
    runs = {}
    for method, lam in (("finetune", 0.0), ("mas", 1.0)):
        runs[method] = factmas.train(data=data, out=root / "main" / method, model=TINY_MODEL,
                                     split="random2_seed0", method=method, reg_lambda=lam, epochs=1,
                                     batch_size=32, progress=False)
    photos = root / "photos"
    photos.mkdir()
    fd = read_dataset(data)
    for i in range(3):
        Image.fromarray(fd.images[i]).resize((40, 30)).save(photos / f"photo{i}.jpg", "JPEG")
    return {"root": root, "main": root / "main", "data": data, "photos": photos, "runs": runs,
            "dataset": fd, "rng": np.random.default_rng(0)}
