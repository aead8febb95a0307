"""The two baselines of ExpertLens, from the same model: sentence and word embeddings.

Both give a concept-by-concept cosine similarity matrix that is scored against the
same human pairs as the expert-based measures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """All-pairs cosine similarity of the rows of ``vectors`` ``[C, d]`` → ``[C, C]``."""
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    v = v / np.where(norms > 0, norms, 1.0)
    return v @ v.T


def sentence_embedding_vectors(sentence_embeddings: np.ndarray, positives: Sequence[np.ndarray]) -> np.ndarray:
    """Per concept, the mean of its positives' mean-pooled last hidden states ``[C, hidden]``."""
    return np.stack([np.asarray(sentence_embeddings[np.sort(rows)], dtype=np.float64).mean(axis=0) for rows in positives])


def word_token_ids(tokenizer, word: str) -> list[int]:
    """Token ids of ``word`` as it appears inside a sentence (after a space).

    Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM) spell a mid-sentence word
    with a leading space marker, so the word is tokenized with one; WordPiece drops
    the space. Tokens that decode to nothing but whitespace are left out.
    """
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    kept = [i for i in ids if tokenizer.decode([i]).strip()]
    return kept or ids


def word_embedding_vectors(embeddings: np.ndarray, tokenizer, words: Sequence[str]) -> np.ndarray:
    """Per word, the mean of the input-embedding rows of its tokens ``[C, hidden]``."""
    return np.stack([np.asarray(embeddings[sorted(word_token_ids(tokenizer, w))], dtype=np.float64).mean(axis=0) for w in words])
