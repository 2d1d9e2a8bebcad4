"""Lyrics (arXiv 2312.05278) as a two-phase feature-caching pipeline.

The package maps one namespace onto the repository's phase folders:

- ``lyrics.data``     -> ``data/``      readers of the public formats and the embedded sample set
- ``lyrics.store``    -> ``store/``     the feature cache (Zarr tensors + Parquet rows + manifest)
- ``lyrics.extract``  -> ``extract/``   phase 1: the frozen models in a Ray job
- ``lyrics.model``    -> ``model/``     MQ-Former and the LVLM, shared by training and evaluation
- ``lyrics.train``    -> ``train/``     phase 2: Lightning trainers reading only the cache
- ``lyrics.evaluate`` -> ``evaluate/``  benchmarks and metrics
"""

__version__ = "0.1.0"
