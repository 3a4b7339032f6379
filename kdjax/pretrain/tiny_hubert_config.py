r"""Pre-train the demo's small HuBERT teacher on the synthetic `unlabeled` corpus (HuBERT iteration 1: masked
prediction of k-means ids of MFCC frames). The result (WORKDIR/teacher_hf) loads with kdjax.from_pretrained and
transformers.HubertModel.from_pretrained.

Launch (the exact command; add `--config.field=value` overrides at the end):

  kdjax prepare synthetic_speech/unlabeled
  python -m kdjax.main --config=configs/pretrain_tiny_hubert.py --workdir=runs/pretrain_tiny_hubert

(configs/pretrain_tiny_hubert.py points here: the recipe is packaged so that `kdjax demo --pretrain` works from a
wheel.)

Variant args (comma separated after the colon): `iteration2=DIR` (HuBERT iteration 2: k-means on layer
`target_layer` of the iteration-1 encoder in DIR, warm-started from it, on the larger `unlabeled_large` corpus),
`runlocal` (a few steps on the `unlabeled_tiny` corpus with a smaller model, for tests), `steps=N`. The shipped
teacher is iteration 1 continued with CMN MFCC targets (`mfcc_cmn`), not iteration 2: the exact commands are in
kdjax/assets/teacher_tiny_hubert/PROVENANCE.md.
"""
import ml_collections

from kdjax.train.loop import base_config, parse_args


def teacher_model() -> ml_collections.ConfigDict:
    """The teacher's architecture: HuBERT-base's conv geometry (20 ms frames) at a fraction of its width."""
    return ml_collections.ConfigDict(dict(
        model_type="hubert", hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024,
        conv_dim=(128,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16, feat_extract_norm="group",
        do_stable_layer_norm=False, feat_proj_layer_norm=True, hidden_dropout=0.1, attention_dropout=0.1,
        activation_dropout=0.0, feat_proj_dropout=0.1, layerdrop=0.05, mask_time_prob=0.65, mask_time_length=10,
        mask_time_min_masks=2))


def get_config(arg=None):
    """The pretraining config; `arg` holds variant args (see the module docstring)."""
    args = parse_args(arg)
    config = base_config()
    config.task = "pretrain_hubert"
    config.seed = 0
    config.total_steps = int(args.get("steps", 1500))
    config.batch_size = 8
    config.log_every = 50
    config.eval_every = 500
    config.checkpoint.save_every = 500
    config.checkpoint.keep = 2
    config.optim.lr = 5e-4
    config.optim.warmup_frac = 0.08
    config.optim.weight_decay = 0.01
    config.optim.clip_norm = 10.0
    config.model = teacher_model()
    config.pretrain = ml_collections.ConfigDict(dict(
        dataset="synthetic_speech/unlabeled", data_dir=ml_collections.FieldReference(None, field_type=str), max_seconds=3.0, num_clusters=100,
        kmeans_utterances=600, kmeans_iterations=100, proj_dim=128, temperature=0.1, eval_utterances=64,
        export_dir="teacher_hf", mfcc_cmn=False,  # True: MFCC targets with per-clip cepstral mean normalisation
        # iteration 2: cluster layer `target_layer` of this HF encoder instead of MFCCs; warm start from `init_encoder`
        target_encoder="", target_layer=6, init_encoder=""))
    if "iteration2" in args:
        iteration1 = args["iteration2"]
        config.total_steps = int(args.get("steps", 1200))
        config.optim.lr = 3e-4
        config.pretrain.update(dataset="synthetic_speech/unlabeled_large", num_clusters=250, kmeans_utterances=800,
                               target_encoder=iteration1, init_encoder=iteration1)
    if "runlocal" in args:
        config.total_steps = int(args.get("steps", 6))
        config.batch_size = 8  # divisible by the 8 CPU devices the tests force
        config.log_every = 2
        config.eval_every = 3
        config.checkpoint.save_every = 3
        config.progress = False
        config.model.update(hidden_size=32, num_hidden_layers=2, intermediate_size=64, conv_dim=(32,) * 7,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
        config.pretrain.update(dataset="synthetic_speech/unlabeled_tiny", max_seconds=1.0, num_clusters=8,
                               kmeans_utterances=16, proj_dim=16, eval_utterances=8)
    return config
