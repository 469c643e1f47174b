"""Rebuild the shipped sample corpus from Debian's package descriptions (bookworm, main).

Needs `apt-get update -o Acquire::Languages=en` first (for the Translation-en index). Run:
    python data/build_sample.py /var/lib/apt/lists
The output is committed; this script documents exactly how it was made.
"""

from __future__ import annotations

import glob
import random
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SECTIONS = (
    "python", "games", "science", "math", "sound", "graphics", "net", "web", "database",
    "editors", "text", "mail", "electronics", "hamradio", "fonts", "video", "admin", "devel",
)  # fmt: skip
PER_SECTION = 170
SHARDS = 4
QUERIES = 400
OUT = Path(__file__).resolve().parent


def read_lz4_stanzas(pattern: str) -> list[dict[str, str]]:
    """Parse Debian control stanzas from every lz4-compressed index matching pattern."""
    stanzas: list[dict[str, str]] = []
    for path in sorted(glob.glob(pattern)):
        text = subprocess.run(["lz4cat", path], capture_output=True, check=True, text=True).stdout
        for block in text.split("\n\n"):
            fields: dict[str, str] = {}
            key = None
            for line in block.splitlines():
                if line.startswith(" ") and key:
                    fields[key] += "\n" + line
                elif ":" in line:
                    key, _, value = line.partition(":")
                    fields[key] = value.strip()
            if fields:
                stanzas.append(fields)
    return stanzas


def long_description(raw: str) -> tuple[str, str]:
    """Split a Description-en field into (synopsis, body); ' .' lines are paragraph breaks."""
    first, _, rest = raw.partition("\n")
    paragraphs, current = [], []
    for line in rest.splitlines():
        line = line[1:] if line.startswith(" ") else line
        if line.strip() == ".":
            paragraphs.append(" ".join(current))
            current = []
        else:
            current.append(line.strip())
    paragraphs.append(" ".join(current))
    body = "\n\n".join(p for p in paragraphs if p)
    return first.strip(), re.sub(r"[ \t]+", " ", body).strip()


def main(lists: str) -> None:
    packages = read_lz4_stanzas(f"{lists}/*_debian_dists_bookworm_main_binary-amd64_Packages.lz4")
    descriptions = {
        s["Package"]: s["Description-en"]
        for s in read_lz4_stanzas(f"{lists}/*_debian_dists_bookworm_main_i18n_Translation-en.lz4")
        if "Description-en" in s
    }
    rng = random.Random(20261127)
    by_section: dict[str, list[dict]] = {name: [] for name in SECTIONS}
    seen_sources: set[str] = set()
    seen_bodies: set[str] = set()
    for stanza in sorted(packages, key=lambda s: s["Package"]):
        section = stanza.get("Section", "").split("/")[-1]
        name = stanza["Package"]
        source = stanza.get("Source", name).split()[0]
        if section not in by_section or name not in descriptions or source in seen_sources:
            continue
        if name.endswith(("-dbgsym", "-dbg", "-doc", "-data", "-common")):
            continue
        title, body = long_description(descriptions[name])
        if not 250 <= len(body) <= 4000 or body in seen_bodies:
            continue
        seen_sources.add(source)
        seen_bodies.add(body)
        by_section[section].append({"id": name, "text": body, "title": title, "section": section})
    rows = []
    for section in SECTIONS:
        candidates = by_section[section]
        rows.extend(rng.sample(candidates, min(PER_SECTION, len(candidates))))
    rng.shuffle(rows)
    table = pa.Table.from_pylist(rows)
    sample = OUT / "sample"
    sample.mkdir(exist_ok=True)
    for shard in range(SHARDS):
        shard_rows = table.take(list(range(shard, len(rows), SHARDS)))
        pq.write_table(shard_rows, sample / f"part-{shard:05d}.parquet", compression="zstd")
    queries = rng.sample(rows, QUERIES)
    evaluation = OUT / "eval"
    evaluation.mkdir(exist_ok=True)
    pq.write_table(
        pa.table({"query_id": [f"q{i:04d}" for i in range(QUERIES)], "text": [q["title"] for q in queries]}),
        evaluation / "queries.parquet",
    )
    pq.write_table(
        pa.table({
            "query_id": [f"q{i:04d}" for i in range(QUERIES)],
            "doc_id": [q["id"] for q in queries],
            "relevance": pa.array([1] * QUERIES, pa.int32()),
        }),
        evaluation / "qrels.parquet",
    )
    print(f"{len(rows)} documents in {SHARDS} shards, {QUERIES} queries", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/var/lib/apt/lists")
