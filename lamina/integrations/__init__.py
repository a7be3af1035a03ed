"""Adapters for RAG frameworks; each needs its extra (``laminadb[langchain]``)."""
