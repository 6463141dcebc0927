"""Data: preparing token shards (memory-mapped) for training."""
