r"""DistilHuBERT's recipe (Chang et al., 2022) with a WavLM Base+ teacher: a 2-layer 768-d WavLM student predicting
teacher layers 4, 8, 12.

WavLM Base+ is the strongest base-size teacher for speaker tasks on SUPERB (ASV EER 4.07 vs HuBERT Base 5.11; KS
97.37 vs 96.30). The student is WavLM-style (gated relative position bias in every layer), so s3prl's initialisation
carries over unchanged: conv stack, feature projection (with its LayerNorm: WavLM's projection always has one),
positional conv, relative position embedding and the first 2 layers copied from the teacher. Everything else is
s3prl's DistilHuBERT setting (`pretrain/distiller/config_model.yaml`, `config_runner.yaml`): AdamW 2e-4, 7% warm-up
then linear decay, clip 5, batch 24, 200k steps, L1 + cosine (lambda 1), gradient into the conv stack scaled by 0.1.
s3prl's batching too: length-sorted batches of 24, clips cropped at 250,000 samples, padding included in the loss,
weight decay 0.01 except on biases (as configs/distill_hubert_base.py).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare librispeech --manual_dir /path/to/LibriSpeech
  python -m kdjax.main --config=configs/distill_wavlm_base_plus.py --workdir=runs/distilwavlm \
      --config.distill.teacher=/path/to/wavlm-base-plus

The teacher is an HF folder (microsoft/wavlm-base-plus) or that repo id already in the local HF cache (kdjax never
downloads). The student goes to runs/distilwavlm/student_hf and loads with transformers.WavLMModel.from_pretrained.
Variant args (kdjax.distill.config.variants): `student=4L` (student depth), `steps=N`, `bf16` (bfloat16 teacher),
`hint`, `random`, `runlocal` (a few steps on the synthetic tiny corpus; still needs a teacher, e.g. a tiny WavLM).
"""
from kdjax.distill.config import distill_config, variants
from kdjax.train.loop import parse_args


def get_config(arg=None):
    """DistilHuBERT's setting for a WavLM Base+ teacher; `arg` holds variant args (see the module docstring)."""
    config = distill_config()
    config.seed = 0

    # Schedule, batch, optimizer (s3prl config_runner.yaml; weight-decay groups of optimizers.py)
    config.total_steps = 200_000
    config.batch_size = 24
    config.log_every = 50
    config.eval_every = 10_000
    config.checkpoint.update(save_every=10_000, keep=3)
    config.optim.update(name="adamw", lr=2e-4, schedule="linear", warmup_frac=0.07, warmup_steps=-1, b1=0.9, b2=0.98,
                        eps=1e-6, weight_decay=0.01, no_decay=("bias",), clip_norm=5.0, accum_steps=1)

    d = config.distill
    d.teacher = "microsoft/wavlm-base-plus"
    d.teacher_dtype = "float32"
    d.feature_grad_mult = 0.1

    # Student: the teacher's conv stack and width, 2 WavLM layers (s3prl config_model.yaml), initialised from the
    # teacher; dropout 0.1 in the transformer, none on the projection, no LayerDrop (masking is off for students).
    d.student.update(model_type="wavlm", num_hidden_layers=2, feat_proj_layer_norm=True, hidden_dropout=0.1,
                     attention_dropout=0.1, activation_dropout=0.1, feat_proj_dropout=0.0, layerdrop=0.0,
                     init="teacher")

    # Targets: teacher layers 4, 8, 12 through one prediction head each; L1 + cosine, weight 1 (the paper); s3prl
    # averages the loss over every frame, padding included
    d.loss.update(mode="prediction", target_layers=(4, 8, 12), cos_weight=1.0, include_padding=True,
                  layer_reduction="mean", head_inter_dim=0)

    # Data: LibriSpeech 960 h for training (s3prl), dev-clean for validation; s3prl's length-sorted batches
    d.update(dataset="librispeech", train_split="train_clean_100+train_clean_360+train_other_500",
             eval_split="dev_clean", eval_utterances=256, export_dir="student_hf")
    d.batching = "sorted_buckets"  # s3prl pretrain/bucket_dataset.py
    d.max_seconds = 250_000 / 16_000  # config_runner.yaml sequence_length
    d.pad_to = 16_000  # kdjax: each batch padded to a multiple of 1 s (fewer jit shapes)
    teacher_layers = 12
    if "runlocal" in parse_args(arg):
        teacher_layers = 3  # the tests' tiny 3-layer teacher
        d.loss.target_layers = (1, 2, 3)
    return variants(config, arg, teacher_layers)
