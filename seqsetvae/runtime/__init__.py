"""What training, evaluation and the benchmarks stand on: batches from the shards
(`dataset`), length-grouped batch order (`sampler`), the device, threads, precision and
seeds (`device`), weights files (`weights`) and memory peaks (`memory`)."""
