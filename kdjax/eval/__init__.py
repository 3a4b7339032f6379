"""kdjax.eval."""
