r"""SUPERB automatic speaker verification (ASV) exactly as s3prl 0.4.18 runs it: VoxCeleb1, x-vector, AM-softmax.

Every value is written out; a line that encodes a SUPERB choice cites the s3prl file it comes from:
  [sv/config]  s3prl/downstream/sv_voxceleb1/config.yaml (-> configs/amsoftmax.yaml)
  [sv/dataset] .../sv_voxceleb1/dataset.py   [sv/expert] .../sv_voxceleb1/expert.py   [sv/model] .../model.py
  [sv/test]    .../sv_voxceleb1/test_expdir.sh   [run] s3prl/run_downstream.py
  [hubert]     s3prl/upstream/hubert/expert.py
kdjax's own defaults (configs/finetune_sv.py) differ where docs/superb.md says so and why.

Launch (the exact command; add `--config.field=value` overrides at the end):

  pip install 'kdjax[sox]' && apt-get install sox      # s3prl's SoX gain and silence trimming at prepare time
  kdjax prepare voxceleb1/superb --manual_dir /path/to/vox1   # zips or wav/, veri_test2.txt, voxceleb1_test_v2.txt
  python -m kdjax.main --config=configs/superb_asv.py --workdir=runs/superb_asv \
      --config.finetune.encoder=/path/to/hubert-base-ls960

Steps: s3prl counts optimizer updates (200k of 5 accumulated batches of 10); kdjax's loop counts batches, so
total_steps is 5 x 200k with accum_steps=5. Variant args: `last` (featurizer on the last layer only:
DistilHuBERT's published `-s paper`), `runlocal` (a few steps on the synthetic tiny corpus; not SUPERB).
"""
import ml_collections

from kdjax.distill.config import loss_fields, student_fields
from kdjax.train.loop import parse_args

ACCUM = 5  # [sv/config] runner.gradient_accumulate_steps
UPDATES = 200_000  # [sv/config] runner.total_steps (optimizer updates)


