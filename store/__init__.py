"""The feature cache of SPEC section 3.3: Zarr v3 tensors + Parquet rows + a JSON manifest."""
