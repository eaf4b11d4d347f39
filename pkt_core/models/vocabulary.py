"""Do two tokenizers share a vocabulary? SemAlign needs token i to mean the same string in both."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pkt_core.errors import VocabularyMismatchError


@dataclass(frozen=True)
class VocabularyComparison:
    """How two vocabularies relate, string by string.

    ``shared_pairs`` is a (k x 2) array of (source id, target id) for every string both have,
    sorted by source id: the index-aligned subset SemAlign can use when the vocabularies differ.
    """

    source_size: int
    target_size: int
    shared_tokens: int
    same_id_tokens: int
    shared_pairs: np.ndarray

    @property
    def identical(self) -> bool:
        """Same strings with the same ids, nothing more on either side."""
        return self.source_size == self.target_size == self.same_id_tokens

    def summary(self) -> dict:
        return {
            "identical": self.identical,
            "source_size": self.source_size,
            "target_size": self.target_size,
            "shared_tokens": self.shared_tokens,
            "same_id_tokens": self.same_id_tokens,
            "shared_fraction_of_target": self.shared_tokens / max(1, self.target_size),
        }

    def require_compatible(self, method: str = "SemAlign", allow_shared_subset: bool = False) -> str:
        """Return ``"full"`` or ``"shared-subset"``, or refuse with what to do."""
        if self.identical:
            return "full"
        if allow_shared_subset:
            if self.shared_tokens == 0:
                raise VocabularyMismatchError(
                    f"{method}: the two tokenizers share no token string; no shared-token subset exists."
                )
            return "shared-subset"
        raise VocabularyMismatchError(
            f"{method} needs source and target to share a vocabulary (same string -> same id), but "
            f"they differ: source has {self.source_size} tokens, target {self.target_size}, "
            f"{self.shared_tokens} strings in both, {self.same_id_tokens} of them with the same id. "
            f"Pick a pair with one tokenizer, or opt into the shared-token subset "
            f"(--allow-shared-subset), which maps through the {self.shared_tokens} shared strings."
        )


def compare_vocabularies(source_tokenizer, target_tokenizer) -> VocabularyComparison:
    source_vocab: dict[str, int] = source_tokenizer.get_vocab()
    target_vocab: dict[str, int] = target_tokenizer.get_vocab()
    shared = [(source_id, target_vocab[token]) for token, source_id in source_vocab.items() if token in target_vocab]
    shared.sort()
    same_id = sum(1 for source_id, target_id in shared if source_id == target_id)
    pairs = np.asarray(shared, dtype=np.int64).reshape(-1, 2)
    return VocabularyComparison(
        source_size=len(source_vocab),
        target_size=len(target_vocab),
        shared_tokens=len(shared),
        same_id_tokens=same_id,
        shared_pairs=pairs,
    )
