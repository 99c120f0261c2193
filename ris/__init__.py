"""ris: referring image segmentation, reproduced end to end."""

__version__ = "0.1.0"
