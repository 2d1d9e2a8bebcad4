"""The MQ-Former and the LVLM, shared by training and evaluation (not built yet)."""
