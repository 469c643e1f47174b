"""Column names and Arrow schemas of the tables embedlake writes (docs/interface.md), and the one check
that a table or input has the columns a command needs.

One place for the table contract, so encoders, sinks, search and dedup agree on it.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute

ID = "id"
TEXT_HASH = "text_hash"
MODEL = "model"
SOURCE_FILE = "source_file"  # the shard a row was read from: a vanished shard's rows can be found and removed
# Passage tables (embed --chunk-tokens, docs/chunking.md): one row per passage, keyed `<doc_id>#<chunk>`.
DOC_ID = "doc_id"
CHUNK = "chunk"
CHAR_START = "char_start"
CHAR_END = "char_end"
TEXT = "text"  # the row's text as embedded (--keep-text): a passage's own text in a passage table
PASSAGE_SEPARATOR = "#"
DENSE = "dense"
SPARSE = "sparse"
COLBERT = "colbert"
DENSE_PREFIX = "dense_"

QUARANTINE_SUFFIX = "_quarantine"
SOURCE = "source"
REASON = "reason"

SPARSE_TYPE = pa.struct([("indices", pa.list_(pa.int32())), ("values", pa.list_(pa.float32()))])


def dense_type(dim: int) -> pa.DataType:
    """Unit-length float32 vector of fixed size, what LanceDB's vector search expects."""
    return pa.list_(pa.float32(), dim)


def colbert_type(dim: int) -> pa.DataType:
    """ColBERT multi-vectors in float16: ColBERT dominates storage, so halve it."""
    return pa.list_(pa.list_(pa.float16(), dim))


def dense_column(dim: int) -> str:
    """Name of the nested Matryoshka column holding the first `dim` dims."""
    return f"{DENSE_PREFIX}{dim}"


def is_dense_column(name: str) -> bool:
    return name == DENSE or (name.startswith(DENSE_PREFIX) and name[len(DENSE_PREFIX):].isdigit())


# The columns every embeddings table has besides its vectors; with the vector column names, what a kept input
# column may not be called.
KEY_COLUMNS = (ID, TEXT_HASH, MODEL, SOURCE_FILE)


def is_table_column(name: str) -> bool:
    """A column name embedlake itself writes into an embeddings table (keys and any vector column)."""
    return name in KEY_COLUMNS or name in (SPARSE, COLBERT) or is_dense_column(name)


def nested_dim(name: str) -> int | None:
    """The nested size of a `dense_<d>` column, None for `dense` itself."""
    return int(name[len(DENSE_PREFIX):]) if name.startswith(DENSE_PREFIX) else None


def dense_columns(schema: pa.Schema) -> list[str]:
    """`dense` first, then `dense_<d>` from the largest nested size to the smallest."""
    names = [name for name in schema.names if is_dense_column(name)]
    return sorted(names, key=lambda name: (name != DENSE, -(nested_dim(name) or 0)))


def vector_columns(schema: pa.Schema) -> list[str]:
    """Every stored vector column: the dense ones, then sparse and colbert when present."""
    return dense_columns(schema) + [name for name in (SPARSE, COLBERT) if name in schema.names]


def require_columns(
    schema: pa.Schema, columns: Sequence[str], where: str, why: str | None = None, vectors: bool = False
) -> None:
    """Fail before any work when `where` (a table, an input, a file) lacks a needed column: one line naming
    the missing columns, why they are needed, and the columns it has (its vector columns with `vectors`)."""
    missing = [name for name in columns if name not in schema.names]
    if not missing:
        return
    shown = vector_columns(schema) if vectors else schema.names
    found = f"{'vector columns' if vectors else 'columns found'}: {', '.join(shown) or 'none'}"
    names = ", ".join(repr(name) for name in missing)
    msg = f"{where} has no column{'s' if len(missing) > 1 else ''} {names} ({f'{why}; ' if why else ''}{found})"
    raise ValueError(msg)


def vector_dim(schema: pa.Schema, column: str, where: str) -> int:
    """The width D of a fixed_size_list<float>[D] column; a one-line error for a missing or non-vector one."""
    require_columns(schema, [column], where, vectors=True)
    kind = schema.field(column).type
    if not (pa.types.is_fixed_size_list(kind) and pa.types.is_floating(kind.value_type)):
        msg = f"column {column!r} of {where} is {kind}, not a fixed-size float vector"
        raise ValueError(msg)
    return kind.list_size


