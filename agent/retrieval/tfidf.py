"""TF-IDF item vectors for the retriever's content and search sources.

The same numbers as scikit-learn's ``TfidfVectorizer(sublinear_tf=True)`` with its defaults
(lower-casing, tokens of two or more word characters, smoothed idf, rows scaled to unit L2
norm, vocabulary in sorted order); ``tests/test_tfidf.py`` checks that they agree.

Why not scikit-learn itself: importing it loads ``scipy.stats`` and costs about a second,
which every ``recommend`` paid before doing anything (the start-up target is 1.5 s in all).
This is the 40 lines of it the retriever uses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

# scikit-learn's default token_pattern.
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


class TfidfVectorizer:
    """Fit a vocabulary and idf weights on documents, then turn texts into unit-length rows."""

    def __init__(self, dtype: type = np.float64) -> None:
        self.dtype = dtype
        self.vocabulary_: dict[str, int] = {}
        self.idf_: np.ndarray = np.zeros(0)

    def fit_transform(self, documents: Sequence[str]) -> sp.csr_matrix:
        """Learn the vocabulary and idf from ``documents`` and return their vectors.

        Raises ``ValueError`` when no document has a single token (as scikit-learn does).
        """
        tokenized = [_TOKEN.findall(doc.lower()) for doc in documents]
        terms = sorted({t for tokens in tokenized for t in tokens})
        if not terms:
            raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
        self.vocabulary_ = {term: i for i, term in enumerate(terms)}
        counts = self._counts(tokenized)
        n_docs = counts.shape[0]
        df = np.bincount(counts.indices, minlength=len(terms))
        self.idf_ = np.log((1 + n_docs) / (1 + df)) + 1.0
        return self._weigh(counts)

    def transform(self, documents: Sequence[str]) -> sp.csr_matrix:
        """Vectors of ``documents`` over the fitted vocabulary (unknown tokens are ignored)."""
        return self._weigh(self._counts([_TOKEN.findall(doc.lower()) for doc in documents]))

    def _counts(self, tokenized: list[list[str]]) -> sp.csr_matrix:
        vocabulary = self.vocabulary_
        indices: list[int] = []
        indptr = [0]
        for tokens in tokenized:
            indices.extend(i for t in tokens if (i := vocabulary.get(t)) is not None)
            indptr.append(len(indices))
        data: np.ndarray = np.ones(len(indices), dtype=self.dtype)
        counts = sp.csr_matrix(
            (data, np.asarray(indices, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
            shape=(len(tokenized), len(vocabulary)),
        )
        counts.sum_duplicates()  # also sorts each row's indices
        return counts

    def _weigh(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        weighted = counts.astype(self.dtype)
        np.log(weighted.data, out=weighted.data)
        weighted.data += 1.0  # sublinear tf: 1 + log(count)
        weighted = (weighted @ sp.diags(self.idf_.astype(self.dtype))).tocsr()
        norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
        norms[norms == 0.0] = 1.0
        return sp.csr_matrix(sp.diags(1.0 / norms) @ weighted, dtype=self.dtype)
