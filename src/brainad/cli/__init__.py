"""The ``brainad`` command (``main``): ``score`` new scans with a trained study model, ``audit`` a
study's lineage. The score command's parts: inputs, checks, batch, results, maps, report."""

from brainad.cli.main import main

__all__ = ["main"]
