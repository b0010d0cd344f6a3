"""furnace: datasets, models, losses, methods and the training engine of MGD-SSSS."""

__version__ = "0.2.0"
