"""Evaluation on the test split and memory reports."""
