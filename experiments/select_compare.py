"""argmax against best_sampled against probe on one quick REINFORCE search, with equal short training of the winners.

    python experiments/select_compare.py --out runs/select_compare            # about 10 minutes on 2 CPU cores

One search of experiments/quick_digits_reinforce.yaml with `search.select=probe` records all three picks: the
argmax genotype, the highest rescored reward (best_sampled's rule) and the probe winner. Each distinct
winner then trains from scratch with experiments/eval_digits_smoke.yaml (same seed, same epochs), and the table
gives its test top-1 next to its search-time scores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import search
from nas.core.records import read_record
from nas.engine.trainer import run_eval

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/select_compare")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--probe-epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", help="more search settings (dotted)")
    parser.add_argument("--eval-epochs", type=int, default=8, help="epochs of the equal short training")
    args = parser.parse_args()
    out = Path(args.out)
    run_dir = out / "search"
    if not (run_dir / "genotype.json").is_file():
        assert search.main(["-c", str(ROOT / "experiments" / "quick_digits_reinforce.yaml"), "--run-dir", str(run_dir),
                            "--seed", str(args.seed), "--set", "search.select=probe", f"search.top_k={args.top_k}",
                            f"search.probe_epochs={args.probe_epochs}", *args.overrides]) == 0
    selection = read_record(run_dir / "genotype.json")["search"]["selection"]
    best = max((c for c in selection["candidates"] if "val_reward" in c), key=lambda c: c["val_reward"])
    picks = {"argmax": selection["argmax"], "best_sampled": best,
             "probe": next(c for c in [selection["argmax"], *selection["candidates"]]
                           if c["genotype"] == selection["picked"]["genotype"])}
    trained: dict[str, float] = {}
    rows = ["| rule | val acc (supernet, %) | val reward | probe acc (%) | eval test top-1 (%) | genotype |",
            "|---|---|---|---|---|---|"]
    for rule, pick in picks.items():
        if pick["genotype"] not in trained:
            metrics = run_eval(pick["genotype"], str(ROOT / "experiments" / "eval_digits_smoke.yaml"),
                               str(out / f"eval-{rule}"),
                               overrides=[f"run.seed={args.seed}", f"train.epochs={args.eval_epochs}"])
            trained[pick["genotype"]] = metrics["top1"]
        rows.append(f"| {rule} | {pick['val_acc']} | {pick['val_reward']} | {pick.get('probe_acc', '-')} | "
                    f"{trained[pick['genotype']]:.2f} | `{pick['genotype']}` |")
    table = "\n".join(rows)
    (out / "table.md").write_text(table + "\n")
    (out / "picks.json").write_text(json.dumps({rule: {**pick, "eval_top1": trained[pick["genotype"]]}
                                                for rule, pick in picks.items()}, indent=2))
    print(table)


if __name__ == "__main__":
    main()
