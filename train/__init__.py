"""Phase 2 (not built yet): Lightning trainers for pretraining and instruction fine-tuning, reading only the cache."""
