"""Check a source/target pair before a transfer: shapes, families and the shared vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from pkt_core.errors import PktError
from pkt_core.models.registry import get_pair_spec
from pkt_core.models.vocabulary import VocabularyComparison, compare_vocabularies


@dataclass(frozen=True)
class PairReport:
    source: str
    target: str
    vocabulary: VocabularyComparison

    def summary(self) -> dict:
        return {"source": self.source, "target": self.target, "vocabulary": self.vocabulary.summary()}


def _load_tokenizer(reference: str):
    from transformers import AutoTokenizer

    from pkt_core.models.loading import load_config, resolve_model_reference

    location = resolve_model_reference(reference)
    load_config(location)  # a clear error for an unreachable hub id before the tokenizer tries
    path_or_id, extra = location.from_pretrained_args()
    return AutoTokenizer.from_pretrained(path_or_id, **extra)


def check_pair(pair: str | None = None, source: str | None = None, target: str | None = None) -> PairReport:
    """Compare the tokenizers of a registered pair, or of any ``source`` and ``target``."""
    if pair is not None:
        spec = get_pair_spec(pair)
        source, target = spec.source, spec.target
    if source is None or target is None:
        raise PktError("name a registered pair, or give both --source and --target")
    comparison = compare_vocabularies(_load_tokenizer(source), _load_tokenizer(target))
    return PairReport(source=source, target=target, vocabulary=comparison)
