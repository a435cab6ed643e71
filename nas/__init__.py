"""The framework, in floors (docs/layout.md): core < (search_spaces, controllers) < report, benchmarks < engine < sweep
< cli; tests/test_layering.py checks them."""
