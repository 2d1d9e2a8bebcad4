"""Benchmarks and metrics: REC, captioning, VQA, exact match, multiple choice, POPE, MME; the runner and the results table."""
