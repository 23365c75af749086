"""The retriever's TF-IDF gives scikit-learn's numbers (TfidfVectorizer(sublinear_tf=True))."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer as Reference

from agent.retrieval.tfidf import TfidfVectorizer

WORDS = ["coffee", "kettle", "Trail", "running", "shoe", "é-cup", "x", "42", "naïve", "ÜBER", "tea_pot"]
documents = st.lists(
    st.lists(st.sampled_from([*WORDS, " ", ",", "!"]), max_size=12).map(" ".join), min_size=1, max_size=8
)


def _same(ours: object, theirs: object) -> None:
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), rtol=1e-12, atol=1e-12)  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(fit_docs=documents, queries=documents)
def test_same_vectors_as_scikit_learn(fit_docs: list[str], queries: list[str]) -> None:
    reference = Reference(sublinear_tf=True, dtype=np.float64)
    ours = TfidfVectorizer()
    try:
        expected = reference.fit_transform(fit_docs)
    except ValueError:
        with pytest.raises(ValueError, match="empty vocabulary"):
            ours.fit_transform(fit_docs)
        return
    _same(ours.fit_transform(fit_docs), expected)
    assert ours.vocabulary_ == reference.vocabulary_
    _same(ours.transform(queries), reference.transform(queries))


def test_repeated_terms_are_damped_and_rows_have_unit_length() -> None:
    vectors = TfidfVectorizer().fit_transform(["kettle kettle kettle coffee", "coffee tea"])
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    np.testing.assert_allclose(norms, [1.0, 1.0])
    row = vectors.toarray()[0]
    idf = np.log(3 / np.array([3, 2, 2])) + 1
    raw = np.array([1.0, 1 + np.log(3), 0.0]) * idf
    np.testing.assert_allclose(row, raw / np.linalg.norm(raw))
