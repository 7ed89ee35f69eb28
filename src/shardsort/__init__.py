"""shardsort: a spike sorter cut into many small Snakemake jobs."""

__version__ = "0.1.0"
