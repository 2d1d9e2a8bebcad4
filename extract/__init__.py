"""Phase 1: the frozen CLIP ViT-L/14, RAM++, Grounding-DINO and SAM-HQ in a Ray job that writes the cache through lyrics.store."""
