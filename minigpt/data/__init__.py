"""Data: corpora, the tokenizer, the token cache and the batches drawn from it."""
