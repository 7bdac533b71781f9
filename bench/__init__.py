"""gpuconv's benchmark suite: convolution layers of real networks, timed on a GPU or the CPU.

Run it as ``python -m bench run|net|compare|list`` from the repository root; see
``bench/README.md`` for what is measured and what every result field means.
"""
