"""The MQ-Former (SPEC section 4), shared by training and evaluation.

- ``mqformer``: ``MQFormerConfig`` (profiles in ``configs/``), ``MQFormer`` and its LM head.
- ``qformer_checkpoints``: initialization from BLIP-2 Q-Former checkpoints (LAVIS and Hugging Face
  layouts) or, in the tiny profile, from MiniLM; ``LoadReport``.
- ``tokenizer``: the BERT WordPiece tokenizer with Lyrics' special tokens and spatial tags.
"""
