# embedlake: `make demo` runs the main job on the embedded default; `make test` runs the suite.
# Both create the virtual environment on first use. torch is pinned to the CPU wheel here;
# GPU users pass their own: `make demo TORCH_SPEC='torch'` (or install torch in .venv first).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
DEMO_LAKE ?= demo_lake
DEMO_QUERY ?= fast compression library for large files
export RAY_DASHBOARD_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install install-test demo test test-fast lint docs bench bench-memory bench-search bench-quantize bench-cluster bench-gpu bench-gpu-smoke bench-train bench-scale bench-lifecycle bench-uses bench-chunk bench-routing bench-overhead bench-int8 clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/python pyproject.toml
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(VENV)/bin/embedlake embed data/sample/ $(DEMO_LAKE) --config conf/demo.yaml
	$(VENV)/bin/embedlake search $(DEMO_LAKE) --table docs --query "$(DEMO_QUERY)" --k 5
	@echo
	@echo "Next, try (each works as printed):"
	@echo "  $(VENV)/bin/embedlake evaluate $(DEMO_LAKE) --table docs --queries data/eval/queries.parquet --qrels data/eval/qrels.parquet"
	@echo "      # Recall/MRR/nDCG@10; report and plot: $(DEMO_LAKE)/docs.evaluation.json and .png"
	@echo "  $(VENV)/bin/embedlake search $(DEMO_LAKE) --table docs --query \"$(DEMO_QUERY)\" --mode dense --funnel dense_64"
	@echo "  $(VENV)/bin/embedlake cluster $(DEMO_LAKE) --table docs --k 18 --labels-column section"
	@echo "  $(VENV)/bin/embedlake dedup $(DEMO_LAKE) --table docs"

test: install-test
	$(VENV)/bin/python -m pytest -q --durations=15

# The inner loop: every test that needs neither Ray nor a slow benchmark (operators, encoders against the
# reference libraries, storage, CLI parsing); `make test` before landing.
test-fast: install-test
	$(VENV)/bin/python -m pytest -q -m 'not slow and not ray'

# docs/cli.md from the parsers (tests/test_cli_reference.py fails when it is stale).
docs: install
	$(PY) -m pipelines.cli_reference > docs/cli.md

lint: install-test
	$(VENV)/bin/ruff check operators pipelines tests benchmarks

# Throughput: encoders alone and the whole pipeline against sentence-transformers (~16 min on 2 cores).
bench: install-test
	$(VENV)/bin/python -m benchmarks.run

# Issue 21: where `embedlake embed` spends its time per row (CPU us/row of each stage, the run's wall stages) with a
# tiny random BGE-M3-shaped model on 60k short synopses, against the encoder alone and Daft's pipeline (A-B-B-A,
# wall clock; Daft comes from the benchmark-only extra `.[bench]`, skipped with a note when it cannot be installed).
# --precision int8's kernels (fbgemm, _int_mm) against fp32, MiniLM encoder alone, A-B-B-A (a few minutes).
bench-int8: install-test
	nice -n 10 $(PY) -m benchmarks.int8_kernels --texts 400 --int-mm-texts 24 --threads 1,2 --rounds 1 \
		--out benchmarks/results/int8_kernels_2cpu.json

bench-overhead: install-test
	$(PY) -m pip install -q -e '.[bench]' || echo "bench-overhead: daft not installed, its rows are skipped"
	nice -n 10 $(PY) -m benchmarks.overhead --rows 60000 --shards 6 --repeats 2 \
		--out benchmarks/results/overhead_60k_2cpu.json --append-results

# Peak memory of the driver and every Ray process at two corpus sizes, same object store (short rows,
# a tiny random model so that a million rows take minutes: ~12 min).
bench-memory: install-test
	$(VENV)/bin/python -m benchmarks.run --only pipeline --pipeline-model tiny --rows 100000,1000000 \
		--max-chars 120 --no-peer --repeats 1 --precision auto --object-store-memory 1GiB \
		--title "$$(date -u +'%Y-%m-%d %H:%M UTC'): make bench-memory (memory vs corpus size, object store 1 GiB)"

