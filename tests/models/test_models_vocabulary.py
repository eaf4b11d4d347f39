import pytest

from pkt_core.errors import VocabularyMismatchError
from pkt_core.models.synthetic import byte_level_tokenizer
from pkt_core.models.vocabulary import compare_vocabularies


def test_same_tokenizer_is_identical():
    comparison = compare_vocabularies(byte_level_tokenizer(), byte_level_tokenizer())
    assert comparison.identical
    assert comparison.require_compatible() == "full"


def test_same_strings_different_ids_is_refused_with_counts():
    source, target = byte_level_tokenizer(), byte_level_tokenizer(permute_seed=3)
    comparison = compare_vocabularies(source, target)
    assert not comparison.identical
    assert comparison.shared_tokens == len(source.get_vocab())
    expected_same = sum(1 for t, i in source.get_vocab().items() if target.get_vocab()[t] == i)
    assert comparison.same_id_tokens == expected_same
    with pytest.raises(VocabularyMismatchError, match="--allow-shared-subset"):
        comparison.require_compatible()
    assert comparison.require_compatible(allow_shared_subset=True) == "shared-subset"
    # Every shared pair maps one string to its id on each side.
    source_tokens = {i: t for t, i in source.get_vocab().items()}
    for source_id, target_id in comparison.shared_pairs.tolist():
        assert target.get_vocab()[source_tokens[source_id]] == target_id


def test_disjoint_vocabularies_have_no_subset():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"alpha": 0, "[UNK]": 1}, unk_token="[UNK]")))
    comparison = compare_vocabularies(byte_level_tokenizer(), other)
    assert comparison.shared_tokens == 0
    with pytest.raises(VocabularyMismatchError, match="share no token"):
        comparison.require_compatible(allow_shared_subset=True)
