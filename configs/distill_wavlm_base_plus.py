r"""DistilHuBERT's recipe (Chang et al., 2022) with a WavLM Base+ teacher: a 2-layer 768-d WavLM student predicting
teacher layers 4, 8, 12.

WavLM Base+ is the strongest base-size teacher for speaker tasks on SUPERB (ASV EER 4.07 vs HuBERT Base 5.11; KS
97.37 vs 96.30). The student is WavLM-style (gated relative position bias in every layer), so s3prl's initialisation
carries over unchanged: conv stack, feature projection (with its LayerNorm: WavLM's projection always has one),
positional conv, relative position embedding and the first 2 layers copied from the teacher. Everything else is
s3prl's DistilHuBERT setting (`pretrain/distiller/config_model.yaml`, `config_runner.yaml`): AdamW 2e-4, 7% warm-up
then linear decay, clip 5, batch 24, 200k steps, L1 + cosine (lambda 1), gradient into the conv stack scaled by 0.1.
Differences from s3prl: utterances are cropped to max_seconds instead of bucketed; padded frames are excluded from
the loss (config.distill.loss.include_padding=True restores s3prl's formula).

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare librispeech --manual_dir /path/to/LibriSpeech
  python -m kdjax.main --config=configs/distill_wavlm_base_plus.py --workdir=runs/distilwavlm \
      --config.distill.teacher=/path/to/wavlm-base-plus

The teacher is an HF folder (microsoft/wavlm-base-plus) or that repo id already in the local HF cache (kdjax never
downloads). The student goes to runs/distilwavlm/student_hf and loads with transformers.WavLMModel.from_pretrained.
Variant args (comma separated after the colon): `student=4L` (student depth), `steps=N`, `bf16` (bfloat16 teacher),
`runlocal` (a few steps on the synthetic tiny corpus; still needs a teacher, e.g. a tiny WavLM for tests).
"""
from kdjax.distill.config import distill_config, parse_args, student_layers_arg


def get_config(arg=None):
    """DistilHuBERT's setting for a WavLM Base+ teacher; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    config = distill_config()
    config.seed = 0

    # Schedule and batch (s3prl config_runner.yaml)
    config.total_steps = int(args.get("steps", 200_000))
    config.batch_size = 24
    config.log_every = 50
    config.eval_every = 10_000
    config.checkpoint.save_every = 10_000
    config.checkpoint.keep = 3
    config.optim.update(name="adamw", lr=2e-4, schedule="linear", warmup_frac=0.07, warmup_steps=-1, b1=0.9, b2=0.98,
                        eps=1e-6, weight_decay=1e-6, clip_norm=5.0, accum_steps=1)

    d = config.distill
    d.teacher = "microsoft/wavlm-base-plus"
    d.teacher_dtype = "bfloat16" if "bf16" in args else "float32"
    d.feature_grad_mult = 0.1

    # Student: the teacher's conv stack and width, 2 WavLM layers (s3prl config_model.yaml), initialised from the
    # teacher; dropout 0.1 in the transformer, none on the projection, no LayerDrop (masking is off for students).
    d.student.update(model_type="wavlm", num_hidden_layers=student_layers_arg(args.get("student", "2")),
                     feat_proj_layer_norm=True, hidden_dropout=0.1, attention_dropout=0.1, activation_dropout=0.1,
                     feat_proj_dropout=0.0, layerdrop=0.0, init="teacher")

    # Targets: teacher layers 4, 8, 12 through one prediction head each; L1 + cosine, weight 1 (the paper)
    d.loss.update(mode="prediction", target_layers=(4, 8, 12), cos_weight=1.0, include_padding=False,
                  layer_reduction="mean", head_inter_dim=0)

    # Data: LibriSpeech 960 h for training (s3prl), dev-clean for validation
    d.update(dataset="librispeech", train_split="train_clean_100+train_clean_360+train_other_500",
             eval_split="dev_clean", max_seconds=15.6, eval_utterances=256, export_dir="student_hf")

    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 4))
        config.batch_size = 8
        config.log_every = 2
        config.eval_every = 0
        config.checkpoint.save_every = 1000
        config.progress = False
        d.loss.target_layers = (1, 2, 3)  # the tests' tiny 3-layer teacher
        d.update(dataset="synthetic_speech/unlabeled_tiny", train_split="train", eval_split="validation",
                 max_seconds=1.0, eval_utterances=8)
    return config
