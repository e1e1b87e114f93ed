"""Metrics in one home: segmentation overlap and surface distances, agreement of paired values, bootstrap CIs.

Plain functions on arrays (``numpy`` in, floats out), used by ``medhub compare``, the calcium agreement report and
the challenge evaluation built on them.
"""
