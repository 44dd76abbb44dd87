"""The shell commands README.md tells people to run: one line per ```sh block of its Quick start, as
`label<TAB>needs<TAB>command`, in README order. `label` is the bold title before the block; `needs` is `gpu` when that
title says the command needs a GPU box, `tests` for the test command, else `cpu`. `.ci/run` runs each of them verbatim
(smoke sizes through IN_TEST), so a README command that stops working cannot land."""
import re, sys
from pathlib import Path


def readme_commands(text: str) -> list:
    "[(label, needs, command)] for every ```sh block, with the last bold label above it."
    out, label = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\*\*(.+?)\*\*(.*)$", line)
        if m: label = (m[1], m[1] + m[2] + " " + (lines[i + 1] if i + 1 < len(lines) else ""))
        if line.strip() == "```sh":
            cmd = lines[i + 1].strip()
            if label is None: raise ValueError(f"README line {i + 1}: a sh block without a bold label above it")
            needs = "gpu" if "GPU box" in label[1] else "tests" if label[0] == "Pass the tests" else "cpu"
            out.append((label[0], needs, cmd))
    return out


if __name__ == "__main__":
    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    for label, needs, cmd in readme_commands(readme.read_text(encoding="utf-8")): print(f"{label}\t{needs}\t{cmd}")
