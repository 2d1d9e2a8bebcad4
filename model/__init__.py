"""The models shared by training and evaluation: the MQ-Former (SPEC section 4) and the LVLM (section 5).

- ``mqformer``: ``MQFormerConfig`` (profiles in ``configs/``), ``MQFormer`` and its LM head.
- ``qformer_checkpoints``: initialization from BLIP-2 Q-Former checkpoints (LAVIS and Hugging Face
  layouts) or, in the tiny profile, from MiniLM; ``LoadReport``.
- ``tokenizer``: the BERT WordPiece tokenizer with Lyrics' special tokens and spatial tags.
- ``masks``: who sees whom in each stage-1 objective and in stage 2's semantic-aware extraction.
- ``pretraining``: the stage-1 heads (projections, temperature, matching heads), pooling, save/load.
- ``factory``: a profile's initial stage-1 model (the tiny profile writes its own checkpoint).
- ``llm``: the frozen causal LM from a local Hugging Face folder (tiny: SmolLM2 converted from its GGUF).
- ``lvlm``: the stage-2 model, MQ-Former -> projection -> soft visual tokens in the LLM with LoRA.
"""
