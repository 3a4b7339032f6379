"""Fine-tuning as a training-loop task: KWS, SV or both (multi-task) on a frozen or fine-tuned encoder.

    config.finetune.mode      "kws" | "sv" | "multitask"
    config.finetune.encoder   an HF folder, a distillation workdir (uses its student_hf/) or a pre-training workdir
                              (uses its teacher_hf/)
    config.finetune.init      "pretrained" | "random" (the from-scratch baseline: same architecture, random weights)
    config.finetune.frozen    True: only heads and layer weights train; the encoder runs in eval mode and its params
                              stay bit-identical. False: the encoder trains too (lr encoder_lr, SpecAugment on), the
                              conv feature encoder stays frozen unless freeze_feature_encoder=False.
    config.finetune.mask_time_prob / mask_time_length / mask_time_min_masks
                              the time masking of fine-tuned encoders (0.05 / 10 / 0: HF's probability and span,
                              but no minimum span count, since HF's 2 would mask ~40% of a 1 s clip), applied
                              whatever the checkpoint was saved with: a pre-training config masks far more (0.65), a
                              distilled student not at all; encoder_overrides wins

    config.finetune.kws_batch_size  the KWS stream's global batch (0: config.batch_size); a multi-task run's cheap
                              cached KWS head can take more clips a step than its SV head
    config.finetune.one_stage Distillation and task losses in one run (kdjax.finetune.one_stage); off by default.

KWS picks the best checkpoint by validation accuracy; the test split is evaluated with the exported (best) state
(kdjax.finetune.evaluation) and written to results.json["export"] (metrics plus what `kdjax report` reads). The
synthetic SV corpus has no validation trials, so an SV-only run keeps its final state. TrainState.extra holds
{"stats": BatchNorm statistics}; a one-stage run's teacher is passed to the step by the loop, never stored.
Frozen encoders and the frozen conv stack are optimizer groups (kdjax.train.optim): their gradients are zero, so XLA
drops their backward pass. The groups are FINETUNE_GROUPS: the encoder's two, and each head with its featurizer
("kws_head", "sv_head"), so a multi-task run can train each head at its own task's learning rate
(config.optim.groups.kws_head.lr).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from kdjax.data import pipeline, sampling
from kdjax.data.audio import SAMPLE_RATE
from kdjax.errors import ConfigError
from kdjax.eval import metrics as eval_metrics
from kdjax.eval.report import model_info
from kdjax.finetune import cache as cache_lib
from kdjax.finetune import cached, evaluation, one_stage
from kdjax.finetune.model import FineTuneModel
from kdjax.models import hf
from kdjax.models.encoder import Encoder
from kdjax.train import optim
from kdjax.train.state import TrainState, param_count
from kdjax.train.task import Task

MODES = {"kws": ("kws",), "sv": ("sv",), "multitask": ("kws", "sv")}
SV_SELECT = ("final", "validation", "best_test")


def resolve_encoder_dir(path: str, where: str = "config.finetune.encoder") -> str:
    """An HF folder for `path`: the folder itself, or the encoder a kdjax run exported (its results.json says where)."""
    if path and os.path.exists(os.path.join(path, "config.json")):
        return path
    results = os.path.join(path, "results.json") if path else ""
    if results and os.path.exists(results):
        with open(results) as f:
            exported = (json.load(f).get("export") or {}).get("encoder_hf")
        if exported and os.path.exists(os.path.join(exported, "config.json")):
            return exported
        raise ConfigError(f"{where}={path!r}: {results} records no exported encoder (export.encoder_hf = "
                          f"{exported!r}); was the run finished?")
    raise ConfigError(f"{where}={path!r}: expected an HF checkpoint folder (config.json + model.safetensors) or a "
                      "finished kdjax workdir (its results.json names the exported encoder)")


def _check(cfg: Any) -> None:
    if int(cfg.kws_batch_size) < 0 or int(cfg.kws_batch_size) % jax.process_count():
        raise ConfigError(f"config.finetune.kws_batch_size={cfg.kws_batch_size}: expected 0 (config.batch_size) or a "
                          f"positive multiple of the process count {jax.process_count()}")
    if cfg.mode not in MODES:
        raise ConfigError(f"config.finetune.mode={cfg.mode!r}: expected one of {sorted(MODES)}")
    if cfg.init not in ("pretrained", "random"):
        raise ConfigError(f"config.finetune.init={cfg.init!r}: expected 'pretrained' or 'random'")
    if cfg.init == "random" and cfg.frozen:
        raise ConfigError("config.finetune.frozen=True with init='random' would train heads on random features")
    if one_stage.enabled(cfg) and cfg.frozen:
        raise ConfigError("config.finetune.one_stage distils into the encoder, so it needs frozen=False")
    for field, allowed in (("kws_sampling", ("uniform", "balanced")), ("kws_dev", ("plain", "balanced_resample")),
                           ("sv_eval", ("padded", "equal_length")), ("sv_select", SV_SELECT),
                           ("multitask_select", ("kws", "mean_error"))):
        if cfg.get(field, allowed[0]) not in allowed:
            raise ConfigError(f"config.finetune.{field}={cfg[field]!r}: expected one of {list(allowed)}")
    if cfg.get("multitask_select") == "mean_error" and (cfg.mode != "multitask" or cfg.sv_select != "validation"):
        raise ConfigError(f"config.finetune.multitask_select='mean_error' needs mode='multitask' and "
                          f"sv_select='validation' (got mode={cfg.mode!r}, sv_select={cfg.sv_select!r})")


FINETUNE_GROUPS = ["feature_encoder", "encoder", "kws_head", "sv_head", "heads"]


def finetune_labels(params: Any) -> Any:
    """The optimizer group of every parameter: optim.encoder_label's, with the KWS and SV downstream models (head and
    featurizer) as "kws_head" and "sv_head"; "heads" is what is left (a one-stage run's distillation heads)."""
    def label(path, _):
        group = optim.encoder_label(path)
        first = optim.path_names(path[:1])[0] if path else ""
        return f"{first}_head" if group == "heads" and first in ("kws", "sv") else group

    return jax.tree_util.tree_map_with_path(label, params)


def _check_labels(cfg: Any, names: list[str]) -> None:
    expected = list(cfg.get("labels", None) or [])
    if expected and expected != names:
        missing = [x for x in expected if x not in names]
        extra = [x for x in names if x not in expected]
        raise ConfigError(f"config.finetune.labels does not match the label set of {cfg.kws_dataset}: labels not in "
                          f"the dataset {missing}, dataset labels not expected {extra}"
                          + ("" if missing or extra else " (same labels, different order)"))


class FineTune(Task):
    """The Task (see kdjax.train.task.Task) for single-task and multi-task fine-tuning."""

    config_key = "finetune"
    best_mode = "max"

    def __init__(self, config: Any):
        super().__init__(config)
        self.cfg = cfg = config.finetune
        cached.check(cfg, one_stage.enabled(cfg))
        _check(cfg)
        self.streams = MODES[cfg.mode]
        self.weights = {"kws": float(cfg.kws_weight), "sv": float(cfg.sv_weight)}
        self.one_stage = (one_stage.OneStage(cfg.one_stage, resolve_encoder_dir(cfg.one_stage.teacher,
                                                                               "config.finetune.one_stage.teacher"),
                                             cfg.init) if one_stage.enabled(cfg) else None)
        self.encoder_dir, self.encoder_config, self.encoder_overrides = self._encoder_config()
        if self.one_stage is not None:
            self.one_stage.check(self.encoder_config)
        self.samples = {"kws": int(cfg.kws_seconds * SAMPLE_RATE), "sv": int(cfg.sv_seconds * SAMPLE_RATE)}
        self._dev_indices = None
        self.label_names = pipeline.label_names(cfg.kws_dataset, cfg.data_dir) if "kws" in self.streams else None
        if self.label_names is not None:
            _check_labels(cfg, self.label_names)
        self.num_speakers = (int(pipeline.metadata(cfg.sv_dataset, cfg.data_dir)["num_train_speakers"])
                             if "sv" in self.streams else None)
        self.sv_select = cfg.sv_select if "sv" in self.streams else "final"
        self._sv_eval = (evaluation.trial_list(cfg, "test" if self.sv_select == "best_test" else "validation")
                         if self.sv_select != "final" else None)  # (trial list, split) scored during training
        self.caches = (cached.FeatureCaches(cfg, self.encoder_dir, self.streams, self.samples,
                                            self.encoder_overrides,
                                            self._sv_eval[1] if self._sv_eval is not None else None)
                       if cfg.cache else None)
        self.mean_error = cfg.get("multitask_select", "kws") == "mean_error"
        if self.mean_error:
            self.best_metric, self.best_mode = "multitask/validation/mean_error", "min"
        elif "kws" in self.streams:
            self.best_metric, self.best_mode = "kws/validation/accuracy", "max"
        elif self._sv_eval is not None:
            self.best_metric = "sv/" + ("test" if self.sv_select == "best_test" else "validation") + "/eer"
            self.best_mode = "min"
        abstract = nnx.eval_shape(lambda: self._model(nnx.Rngs(0)))
        abstract.train()
        self.train_graphdef = nnx.graphdef(abstract)
        abstract.eval()
        self.eval_graphdef = nnx.graphdef(abstract)
        self.optimizer = optim.make_optimizer(self._optim_config(config.optim), config.total_steps,
                                              param_labels=finetune_labels, labels=FINETUNE_GROUPS)
        self.pretrained = self._load_encoder() if cfg.init == "pretrained" and self.caches is None else None
        if self.one_stage is not None:
            logging.info("one-stage: distilling %s into the encoder (weight %g, target layers %s)",
                         self.one_stage.teacher_dir, self.one_stage.weight, self.one_stage.loss_cfg.target_layers)

    def config_defaults(self):
        from kdjax.finetune.config import finetune_config

        return finetune_config(self.cfg.mode)

    # ---- model and optimizer ------------------------------------------------------------------------------------
    def _encoder_config(self) -> tuple[str | None, Any, dict]:
        cfg = self.cfg
        overrides = dict(cfg.get("encoder_overrides", {}) or {})
        if not cfg.frozen:  # SpecAugment-style time masking while the encoder trains, whatever the checkpoint says
            for name in ("mask_time_prob", "mask_time_length", "mask_time_min_masks"):
                overrides.setdefault(name, cfg[name])
        if self.one_stage is not None and not cfg.encoder:  # the student is built from the teacher
            return None, dataclasses.replace(self.one_stage.student_config(), **overrides), overrides
        encoder_dir = resolve_encoder_dir(cfg.encoder)
        return encoder_dir, hf.read_config(encoder_dir, **overrides), overrides

    def _model(self, rngs: nnx.Rngs) -> FineTuneModel:
        layers = self.caches.num_hidden_states(self.streams[0]) if self.caches is not None else None
        model = FineTuneModel(self.encoder_config, num_classes=len(self.label_names) if self.label_names else None,
                              num_speakers=self.num_speakers, cfg=self.cfg, rngs=rngs, num_hidden_states=layers)
        if self.caches is not None:
            # Cached runs never call the encoder: keep it out of the state (every step would pass, donate and return
            # its ~150 arrays: the teacher's cached KWS step took 4.4 ms with them, the heads' own work ~1.5 ms), and
            # out of the checkpoints. Built and dropped, so the heads draw the same init as in an uncached run.
            model.encoder = None
        if self.one_stage is not None:  # last, so the other modules draw the same init as in a two-stage run
            model.distill_heads = self.one_stage.heads(self.encoder_config, rngs)
        return model

    def _optim_config(self, optim_cfg: Any) -> Any:
        cfg = optim_cfg.copy_and_resolve_references()
        groups = dict(cfg.get("groups", {}) or {})
        frozen_encoder = bool(self.cfg.frozen)
        groups.setdefault("feature_encoder", {"frozen": frozen_encoder or bool(self.cfg.freeze_feature_encoder)})
        groups.setdefault("encoder", {"frozen": frozen_encoder, "lr": float(self.cfg.encoder_lr)})
        cfg.groups = groups
        return cfg

    def _load_encoder(self) -> nnx.State | None:
        if self.encoder_dir is None:  # one-stage student built from the teacher
            return self.one_stage.student_params(self.encoder_config)
        return hf.load_state(self.encoder_dir, **self.encoder_overrides)[2]

    # ---- the Task interface -------------------------------------------------------------------------------------
    def teacher(self) -> Any:
        """A one-stage run's frozen teacher (None for two-stage runs)."""
        return self.one_stage.teacher if self.one_stage is not None else None

    def init(self, rng: jax.Array) -> TrainState:
        """Heads at random, the encoder from the checkpoint (or random for the baseline); BatchNorm stats in extra."""
        model = self._model(nnx.Rngs(params=jax.random.fold_in(rng, 0)))
        if self.pretrained is not None and model.encoder is not None:
            nnx.update(model.encoder, jax.tree.map(jnp.asarray, self.pretrained))
        params = nnx.state(model, nnx.Param)
        return TrainState.create(params, self.optimizer.tx.init(params), rng,
                                 extra={"stats": nnx.state(model, nnx.BatchStat)})

    def _encode(self, model: FineTuneModel, batch: dict, key: jax.Array | None):
        frozen = bool(self.cfg.frozen)
        out = model.encoder(batch["input_values"], batch["attention_mask"], output_hidden_states=True,
                            deterministic=frozen or key is None, rng=None if frozen else key)
        return out.hidden_states, out

    def loss(self, params: Any, state: TrainState, batch: dict, teacher: Any) -> tuple[jax.Array, tuple]:
        """w_kws * L_kws + w_sv * L_sv (the streams this mode has) [+ w * L_distill, one-stage]."""
        # copy=True: fresh Variables of this trace, which BatchNorm may update (merge would reuse the outer ones)
        model = nnx.merge(self.train_graphdef, params, state.extra["stats"], copy=True)
        total, metrics, distill = 0.0, {}, []
        for i, name in enumerate(self.streams):
            b = batch[name]
            head = model.downstream(name)
            if "pooled" in b:  # cached KWS: the exact pooled identity (kdjax.finetune.cache.pooled)
                loss, m = cache_lib.kws_pooled_loss(head, b["pooled"], b["label"])
            else:
                hidden, frame_mask = (cached.features(b) if "hidden_states" in b
                                      else self._hidden(model, b, state.step_key(i), teacher, distill))
                loss, m = head.loss(hidden, frame_mask, b[head.target])
            total = total + self.weights[name] * loss
            metrics.update({f"{name}/{k}": v for k, v in m.items()})
        if distill:  # mean over the streams, so `weight` means the same in single- and multi-task runs
            d_loss, d_metrics = jax.tree.map(lambda *xs: sum(xs) / len(xs), *distill)
            total = total + self.one_stage.weight * d_loss
            metrics.update({f"distill/{k}": v for k, v in d_metrics.items()})
        return total, (metrics, {"stats": nnx.state(model, nnx.BatchStat)})

    def _hidden(self, model: FineTuneModel, b: dict, key: jax.Array, teacher: Any,
                distill: list) -> tuple[Any, jax.Array]:
        """Run the encoder on a stream's audio batch; a one-stage run also scores it against the teacher."""
        hidden, out = self._encode(model, b, key)
        if self.one_stage is not None:
            distill.append(self.one_stage.loss(model.distill_heads, out, self.one_stage.targets(teacher, b)))
        return hidden, out.frame_mask

    def _eval_model(self, params: Any, stats: Any) -> FineTuneModel:
        return nnx.merge(self.eval_graphdef, params, stats)

    def kws_logits(self, params: Any, stats: Any, batch: dict) -> jax.Array:
        """KWS logits of a batch (eval mode): audio, or cached pooled features."""
        model = self._eval_model(params, stats)
        if "pooled" in batch:
            return cache_lib.kws_pooled_logits(model.kws, batch["pooled"])
        hidden, out = self._encode(model, batch, None)
        return model.kws(hidden, out.frame_mask)

    def sv_embeddings(self, params: Any, stats: Any, batch: dict) -> jax.Array:
        """SV embeddings of a batch (eval mode): audio, or cached frames."""
        model = self._eval_model(params, stats)
        if "hidden_states" in batch:
            return model.sv.embed(*cached.features(batch))
        hidden, out = self._encode(model, batch, None)
        return model.sv.embed(hidden, out.frame_mask)

    def eval_step(self, state: TrainState, batch: dict, teacher: Any, stream: str) -> dict[str, jax.Array]:
        """KWS: correct and valid counts of a validation batch; SV: the batch's embeddings (rows, by index)."""
        if stream == "sv":
            emb = self.sv_embeddings(state.params, state.extra["stats"], batch)
            return {"rows/embedding": emb, "rows/index": batch["index"], "rows/valid": batch["valid"]}
        logits = self.kws_logits(state.params, state.extra["stats"], batch)
        hits = (jnp.argmax(logits, -1) == batch["label"]) & batch["valid"]
        return {"correct": jnp.sum(hits), "count": jnp.sum(batch["valid"])}

    def eval_metrics(self, sums: dict) -> dict[str, Any]:
        """KWS validation accuracy; SV EER and minDCF on the trial list sv_select names; with multitask_select
        "mean_error", the mean of the KWS validation error and that EER (the checkpoint selection's metric)."""
        out: dict[str, Any] = {}
        if "kws" in sums:
            s = sums["kws"]
            out["kws"] = {"validation": {"accuracy": float(s["correct"]) / max(float(s["count"]), 1.0)}}
        if "sv" in sums:
            s, (name, split) = sums["sv"], self._sv_eval
            scores, labels = evaluation.sv_scores(self.cfg, split, name, s["rows/index"], s["rows/embedding"],
                                                  s["rows/valid"].astype(bool))
            purpose = "test" if self.sv_select == "best_test" else "validation"
            out["sv"] = {purpose: eval_metrics.sv_metrics(scores, labels)}
        if self.mean_error and "kws" in out and "sv" in out:
            errors = 1.0 - out["kws"]["validation"]["accuracy"], out["sv"]["validation"]["eer"]
            out["multitask"] = {"validation": {"mean_error": sum(errors) / 2}}
        return out

    def train_data(self) -> dict[str, Iterator[dict]]:
        """One seeded grain iterator per stream: {"kws": ..., "sv": ...}."""
        cfg, batch = self.cfg, self.config.batch_size
        pre = evaluation.preprocessing(cfg)
        its = {}
        for i, name in enumerate(self.streams):
            per_process = (int(cfg.kws_batch_size or batch) if name == "kws" else batch) // jax.process_count()
            seed = int(self.config.seed) + 1000 * i
            if self.caches is not None:
                its[name] = self.caches.train_iterator(name, per_process, seed)
                continue
            source = pipeline.load_source(cfg.kws_dataset if name == "kws" else cfg.sv_dataset, "train", cfg.data_dir)
            if name == "kws" and cfg.kws_sampling == "balanced":  # s3prl's WeightedRandomSampler (N / count)
                its[name] = sampling.balanced_iterator(source, batch_size=per_process, max_samples=self.samples[name],
                                                       seed=seed, labels=sampling.example_values(source, "label"),
                                                       **pre)
                continue
            min_samples = int(cfg.sv_min_seconds * SAMPLE_RATE) + 1 if name == "sv" and cfg.sv_min_seconds else 0
            its[name] = pipeline.train_iterator(source, batch_size=per_process, max_samples=self.samples[name],
                                                seed=seed, min_samples=min_samples, **pre)
        return its

    def eval_data(self) -> dict[str, Iterable[dict]] | None:
        """KWS validation clips in fixed-shape batches (class-balanced resample with kws_dev); SV: the utterances of
        the trial list sv_select scores during training; None when there is nothing to select on."""
        cfg, out = self.cfg, {}
        if "kws" in self.streams and self.caches is not None:
            out["kws"] = self.caches.validation_batches(self.config.batch_size)
        elif "kws" in self.streams:
            source = pipeline.load_source(cfg.kws_dataset, "validation", cfg.data_dir)
            indices, crop_seed = None, None
            if cfg.kws_dev == "balanced_resample":  # s3prl's class-balanced dev loader, one fixed draw
                if self._dev_indices is None:
                    self._dev_indices = sampling.balanced_resample(sampling.example_values(source, "label"),
                                                                   seed=int(cfg.kws_dev_seed))
                indices, crop_seed = self._dev_indices, int(cfg.kws_dev_seed)
            out["kws"] = pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                                       max_samples=self.samples["kws"], indices=indices,
                                                       crop_seed=crop_seed, **evaluation.preprocessing(cfg))
        if self._sv_eval is not None and self.caches is not None:
            out["sv"] = self.caches.sv_eval_batches(int(cfg.eval_batch_size))
        elif self._sv_eval is not None:
            out["sv"] = evaluation.sv_batches(cfg, self._sv_eval[1], in_loop=True)
        return out or None

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real audio in this process's batch (all streams; cached batches by their frames or clips)."""
        total = 0.0
        for name, b in host_batch.items():
            if "attention_mask" in b:
                total += float(np.sum(b["attention_mask"])) / SAMPLE_RATE
            elif "frame_mask" in b:
                total += float(np.sum(b["frame_mask"])) * self.encoder_config.frame_stride / SAMPLE_RATE
            else:
                total += len(b["label"]) * self.samples[name] / SAMPLE_RATE
        return total

    # ---- the end of a run ---------------------------------------------------------------------------------------
    def export(self, state: TrainState, workdir: str) -> dict[str, Any]:
        """Test metrics of the exported (best) state, the report's fields and, one-stage, the student's folder."""
        params, stats = jax.device_put((state.params, state.extra["stats"]), jax.local_devices()[0])
        out = evaluation.test_metrics(self.streams, lambda b: self.kws_logits(params, stats, b),
                                      lambda b: self.sv_embeddings(params, stats, b), self.cfg, self.samples["kws"],
                                      self.label_names, self.caches)
        encoder_dir = self.encoder_dir
        if self.one_stage is not None:  # the student exists only in this run: export it like distillation does
            encoder_dir = os.path.join(workdir, "student_hf")
            if jax.process_index() == 0:
                hf.save_pretrained(nnx.merge(self.train_graphdef, params, stats).encoder, encoder_dir)
            out["one_stage"] = {"teacher": self.one_stage.teacher_dir, "weight": self.one_stage.weight,
                                "target_layers": list(self.one_stage.loss_cfg.target_layers)}
            out["encoder_hf"] = encoder_dir
        count = param_count(nnx.state(nnx.eval_shape(lambda: Encoder(self.encoder_config, rngs=nnx.Rngs(0))),
                                      nnx.Param))
        name = str(self.cfg.get("model_name", "") or os.path.basename(os.path.normpath(encoder_dir)))
        out.update(name=os.path.basename(os.path.normpath(workdir)), task=self.cfg.mode,
                   model=model_info(name, encoder_dir, count, role=self.cfg.get("role", ""),
                                    teacher=self.cfg.get("teacher_name", "")),
                   encoder="frozen" if self.cfg.frozen else "finetuned", init=self.cfg.init)
        logging.info("test: %s", out["metrics"])
        return out
