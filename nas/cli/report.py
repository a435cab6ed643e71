"""`nas-report RUN_DIR|SWEEP_DIR`: the report of a search run (nas/report/run.py) or of a sweep
(nas/sweep/results.py), chosen by whether the folder holds a sweep's `sweep.json`."""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.core.errors import exit_on_user_error
from nas.report.run import write_report
from nas.sweep.results import SWEEP_FILE, write_sweep_report


def main(argv: list[str] | None = None) -> None:
    """`nas-report RUN_DIR|SWEEP_DIR`: write the run's figures and report.md (a sweep's table, plot and HParams),
    print the report's path."""
    parser = argparse.ArgumentParser(prog="nas-report", description="Figures and a markdown report of a search run "
                                                                    "or of a sweep (nas-sweep).")
    parser.add_argument("run_dir", help="a run directory written by search.py (holds genotype.json and tb/), or a "
                                        "sweep directory written by nas-sweep (holds sweep.json)")
    args = parser.parse_args(argv)
    with exit_on_user_error():
        sweep = (Path(args.run_dir) / SWEEP_FILE).is_file()
        print(write_sweep_report(args.run_dir) if sweep else write_report(args.run_dir))


if __name__ == "__main__":
    main()
