"""Matryoshka fine-tuning: training pairs, the sentence-transformers training stack, held-out evaluation."""
