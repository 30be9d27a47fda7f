"""The generated documents: docs/RESULTS.md (documents.results) and the README's blocks
(documents.readme), written from the JSON runs and benchmarks leave; `python -m pipelines.reproduce`
writes them."""
