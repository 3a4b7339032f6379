r"""SUPERB keyword spotting (KS) exactly as s3prl 0.4.18 runs it: Speech Commands v0.01, 12 classes, frozen upstream.

Every value is written out; a line that encodes a SUPERB choice cites the s3prl file it comes from:
  [sc/config]  s3prl/downstream/speech_commands/config.yaml     [sc/dataset] .../speech_commands/dataset.py
  [sc/expert]  s3prl/downstream/speech_commands/expert.py       [runner]     s3prl/downstream/runner.py
  [run]        s3prl/run_downstream.py                           [hubert]     s3prl/upstream/hubert/expert.py
kdjax's own defaults (configs/finetune_kws.py) differ where docs/superb.md says so and why.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare speech_commands/v1 --manual_dir /path/with/both/tarballs   # or let TFDS download them
  python -m kdjax.main --config=configs/superb_ks.py --workdir=runs/superb_ks \
      --config.finetune.encoder=/path/to/hubert-base-ls960

Variant args: `last` (featurizer on the last layer only: DistilHuBERT's published `-s paper`),
`runlocal` (a few steps on the synthetic tiny corpus, to check the plumbing; not SUPERB).
"""
import ml_collections

from kdjax.distill.config import loss_fields, student_fields
from kdjax.train.loop import parse_args


def get_config(arg=None):
    """SUPERB KS; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    c = ml_collections.ConfigDict()
    c.task = "finetune"
    c.seed = 0
    c.total_steps = 200_000  # [sc/config] runner.total_steps
    c.batch_size = 32  # [sc/config] datarc.batch_size
    c.log_every = 100  # [sc/config] runner.log_step
    c.eval_every = 5_000  # [sc/config] runner.eval_step (dev and test)
    c.progress = True
    c.distributed = False
    c.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14, devices=0))
    c.checkpoint = ml_collections.ConfigDict(dict(
        save_every=1_000,  # [sc/config] runner.save_step
        keep=1,  # [sc/config] runner.max_keep
        async_save=True,
        best_metric="kws/validation/accuracy",  # [sc/expert] log_records: dev-best.ckpt on a new best dev acc
        best_mode="max",
    ))
    c.optim = ml_collections.ConfigDict(dict(
        name="adam",  # [sc/config] optimizer: TorchOptim, torch_optim_name Adam
        lr=1e-4,  # [sc/config] optimizer.lr
        schedule="constant",  # [sc/config] the scheduler block is commented out
        warmup_frac=0.0, warmup_steps=0,
        b1=0.9, b2=0.999, eps=1e-8,  # torch.optim.Adam defaults (the yaml sets none)
        weight_decay=0.0,  # torch.optim.Adam default
        no_decay=(),
        clip_norm=1.0,  # [sc/config] runner.gradient_clipping
        accum_steps=1,  # [sc/config] runner.gradient_accumulate_steps
        groups=ml_collections.ConfigDict(),
    ))
    c.finetune = ml_collections.ConfigDict(dict(
        mode="kws",
        encoder="",  # --config.finetune.encoder=DIR
        init="pretrained",
        frozen=True,  # [run] -f/--upstream_trainable off by default: upstream.eval(), no gradient
        freeze_feature_encoder=True,
        encoder_lr=5e-5,  # unused while frozen
        mask_time_prob=0.0, mask_time_length=10, mask_time_min_masks=0,  # frozen upstream: no SpecAugment
        encoder_overrides=ml_collections.ConfigDict(),
        featurizer="last" if "last" in args else "weighted_sum",  # [run] -s hidden_states: softmax-weighted sum
        model_name="", role="", teacher_name="",
        kws_dataset="speech_commands/v1",  # [sc/expert] train/dev from the training archive, test = test archive
        sv_dataset="synthetic_speech/sv",  # unused in mode "kws"
        data_dir=ml_collections.FieldReference(None, field_type=str),
        kws_seconds=1.0,  # [sc/dataset] _silence_ items: a random 1 s crop of a noise file (words are <= 1 s)
        kws_sampling="balanced",  # [sc/expert] WeightedRandomSampler(weights N / count) on train, with replacement
        kws_dev="balanced_resample",  # [sc/expert] _get_balanced_dev_dataloader: dev drawn the same way
        kws_dev_seed=0,  # kdjax: one fixed resample (s3prl draws a fresh one at every evaluation)
        normalize=False,  # [hubert] task_cfg.normalize is False for the base models: raw waveform in
        gain_db=-3.0,  # [sc/dataset] EFFECTS: gain -3.0 (after channels 1, rate 16000)
        sv_seconds=3.0, sv_eval_max_seconds=8.0, sv_head="xvector", sv_loss="aam", sv_width=512, sv_embed_dim=0,
        sv_min_seconds=0.0, sv_agg_dim=1500, sv_margin_scale=30.0,
        sv_margin=ml_collections.FieldReference(None, field_type=float), sv_eval="padded",
        sv_eval_batch_size=1, sv_eval_round_to=1, sv_trials="", sv_dev_trials="", sv_select="final",
        multitask_select="kws",  # unused in mode "kws"
        cache="", cache_dtype="float32", cache_layers="all", sv_train_max_seconds=0.0,  # kdjax's feature cache, off
        kws_weight=1.0, sv_weight=1.0,  # sv_*: unused in mode "kws"
        eval_batch_size=32,  # [sc/config] datarc.batch_size (dev and test loaders)
        labels=["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_unknown_",
                "_silence_"],  # [sc/dataset] CLASSES
        kws_hidden=256,  # [sc/config] modelrc.projector_dim (Linear -> MeanPooling -> Linear, UtteranceLevel)
        kws_batch_size=0,  # [sc/config] the KWS batch is config.batch_size
        # kdjax's one-stage option (distillation + task loss in one run), off: SUPERB trains downstream heads only
        one_stage=ml_collections.ConfigDict(dict(teacher="", weight=1.0, student=student_fields(exclude=("init",)),
                                                 loss=loss_fields())),
    ))
    if "runlocal" in args:  # plumbing check only
        c.total_steps, c.batch_size, c.log_every, c.eval_every = 6, 8, 2, 3
        c.checkpoint.save_every = 3
        c.progress = False
        c.finetune.update(kws_dataset="synthetic_speech/kws_tiny", eval_batch_size=8)
    return c
