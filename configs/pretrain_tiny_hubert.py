r"""Pre-train the demo's small HuBERT teacher (the recipe: kdjax/pretrain/tiny_hubert_config.py).

The recipe lives inside the package because `kdjax demo --pretrain` runs it from an installed wheel, which holds no
configs/ folder; this file makes it launchable like every other config. Launch:

  kdjax prepare synthetic_speech/unlabeled
  python -m kdjax.main --config=configs/pretrain_tiny_hubert.py --workdir=runs/pretrain_tiny_hubert
"""
from kdjax.pretrain.tiny_hubert_config import get_config  # noqa: F401  (the config file's entry point)
