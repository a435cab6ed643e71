"""Package definition for the NAS framework (P-DARTS / REINFORCE search on PyTorch)."""
from setuptools import find_packages, setup

setup(
    name="pdarts-nas",
    version="0.1.0",
    description="Progressive cell-based NAS: DARTS gradient and REINFORCE controllers, eval trainer, one-shot studies",
    python_requires=">=3.10",
    packages=find_packages(include=["nas*", "search_spaces*", "controllers*", "genotypes*"]),
    package_data={"genotypes": ["*.json"]},
    py_modules=["search", "train_eval"],
    include_package_data=True,
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.23",
        "scipy>=1.9",
        "tensorboard>=2.12",
        "thop>=0.1.1",
        "graphviz>=0.20",
        "pyyaml>=6.0",
        "tqdm>=4.64",
        "scikit-learn>=1.1",
        "matplotlib>=3.6",
    ],
    # `sweep`: nas-sweep runs trials as Ray tasks; the tests run that path on a local Ray, so `test` includes it.
    # `docs`: mkdocs.yml makes docs/ a site (mkdocs serve); the tests build it strictly, so `test` includes it.
    extras_require={"sweep": ["ray>=2.9"], "docs": ["mkdocs>=1.5", "mkdocs-material>=9.0"],
                    "test": ["pytest>=7.0", "ruff>=0.4", "ray>=2.9", "mkdocs>=1.5", "mkdocs-material>=9.0"]},
    entry_points={
        "console_scripts": [
            "nas-search=search:main",
            "nas-train=train_eval:main",
            "nas-plot=nas.cli.plot:main",
            "nas-report=nas.cli.report:main",
            "nas-info=nas.cli.info:main",
            "nas-latency=nas.benchmarks.latency:main",
            "nas-sweep=nas.sweep.driver:main",
            "nas-proxy=nas.cli.proxy:main",
        ]
    },
)
