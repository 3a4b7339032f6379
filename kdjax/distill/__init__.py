"""kdjax.distill."""
