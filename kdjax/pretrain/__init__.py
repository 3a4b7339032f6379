"""kdjax.pretrain."""
