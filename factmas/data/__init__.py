"""The factmas dataset file (HDF5): reading and writing it, its schema, images, synthetic data.

- ``dataset``: ``FactData``, ``read_dataset``, ``write_dataset``.
- ``schema``: the checks a dataset file must pass.
- ``lazy_images``: ``H5Images``, the images of a dataset file read on demand (``FactData.images``).
- ``image_source``: ``ImageSource``, images given to ``write_dataset`` a chunk at a time (a dataset
  written without holding its pixels).
- ``jpeg_images``: schema version 2, each image stored as JPEG bytes (``JpegImages``, decoded on read).
- ``imageio``: reading an image file into RGB pixels.
- ``synthetic``: ``make_synthetic_dataset`` for tests and benchmarks.
- ``loader``: ``batch_loader``, batches fetched in a given order in this process or by
  ``torch.utils.data.DataLoader`` workers (``train.num_workers``).
- ``experience``: each task's data (facts, pairs and images per image split, relevance), built once
  per run; ``merge`` for joint training.

May import: ``factmas.io``, ``factmas.errors`` and ``factmas.space`` only.
"""
