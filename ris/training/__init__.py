"""Training: the loop (resume, the step, validation, logging), checkpoints, optimizers, DDP, MLflow.

Stage 3 of the DAG (rule ``train``): imports data and models, never evaluation or report.
"""
