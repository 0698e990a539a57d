"""Data that ships inside the package (the embedded default corpus)."""

from .stories import DEFAULT_CORPUS_NAME, default_corpus_texts, KNOWN_ASSOCIATIONS, INTERCHANGEABLE

__all__ = ["DEFAULT_CORPUS_NAME", "default_corpus_texts", "KNOWN_ASSOCIATIONS", "INTERCHANGEABLE"]
