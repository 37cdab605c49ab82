"""The package map, computed: the top-level folders become sub-packages of the ``mlfsic`` namespace.

``harness/``, ``methods/``, ``datasets/``, ``configs/``, ``results/`` (its published runs) and ``studies/``
(one paper's study each) install as ``mlfsic.harness``, ... (so ``import mlfsic.datasets`` never shadows
Hugging Face's ``datasets``); every sub-package under them (a folder with an ``__init__.py``) is found by
``find_packages``, so a new one can never be left out of the wheel. Everything else is in pyproject.toml;
``tests/test_wheel.py`` builds the wheel and checks it holds every module of the source tree.
"""

from setuptools import find_packages, setup

ROOTS = ("harness", "methods", "datasets", "configs", "results", "studies")

setup(
    package_dir={f"mlfsic.{root}": root for root in ROOTS},
    packages=[f"mlfsic.{root}{'.' + sub if sub else ''}" for root in ROOTS for sub in ["", *find_packages(root)]],
)
