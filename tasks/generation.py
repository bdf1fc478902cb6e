"""Generation tasks ``gen-*``: a VQ tokenizer, then an autoregressive prior over its token grids.

The two-stage recipe of VQ-VAE / VQGAN (van den Oord et al., arXiv:1711.00937; Esser et al.,
arXiv:2012.09841, sec. 3.2): the runner trains, through its one loop,

1. ``tokenizer``: exactly the matching reconstruction task (:mod:`vqbench.tasks.images`): the same
   autoencoder, loss, batches and evaluation, under the generation run's budget;
2. ``prior``: a GPT-style transformer (:class:`vqbench.tasks.prior.TokenPrior`) on the code ids of the
   frozen tokenizer in raster order, over a vocabulary of the method's real codebook size
   (``quantizer.codebook_size``: FSQ's product of levels, LFQ's power of two, not the task's
   ``codebook_size``), minimising the cross-entropy ``-(1/L) sum_i log p(s_i | s_<i)``.
   Its steps, lr and batch size are task parameters (``prior_*``; ``None`` = the budget's).
   The training (and eval) images are encoded once, lazily on the prior's first batch or
   evaluation, in eval mode and in order (deterministic).

Reuse: when the reconstruction run with the same method, method params, seed, reconstruction
params and budget is complete in the same results folder (``runs/<id>.parquet`` with status
``ok`` and a final checkpoint), its tokenizer weights are loaded and only the prior stage runs. The
id is that of ``RunSpec(task=<recon>, ...)`` with the reconstruction task's registry version. With
the default ``prior_dropout = 0`` the prior's numbers are then identical to a run that trains the
tokenizer itself (the prior is initialised from its own seeded RNG and samples from a seeded
generator).

Evaluation of the prior (whole eval split):

* ``nll_bits_per_token``: ``-(1/(N L)) sum log2 p(s_i | s_<i)`` over the eval images' tokens;
* samples: ``n_samples`` token grids drawn with ``temperature`` / ``top_k`` from a generator seeded
  with the run's seed, decoded by the tokenizer (``quantizer.decode_indices`` -> decoder):
  ``emitted_code_frac`` (codes the prior emits / K, K the method's real codebook size, also reported as
  ``codebook_size``) and ``emitted_perplexity``;
* Frechet distance of the samples to the eval images (gFID), by :mod:`vqbench.image_metrics`'s naming
  rule with prefix ``g``: ``gfd_randcnn`` always (it exists everywhere: the main metric unless the task has a
  classifier), and ``gfid_inception`` (or ``gfd_<timm model>``) too when that extractor is available;
* ``precision_<extractor>`` / ``recall_<extractor>``: Kynkaanniemi et al. (arXiv:1904.06991) with
  ``pr_k``-NN manifolds in the best available extractor's features (Inception if present);
* with a sample classifier (:class:`vqbench.gen_metrics.SampleClassifier`; ``gen-digits``: ``digitsnet``, a
  digits classifier trained once, :mod:`vqbench.tasks.digitsnet`): ``gfd_<classifier>`` (``gen-digits``' main
  metric), ``precision_<classifier>`` / ``recall_<classifier>`` in its penultimate features,
  ``class_coverage_<classifier>`` (:func:`vqbench.gen_metrics.class_coverage` of its predicted classes),
  ``class_kl_<classifier>`` (:func:`vqbench.gen_metrics.class_kl`, samples vs the split's images) and the
  classifier's own figures (its test accuracy and recipe hash).

When the tokenizer was reused, every prior evaluation also carries the tokenizer's own evaluation
(reconstruction quality and collapse metrics), so a generation run's rows are complete either way.

Data parallel: the prior trains on each rank's shard of every global batch; the token grids are encoded, and
the prior's evaluation (NLL, samples, gFD, precision/recall) computed, whole on every rank alike (with the
Frechet distances' cross-rank sync off), so every rank holds the single-process numbers; the tokenizer's
evaluation is split over ranks like the reconstruction task's.

Parameters: all of the reconstruction task's (same names and defaults) plus the ``prior_*`` and
sampling parameters below. Version: ``1000 * (GEN_VERSION + revision) + <reconstruction task version>``, so a
new tokenizer recipe also gives new generation ids; ``revision`` counts the changes of one generation task's own
evaluation (its ``register_generation(revision=)``; any bump of the three makes the number grow, so a task's
versions never repeat, as long as reconstruction versions stay below 1000). ``GEN_VERSION`` 2: the prior's
vocabulary and the emitted-code figures use the method's real codebook size (version 1 used the task's, so a
method with fewer codes was capped below 1 and a sampled id past its K decoded by wrap-around). Revisions:
``gen-digits`` 1: the digitsnet metrics, with ``gfd_digitsnet`` as main metric (was ``gfd_randcnn``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import vqbench.tasks.images  # noqa: F401  (registers the reconstruction tasks the gen-* tasks wrap)
from vqbench.gen_metrics import (
    BASE_GFD,
    SampleClassifier,
    class_coverage,
    class_kl,
    cross_entropy_bits,
    emitted_codes,
    generative_extractors,
    precision_recall,
)
from vqbench.image_metrics import FrechetDistance, ImageFeatures
from vqbench.metrics import Evaluation, code_counts
from vqbench.registry import TASKS, register_task
from vqbench.spec import RunSpec
from vqbench.store import ResultStore
from vqbench.tasks import digitsnet
from vqbench.tasks.base import EpochSampler, Stage, Task
from vqbench.tasks.image_data import iterate, to_model, to_unit
from vqbench.tasks.prior import TokenPrior

GEN_VERSION = 2
#: the prior's weights are drawn from a generator seeded with ``seed + PRIOR_SEED_OFFSET``
PRIOR_SEED_OFFSET = 7919
#: at most this many logits (rows x positions x codes) exist at once when evaluating the NLL
MAX_LOGITS = 2**27

PRIOR_DEFAULTS: dict[str, Any] = dict(
    prior_dim=256, prior_layers=4, prior_heads=4, prior_dropout=0.0, prior_steps=None, prior_lr=None,
    prior_batch_size=None, n_samples=None, sample_batch_size=256, temperature=1.0, top_k=None, pr_k=3)
#: builds a task's sample classifier from its reconstruction task, on a device
ClassifierFactory = Callable[[Task, torch.device], SampleClassifier]


@contextlib.contextmanager
def captured_outputs(module: nn.Module) -> Iterator[list[Tensor]]:
    """Collect (on the CPU) every output ``module`` computes inside the block: features are extracted once."""
    outputs: list[Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: outputs.append(out.detach().cpu()))
    try:
        yield outputs
    finally:
        handle.remove()


class GenerationTask(Task):
    """Stage 1: the reconstruction task ``recon_task``; stage 2: a token prior (see the module doc)."""

    def __init__(self, recon_task: str, *, prior_dim: int, prior_layers: int, prior_heads: int,
                 prior_dropout: float, prior_steps: int | None, prior_lr: float | None,
                 prior_batch_size: int | None, n_samples: int | None, sample_batch_size: int,
                 temperature: float, top_k: int | None, pr_k: int, classifier: ClassifierFactory | None = None,
                 **recon_params: Any) -> None:
        if prior_dim % prior_heads:
            raise ValueError(f"prior_dim {prior_dim} must be divisible by prior_heads {prior_heads}")
        for name, value in (("prior_steps", prior_steps), ("prior_batch_size", prior_batch_size),
                            ("n_samples", n_samples)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None), got {value}")
        if prior_lr is not None and not prior_lr > 0:
            raise ValueError(f"prior_lr must be > 0 (or None), got {prior_lr}")
        if temperature < 0 or sample_batch_size < 1 or pr_k < 1:
            raise ValueError("temperature must be >= 0, sample_batch_size and pr_k >= 1")
        if n_samples is not None and n_samples <= pr_k:
            raise ValueError(f"n_samples ({n_samples}) must exceed pr_k ({pr_k}) for k-NN precision/recall")
        self.recon_task = recon_task
        self.recon_params = TASKS.resolve_params(recon_task, recon_params)
        self.recon = TASKS.create(recon_task, **recon_params)
        self.latent_dim, self.codebook_size = self.recon.latent_dim, self.recon.codebook_size
        self.prior_dim, self.prior_layers, self.prior_heads = prior_dim, prior_layers, prior_heads
        self.prior_dropout, self.prior_steps, self.prior_lr = prior_dropout, prior_steps, prior_lr
        self.prior_batch_size, self.n_samples, self.sample_batch_size = prior_batch_size, n_samples, sample_batch_size
        self.temperature, self.top_k, self.pr_k = temperature, top_k, pr_k
        self.classifier_factory = classifier
        self.reused_tokenizer: dict[str, Tensor] | None = None  # state dict of a finished recon run's model
        self.reused_run_id: str | None = None

    # -- setup and reuse -------------------------------------------------------------------------------
    def setup(self, device: torch.device, seed: int) -> None:
        self.device, self.seed = torch.device(device), seed
        self.recon.setup(device, seed)
        self.token_grid = self.recon.token_grid
        self.reused_tokenizer = self._find_tokenizer()
        self._tokens: dict[str, Tensor] = {}
        self._tokenizer_eval: dict[str, Evaluation] = {}
        self._real: dict[str, dict[str, Any]] = {}
        self._classifier: SampleClassifier | None = None

    def recon_spec(self) -> RunSpec | None:
        """The spec of the reconstruction run whose tokenizer this run can reuse (None outside the runner)."""
        spec = self.run_spec
        if spec is None:
            return None
        return RunSpec(task=self.recon_task, method=spec.method, task_params=self.recon_params,
                       method_params=spec.method_params, seed=spec.seed, budget=spec.budget,
                       task_version=TASKS.get(self.recon_task).version, method_version=spec.method_version)

    def _find_tokenizer(self) -> dict[str, Tensor] | None:
        recon = self.recon_spec()
        if recon is None or self.results_root is None:
            return None
        root = Path(self.results_root)
        own = root / "checkpoints" / f"{self.run_spec.run_id}.pt"
        if own.is_file():  # resuming: keep the stage layout this run started with
            models = torch.load(own, map_location="cpu", weights_only=False).get("models") or []
            if models and "pos_emb" not in models[0]:
                return None  # it trains its own tokenizer (models[0] is the autoencoder, not the prior)
        rid = recon.run_id
        ckpt = root / "checkpoints" / f"{rid}.pt"
        if ResultStore(root).run_status(rid) != "ok" or not ckpt.is_file():  # (per-run or compacted store)
            return None
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        if not state.get("complete") or not state.get("models"):
            return None
        self.reused_run_id = rid
        return state["models"][0]

    def feature_bank(self) -> Tensor | None:
        return None if self.reused_tokenizer is not None else self.recon.feature_bank()

    # -- stages ------------------------------------------------------------------------------------------
    def build_prior(self, vocab_size: int) -> TokenPrior:
        """The prior over ``vocab_size`` code ids (the quantizer's real K), initialised from its own seeded RNG
        (the global RNG state is left untouched)."""
        h, w = self.token_grid
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + PRIOR_SEED_OFFSET)
            prior = TokenPrior(vocab_size, h * w, self.prior_dim, self.prior_layers, self.prior_heads,
                               self.prior_dropout)
        return prior.to(self.device)

    def stages(self, quantizer: nn.Module, budget: Any) -> list[Stage]:
        if self.reused_tokenizer is None:
            tokenizer_stage = self.recon.reconstruction_stage(quantizer, budget)
            tokenizer_stage.name = "tokenizer"
            self.tokenizer = tokenizer_stage.model
            stages = [tokenizer_stage]
        else:
            self.tokenizer = self.recon.build_model(quantizer)
            self.tokenizer.load_state_dict(self.reused_tokenizer)
            stages = []
        self.prior = self.build_prior(int(quantizer.codebook_size))  # the method's real K, not the task's
        batch_size = self.prior_batch_size or budget.batch_size
        sampler = EpochSampler(len(self.recon.train_data), batch_size, self.seed)

        def batch(step: int) -> Tensor:
            tokens = self.tokens("train")
            return tokens[sampler.local_indices(step)].to(self.device, non_blocking=True).long()

        def loss(tokens: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
            nats = self.prior.nll(tokens)
            return nats, {"nll_bits_per_token": nats.detach() / math.log(2.0)}

        stages.append(Stage("prior", self.prior, batch, loss, self.evaluate_prior, steps=self.prior_steps,
                            lr=self.prior_lr, quantizer=None, items_per_batch=batch_size,
                            validate=lambda: self.evaluate_prior("validation")))
        return stages

    # -- tokens ------------------------------------------------------------------------------------------
    def _frozen_tokenizer(self) -> nn.Module:
        self.tokenizer.eval()
        self.tokenizer.requires_grad_(False)
        return self.tokenizer

    @torch.no_grad()
    def tokens(self, split: str) -> Tensor:
        """Code ids ``(N, h, w)`` (int32, CPU) of every image of ``split`` (train/validation/eval), encoded once."""
        if split not in self._tokens:
            tokenizer = self._frozen_tokenizer()
            source = self.recon.split_data(split)
            chunks = [tokenizer.tokens(self.recon.model_input(images)).to("cpu", torch.int32)
                      for images in iterate(source, self.recon.eval_batch_size, self.device, self.recon.workers)]
            self._tokens[split] = torch.cat(chunks)
        return self._tokens[split]

    # -- evaluation --------------------------------------------------------------------------------------
    def sample_classifier(self) -> SampleClassifier | None:
        """The task's sample classifier (built once, on the first evaluation), or None without one."""
        if self.classifier_factory is not None and self._classifier is None:
            self._classifier = self.classifier_factory(self.recon, self.device)
        return self._classifier

    @torch.no_grad()
    def _real_statistics(self, split: str = "eval") -> dict[str, Any]:
        """Frechet-distance objects holding ``split``'s image statistics, and the feature networks whose outputs
        precision/recall use with those outputs on ``split``'s images (once a split)."""
        if split not in self._real:
            extractors, pr_features = generative_extractors(self.recon.fd, self.device)
            watched = [pr_features]  # the networks whose features precision/recall use
            classifier = self.sample_classifier()
            if classifier is not None:
                extractors, watched = [*extractors, classifier.features], [*watched, classifier.features]
            distances = [FrechetDistance(f, prefix="g") for f in extractors]
            for fd in distances:  # every rank computes the whole evaluation: summing states over ranks would
                fd.metric.sync_on_compute = fd.metric._to_sync = False  # count each image once per rank
            with contextlib.ExitStack() as stack:
                feats = [stack.enter_context(captured_outputs(net)) for net in watched]
                for images in self.recon.eval_batches(self.sample_batch_size, split=split):
                    x01 = to_unit(to_model(images))
                    for fd in distances:
                        fd.update(x01, real=True)
            for fd in distances:
                fd.finish_real()
            self._real[split] = {"fd": distances, "watched": watched, "features": [torch.cat(f) for f in feats]}
        return self._real[split]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` token grids ``(n, h, w)`` from the prior (bf16 autocast on CUDA, as in training)."""
        h, w = self.token_grid
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            seq = self.prior.sample(n, temperature=self.temperature, top_k=self.top_k, generator=generator,
                                    device=self.device)
        return seq.reshape(n, h, w)

    def _feature_metrics(self, net: ImageFeatures, real: Tensor, fake: Tensor) -> dict[str, float]:
        """Precision/recall of ``fake`` vs ``real`` features of ``net``, and, when ``net`` is the sample
        classifier's, the class coverage and class KL of the samples (named ``<figure>_<extractor>``)."""
        suffix = net.metric_name().split("_", 1)[1]  # inception | randcnn | <timm model> | <classifier>
        pr = precision_recall(real.to(self.device), fake.to(self.device), self.pr_k)
        out = {f"precision_{suffix}": pr["precision"], f"recall_{suffix}": pr["recall"]}
        classifier = self._classifier
        if classifier is not None and net is classifier.features:
            predicted = classifier.predict(fake.to(self.device))
            out[f"class_coverage_{suffix}"] = class_coverage(predicted, classifier.num_classes)
            out[f"class_kl_{suffix}"] = class_kl(predicted, classifier.predict(real.to(self.device)),
                                                 classifier.num_classes)
        return out

    @torch.no_grad()
    def evaluate_prior(self, split: str = "eval") -> Evaluation:
        """NLL of ``split``'s tokens, and gFD (against ``split``'s images), precision/recall and emitted codes of
        ``n_samples`` samples (the same samples for both splits: the generator is seeded by the run's seed)."""
        ev = Evaluation()
        eval_tokens = self.tokens(split)
        bits = 0.0
        k = self.prior.vocab_size
        rows = max(1, min(self.sample_batch_size, MAX_LOGITS // (self.prior.seq_len * k)))
        for start in range(0, eval_tokens.shape[0], rows):
            chunk = eval_tokens[start:start + rows].to(self.device).long()
            bits += cross_entropy_bits(self.prior(chunk), chunk)
        ev.metrics["nll_bits_per_token"] = bits / eval_tokens.numel()

        real = self._real_statistics(split)
        for fd in real["fd"]:
            fd.reset()
        tokenizer = self._frozen_tokenizer()
        n = self.n_samples or len(self.recon.split_data(split))
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        samples: list[Tensor] = []
        with contextlib.ExitStack() as stack:  # the features the gFDs compute
            fake_features = [stack.enter_context(captured_outputs(net)) for net in real["watched"]]
            for start in range(0, n, self.sample_batch_size):
                tokens = self.sample(min(self.sample_batch_size, n - start), generator)
                x01 = to_unit(tokenizer.decode_tokens(tokens).float())
                for fd in real["fd"]:
                    fd.update(x01, real=False)
                samples.append(tokens.cpu())
        for fd in real["fd"]:
            ev.metrics[fd.name] = fd.compute()
        for net, real_feats, fake_feats in zip(real["watched"], real["features"], fake_features):
            ev.metrics.update(self._feature_metrics(net, real_feats, torch.cat(fake_feats)))
        samples_t = torch.cat(samples)
        ev.metrics.update(emitted_codes(samples_t, k))
        ev.metrics["codebook_size"] = float(k)
        counts = code_counts(samples_t, k)
        ev.arrays["emitted_histogram"] = counts.sort(descending=True).values.tolist()
        if self._classifier is not None:
            ev.metrics.update(self._classifier.info)
        if self.reused_tokenizer is not None:
            if split not in self._tokenizer_eval:  # frozen: one evaluation serves every prior evaluation
                self._tokenizer_eval[split] = self.recon.evaluate_model(tokenizer, split)
            ev.update(self._tokenizer_eval[split])
        return ev


# -- registration ----------------------------------------------------------------------------------
def register_generation(name: str, recon_task: str, *, description: str, offline: bool, revision: int = 0,
                        classifier: ClassifierFactory | None = None, main_metric: str = BASE_GFD,
                        **prior: Any) -> None:
    """Register ``name``: the reconstruction task ``recon_task`` + a prior (defaults overridden by ``prior``).

    The entry's parameters are the reconstruction task's (its registered defaults) plus
    :data:`PRIOR_DEFAULTS`, spelled out in the builder's signature so that unknown keys fail at spec time.
    ``revision``: this task's own evaluation changes (see the module doc's version rule); ``classifier``: builds
    the task's :class:`SampleClassifier` (its metrics are logged; ``main_metric`` may then be one of them).
    """
    recon = TASKS.get(recon_task)
    unknown = sorted(set(prior) - set(PRIOR_DEFAULTS))
    if unknown:
        raise ValueError(f"{name}: {unknown} are not prior parameters")
    defaults = {**recon.defaults, **PRIOR_DEFAULTS, **prior}

    def build(**params: Any) -> GenerationTask:
        return GenerationTask(recon_task, classifier=classifier, **params)

    build.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in defaults.items()])
    build.__qualname__ = f"GenerationTask[{recon_task}]"
    if revision < 0 or recon.version >= 1000:
        raise ValueError(f"{name}: revision must be >= 0 and {recon_task}'s version < 1000")
    register_task(name, version=1000 * (GEN_VERSION + revision) + recon.version, kind="generation",
                  paper="2012.09841", family="generation", main_metric=main_metric,
                  higher_is_better=False, budgets=recon.budgets, offline=offline, description=description,
                  **defaults)(build)


def digits_classifier(recon: Task, device: torch.device) -> SampleClassifier:
    """``gen-digits``' sample classifier: the digitsnet of ``recon``'s split (:mod:`vqbench.tasks.digitsnet`)."""
    return digitsnet.sample_classifier(recon.n_eval, recon.split_seed, device)


register_generation(
    "gen-digits", "digits", offline=True, revision=1, classifier=digits_classifier,
    main_metric=digitsnet.DIGITSNET_GFD,
    description="Tokenize scikit-learn's 8x8 digits (4x4 tokens), then fit a small GPT prior and sample "
                "(gFD in the features of a digits classifier)",
    prior_dim=64, prior_layers=2, prior_heads=4, prior_lr=1e-3)
register_generation(
    "gen-cifar10", "cifar10", offline=False,
    description="Tokenize CIFAR-10 32x32 (f4, 8x8 tokens), then fit a GPT prior and sample (gFID vs test set)",
    prior_dim=512, prior_layers=8, prior_heads=8, prior_dropout=0.1, prior_lr=3e-4)
register_generation(
    "gen-imagenet128", "imagenet128", offline=False,
    description="Tokenize ImageNet 128x128 (f8, 16x16 tokens), then fit a GPT prior; gFID of 10k samples vs val",
    prior_dim=768, prior_layers=12, prior_heads=12, prior_dropout=0.1, prior_lr=3e-4, n_samples=10000)
