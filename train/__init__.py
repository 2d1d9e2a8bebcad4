"""Phase 2: Lightning trainers for pretraining and instruction fine-tuning, reading only the cache."""
