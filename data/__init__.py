"""Readers of the public data formats (WebDataset shards, COCO, RefCOCO, VQAv2, LLaVA) and the
embedded sample data set written in those same formats."""
