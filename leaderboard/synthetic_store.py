"""Realistic synthetic result stores, for the leaderboard's scale test and benchmark.

``python -m vqbench.leaderboard.synthetic_store --runs 10000 --out DIR`` writes a store (through
``vqbench.store.ResultStore``, the same files the runner writes) that looks like a lab's real one:

- suites ``quick`` (offline tasks, 1 seed, defaults), ``paper-v1`` (GPU budgets, 3 seeds, codebook
  sizes), ``collapse-v1`` (the two collapse sweeps: codebook init scale/offset and encoder width,
  3 seeds) and untagged exploratory runs (``adhoc``: param grids, 1-3 seeds);
- 16 methods from 9 families with their papers, defaults and params; 8 tasks of the three kinds
  with the metrics each logs (mse/psnr/ssim/lpips/fid_inception/fd_dinov2/nll_bpt + collapse metrics);
- statuses ok / diverged / failed / timeout in realistic proportions, with partial curves and error
  messages; a few configs missing seeds, so some leaderboard rows are incomplete;
- per run: train curves every 50 steps (loss, rec_loss, quant_loss, grad_norm), eval metrics at each
  eval step, and at each eval step the arrays usage_histogram (K counts), codebook_spectrum and
  embedding_spectrum (singular values).

The numbers follow a simple generative model (each method has a base utilization and quality; the
collapse tasks' knobs cut utilization unless the method cures that collapse; quality follows
utilization; seeds add noise), so tables, ranks and Pareto fronts have a structure to look at.
Spec JSON and run ids follow ``vqbench.spec`` exactly (a test checks ``RunSpec.from_json(spec).run_id``).
``hostile=True`` adds a plugin method and task whose every string is an HTML/script injection attempt.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
from vqbench.store import ResultStore

HOSTILE = "<script>alert(1)</script>"
HOSTILE_NAME = HOSTILE  # the method's registered name
HOSTILE_TASK = 'gmm"><img src=x onerror=alert(2)>'
HOSTILE_SUITE = "<svg onload=alert(4)>"
HOSTILE_METRIC = "<img src=x onerror=alert(3)>\"'"



@dataclass(frozen=True)
class MethodModel:
    name: str
    family: str
    paper: str
    description: str
    defaults: dict[str, Any]
    util: float  # base utilization on an easy task
    quality: float  # multiplicative error factor (lower is better)
    cures_init: bool  # immune to restricted codebook init (tokens collapse)
    p_diverge: float = 0.02
    source: str = "vqbench"
    grid: dict[str, list[Any]] = field(default_factory=dict)  # exploratory params


METHODS = (
    MethodModel("vq", "vq", "1711.00937", "VQ-VAE: nearest code, straight-through estimator, codebook + "
                "beta*commitment loss", {"beta": 0.25}, 0.35, 1.00, False, grid={"beta": [0.1, 0.25, 0.5, 1.0]}),
    MethodModel("vq-ema", "vq", "1711.00937", "VQ-VAE with an EMA codebook (decay 0.99, Laplace eps 1e-5)",
                {"beta": 0.25, "ema": True, "ema_decay": 0.99, "ema_eps": 1e-5}, 0.55, 0.93, False,
                grid={"ema_decay": [0.9, 0.99, 0.999]}),
    MethodModel("vq-kmeans", "vq", "2107.03312", "VQ-VAE whose codebook is initialised by k-means on the first "
                "batch", {"beta": 0.25, "kmeans_init": True, "kmeans_iters": 10}, 0.62, 0.91, True,
                grid={"kmeans_iters": [5, 10, 20]}),
    MethodModel("vq-restart", "restart", "2005.00341", "Dead-code restart from random batch vectors",
                {"beta": 0.25, "restart": True, "restart_threshold": 1.0}, 0.80, 0.88, True,
                grid={"restart_threshold": [0.1, 1.0, 4.0]}),
    MethodModel("vq-l2", "factorized", "2110.04627", "ViT-VQGAN factorized codes: l2-normalised 8-dim lookup",
                {"beta": 0.25, "code_dim": 8, "l2_normalize": True}, 0.85, 0.90, False,
                grid={"code_dim": [4, 8, 32]}),
    MethodModel("cvq", "online-clustering", "2307.15139", "CVQ-VAE: under-used codes pulled toward batch anchors",
                {"beta": 0.25, "anchor": "closest", "decay": 0.99}, 0.90, 0.86, True, grid={"decay": [0.9, 0.99]}),
    MethodModel("vq-lc", "frozen-codebook", "2406.11837", "VQGAN-LC: frozen feature-bank codebook + projector",
                {"beta": 0.25, "proj_dim": 16}, 0.93, 0.89, True),
    MethodModel("simvq", "reparam", "2411.02038", "SimVQ: frozen Gaussian basis times a learnable linear layer",
                {"beta": 0.25}, 0.97, 0.84, True, grid={"beta": [0.25, 1.0]}),
    MethodModel("vq-affine", "reparam", "2305.08842", "Affine codebook reparameterisation + synchronized "
                "commitment", {"beta": 0.25, "sync_nu": 0.1}, 0.82, 0.87, False, grid={"sync_nu": [0.0, 0.1, 1.0]}),
    MethodModel("vq-rotation", "gradient", "2410.06424", "Rotation trick: gradient through the rotation onto "
                "the code", {"beta": 0.25, "rotation": True}, 0.70, 0.85, False),
    MethodModel("ibq", "gradient", "2412.02692", "Index backpropagation: straight-through over the soft one-hot",
                {"beta": 0.25, "temperature": 1.0}, 0.96, 0.88, True, p_diverge=0.04),
    MethodModel("fsq", "implicit", "2309.15505", "FSQ: bounded per-channel rounding, straight-through",
                {"levels": [8, 5, 5, 5]}, 0.99, 0.95, True, grid={"levels": [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5]]}),
    MethodModel("lfq", "implicit", "2310.05737", "LFQ: sign per dimension, entropy loss",
                {"entropy_weight": 0.1, "commitment": 0.25}, 0.90, 1.02, True, grid={"entropy_weight": [0.01, 0.1]}),
    MethodModel("bsq", "implicit", "2406.07548", "BSQ: binary spherical quantization", {"entropy_weight": 0.1},
                0.92, 0.97, True),
    MethodModel("gumbel", "stochastic", "1611.01144", "Gumbel-softmax VQ, KL to uniform, temperature schedule",
                {"tau_start": 1.0, "tau_end": 0.1, "kl_weight": 5e-4}, 0.75, 1.05, True, p_diverge=0.08,
                grid={"kl_weight": [5e-4, 5e-3]}),
    MethodModel("sqvae", "stochastic", "2205.07547", "SQ-VAE: stochastic quantisation with a learned variance",
                {"init_log_var": 0.0}, 0.88, 0.94, True),
)


@dataclass(frozen=True)
class TaskModel:
    name: str
    kind: str
    main: str
    higher: bool
    description: str
    defaults: dict[str, Any]
    quality_metrics: tuple[str, ...]
    base: float  # main metric at perfect utilization
    data_rank: float


TASKS = {t.name: t for t in (
    TaskModel("gmm", "synthetic", "mse", False, "Reconstruct points of a Gaussian mixture through an MLP "
              "autoencoder", {"n_modes": 64, "data_dim": 32, "latent_dim": 16, "codebook_size": 256,
                              "separation": 2.0, "hidden": 128, "depth": 2}, ("mse",), 0.35, 30.7),
    TaskModel("gmm-init", "synthetic", "mse", False, "Tokens collapse: codebook initialised at a scale/offset "
              "that does not match the data", {"n_modes": 64, "data_dim": 32, "latent_dim": 16,
                                              "codebook_size": 256, "init_scale": 1.0, "init_offset": 0.0},
              ("mse",), 0.35, 30.7),
    TaskModel("gmm-capacity", "synthetic", "mse", False, "Embeddings collapse: encoder width limits the rank of "
              "the latents", {"intrinsic_dim": 24, "data_dim": 64, "latent_dim": 32, "codebook_size": 512,
                              "hidden": 64, "depth": 2}, ("mse",), 0.30, 23.5),
    TaskModel("digits", "reconstruction", "psnr", True, "Reconstruct scikit-learn's 8x8 handwritten digits",
              {"codebook_size": 256, "latent_dim": 16, "channels": 32, "factor": 2}, ("mse", "psnr", "ssim"),
              24.0, 14.2),
    TaskModel("patches", "reconstruction", "lpips", False, "Reconstruct 16x16 RGB patches of scikit-image's "
              "photographs", {"codebook_size": 512, "latent_dim": 32, "channels": 64, "factor": 4, "patch": 16},
              ("mse", "psnr", "ssim", "lpips", "fd_dinov2"), 0.12, 21.0),
    TaskModel("cifar10", "reconstruction", "fid_inception", False, "CIFAR-10 32x32 reconstruction, f4 VQGAN",
              {"codebook_size": 1024, "latent_dim": 64, "channels": 128, "factor": 4},
              ("mse", "psnr", "ssim", "lpips", "fid_inception"), 6.0, 48.0),
    TaskModel("imagenet128", "reconstruction", "fid_inception", False, "ImageNet 128x128 reconstruction, f8",
              {"codebook_size": 8192, "latent_dim": 64, "channels": 128, "factor": 8, "resolution": 128},
              ("mse", "psnr", "ssim", "lpips", "fid_inception"), 3.5, 52.0),
    TaskModel("gen-digits", "generation", "nll_bpt", False, "Tokenizer on digits + GPT prior over token grids",
              {"codebook_size": 256, "latent_dim": 16, "prior_layers": 4, "prior_dim": 128},
              ("nll_bpt", "gfd_dinov2", "precision", "recall", "prior_code_usage"), 5.5, 14.2),
)}

QUICK_BUDGET = {"steps": 600, "batch_size": 256, "lr": 2e-3, "eval_interval": 200}
SWEEP_BUDGET = {"steps": 2000, "batch_size": 256, "lr": 2e-3, "eval_interval": 250}
PAPER_BUDGET = {"steps": 20000, "batch_size": 1024, "lr": 1e-3, "eval_interval": 2500, "warmup_steps": 500}
_BUDGET_DEFAULTS = {"steps": 1000, "batch_size": 256, "lr": 1e-3, "eval_interval": 250, "warmup_steps": 0,
                    "weight_decay": 0.0, "grad_clip": 1.0, "checkpoint_interval": 0}
COMMITS = ("280a60e257d5a46b5ed4b551cd1fcc86516a373a", "1ad31ef1d4c1f0e6a1b2c3d4e5f60718293a4b5c",
           "f944190aa0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5")


# -- spec identity, exactly as vqbench.spec (not imported: leaderboard reads the store only) ----------
def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"))


def budget_dict(overrides: dict[str, Any]) -> dict[str, Any]:
    budget = dict(_BUDGET_DEFAULTS)
    budget.update(overrides)
    for key in ("lr", "weight_decay", "grad_clip"):
        budget[key] = float(budget[key])
    return budget


def spec_dict(task: str, task_params: dict, method: str, method_params: dict, seed: int, budget: dict,
              tags: list[str], task_version: int = 1, method_version: int = 1) -> dict[str, Any]:
    return {"task": task, "task_version": task_version, "task_params": task_params, "method": method,
            "method_version": method_version, "method_params": method_params, "seed": seed, "budget": budget,
            "tags": list(tags)}


def run_id_of(spec: dict[str, Any]) -> str:
    identity = {k: v for k, v in spec.items() if k != "tags"}
    identity["format"] = 1
    return hashlib.sha256(canonical_json(identity).encode()).hexdigest()[:16]


# -- the plan: which runs exist -------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    index: int
    suite: str | None
    task: str
    task_params: dict[str, Any]
    method: str
    method_params: dict[str, Any]
    seed: int
    budget: dict[str, Any]


def _configs(suite: str, rng: np.random.Generator, methods: tuple[MethodModel, ...]) -> list[list[tuple]]:
    """Groups of (task, task_params, method, method_params, seeds, budget): one group = one method config
    across all the suite's task variants (so taking whole groups gives complete leaderboard rows)."""
    groups: list[list[tuple]] = []
    if suite == "quick":
        for m in methods:
            groups.append([(t, {}, m.name, {}, [0], QUICK_BUDGET) for t in ("gmm", "digits", "patches", "gen-digits")])
    elif suite == "paper-v1":
        for k in (1024, 4096):
            for m in methods:
                for mp in [{}] + [{key: v} for key, vs in m.grid.items() for v in vs if m.defaults.get(key) != v]:
                    groups.append([("gmm", {"codebook_size": k}, m.name, mp, [0, 1, 2], PAPER_BUDGET),
                                   ("cifar10", {"codebook_size": k}, m.name, mp, [0, 1, 2], PAPER_BUDGET),
                                   ("imagenet128", {"codebook_size": 2 * k}, m.name, mp, [0, 1, 2], PAPER_BUDGET)])
    elif suite == "collapse-v1":
        for m in methods:
            variants = [("gmm-init", {"init_scale": s, "init_offset": o}, m.name, {}, [0, 1, 2], SWEEP_BUDGET)
                        for s in (0.01, 0.1, 1.0, 10.0) for o in (0.0, 4.0)]
            variants += [("gmm-capacity", {"hidden": h}, m.name, {}, [0, 1, 2], SWEEP_BUDGET)
                         for h in (4, 8, 16, 32, 64, 256)]
            groups.append(variants)
    else:  # adhoc exploration: every method's grid x a few tasks x codebook sizes x lr
        for m in methods:
            grid = [{}] + [{k: v} for k, vs in m.grid.items() for v in vs if m.defaults.get(k) != v]
            if "beta" in m.defaults and "beta" not in m.grid:
                grid += [{"beta": b} for b in (0.1, 0.5, 1.0)]
            for params in grid:
                for task in ("gmm", "digits", "patches"):
                    for k in (64, 128, 256, 512, 1024):
                        for lr in (5e-4, 1e-3, 2e-3):
                            groups.append([(task, {"codebook_size": k}, m.name, params, [0, 1, 2],
                                            {**QUICK_BUDGET, "lr": lr})])
        order = rng.permutation(len(groups))
        groups = [groups[i] for i in order]
    return groups


