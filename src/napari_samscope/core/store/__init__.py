"""Persistent embeddings: tile embeddings of large images and stacks in zarr."""

from napari_samscope.core.store.embedding_store import (
    FORMAT,
    EmbeddingStore,
    StoreMismatch,
    StoreSpec,
)

__all__ = ["FORMAT", "EmbeddingStore", "StoreMismatch", "StoreSpec"]