# Matryoshka funnel vs exact search at 1M x 384, and ANN index recall at 100k.
bench-search: install-test
	scratch=$$(mktemp -d) && trap 'rm -rf $$scratch' EXIT && \
		$(VENV)/bin/python -m benchmarks.funnel --rows 1000000 --lancedb $$scratch > benchmarks/results/funnel_1m.json
	$(VENV)/bin/python -m benchmarks.index_recall > benchmarks/results/index_recall_100k.json

# Quantised search at 1M x 384 (binary and int8 first stages re-ranked by float, against exact float search),
# and compressed ColBERT (int8 / binary / token pooling: MaxSim top-10 agreement with float16, bytes per document).
bench-quantize: install-test
	$(VENV)/bin/python -m benchmarks.quantize --rows 1000000 > benchmarks/results/quantize_1m.json
	$(VENV)/bin/python -m benchmarks.colbert_compression > benchmarks/results/colbert_compression.json

# Clustering and SemDeDup at 100k and 1M rows.
bench-cluster: install-test
	$(VENV)/bin/python -m benchmarks.cluster_dedup --out benchmarks/results/cluster_dedup.json

# Incremental runs over 1M- and 10M-row lakes (issue 12): rescans, 1% changed, one new shard; peak memory of the
# driver and the largest Ray worker, commit time against table size. Needs ~15 GB of scratch disk (SCALE_SCRATCH).
SCALE_SCRATCH ?= /tmp/embedlake-scale
bench-scale: install-test
	$(VENV)/bin/python -m benchmarks.scale --sizes 1000000,10000000 --scratch $(SCALE_SCRATCH)

# Storage over 10 nightly incremental runs with and without retention, and what the serving tag costs readers.
bench-lifecycle: install-test
	$(VENV)/bin/python -m benchmarks.lifecycle --nights 10

# Issue 16's figures: classify on the sample's 18 sections (vs TF-IDF), graded-pair correlations per nested size,
# neighbors exact vs ANN at 100k x 64 and ANN (recall@10 on 1,000 sampled rows) at 1M x 64 (~40 min on 2 cores).
bench-uses: install-test
	$(VENV)/bin/python -m benchmarks.uses --out benchmarks/results/uses.json

# Issue 17's figures: document-level nDCG@10 of truncation vs split vs late chunking (the sample's longest
# documents; long documents concatenated from the sample), passages/s vs documents/s (~10-30 min on 2 cores).
bench-chunk: install-test
	$(VENV)/bin/python -m benchmarks.chunking --chunk-tokens 64,128 --out benchmarks/results/chunking_2cpu.json

# Issue 17's routing figure: search --mode auto's rule (evaluate --tune-routing) vs the best fixed mode on the
# sample's 400 queries (and with 217 name look-ups added), nested 5-fold held-out: MiniLM dense-only (nothing to
# route) and MiniLM + BM25 weights in the sparse column (encoding the sample dominates: 12 min at load 20-40).
bench-routing: install-test
	nice -n 10 $(VENV)/bin/python -m benchmarks.routing --out benchmarks/results/routing_sample.json

# Matryoshka fine-tuning of MiniLM on the sample (400 evaluation queries' packages left out), 1 and 2 Ray Train
# workers, then embed + evaluate on the 400 queries at every nested size (long: two training runs on 2 cores).
bench-train: install-test
	$(VENV)/bin/python -m benchmarks.train_mrl --out benchmarks/results/train_mrl_2cpu.json

# GPU proof (benchmarks/README.md): correctness and speed of the encoders on a GPU in one run of <= 7 min,
# appended to benchmarks/RESULTS.md. No install step: a GPU box's own python3 (torch, transformers,
# sentence-transformers) will do; the venv's python when there is one.
BENCH_GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
bench-gpu:
	PYTHONUNBUFFERED=1 $(BENCH_GPU_PY) -m benchmarks.gpu --append-results $(BENCH_GPU_ARGS)

# The same script with tiny models on the CPU (~2 min): proves it end to end where no GPU is.
bench-gpu-smoke: install-test
	$(PY) -m benchmarks.gpu --device cpu --smoke --no-results-dir --out out/bench-gpu-smoke

clean:
	rm -rf $(VENV) $(DEMO_LAKE) .pytest_cache
