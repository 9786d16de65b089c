"""Run the tie tests under every instruction-set level this CPU offers to MKL and to PyTorch's kernels.

A BLAS picks its kernels by instruction set, and kernels round a dot product differently, so a tie
rule that depends on rounding passes on one CPU and fails on another. ``MKL_ENABLE_INSTRUCTIONS``
(MKL's level) and ``ATEN_CPU_CAPABILITY`` (PyTorch's own kernels) let one machine play several:
this runs ``tests/test_ties.py``, ``tests/test_eval.py`` and ``tests/test_ranking.py`` once per
level in a fresh process and prints one line per level.

    python benchmarks/tie_levels.py            # every level of this CPU
    python benchmarks/tie_levels.py --repo DIR # another checkout (e.g. an older release, to see it fail)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = ["tests/test_ties.py", "tests/test_eval.py", "tests/test_ranking.py"]


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    return set(next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "").split())


def levels() -> list[tuple[str, str]]:
    """``(variable, value)`` of every MKL and ATen instruction-set level this CPU offers (and the default)."""
    flags = cpu_flags()
    mkl = [("SSE4_2", "sse4_2"), ("AVX", "avx"), ("AVX2", "avx2"), ("AVX512", "avx512f")]
    aten = [("default", None), ("avx2", "avx2"), ("avx512", "avx512f")]
    return ([("", "")] + [("MKL_ENABLE_INSTRUCTIONS", level) for level, flag in mkl if flag in flags]
            + [("ATEN_CPU_CAPABILITY", level) for level, flag in aten if flag is None or flag in flags])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="checkout to test")
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the test processes")
    args = parser.parse_args()
    repo = Path(args.repo).resolve()
    tests = [test for test in TESTS if (repo / test).is_file()]
    failed = 0
    for variable, value in levels():
        environment = {**os.environ, "PYTHONPATH": str(repo / "src"), "OMP_NUM_THREADS": args.threads}
        if variable:
            environment[variable] = value
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=repo, env=environment, capture_output=True, text=True)
        summary = next((line for line in reversed(done.stdout.splitlines()) if " in " in line), done.stdout[-200:])
        failed += done.returncode != 0
        print(f"{variable or '(no setting)'}={value:8s} exit {done.returncode}  {summary.strip()}  "
              f"[{time.perf_counter() - start:.0f} s]", flush=True)
    print(f"{failed} level(s) failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
