"""Evaluation: a trained run scored on its splits (inference), the sentence-blind baselines and `ris predict`.

Stage 4 of the DAG (rules ``evaluate`` and ``baselines``): imports training (checkpoints, tracking), never
report. Importing the package imports nothing heavy: the tables (and the Snakefile) read its constants.
"""
