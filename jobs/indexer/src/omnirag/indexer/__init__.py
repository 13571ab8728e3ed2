"""omnirag.indexer: crawl and load documents, split, embed, and publish index versions."""
