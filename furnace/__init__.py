"""furnace: datasets, models, losses, methods and the training engine of MGD-SSSS."""

__version__ = "0.1.0"
