"""The benchmark suite: run every framework the same way, then report on what was recorded.

    python benchmarks/run_all.py --profile quick          # runs, then writes the report
    python -m benchmarks.report benchmarks/results/quick  # the report again, from the records
    python -m benchmarks.plot logs/*_model.jsonl --output loss.png

Running (`run_all`) only writes JSON lines; reporting (`report`, `plot`) only reads
them (STYLE rule 9), so a report can be rebuilt, and tested, without training anything.
"""
