r"""DistilHuBERT recipe with a wav2vec 2.0 base teacher -> 2-layer 768-d student predicting teacher layers 4, 8, 12.

Student 23.49M parameters (75.1% fewer than the 94.4M teacher) plus 3.5M in the
prediction heads (not exported). The student is an HF HubertModel: a wav2vec2 feature projection always has a
LayerNorm, the DistilHuBERT student has none.
s3prl's recipe: AdamW 2e-4, 7% warm-up then linear decay, clip 5, batch 24, 200k steps, L1 + cosine (lambda 1),
conv stack and first 2 layers initialised from the teacher, gradient into the conv stack scaled by 0.1.
s3prl's batching too: length-sorted batches of 24, clips cropped at 250,000 samples, padding included in the loss.
kdjax's own options: `--config.distill.batching=crop` (every clip cropped/padded to max_seconds) and
`--config.distill.loss.include_padding=False` (padded frames excluded from the loss).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare librispeech --manual_dir /path/to/LibriSpeech
  python -m kdjax.main --config=configs/distill_wav2vec2_base.py --workdir=runs/distilwav2vec2 \
      --config.distill.teacher=/path/to/wav2vec2-base

The teacher is an HF folder or a repo id already in the local HF cache (kdjax never downloads).
Variant args (comma separated after the colon): `student=4L` (student depth), `steps=N`, `bf16` (bfloat16
teacher), `hint` (FitHuBERT-style layer-to-layer hints: student layer i -> teacher layer 6i), `random`, `runlocal`
(a few steps on the synthetic tiny corpus; still needs the teacher).
"""
from kdjax.distill.config import distill_config, variants


def get_config(arg=None):
    """DistilHuBERT's recipe for a wav2vec 2.0 base teacher; `arg` holds variant args (see the module docstring)."""
    config = distill_config()
    config.seed = 0
    config.total_steps = 200_000  # s3prl pretrain/distiller/config_runner.yaml runner.total_steps
    config.batch_size = 24  # config_runner.yaml pretrain_expert.datarc.train_batch_size
    config.log_every = 50
    config.eval_every = 10_000
    config.checkpoint.update(save_every=10_000, keep=3)
    # config_runner.yaml optimizer: AdamW 2e-4, warm-up 7% then linear decay, clip 5. s3prl's parameter groups
    # (optimizers.py get_grouped_parameters) override the yaml's decay 1e-6: 0.01, and 0 on names containing "bias",
    # "LayerNorm.bias" or "LayerNorm.weight"; its norms are named layer_norm, so only biases are exempt, as here
    config.optim.update(name="adamw", lr=2e-4, schedule="linear", warmup_frac=0.07, b1=0.9, b2=0.98, eps=1e-6,
                        weight_decay=0.01, no_decay=("bias",), clip_norm=5.0)
    d = config.distill
    d.teacher = "facebook/wav2vec2-base"
    d.teacher_dtype = "float32"
    # config_model.yaml distiller: 2 layers of the teacher's width, conv stack and layers copied from the teacher
    d.student.update(num_hidden_layers=2, init="teacher")
    d.loss.update(mode="prediction", target_layers=(4, 8, 12), cos_weight=1.0,  # pred_layer_id, cosine_loss 1
                  include_padding=True)  # pretrain/distiller/pretrain_expert.py: the loss includes padded frames
    d.feature_grad_mult = 0.1  # config_model.yaml distiller.feature_grad_mult
    d.update(dataset="librispeech", train_split="train_clean_100+train_clean_360+train_other_500",
             eval_split="dev_clean", eval_utterances=256)
    d.batching = "sorted_buckets"  # s3prl pretrain/bucket_dataset.py: length-sorted batches
    d.max_seconds = 250_000 / 16_000  # config_runner.yaml pretrain_expert.datarc.sequence_length: crop longer clips
    d.pad_to = 16_000  # kdjax: pad each batch to a multiple of 1 s (s3prl pads to its longest clip)
    return variants(config, arg, teacher_layers=12)
