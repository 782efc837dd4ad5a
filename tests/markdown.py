"""Markdown tables as the tests read them: without the padding and the alignment colons
of a left-aligned column that pandas' to_markdown (tabulate) writes, so that a test names
a row as "| numpy | 2.4.6 |" and a rule as "|---|---:|"."""

import re


def unpad(text: str) -> str:
    """`text` with every table line's cells stripped of their padding and its rule row's
    left-aligned ":---" as "---"."""
    lines = []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = line.split("|")[1:-1]
            line = "|" + "|".join(f" {cell.strip()} " for cell in cells) + "|"
            line = re.sub(r"\| :?-+(:?) (?=\|)", r"|---\1", line)
        lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")
