"""Training: the loop (resume, the step, validation, logging), checkpoints, optimizers, DDP, MLflow.

Stage 3 of the DAG (rule ``train``): imports data and models, never evaluation or report.

Read top-down: :mod:`~ris.training.train` (``train`` -> ``fit`` -> ``train_epoch``/``end_epoch``) calls
:mod:`~ris.training.run_config` (the run configuration's required keys), :mod:`~ris.training.run` (what
a run is made of), :mod:`~ris.training.state` (``last.pt``, resume, preemption), :mod:`~ris.training.step`
(one optimizer step: micro-batches, accumulation, autocast, non-finite loss, out-of-memory),
:mod:`~ris.training.validation` (validation, ``best.pt``) and :mod:`~ris.training.run_log` (MLflow,
``history.jsonl``, the published outputs).
"""
