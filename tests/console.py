"""What a newcomer must not see in a command's output: error-level log lines and library warnings.

Our own progress bars and summaries are fine; a Ray C++ error line (`[2026-... E 123 123]
core_worker.cc: ...`), a Python warning (`...py:21: FutureWarning: ...`), a deprecation notice or
Lightning's advertisement is not.
"""

import re

ALARMING = re.compile(
    r"\bE \d+ \d+\]|\bERROR\b|Traceback|\bWARNING\b|Warning\b|warn\(|deprecated|💡 Tip|TPU available",
)


def alarming_lines(output: str) -> list[str]:
    """The lines of `output` (stdout and stderr together; tqdm's carriage returns split lines) a newcomer would read as trouble."""
    return [line for line in re.split(r"[\r\n]+", output) if ALARMING.search(line)]
