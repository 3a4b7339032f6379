"""kdjax.train."""