def get_config(arg=None):
    """SUPERB ASV; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    c = ml_collections.ConfigDict()
    c.task = "finetune"
    c.seed = 0
    c.total_steps = UPDATES * ACCUM  # loop steps = batches
    c.batch_size = 10  # [sv/config] datarc.train_batch_size
    c.log_every = 500 * ACCUM  # [sv/config] runner.log_step
    c.eval_every = 20_000 * ACCUM  # [sv/test] test_expdir.sh scores states-20000 ... states-200000 (sv_select)
    c.progress = True
    c.distributed = False
    c.mesh = ml_collections.ConfigDict(dict(fsdp=1, fsdp_min_size=2**14, devices=0))
    c.checkpoint = ml_collections.ConfigDict(dict(
        save_every=10_000 * ACCUM,  # [sv/config] runner.save_step
        keep=20,  # [sv/config] runner.max_keep: every checkpoint of the run is kept
        async_save=True,
        best_metric="", best_mode="",  # the task's: sv/test/eer, min (sv_select="best_test")
    ))
    c.optim = ml_collections.ConfigDict(dict(
        name="adamw",  # [sv/config] optimizer: TorchOptim, torch_optim_name AdamW
        lr=1e-4,  # [sv/config] optimizer.lr
        schedule="constant",  # [sv/config] the scheduler block is commented out
        warmup_frac=0.0, warmup_steps=0,
        b1=0.9, b2=0.999, eps=1e-8,  # torch.optim.AdamW defaults (the yaml sets none)
        weight_decay=0.01,  # torch.optim.AdamW default, on every parameter
        no_decay=(),
        clip_norm=1000.0,  # [sv/config] runner.gradient_clipping 1.0e+3
        accum_steps=ACCUM,
        groups=ml_collections.ConfigDict(),
    ))
    c.finetune = ml_collections.ConfigDict(dict(
        mode="sv",
        encoder="",  # --config.finetune.encoder=DIR
        init="pretrained",
        frozen=True,  # [run] -f/--upstream_trainable off by default: upstream.eval(), no gradient
        freeze_feature_encoder=True,
        encoder_lr=5e-5,  # unused while frozen
        mask_time_prob=0.0, mask_time_length=10, mask_time_min_masks=0,  # frozen upstream: no SpecAugment
        encoder_overrides=ml_collections.ConfigDict(),
        featurizer="last" if "last" in args else "weighted_sum",  # [run] -s hidden_states: softmax-weighted sum
        model_name="", role="", teacher_name="",
        kws_dataset="synthetic_speech/kws",  # unused in mode "sv"
        sv_dataset="voxceleb1/superb",  # [sv/dataset] EFFECTS gain -3.0 + silence 1 0.1 0.1% -1 0.1 0.1% (prepare)
        data_dir=ml_collections.FieldReference(None, field_type=str),
        kws_seconds=1.0, kws_hidden=256, kws_sampling="uniform", kws_dev="plain", kws_dev_seed=0,  # unused: "sv"
        kws_batch_size=0,  # unused: "sv"
        sv_seconds=8.0,  # [sv/config] datarc.max_timestep 128000: random crop of longer training utterances
        sv_min_seconds=2.0,  # [sv/config] vad_config.min_sec 32000: training clips longer than 2 s (after trim)
        sv_eval_max_seconds=0.0,  # [sv/dataset] SpeakerVerifi_test: full-length test utterances (0: no crop)
        sv_eval="equal_length",  # [sv/config] eval_batch_size 1: no padding reaches a GroupNorm encoder
        sv_eval_batch_size=1,  # [sv/config] datarc.eval_batch_size
        sv_eval_round_to=1,  # exact lengths (one jit shape per length; e.g. 1600 trims < 0.1 s for fewer shapes)
        sv_trials="superb",  # [sv/config] test_meta_data: voxceleb1_test_v2.txt
        sv_select="best_test",  # [sv/test] test every 20k updates, report the best test EER; "validation": best
        #                         EER on trial list "dev" ([sv/config] dev_meta_data.txt, what s3prl's dev mode scores)
        sv_dev_trials="dev",
        multitask_select="kws",  # unused in mode "sv"
        sv_head="xvector_superb",  # [sv/config] module XVector (batch_norm False, dropout 0), agg SP, utter
        #                            UtteranceExtractor: Linear 3000->512 ReLU Linear 512->512 ReLU; test ReLU(Linear1)
        sv_width=512,  # [sv/config] modelrc.input_dim (connector and TDNN width)
        sv_agg_dim=1500,  # [sv/config] module_config.XVector.agg_dim
        sv_embed_dim=512,  # [sv/model] UtteranceExtractor out_dim = input_dim
        sv_loss="am",  # [sv/config] ObjectiveLoss AMSoftmaxLoss
        sv_margin_scale=30.0,  # [sv/config] LossConfig.AMSoftmaxLoss.s
        sv_margin=0.4,  # [sv/config] LossConfig.AMSoftmaxLoss.m
        normalize=False,  # [hubert] task_cfg.normalize is False for the base models: raw waveform in
        gain_db=0.0,  # the -3 dB gain is applied at prepare time by voxceleb1/superb (before silence trimming)
        kws_weight=1.0, sv_weight=1.0,
        cache="", cache_dtype="float32", cache_layers="all", sv_train_max_seconds=0.0,  # kdjax's feature cache, off
        eval_batch_size=1,  # [sv/config] datarc.eval_batch_size
        labels=None,
        # kdjax's one-stage option (distillation + task loss in one run), off: SUPERB trains downstream heads only
        one_stage=ml_collections.ConfigDict(dict(teacher="", weight=1.0, student=student_fields(exclude=("init",)),
                                                 loss=loss_fields())),
    ))
    if "runlocal" in args:  # plumbing check only
        c.total_steps, c.batch_size, c.log_every, c.eval_every = 6, 8, 2, 3
        c.optim.accum_steps = 1
        c.checkpoint.save_every = 3
        c.progress = False
        c.finetune.update(sv_dataset="synthetic_speech/sv_tiny", sv_seconds=1.0, sv_min_seconds=0.0, sv_width=64,
                          sv_agg_dim=96, sv_embed_dim=64, sv_trials="", sv_eval_round_to=16_000,
                          sv_eval_batch_size=4)
    return c
