"""SeqSetVAE pipeline: ICU events -> sharded ragged tensors -> batched SeqSetVAE -> reports."""

__version__ = "0.1.0"