def plan(n_runs: int, seed: int = 0, hostile: bool = False) -> list[PlannedRun]:
    """``n_runs`` distinct runs: the official suites first (in proportion), the rest exploratory."""
    rng = np.random.default_rng(seed)
    methods = METHODS
    shares = {"quick": 0.04, "paper-v1": 0.12, "collapse-v1": 0.24}
    planned: list[PlannedRun] = []
    seen: set[str] = set()

    def add(suite: str | None, task: str, tp: dict, method: str, mp: dict, s: int, budget: dict) -> None:
        params = {**TASKS[task].defaults, **tp} if task in TASKS else dict(tp)
        mparams = {**next(m.defaults for m in methods if m.name == method), **mp} \
            if any(m.name == method for m in methods) else dict(mp)
        run = PlannedRun(len(planned), suite, task, params, method, mparams, s, budget_dict(budget))
        key = canonical_json([task, params, method, mparams, s, run.budget])
        if key not in seen and len(planned) < n_runs:
            seen.add(key)
            planned.append(run)

    for suite, share in shares.items():
        quota = int(round(n_runs * share))
        start = len(planned)
        for group in _configs(suite, rng, methods):
            if len(planned) - start >= quota:
                break
            for task, tp, method, mp, seeds, budget in group:
                for s in seeds:
                    if rng.random() < 0.02:  # a lost job: this seed never reached the store
                        continue
                    add(suite, task, tp, method, mp, s, budget)
    for group in _configs("adhoc", rng, methods):
        if len(planned) >= n_runs:
            break
        for task, tp, method, mp, seeds, budget in group:
            for s in seeds[: int(rng.integers(1, len(seeds) + 1))]:
                add(None, task, tp, method, mp, s, budget)
    extra = 0
    while len(planned) < n_runs:  # beyond the grids: a separation sweep on gmm (K = 96 is in no grid above)
        m = methods[extra % len(methods)]
        add(None, "gmm", {"codebook_size": 96, "separation": round(0.5 + 0.001 * (extra // 48), 3)}, m.name, {},
            (extra // len(methods)) % 3, QUICK_BUDGET)
        extra += 1
    if hostile:
        planned = planned[: max(n_runs - 3, 0)]
        for s in (0, 1):
            planned.append(PlannedRun(len(planned), "quick", "gmm", {**TASKS["gmm"].defaults}, HOSTILE_NAME,
                                      {"beta": 0.25, '"><b>key</b>': "<i>v</i>"}, s, budget_dict(QUICK_BUDGET)))
        planned.append(PlannedRun(len(planned), HOSTILE_SUITE, HOSTILE_TASK, {"n": "</script><b>"}, "vq",
                                  {"beta": 0.25}, 0, budget_dict(QUICK_BUDGET)))
    return planned


# -- simulating one run ---------------------------------------------------------------------------
def _method_model(name: str) -> MethodModel:
    for m in METHODS:
        if m.name == name:
            return m
    return MethodModel(name, '<b>plugin</b>"family', "2401.<script>", f"{HOSTILE} described </script><b>x</b>",
                       {"beta": 0.25}, 0.6, 0.95, False, source="file:/tmp/<evil>.py#sha256=" + "0" * 64)


def _final_utilization(m: MethodModel, task: TaskModel, tp: dict, rng: np.random.Generator) -> float:
    u = m.util
    k = tp.get("codebook_size", 256)
    u *= 1.0 - 0.08 * math.log2(max(k, 64) / 256) if not m.cures_init else 1.0 - 0.02 * math.log2(max(k, 64) / 256)
    if task.name == "gmm-init" and not m.cures_init:
        u *= math.exp(-0.9 * abs(math.log10(tp.get("init_scale", 1.0)))) * (0.5 if tp.get("init_offset") else 1.0)
    if task.name == "gmm-capacity":
        u *= min(1.0, (tp.get("hidden", 64) / 64) ** 0.6) * (1.1 if m.family == "frozen-codebook" else 1.0)
    return float(np.clip(u + rng.normal(0, 0.03), 0.002, 1.0))


def _main_value(task: TaskModel, m: MethodModel, u: float, tp: dict, rng: np.random.Generator) -> float:
    noise = rng.normal(0, 0.02)
    if task.name == "gmm-capacity":
        penalty = 1.0 + 2.0 * max(0.0, 1 - tp.get("hidden", 64) / 64)
    else:
        penalty = 1.0
    if task.higher:
        return task.base - 8.0 * (1 - u) * m.quality + 0.3 * noise * 10
    return task.base * m.quality * penalty * (1 + 1.2 * (1 - u)) * (1 + noise)


def _curve(final: float, start: float, steps: np.ndarray, total: int, rng: np.random.Generator,
           noise: float = 0.01) -> np.ndarray:
    t = steps / max(total, 1)
    return final + (start - final) * np.exp(-4 * t) + noise * abs(final) * rng.normal(size=steps.size) * (t > 0)


def _spectrum(rank_target: float, dim: int, rng: np.random.Generator) -> np.ndarray:
    decay = max(0.05, 3.0 / max(rank_target, 1.0))
    s = np.exp(-decay * np.arange(dim)) * (1 + 0.05 * rng.normal(size=dim))
    return np.sort(np.abs(s) * 10)[::-1]


def _usage(u: float, k: int, n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    used = max(1, int(round(u * k)))
    weights = rng.pareto(1.5, size=used) + 0.05
    counts = np.zeros(k)
    counts[:used] = rng.multinomial(n_tokens, weights / weights.sum())
    return np.sort(counts)[::-1]


def simulate(run: PlannedRun, seed: int = 0) -> tuple[dict, list[tuple], list[tuple]]:
    """(run record, metric rows, array rows) of one planned run."""
    rng = np.random.default_rng([seed, run.index])
    m = _method_model(run.method)
    task = TASKS.get(run.task, TASKS["gmm"])
    tags = [f"suite:{run.suite}"] if run.suite else []
    if run.suite == "paper-v1" and rng.random() < 0.3:
        tags.append("cluster:jz")
    spec = spec_dict(run.task, run.task_params, run.method, run.method_params, run.seed, run.budget, tags)
    rid = run_id_of(spec)
    steps, interval = run.budget["steps"], run.budget["eval_interval"]
    u_final = _final_utilization(m, task, run.task_params, rng)
    main_final = _main_value(task, m, u_final, run.task_params, rng)

    r = rng.random()
    status, error, stop = "ok", "", steps
    if r < m.p_diverge:
        stop = int(rng.integers(1, steps))
        status, error = "diverged", f"loss became nan at step {stop} of stage autoencoder"
    elif r < m.p_diverge + 0.025:
        stop = int(rng.integers(0, steps // 2))
        status, error = "failed", ("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
                                   if run.budget["batch_size"] > 256 else "ValueError: codebook_size must be > 0")
    elif r < m.p_diverge + 0.04 and run.suite == "paper-v1":
        stop = int(rng.integers(steps // 2, steps))
        status, error = "timeout", "job exceeded its Slurm time limit and was not requeued"

    k = int(run.task_params.get("codebook_size", 256))
    if run.method == "fsq":
        k = int(np.prod(run.method_params.get("levels", [8, 5, 5, 5])))
    dim = int(run.task_params.get("latent_dim", 16))
    eval_steps = np.array([s for s in range(0, steps + 1, interval) if s <= stop] +
                          ([steps] if steps % interval and stop >= steps else []), dtype=float)
    train_steps = np.arange(50, stop + 1, 50, dtype=float)
    if status == "ok" and (train_steps.size == 0 or train_steps[-1] != steps):
        train_steps = np.append(train_steps, float(steps))

    metric_rows: list[tuple] = []
    loss_final = 0.05 * (1.5 - u_final) * m.quality * (1 + rng.normal(0, 0.02))  # reconstruction-loss scale
    loss = _curve(loss_final, 3.0 * loss_final, train_steps, steps, rng, 0.03)
    if status == "diverged" and loss.size:
        tail = min(3, loss.size)
        loss[-tail:] *= np.array([3.0, 30.0, 1e3])[-tail:]
    quant = 0.05 * (1.2 - u_final) * np.exp(-train_steps / steps) + 0.002 * rng.random(train_steps.size)
    grad = 0.5 * np.exp(-2 * train_steps / steps) + 0.05 + 0.01 * rng.random(train_steps.size)
    for name, values in (("loss", loss + quant), ("rec_loss", loss), ("quant_loss", quant), ("grad_norm", grad)):
        metric_rows.extend(("train", int(s), name, float(v)) for s, v in zip(train_steps, values))

    rank_final = max(1.0, dim * (0.3 + 0.6 * u_final))
    data_rank = task.data_rank
    emb_final = min(data_rank, rank_final * (0.8 if task.name != "gmm-capacity" else
                                             min(1.0, run.task_params.get("hidden", 64) / 64)) + 1)
    finals: dict[str, tuple[float, float]] = {  # name -> (final, value at step 0)
        "utilization": (u_final, min(1.0, u_final * 1.8 + 0.1)),
        "perplexity": (u_final * k * 0.7, min(k, u_final * k * 1.5 + 2)),
        "dead_codes": (k * (1 - u_final), k * max(0.0, 1 - u_final * 1.8 - 0.1)),
        "codebook_rank": (rank_final, min(dim, rank_final * 1.3)),
        "embedding_rank": (emb_final, min(dim, emb_final * 1.2)),
        "tokens_collapse_index": (min(1.0, u_final * 1.05), 0.01),
        "embeddings_collapse_index": (emb_final / data_rank, emb_final * 1.2 / data_rank),
        "embedding_clusters_frac": (min(1.0, 0.5 + 0.5 * u_final), 1.0),
        "data_rank": (data_rank, data_rank),
        "codebook_enumerable": (1.0, 1.0),
    }
    for q in task.quality_metrics:
        if q == task.main:
            finals[q] = (main_final, main_final * (1.6 if not task.higher else 0.5))
        elif q == "psnr":
            finals[q] = (30.0 - 10 * math.log10(max(main_final, 1e-3) / task.base + 1), 10.0)
        elif q in ("ssim", "precision", "recall", "prior_code_usage"):
            finals[q] = (float(np.clip(0.55 + 0.4 * u_final + rng.normal(0, 0.02), 0, 1)), 0.1)
        elif q in ("fid_inception", "fd_dinov2", "gfd_dinov2"):
            finals[q] = (main_final * 12 if not task.higher else 40 * (1.2 - u_final), 300.0)
        else:  # mse, lpips, nll_bpt as secondary metrics
            finals[q] = (0.05 * (1.5 - u_final) * (1 + rng.normal(0, 0.02)), 0.3)
    for name, (final, start) in sorted(finals.items()):
        noise = 0.0 if name in ("data_rank", "codebook_enumerable") else 0.01
        values = _curve(final, start, eval_steps, steps, rng, noise)
        if name in ("utilization", "tokens_collapse_index", "embedding_clusters_frac", "ssim"):
            values = np.clip(values, 0, 1)
        metric_rows.extend(("eval", int(s), name, float(v)) for s, v in zip(eval_steps, values))

    array_rows: list[tuple] = []
    n_tokens = 4096 * 4
    for i, s in enumerate(eval_steps):
        frac = (i + 1) / max(len(eval_steps), 1)
        u_t = finals["utilization"][1] + (u_final - finals["utilization"][1]) * frac
        array_rows.append(("eval", int(s), "usage_histogram", _usage(max(u_t, 1.0 / k), k, n_tokens, rng).tolist()))
        array_rows.append(("eval", int(s), "codebook_spectrum", _spectrum(rank_final, dim, rng).tolist()))
        array_rows.append(("eval", int(s), "embedding_spectrum", _spectrum(emb_final, dim, rng).tolist()))

    gpu = run.budget["batch_size"] > 256
    started = datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(minutes=int(run.index * 7 + rng.integers(0, 5)))
    wall = float(stop * (0.02 if gpu else 0.004) * (1 + 0.1 * rng.random()))
    versions = {"python": "3.11.7", "torch": "2.14.1", "numpy": "2.4.6", "vqbench": "0.1.0", "pyarrow": "26.0.1"}
    record = {
        "run_id": rid, "task": run.task, "task_version": 1, "task_params": canonical_json(run.task_params),
        "method": run.method, "method_version": 1, "method_params": canonical_json(run.method_params),
        "method_family": m.family, "method_source": m.source, "method_paper": m.paper,
        "method_description": m.description, "method_defaults": canonical_json(m.defaults),
        "task_source": "vqbench" if run.task in TASKS else "file:/tmp/x.py#sha256=" + "1" * 64,
        "task_kind": task.kind,
        "task_description": task.description if run.task in TASKS else f"{HOSTILE} task",
        "seed": run.seed, "budget": canonical_json(run.budget), "tags": tags, "spec": canonical_json(spec),
        "status": status, "error": error, "main_metric": task.main, "higher_is_better": task.higher,
        "steps_done": int(train_steps[-1]) if train_steps.size else 0, "wall_time_s": wall,
        "items_per_s": run.budget["batch_size"] * stop / wall if wall > 0 else None,
        "device": "cuda:0" if gpu else "cpu", "hostname": f"node{run.index % 37:03d}" if gpu else "laptop",
        "git_commit": COMMITS[run.index % len(COMMITS)], "git_dirty": bool(run.index % 11 == 0),
        "versions": json.dumps(versions, sort_keys=True),
        "slurm_job_id": f"{812000 + run.index // 100}_{run.index % 100}" if run.suite in ("paper-v1", "collapse-v1")
        else None,
        "started_at": started, "finished_at": started + timedelta(seconds=wall + 5),
    }
    if run.method == HOSTILE_NAME or run.task == HOSTILE_TASK:
        metric_rows.extend(("eval", int(s), HOSTILE_METRIC, 1.0 + run.seed) for s in eval_steps)
    if status == "failed" and rng.random() < 0.5:  # failed while building: nothing measured
        metric_rows, array_rows = [], []
    return record, metric_rows, array_rows


def _write_chunk(args: tuple[str, list[PlannedRun], int]) -> int:
    out, runs, seed = args
    store = ResultStore(out)
    for run in runs:
        record, metric_rows, array_rows = simulate(run, seed)
        store.write_metrics(record["task"], record["run_id"], metric_rows)
        store.write_arrays(record["task"], record["run_id"], array_rows)
        store.write_run(record)
    return len(runs)


def perf_rows(seed: int = 0, hostile: bool = False) -> list[dict[str, Any]]:
    """One ``vqbench perf`` measurement: forward+backward of a few quantizers (ours and
    vector-quantize-pytorch's), nearest-code search and torch.mm on the same shapes."""
    rng = np.random.default_rng(seed)
    created = datetime(2026, 3, 2, tzinfo=timezone.utc)
    rows = []
    for method in ("vq", "vq-ema", "fsq"):
        for k in (1024, 65536):
            for dim in (8, 32):
                base = 0.002 * k * dim / 1024 + 1.0
                for impl, factor in (("vqbench", 0.8), ("vector-quantize-pytorch", 1.0)):
                    oom = impl == "vector-quantize-pytorch" and k >= 65536 and dim == 32
                    rows.append({"perf_id": "p-synthetic", "created_at": created, "device": "cpu (2 threads)",
                                 "implementation": impl, "method": method, "codebook_size": k, "dim": dim,
                                 "n": 16384, "measure": "forward_backward",
                                 "time_ms": None if oom else base * factor * (1 + 0.05 * rng.random()),
                                 "peak_memory_mb": None if oom else 40 + k * dim * 4e-6 * factor,
                                 "gflops": None, "status": "out_of_memory" if oom else "ok",
                                 "note": ("one-hot N x K would need 64 GiB" if oom else
                                          (f"{HOSTILE} note" if hostile and method == "fsq" else "")),
                                 "versions": "{}"})
    for k in (1024, 65536):
        for dim in (8, 32):
            flops = 2 * 16384 * k * dim / 1e9
            mm = flops / (0.001 * k * dim / 1024 + 0.2) * 1e3
            for impl, measure, rate in (("torch.mm", "matmul", mm), ("vqbench", "nearest_code_search", mm * 0.7)):
                rows.append({"perf_id": "p-synthetic", "created_at": created, "device": "cpu (2 threads)",
                             "implementation": impl, "method": "vq" if impl == "vqbench" else "",
                             "codebook_size": k, "dim": dim, "n": 16384, "measure": measure,
                             "time_ms": flops / rate * 1e3, "peak_memory_mb": 64.0, "gflops": rate, "status": "ok",
                             "note": "", "versions": "{}"})
    return rows


def generate(out: str | os.PathLike[str], runs: int = 10000, seed: int = 0, workers: int = 1,
             hostile: bool = False) -> int:
    """Write ``runs`` synthetic runs (and one perf measurement) into the store at ``out``; returns the
    number of runs written."""
    planned = plan(runs, seed, hostile)
    ResultStore(out).ensure_writable()
    if hasattr(ResultStore, "write_perf"):
        ResultStore(out).write_perf("p-synthetic", perf_rows(seed, hostile))
    if workers <= 1 or len(planned) < 64:
        return _write_chunk((str(out), planned, seed))
    chunks = [(str(out), planned[i::workers * 4], seed) for i in range(workers * 4)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(_write_chunk, chunks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqbench.leaderboard.synthetic_store", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10000)
    parser.add_argument("--out", required=True, help="results folder to write (a store)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    parser.add_argument("--hostile", action="store_true", help="add a plugin whose strings try to inject HTML")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    n = generate(Path(args.out), args.runs, args.seed, args.workers, args.hostile)
    print(f"wrote {n} synthetic runs to {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
