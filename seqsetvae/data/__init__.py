"""Data stages: synthetic raw data, ingest and validation, statistics, embedding, shards."""
