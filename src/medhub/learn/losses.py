"""Losses that MONAI does not have."""

from __future__ import annotations

import torch


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox log partial likelihood with Breslow's handling of ties, averaged over the events.

    ``risk`` is the predicted log hazard ratio of each subject ``(N,)``, ``time`` the follow-up time (any unit) and
    ``event`` 1 where the event happened at ``time``, 0 where the subject was censored there. For each event *i*
    the risk set is every subject still followed at ``time[i]`` (``time[j] >= time[i]``, ties included: Breslow),
    so the loss is ``-mean_i (risk_i - log sum_{j in R(i)} exp(risk_j))``. Without tied event times this equals
    Efron's likelihood too. A batch without events gives 0 (no information), not NaN.
    """
    risk, time, event = risk.reshape(-1), time.reshape(-1), event.reshape(-1).to(risk.dtype)
    at_risk = time[None, :] >= time[:, None]  # row i: who is in the risk set of subject i
    log_denominator = torch.logsumexp(risk[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    return -((risk - log_denominator) * event).sum() / event.sum().clamp_min(1.0)
