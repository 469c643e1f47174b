"""Throughput benchmarks (`make bench`): encoders alone (torch + transformers only) and the whole
Ray pipeline, each against sentence-transformers `encode` measured in the same run."""
