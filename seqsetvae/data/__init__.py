"""Data stages: synthetic raw data, ingest and validation, statistics, embedding, shards."""

# the split names, in order: every stage and file that names a split uses these
SPLITS = ("train", "valid", "test")
