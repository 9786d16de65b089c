"""Printed outputs quoted in the docs are what the documented commands print today.

A doc marks each quoted output with an HTML comment right before its fenced block::

    <!-- output-of: SOURCE (HOW) -->
    ```text
    ...
    ```

SOURCE is what produced it: a command (``sasrec-lightning fit -c configs/quickstart.yaml``), ``the python
block above`` or ``the bash block above`` (the nearest fenced block of that language before the marker, run as
it is written), or ``result_table of the RESULT line`` (``benchmarks/speed.py``'s table of the JSON line quoted
in the same block). HOW, optional, is ``;``-separated, applied in order: ``without the progress bar`` (drop
Lightning's progress bar lines and the blank line it ends with), ``last line`` or ``last N lines`` (compare
only the end of what was printed), and ``MODE`` or ``lines A-B: MODE``, with MODE ``exact`` (the default:
every character), ``close`` (the same text, each number within 1 % and with as many decimals: metrics of a
trained model, whose last digits depend on the CPU's kernels and threads) or ``shape`` (the same text with
every number masked: timings, and items ranked by a trained model). Deterministic outputs (data counts,
popularity scores, the most-popular baseline, the files written) are compared exactly.

The commands run here as a new user runs them from the docs, one folder for all: the quickstart training of the
README and the checkpoint of ``docs/predict.md`` (about 25 s each on a 2-core CPU), predict and export it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

MARKER = re.compile(r"<!-- output-of: (?P<source>.+?)(?: \((?P<how>[^()]*)\))? -->\n+```[\w ]*\n(?P<text>.*?)```",
                    re.S)
PROGRESS_BAR = re.compile(r"\|.*\| *\d+/[\d?]+ \[")  # Lightning's TQDM bar, on stdout
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# The docs that quote outputs, with how many marked blocks each has (a deleted marker is caught too). Their blocks
# run in this order and in page order, in one folder, as a reader goes (export.md's python block reads the export).
MARKED = {"README.md": 1, "docs/predict.md": 1, "docs/recommend.md": 1, "docs/export.md": 2, "docs/performance.md": 1}


@dataclass
class Quoted:
    """One marked output block of a doc."""

    doc: str
    source: str
    how: str
    text: str
    python: str | None  # the nearest python block before the marker
    bash: str | None  # the nearest bash block before the marker

    def __str__(self) -> str:
        return f"{self.doc}: output-of {self.source}"


def quoted_outputs() -> list[Quoted]:
    found = []
    for doc in MARKED:
        page = (REPO / doc).read_text(encoding="utf-8")
        for match in MARKER.finditer(page):
            before = {language: re.findall(rf"```{language}\n(.*?)```", page[: match.start()], re.S)
                      for language in ("python", "bash")}
            found.append(Quoted(doc, match["source"], match["how"] or "", match["text"],
                                *(blocks[-1] if blocks else None for blocks in before.values())))
    return found


def compare(quoted: Quoted, printed: str) -> None:
    """Assert ``printed`` (the output) matches ``quoted`` under the marker's HOW."""
    expected = quoted.text.rstrip("\n").split("\n")
    # What a terminal shows of each line: the part after its last carriage return (the progress bar redraws).
    actual = [line.rpartition("\r")[2] for line in printed.rstrip("\n").split("\n")]
    modes = ["exact"] * len(expected)
    for clause in filter(None, (part.strip() for part in quoted.how.split(";"))):
        if match := re.fullmatch(r"last (?:(\d+) )?lines?", clause):
            actual = actual[-int(match[1] or 1) :]
        elif clause == "without the progress bar":
            actual = [line for line in actual if line.strip() and not PROGRESS_BAR.search(line)]
        elif match := re.fullmatch(r"lines? (\d+)(?:-(\d+))?: (exact|close|shape)", clause):
            first, last = int(match[1]), int(match[2] or match[1])
            modes[first - 1 : last] = [match[3]] * (last - first + 1)
        elif clause in ("exact", "close", "shape"):
            modes = [clause] * len(expected)
        else:
            raise AssertionError(f"{quoted}: unknown clause {clause!r} in the marker")
    assert len(actual) == len(expected), f"{quoted}: printed\n{printed}\nbut the doc quotes\n{quoted.text}"
    for number, (mode, want, got) in enumerate(zip(modes, expected, actual, strict=True), 1):
        message = f"{quoted}, line {number} ({mode}): the doc quotes\n  {want}\nbut the command printed\n  {got}"
        assert NUMBER.sub("N", want) == NUMBER.sub("N", got), message
        if mode == "exact":
            assert want == got, message
        elif mode == "close":
            for a, b in zip(NUMBER.findall(want), NUMBER.findall(got), strict=True):
                assert len(a.partition(".")[2]) == len(b.partition(".")[2]), message  # as many decimals
                a, b = float(a.replace(",", "")), float(b.replace(",", ""))
                assert abs(a - b) <= 0.01 * max(abs(a), abs(b)), message


