"""Columns and statuses an embedded row carries from the encoder actors to the writers.

Kept apart from operators/embed.py (which loads torch and the encoders) so that writer tasks import
only Arrow and Lance: a Ray worker that has to import torch first spends seconds of CPU before it
writes a row.
"""

STATUS_COL = "_status"
TOKENS_COL = "_tokens"
TRUNCATED_COL = "_truncated"
PADDED_COL = "_padded_tokens"
WORKER_COL = "_worker"
EMBEDDED, UNCHANGED, QUARANTINED = "embedded", "unchanged", "quarantined"
