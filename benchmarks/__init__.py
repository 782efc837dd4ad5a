"""The benchmark suite: run every framework the same way, then report on what was recorded.

    python -m benchmarks.run_all --profile quick          # runs, then writes the report
    python -m benchmarks.report benchmarks/results/quick  # the report again, from the records
    python -m benchmarks.plot logs/*_model.jsonl --output loss.png

Running (`run_all`, one child process per framework: `child`) only writes JSON lines
(`records`); reporting (`report`, `plot`) only reads them (STYLE rule 9), so a report
can be rebuilt, and tested, without training anything. A user's runs go to
benchmarks/results/ (ignored by git); the committed reference results docs/RESULTS.md
shows are in benchmarks/reference/<machine>/<profile>/ (`make reference-results`).
"""