# The console scripts, as modules (the tests run the worktree's code, installed or not).
COMMANDS = {"sasrec-lightning": "sasrec_lightning.cli", "sasrec-lightning-export": "sasrec_lightning.cli.export"}


def run_commands(commands: str, cwd: Path) -> str:
    """Documented commands (one a line, backslash continuations and ``#`` comments allowed), run in ``cwd``; stdout."""
    printed = []
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "SASREC_LIGHTNING_CACHE": str(cwd / "sequence_cache")}
    for command in commands.replace("\\\n", " ").strip().split("\n"):
        args = shlex.split(command, comments=True)
        assert args and args[0] in COMMANDS, f"not a documented command: {command!r}"
        result = subprocess.run([sys.executable, "-m", COMMANDS[args[0]], *args[1:]], cwd=cwd, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        printed.append(result.stdout)
    return "".join(printed)


@pytest.fixture(scope="module")
def quickstart_checkpoint_folder(tmp_path_factory) -> Path:
    """A folder with ``runs/quickstart/best.ckpt``, trained by the command of ``docs/predict.md``."""
    page = (REPO / "docs" / "predict.md").read_text(encoding="utf-8")
    command = re.search(r"```bash\n(sasrec-lightning fit .*?)\n```", page, re.S)[1]
    folder = tmp_path_factory.mktemp("predict_md")
    run_commands(command, folder)
    assert (folder / "runs" / "quickstart" / "best.ckpt").is_file()
    return folder


def run_python_block(code: str, cwd: Path) -> str:
    """The doc's python block, run as written in ``cwd``; what it printed."""
    printed = io.StringIO()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(printed), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. recommend's warning about an empty sequence (on stderr)
            exec(compile(code, "<doc python block>", "exec"), {"__name__": "__doc_example__"})
    finally:
        os.chdir(previous)
    return printed.getvalue()


def speed_result_table(quoted: Quoted) -> str:
    """``benchmarks/speed.py``'s table of the RESULT line quoted in the block (the benchmark needs Beauty)."""
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO / "benchmarks" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    line = next(line for line in quoted.text.split("\n") if line.startswith("RESULT "))
    return f"{line}\n{speed.result_table(json.loads(line.removeprefix('RESULT ')))}"


def test_every_doc_that_quotes_outputs_marks_them():
    counts = {doc: 0 for doc in MARKED}
    for quoted in quoted_outputs():
        counts[quoted.doc] += 1
    assert counts == MARKED


@pytest.mark.slow
@pytest.mark.parametrize("quoted", quoted_outputs(), ids=str)
def test_quoted_output_is_what_the_command_prints(quoted, quickstart_checkpoint_folder):
    if quoted.source.startswith("sasrec-lightning "):
        printed = run_commands(quoted.source, quickstart_checkpoint_folder)
    elif quoted.source in ("the python block above", "the bash block above"):
        block = quoted.python if quoted.source == "the python block above" else quoted.bash
        assert block is not None, f"{quoted}: no such block before the marker"
        run = run_python_block if quoted.source == "the python block above" else run_commands
        printed = run(block, quickstart_checkpoint_folder)
    elif quoted.source == "result_table of the RESULT line":
        printed = speed_result_table(quoted)
    else:
        raise AssertionError(f"{quoted}: unknown source (a command, 'the python block above', 'the bash block "
                             "above' or 'result_table of the RESULT line')")
    compare(quoted, printed)
