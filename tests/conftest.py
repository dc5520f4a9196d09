"""Test ordering: the SLURM test runs last.

Once SLURM's client tools are installed (tests/test_slurm.py installs them on CI) but no controller
answers, every later `snakemake` start spends about 10 s in the SLURM executor plugin's import-time
`scontrol show config` probe, which waits for its timeout.  Run last, the e2e tests before it start
snakemake without that wait; the test itself talks to a running cluster, which answers at once."""


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.get_closest_marker("slurm") is not None)  # stable: order kept otherwise
