"""Interoperability with other codebases: importing their released checkpoints (``ris import-checkpoint``)."""
