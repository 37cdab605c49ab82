"""Frozen feature extractors and label text (docs/architecture.md §7): one module per backbone kind, the
``KINDS`` table (``kinds.py``), weight files, images and label embeddings."""
