"""Model backends: the llama.cpp chat engine, the tokenizer and the sentence embedder."""
