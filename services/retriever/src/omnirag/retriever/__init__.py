"""omnirag.retriever: read-only search over the collections of an index root."""
