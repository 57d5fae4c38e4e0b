"""Import shim, kept for one release: ``autopeft.runs`` was split into ``autopeft.build`` (models and
provenance), ``autopeft.fit`` (the training loop and its checkpoints) and ``autopeft.jobs.train`` (the
train, retrain and export jobs)."""

from autopeft.build import (  # noqa: F401
    backbone_depth,
    build_backbone,
    build_model,
    check_buildable,
    machine_provenance,
    methods_count,
    provenance,
    timm_metadata,
)
from autopeft.fit import CHECKPOINT, METRICS, FitHooks, fit, history_compute, saved_history  # noqa: F401
from autopeft.jobs.rundir import RESULT  # noqa: F401
from autopeft.jobs.train import (  # noqa: F401
    cached,
    cached_run,
    check_finished,
    export_run,
    read_run,
    retrain_run,
    train_or_reuse,
    train_run,
)
