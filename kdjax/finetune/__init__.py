"""kdjax.finetune."""
