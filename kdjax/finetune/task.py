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

    config.finetune.one_stage Distillation and task losses in one run (kdjax.finetune.one_stage); off by default.

KWS picks the best checkpoint by validation accuracy; the test split is evaluated with the exported (best) state and
written to results.json ("test", plus what `kdjax report` reads). The synthetic SV corpus has no validation trials, so
an SV-only run keeps its final state. TrainState.extra holds {"stats": BatchNorm statistics} plus, in one-stage runs,
{"teacher": the frozen teacher's params}.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from kdjax.data import pipeline
from kdjax.errors import ConfigError
from kdjax.eval import metrics as eval_metrics
from kdjax.finetune import one_stage
from kdjax.finetune.tasks import FineTuneModel, label_tree
from kdjax.models import hf
from kdjax.models.encoder import Encoder
from kdjax.train import optim
from kdjax.train.state import TrainState

SAMPLE_RATE = 16000
MODES = {"kws": ("kws",), "sv": ("sv",), "multitask": ("kws", "sv")}


def resolve_encoder_dir(path: str, where: str = "config.finetune.encoder") -> str:
    """An HF folder for `path`: the folder itself, or the student_hf/ or teacher_hf/ a kdjax workdir exported."""
    for sub in ("", "student_hf", "teacher_hf"):
        candidate = os.path.join(path, sub)
        if path and os.path.exists(os.path.join(candidate, "config.json")):
            return candidate
    raise ConfigError(f"{where}={path!r}: expected an HF checkpoint folder (config.json + "
                      f"model.safetensors) or a kdjax workdir holding student_hf/ or teacher_hf/")


class FineTune:
    """The Task (see kdjax.train.loop.Task) for single-task and multi-task fine-tuning."""

    best_mode = "max"

    def __init__(self, config: Any):
        self.config = config
        self.cfg = cfg = config.finetune
        if cfg.mode not in MODES:
            raise ConfigError(f"config.finetune.mode={cfg.mode!r}: expected one of {sorted(MODES)}")
        if cfg.init not in ("pretrained", "random"):
            raise ConfigError(f"config.finetune.init={cfg.init!r}: expected 'pretrained' or 'random'")
        if cfg.init == "random" and cfg.frozen:
            raise ConfigError("config.finetune.frozen=True with init='random' would train heads on random features")
        if config.batch_size % jax.process_count():
            raise ConfigError(f"config.batch_size={config.batch_size} must divide by the process count")
        self.streams = MODES[cfg.mode]
        self.weights = {"kws": float(cfg.kws_weight), "sv": float(cfg.sv_weight)}
        self.one_stage = None
        if one_stage.enabled(cfg):
            if cfg.frozen:
                raise ConfigError("config.finetune.one_stage distils into the encoder, so it needs frozen=False")
            self.one_stage = one_stage.OneStage(cfg.one_stage, resolve_encoder_dir(cfg.one_stage.teacher,
                                                                                  "config.finetune.one_stage.teacher"),
                                                cfg.init)
        self.encoder_overrides = overrides = dict(cfg.get("encoder_overrides", {}) or {})
        if not cfg.frozen:  # SpecAugment-style time masking while the encoder trains, whatever the checkpoint says
            for name in ("mask_time_prob", "mask_time_length", "mask_time_min_masks"):
                overrides.setdefault(name, cfg[name])
        if self.one_stage is not None and not cfg.encoder:  # the student is built from the teacher
            self.encoder_dir = None
            self.encoder_config = dataclasses.replace(self.one_stage.student_config(), **overrides)
        else:
            self.encoder_dir = resolve_encoder_dir(cfg.encoder)
            self.encoder_config = hf.read_config(self.encoder_dir, **overrides)
        self.kws_samples = int(cfg.kws_seconds * SAMPLE_RATE)
        self.sv_samples = int(cfg.sv_seconds * SAMPLE_RATE)
        self.label_names = pipeline.label_names(cfg.kws_dataset, cfg.data_dir) if "kws" in self.streams else None
        expected = list(cfg.get("labels", None) or [])
        if self.label_names is not None and expected and expected != self.label_names:
            missing = [x for x in expected if x not in self.label_names]
            extra = [x for x in self.label_names if x not in expected]
            raise ConfigError(f"config.finetune.labels does not match the label set of {cfg.kws_dataset}: "
                              f"labels not in the dataset {missing}, dataset labels not expected {extra}"
                              + ("" if missing or extra else " (same labels, different order)"))
        self.num_speakers = (int(pipeline.metadata(cfg.sv_dataset, cfg.data_dir)["num_train_speakers"])
                             if "sv" in self.streams else None)
        self.best_metric = "kws/validation/accuracy" if "kws" in self.streams else None

        abstract = nnx.eval_shape(lambda: self._model(nnx.Rngs(0)))
        abstract.train()
        self.train_graphdef = nnx.graphdef(abstract)
        abstract.eval()
        self.eval_graphdef = nnx.graphdef(abstract)
        self.opt = optim.make_optimizer(self._optim_config(config.optim), config.total_steps,
                                        param_labels=label_tree, labels=["feature_encoder", "encoder", "heads"])
        self.pretrained = self._load_encoder() if cfg.init == "pretrained" else None
        if self.one_stage is not None:
            logging.info("one-stage: distilling %s into the encoder (weight %g, target layers %s)",
                         self.one_stage.teacher_dir, self.one_stage.weight, self.one_stage.loss_cfg.target_layers)
        self._kws_eval = jax.jit(self._kws_logits)
        self._sv_embed = jax.jit(self._sv_embeddings)

    # ---- model and optimizer ------------------------------------------------------------------------------------
    def _model(self, rngs: nnx.Rngs) -> FineTuneModel:
        model = FineTuneModel(self.encoder_config, num_classes=len(self.label_names) if self.label_names else None,
                              num_speakers=self.num_speakers, cfg=self.cfg, rngs=rngs)
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
        encoder = hf.from_pretrained(self.encoder_dir, **self.encoder_overrides)
        return jax.tree.map(np.asarray, nnx.state(encoder, nnx.Param))

    # ---- the Task protocol --------------------------------------------------------------------------------------
    def init(self, config: Any, rng: jax.Array) -> TrainState:
        """Heads at random, the encoder from the checkpoint (or random for the baseline); BatchNorm stats (and a
        one-stage run's teacher) in extra."""
        model = self._model(nnx.Rngs(params=jax.random.fold_in(rng, 0)))
        if self.pretrained is not None:
            nnx.update(model.encoder, jax.tree.map(jnp.asarray, self.pretrained))
        params = nnx.state(model, nnx.Param)
        extra = {"stats": nnx.state(model, nnx.BatchStat)}
        if self.one_stage is not None:
            extra["teacher"] = jax.tree.map(jnp.asarray, self.one_stage.teacher_params)
        return TrainState.create(params, self.opt.tx.init(params), rng, extra=extra)

    def _encode(self, model: FineTuneModel, batch: dict, key: jax.Array | None):
        frozen = bool(self.cfg.frozen)
        out = model.encoder(batch["input_values"], batch["attention_mask"], output_hidden_states=True,
                            deterministic=frozen or key is None, rng=None if frozen else key,
                            freeze_feature_encoder=bool(self.cfg.freeze_feature_encoder))
        hidden = out.hidden_states
        if frozen:  # no backward pass through a frozen encoder at all
            hidden = jax.lax.stop_gradient(hidden)
        return hidden, out

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict[str, jax.Array]]:
        """One step on w_kws * L_kws + w_sv * L_sv (the streams this mode has) [+ w * L_distill, one-stage]."""
        targets = ({name: self.one_stage.targets(state.extra["teacher"], batch[name]) for name in self.streams}
                   if self.one_stage is not None else None)

        def loss_fn(params, stats):
            # copy=True: fresh Variables of this trace, which BatchNorm may update (merge would reuse the outer ones)
            model = nnx.merge(self.train_graphdef, params, stats, copy=True)
            total, metrics, distill = 0.0, {}, []
            for i, name in enumerate(self.streams):
                b = batch[name]
                hidden, out = self._encode(model, b, state.step_key(i))
                if name == "kws":
                    loss, m = model.kws.loss(hidden, out.frame_mask, b["label"])
                else:
                    loss, m = model.sv.loss(hidden, out.frame_mask, b["speaker"])
                total = total + self.weights[name] * loss
                metrics.update({f"{name}/{k}": v for k, v in m.items()})
                if targets is not None:
                    distill.append(self.one_stage.loss(model.distill_heads, out, targets[name]))
            if distill:  # mean over the streams, so `weight` means the same in single- and multi-task runs
                d_loss, d_metrics = jax.tree.map(lambda *xs: sum(xs) / len(xs), *distill)
                total = total + self.one_stage.weight * d_loss
                metrics.update({f"distill/{k}": v for k, v in d_metrics.items()})
            return total, (metrics, nnx.state(model, nnx.BatchStat))

        (loss, (metrics, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params,
                                                                                    state.extra["stats"])
        updates, opt_state = self.opt.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics, "grad_norm": optax.global_norm(grads), "lr": self.opt.lr(state.step)}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             extra={**state.extra, "stats": stats}), metrics

    def _kws_logits(self, params, stats, batch):
        model = nnx.merge(self.eval_graphdef, params, stats)
        hidden, out = self._encode(model, batch, None)
        return model.kws(hidden, out.frame_mask)

    def _sv_embeddings(self, params, stats, batch):
        model = nnx.merge(self.eval_graphdef, params, stats)
        hidden, out = self._encode(model, batch, None)
        return model.sv.embed(hidden, out.frame_mask)

    def evaluate(self, state: TrainState, data: Any) -> dict[str, Any]:
        """KWS validation accuracy (SV has no validation trials here; it is scored on test at export)."""
        if "kws" not in data:
            return {}
        correct, count = 0.0, 0.0
        for batch in data["kws"]:
            logits = self._kws_eval(state.params, state.extra["stats"], batch)
            valid = np.asarray(multihost_utils.process_allgather(batch["valid"], tiled=True))
            hits = np.asarray(multihost_utils.process_allgather(jnp.argmax(logits, -1) == batch["label"],
                                                                tiled=True))
            correct += float(np.sum(hits & valid))
            count += float(np.sum(valid))
        return {"kws": {"validation": {"accuracy": correct / max(count, 1.0)}}}

    def train_data(self) -> dict[str, Iterator[dict]]:
        """One seeded grain iterator per stream: {"kws": ..., "sv": ...}."""
        per_process = self.config.batch_size // jax.process_count()
        its = {}
        for i, name in enumerate(self.streams):
            dataset = self.cfg.kws_dataset if name == "kws" else self.cfg.sv_dataset
            samples = self.kws_samples if name == "kws" else self.sv_samples
            source = pipeline.load_source(dataset, "train", self.cfg.data_dir)
            its[name] = pipeline.train_iterator(source, batch_size=per_process, max_samples=samples,
                                                seed=int(self.config.seed) + 1000 * i)
        return its

    def eval_data(self) -> dict[str, Iterable[dict]] | None:
        """KWS validation clips in fixed-shape batches (None for SV-only runs)."""
        if "kws" not in self.streams:
            return None
        source = pipeline.load_source(self.cfg.kws_dataset, "validation", self.cfg.data_dir)
        return {"kws": pipeline.process_eval_batches(source, global_batch_size=self.config.batch_size,
                                                     max_samples=self.kws_samples)}

    def audio_seconds(self, host_batch: dict) -> float:
        """Seconds of real audio in this process's batch (all streams)."""
        return sum(float(np.sum(b["attention_mask"])) for b in host_batch.values()) / SAMPLE_RATE

    # ---- test evaluation on the exported state ------------------------------------------------------------------
    def export(self, state: TrainState, workdir: str) -> dict[str, Any]:
        """Evaluate the test split(s) with the exported (best) state; the dict is merged into results.json."""
        params = multihost_utils.process_allgather(state.params, tiled=True)
        stats = multihost_utils.process_allgather(state.extra["stats"], tiled=True)
        params, stats = jax.device_put((params, stats), jax.local_devices()[0])
        test: dict[str, Any] = {}
        out: dict[str, Any] = {}
        if "kws" in self.streams:
            logits, labels = self._kws_test(params, stats)
            test["kws/test/accuracy"] = eval_metrics.accuracy(logits, labels)
            out["confusion_matrix"] = eval_metrics.confusion_matrix(labels, logits, len(self.label_names)).tolist()
            out["class_names"] = self.label_names
        if "sv" in self.streams:
            scores, labels = self._sv_test(params, stats)
            sv = eval_metrics.sv_metrics(scores, labels)
            test.update({f"sv/test/{k}": v for k, v in sv.items()})
            out["sv_scores"] = {"scores": scores.tolist(), "labels": labels.tolist()}
        encoder_dir = self.encoder_dir
        if self.one_stage is not None:  # the student exists only in this run: export it like distillation does
            encoder_dir = student_dir = os.path.join(workdir, "student_hf")
            if jax.process_index() == 0:
                hf.save_pretrained(nnx.merge(self.train_graphdef, params, stats).encoder, student_dir)
            out["one_stage"] = {"teacher": self.one_stage.teacher_dir, "weight": self.one_stage.weight,
                                "target_layers": list(self.one_stage.loss_cfg.target_layers), "student_hf": student_dir}
        # The fields `kdjax report` reads (kdjax.eval.report.Results).
        out.update(name=os.path.basename(os.path.normpath(workdir)), model=self._model_info(encoder_dir),
                   task=self.cfg.mode, encoder="frozen" if self.cfg.frozen else "finetuned", init=self.cfg.init,
                   metrics=test, test=test)
        logging.info("test: %s", test)
        return out

    def _kws_test(self, params, stats) -> tuple[np.ndarray, np.ndarray]:
        source = pipeline.load_source(self.cfg.kws_dataset, "test", self.cfg.data_dir)
        logits, labels = [], []
        for batch in pipeline.eval_batches(source, batch_size=int(self.cfg.eval_batch_size),
                                           max_samples=self.kws_samples, pad_to=self.kws_samples):
            out = np.asarray(self._kws_eval(params, stats, batch))
            logits.append(out[batch["valid"]])
            labels.append(batch["label"][batch["valid"]])
        return np.concatenate(logits), np.concatenate(labels)

    def _sv_test(self, params, stats) -> tuple[np.ndarray, np.ndarray]:
        source = pipeline.load_source(self.cfg.sv_dataset, "test", self.cfg.data_dir)
        ids = pipeline.utterance_ids(source)
        rows = []
        for batch in pipeline.eval_batches(source, batch_size=int(self.cfg.eval_batch_size),
                                           max_samples=int(self.cfg.sv_eval_max_seconds * SAMPLE_RATE),
                                           pad_to=SAMPLE_RATE):
            emb = np.asarray(self._sv_embed(params, stats, batch))
            rows.append((batch["index"][batch["valid"]], emb[batch["valid"]]))
        embeddings = np.zeros((len(source), rows[0][1].shape[1]), np.float32)
        for index, emb in rows:
            embeddings[index] = emb
        trials = pipeline.load_trials(self.cfg.sv_dataset, self.cfg.data_dir)
        position = {utt: i for i, utt in enumerate(ids)}
        table = np.asarray([(t, position[a], position[b]) for t, a, b in trials], np.int64)
        scores, labels = eval_metrics.cosine_scores(embeddings, table)
        return scores, labels

    def _model_info(self, path: str) -> dict[str, Any]:
        count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
            nnx.state(nnx.eval_shape(lambda: Encoder(self.encoder_config, rngs=nnx.Rngs(0))), nnx.Param)))
        info = {"name": str(self.cfg.get("model_name", "") or os.path.basename(os.path.normpath(path))),
                "path": path, "params": count, "size_mb": count * 4 / 2**20}
        for key, field in (("role", "role"), ("teacher", "teacher_name")):
            if self.cfg.get(field):
                info[key] = str(self.cfg.get(field))
        return info
