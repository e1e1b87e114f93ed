"""Challenge task specifications (pydantic, loadable from YAML), and the FOMO25 task set built in.

A task names its input sequences (``swi|t2s``: either one), the kind of label a submission predicts, and the
metrics it is scored by with their directions. Per-case metrics (Dice, NSD, absolute error) are averaged over the
cases (``aggregation``: mean, or median); set metrics (AUROC, Pearson r) are computed over all cases at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medhub.challenge.ranking import MetricColumn
from medhub.errors import InputError

#: Metric name -> (higher is better, computed per case). The values come from :mod:`medhub.metrics`.
METRICS: dict[str, tuple[bool, bool]] = {
    "auroc": (True, False),
    "dice": (True, True),
    "nsd": (True, True),
    "mae": (False, True),
    "corr": (True, False),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricSpec(Strict):
    """One metric of a task; ``tolerance_mm`` is NSD's tolerance."""

    name: Literal["auroc", "dice", "nsd", "mae", "corr"]
    tolerance_mm: float = Field(2.0, gt=0)

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.name][0]

    @property
    def per_case(self) -> bool:
        return METRICS[self.name][1]


class TaskSpec(Strict):
    """One task: ``id`` prefixes its metric columns (``t1`` -> ``t1_auroc``)."""

    id: str = Field(pattern=r"^[a-z0-9]+$")
    name: str
    sequences: list[str] = Field(description="Input sequences in order; 'swi|t2s' means either.")
    label: Literal["binary", "value", "mask"]
    metrics: list[MetricSpec]
    aggregation: Literal["mean", "median"] = Field(
        "mean", description="How per-case metrics (Dice, NSD, absolute error) become the task's value; AUROC and "
        "Pearson r are computed over all cases.")
    weight: float = Field(1.0, gt=0, description="Weight of the task rank in the overall score.")

    def column(self, metric: MetricSpec) -> str:
        return f"{self.id}_{metric.name}"

    @property
    def output_suffix(self) -> str:
        """What a submission writes per case: a number in ``.txt`` or a mask in ``.nii.gz``."""
        return ".nii.gz" if self.label == "mask" else ".txt"


class TaskSet(Strict):
    name: str
    tasks: list[TaskSpec]

    def columns(self) -> list[MetricColumn]:
        """The metric table's columns, in task order."""
        return [MetricColumn(t.column(m), t.id, m.higher_is_better) for t in self.tasks for m in t.metrics]

    def weights(self) -> dict[str, float]:
        return {t.id: t.weight for t in self.tasks}

    def task(self, key: str) -> TaskSpec:
        """A task by id (``t1``), name (``infarct``) or number (``1``)."""
        for t in self.tasks:
            if key in (t.id, t.name, t.id.lstrip("t")):
                return t
        raise InputError(None, f"no task {key!r} in {self.name} ({', '.join(t.id + '=' + t.name for t in self.tasks)})",
                         code="bad-option")


#: FOMO25: infarct detection (AUROC), meningioma segmentation (Dice, NSD), brain age (MAE, Pearson r).
FOMO25 = TaskSet(name="fomo25", tasks=[
    TaskSpec(id="t1", name="infarct", sequences=["flair", "adc", "dwi_b1000", "swi|t2s"], label="binary",
             metrics=[MetricSpec(name="auroc")]),
    TaskSpec(id="t2", name="meningioma", sequences=["flair", "dwi_b1000", "swi|t2s"], label="mask",
             metrics=[MetricSpec(name="dice"), MetricSpec(name="nsd")]),
    TaskSpec(id="t3", name="brain-age", sequences=["t1", "t2"], label="value",
             metrics=[MetricSpec(name="mae"), MetricSpec(name="corr")]),
])

BUILT_IN = {"fomo25": FOMO25}


def load_task_set(name_or_path: str | Path) -> TaskSet:
    """A built-in task set by name, or a YAML file holding one (``name:`` and ``tasks:``)."""
    if str(name_or_path) in BUILT_IN:
        return BUILT_IN[str(name_or_path)]
    path = Path(name_or_path)
    if not path.is_file():
        raise InputError(path, f"no task set of that name ({', '.join(BUILT_IN)}) and no such file",
                         code="not-found")
    try:
        return TaskSet.model_validate(yaml.safe_load(path.read_text()))
    except (yaml.YAMLError, ValidationError) as e:
        raise InputError(path, f"invalid task set: {' '.join(str(e).splitlines()[:3])}", code="bad-option") from e