# Whitespace, separators, control and format characters (zero-width space and joiners, word joiner, BOM, soft
# hyphen): a text made only of these is empty, for embed (the row is quarantined) and for a search query alike.
INVISIBLE = r"[\s\p{Z}\p{Cc}\p{Cf}]+"  # RE2 (Arrow compute)
INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})


def is_blank(text: str) -> bool:
    """True for a text with nothing visible in it (see INVISIBLE)."""
    return all(char.isspace() or unicodedata.category(char) in INVISIBLE_CATEGORIES for char in text)


def text_hash(text: str) -> str:
    """Stable hash of a text as embedded (sha256 of its UTF-8 bytes, hex, 32 chars)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def text_hashes(texts: pa.Array, where: pa.Array | None = None) -> pa.Array:
    """`text_hash` of every text (null where `where` is false or the text is null). Arrow has no
    sha256, so this is one hashlib call per row on the UTF-8 bytes as Arrow holds them (no decode)."""
    raw = texts.cast(pa.binary()) if where is None else pa.compute.if_else(where, texts.cast(pa.binary()), None)
    sha = hashlib.sha256
    return pa.array([None if b is None else sha(b).hexdigest()[:32] for b in raw.to_pylist()], pa.string())


def quarantine_table_name(table: str) -> str:
    return f"{table}{QUARANTINE_SUFFIX}"


RUN_ID = "run_id"

# Keyed on source (file#row): re-running a job replaces a row's entry instead of repeating it.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string()),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(REASON, pa.string()),
        pa.field(RUN_ID, pa.string()),
    ]
)


def passage_id(doc_id: str, chunk: int) -> str:
    """A passage row's id: unique per passage, its document's id before the last `#`."""
    return f"{doc_id}{PASSAGE_SEPARATOR}{chunk}"


def passage_fields(keep_text: bool = False) -> list[pa.Field]:
    """The columns a passage table adds: its document, its number there, its character span (and its text)."""
    fields = [pa.field(DOC_ID, pa.string()), pa.field(CHUNK, pa.int32()), pa.field(CHAR_START, pa.int64()),
              pa.field(CHAR_END, pa.int64())]
    return fields + [pa.field(TEXT, pa.string())] if keep_text else fields


def embeddings_schema(
    vector_fields: list[pa.Field], keep_fields: list[pa.Field] | None = None,
    row_fields: list[pa.Field] | None = None,
) -> pa.Schema:
    """Schema of table T: id, text_hash, model, source_file, the passage columns and text (`row_fields`),
    the encoder's vector columns, then kept input columns."""
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(TEXT_HASH, pa.string()),
        pa.field(MODEL, pa.string()),
        pa.field(SOURCE_FILE, pa.string()),
        *(row_fields or []),
        *vector_fields,
        *(keep_fields or []),
    ]
    return pa.schema(fields)

# Downstream results: T_clusters, T_centroids (clustering) and T_duplicates (near-duplicate detection).
CLUSTER = "cluster"
DISTANCE = "distance"
CENTROID = "centroid"
SIZE = "size"
DUPLICATE_OF = "duplicate_of"
SIMILARITY = "similarity"

CLUSTERS_SUFFIX = "_clusters"
CENTROIDS_SUFFIX = "_centroids"
DUPLICATES_SUFFIX = "_duplicates"

CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(CLUSTER, pa.int32()),
        pa.field(DISTANCE, pa.float32()),
    ]
)

DUPLICATES_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(DUPLICATE_OF, pa.string()),
        pa.field(SIMILARITY, pa.float32()),
    ]
)


def centroids_schema(dim: int) -> pa.Schema:
    """T_centroids: one unit-length centroid per cluster and how many rows it was assigned."""
    return pa.schema(
        [
            pa.field(CLUSTER, pa.int32(), nullable=False),
            pa.field(CENTROID, dense_type(dim)),
            pa.field(SIZE, pa.int64()),
        ]
    )


def clusters_table_name(table: str) -> str:
    return f"{table}{CLUSTERS_SUFFIX}"


def centroids_table_name(table: str) -> str:
    return f"{table}{CENTROIDS_SUFFIX}"


def duplicates_table_name(table: str) -> str:
    return f"{table}{DUPLICATES_SUFFIX}"
