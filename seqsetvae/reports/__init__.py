"""The batch-size comparison report."""
