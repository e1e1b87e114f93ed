"""Metrics in one home: segmentation overlap and surface distances, AUROC, agreement of paired values (ICC, κ,
correlations, absolute errors), bootstrap CIs.

Plain functions on arrays (``numpy`` in, floats out), used by ``medhub compare``, the calcium agreement report,
brain finetuning and the challenge evaluation (``medhub evaluate``) built on them.
"""
