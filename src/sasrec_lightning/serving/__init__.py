"""Serving a trained model: recommendations, predictions to a file, export, attention maps."""
