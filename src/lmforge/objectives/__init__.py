"""Training objectives: each a function from a batch's logits and targets to a loss."""
