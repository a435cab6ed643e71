"""Does one-shot accuracy predict stand-alone accuracy? The study's command line; its code is
nas/benchmarks/oneshot_study.py (shared with oneshot_probe.py), its results are in docs/study-oneshot-mnist.md.

    python experiments/oneshot_vs_standalone.py --dataset mnist --data-root ../shared/data/mnist --repeats 3
"""
from nas.benchmarks.oneshot_study import main
from nas.core.errors import exit_on_user_error

if __name__ == "__main__":
    with exit_on_user_error():
        main()
