"""Training: the loop, the run it trains, what it reports; checkpoints, optimizers, DDP, preemption, MLflow.

Stage 3 of the DAG (rule ``train``): imports data and models, never evaluation or report.

Read top-down from :func:`ris.training.train.train` (the loop: build, resume, epochs of optimizer steps,
validation, checkpoints, publish). It uses :mod:`~ris.training.run_config` (what a run configuration must
hold), :mod:`~ris.training.run` (what a run is made of, the EMA of its weights, what ``last.pt`` and
``best.pt`` hold) and :mod:`~ris.training.run_log` (the MLflow run of a training); below those, one concept
each: :mod:`~ris.training.checkpoint`, :mod:`~ris.training.sampler`, :mod:`~ris.training.optim`,
:mod:`~ris.training.distributed`, :mod:`~ris.training.preemption`, :mod:`~ris.training.tracking`.
:mod:`~ris.training.pretrain` is the demo's backbone pretraining, a job of its own.
"""
