"""Cohort runs: a resumable batch on a local process pool or a Ray cluster, and dataset releases.

* :func:`medhub.cohort.batch.run_batch` runs a model on every case of a cohort (``medhub batch``);
* :func:`medhub.cohort.release.release` turns a finished run into a dataset release (``medhub release``).

Submodules are imported on demand, so ``import medhub.cohort`` stays cheap.
"""
