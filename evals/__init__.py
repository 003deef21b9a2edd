"""Evaluation metrics, results store, tables and plots."""
