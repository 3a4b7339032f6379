r"""DistilHuBERT recipe with a wav2vec 2.0 base teacher -> 2-layer 768-d student predicting teacher layers 4, 8, 12.

Student 23.49M parameters (75.1% fewer than the 94.4M teacher) plus 3.5M in the
prediction heads (not exported). The student is an HF HubertModel: a wav2vec2 feature projection always has a
LayerNorm, the DistilHuBERT student has none.
s3prl's recipe: AdamW 2e-4, 7% warm-up then linear decay, clip 5, batch 24, 200k steps, L1 + cosine (lambda 1),
conv stack and first 2 layers initialised from the teacher, gradient into the conv stack scaled by 0.1.
Difference from s3prl: utterances are cropped to max_seconds instead of bucketed, padded frames are excluded from
the loss (config.distill.loss.include_padding=True restores s3prl's formula).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare librispeech --manual_dir /path/to/LibriSpeech
  python -m kdjax.main --config=configs/distill_wav2vec2_base.py --workdir=runs/distilwav2vec2 \
      --config.distill.teacher=/path/to/wav2vec2-base

The teacher is an HF folder or a repo id already in the local HF cache (kdjax never downloads).
Variant args (comma separated after the colon): `student=4L` (student depth), `steps=N`, `bf16` (bfloat16
teacher), `hint` (FitHuBERT-style layer-to-layer hints: student layer i -> teacher layer 6i), `runlocal`
(a few steps on the synthetic tiny corpus; still needs the teacher).
"""
from kdjax.distill.config import paper_config


def get_config(arg=None):
    """The paper setting for a wav2vec 2.0 base teacher; `arg` holds variant args (see the module docstring)."""
    return paper_config(arg, teacher="facebook/wav2vec2-base")
