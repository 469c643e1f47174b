"""What a table stores for the encoder's vectors: the float columns, quantised copies of the dense ones
(`embed --quantize int8,binary`, operators/quantize.py) and ColBERT at its storage precision with
optional token pooling (`--colbert-precision`, `--colbert-pool-factor`, operators/colbert_codec.py).

`VectorStorage` is plain data that travels to the encoder actors; `apply` is a pure function from the
encoder's output columns to the columns the table stores, so the embed job applies it in one place and
knows nothing of quantisation. Its settings (and the int8 ranges, calibrated once per table) live in the
table's metadata, so every later run stores vectors exactly as the first one did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa

from operators import colbert_codec, quantize
from operators.schema import COLBERT, is_dense_column


@dataclass(frozen=True)
class VectorStorage:
    quantize: tuple[str, ...] = ()  # of operators.quantize.PRECISIONS
    int8_ranges: Mapping[str, np.ndarray] = field(default_factory=dict)  # dense column -> (2, d) float32
    colbert_precision: str = colbert_codec.FLOAT16
    colbert_pool_factor: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantize", tuple(quantize.parse_precisions(self.quantize)))
        colbert_codec.check_precision(self.colbert_precision)
        if self.colbert_pool_factor < 1:
            msg = f"--colbert-pool-factor must be at least 1 (1 keeps every token), got {self.colbert_pool_factor}"
            raise ValueError(msg)

    @classmethod
    def from_meta(cls, meta) -> VectorStorage:
        """The storage a table's metadata (operators/table_meta.py) records."""
        return cls(quantize=tuple(meta.quantize), int8_ranges=quantize.ranges_from_json(meta.int8_ranges),
                   colbert_precision=meta.colbert_precision, colbert_pool_factor=meta.colbert_pool_factor)

    def with_ranges(self, ranges: Mapping[str, np.ndarray]) -> VectorStorage:
        return replace(self, int8_ranges=dict(ranges))

    @property
    def int8(self) -> bool:
        return quantize.INT8 in self.quantize

    def uncalibrated(self, encoder_fields: Sequence[pa.Field]) -> list[str]:
        """Dense columns that need int8 ranges and have none yet."""
        if not self.int8:
            return []
        return [f.name for f in encoder_fields if is_dense_column(f.name) and f.name not in self.int8_ranges]

    def fields(self, encoder_fields: Sequence[pa.Field]) -> list[pa.Field]:
        """The table's vector fields: the encoder's (ColBERT at its stored precision), then the quantised
        copies of each dense column."""
        result: list[pa.Field] = []
        for f in encoder_fields:
            if f.name == COLBERT:
                dim = f.type.value_type.list_size
                result.extend(colbert_codec.colbert_fields(COLBERT, dim, self.colbert_precision))
            else:
                result.append(f)
        return result + quantize.quantized_fields(encoder_fields, self.quantize)

    def apply(self, columns: Mapping[str, pa.Array]) -> dict[str, pa.Array]:
        """The encoder's output columns -> the columns the table stores (null rows stay null)."""
        result = quantize.quantize_columns(columns, self.quantize, self.int8_ranges) if self.quantize \
            else dict(columns)
        if COLBERT in result and (self.colbert_precision != colbert_codec.FLOAT16 or self.colbert_pool_factor > 1):
            result.update(colbert_codec.compress_column(result[COLBERT], self.colbert_precision,
                                                        self.colbert_pool_factor, name=COLBERT))
        return result

    def quantized_columns(self, dense_columns: Sequence[str]) -> list[str]:
        return [quantize.quantized_name(name, precision) for name in dense_columns for precision in self.quantize]
