"""Benchmarks and metrics (not built yet): REC, captioning, VQA, POPE, MME."""
