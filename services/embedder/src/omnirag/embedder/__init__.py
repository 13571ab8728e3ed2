"""omnirag.embedder: SentenceTransformer behind a dynamic batching queue."""
