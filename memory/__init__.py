"""Conversation memory: the Redis store, recall, summaries and context packing."""
