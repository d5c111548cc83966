"""The `msgc bench` command: `msgc bench kernels`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from msgc.bench import kernels

OMP_ENV = "OMP_WAIT_POLICY"
"""Read by OpenMP once, when torch loads: see `cmd_bench_kernels`."""


def cmd_bench_kernels(args: argparse.Namespace) -> int:
    """Run the kernel benchmark; bad options fail here, before anything is timed.

    OpenMP workers that torch.compile leaves spinning starve the eager ops timed after
    them, and OpenMP reads ``OMP_WAIT_POLICY`` only when torch loads, which `msgc` has
    done by now: when it is unset, run the benchmark again in a child process with
    ``OMP_WAIT_POLICY=PASSIVE`` and return the child's exit status.
    """
    settings = kernels.settings_from_args(args)
    if OMP_ENV not in os.environ:
        argv = [sys.executable, "-m", "msgc", "bench", "kernels", *kernels.option_argv(args)]
        return subprocess.run(argv, env={**os.environ, OMP_ENV: "PASSIVE"}).returncode
    return kernels.run(settings)


def add_bench(subparsers: Any) -> None:
    """Register `msgc bench` and its benchmarks."""
    parser = subparsers.add_parser("bench", help="benchmarks of msgc on this machine")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    kernel_parser = benchmarks.add_parser("kernels", help="time the masked kernels",
                                          description=kernels.DESCRIPTION,
                                          epilog=kernels.EPILOG)
    kernels.add_arguments(kernel_parser)
    kernel_parser.set_defaults(handler=cmd_bench_kernels)
