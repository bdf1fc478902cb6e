"""``vqbench diagnose``: does a user's VQ tokenizer suffer tokens collapse or embeddings collapse?

Inputs (:mod:`vqbench.commands.diagnose_inputs`): (a) ``--codebook C --latents Z`` and/or ``--indices I``
(.pt, .npy, .npz, .safetensors); (b) ``--codebook vq_state.pt --latents X`` with a vector-quantize-pytorch
``VectorQuantize`` state dict (its ``_codebook.embed``; X are the module's inputs); (c) ``--model
module:factory --data FILE`` for any model with ``quantizer_io(batch) -> (latents, indices)`` and
``codebook()`` (:class:`vqbench.commands.diagnose_inputs.DiagnosableModel`).

Every number comes from :class:`vqbench.collapse.CollapseMetrics` (streamed over the data: exact, bounded
memory) plus the codebook's geometry. Outputs in ``--out``: ``diagnosis.json`` (every number) and
``report.html`` (self-contained: inline SVG, no network). Verdict rules (:func:`verdicts`):

- **tokens collapse** when at least ``DEAD_LIMIT`` (25%) of the codes are dead, or the tokens-collapse index
  (distinct codes at 0.05 x the latents' RMS radius, / K) is at most ``DISTINCT_LIMIT`` (0.75);
- **embeddings collapse** when the latents' effective rank is below ``RANK_LIMIT`` (35%) of what they could
  have: ``min(d, data rank)`` (the data rank is known with ``--model``, from its input rows when they are at
  most 1024 wide; otherwise ``d``);
- **healthy** when neither holds (a line with the numbers that were checked).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqbench.errors import UserError

if TYPE_CHECKING:  # torch is imported per function: building the CLI parser must not load it
    from torch import Tensor

DEAD_LIMIT = 0.25
DISTINCT_LIMIT = 0.75
RANK_LIMIT = 0.35
MAX_REFERENCE_WIDTH = 1024
DEFAULT_BOARD = "published/results"


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


@dataclass
class Verdict:
    """One line of the diagnosis: ``kind`` is tokens-collapse, embeddings-collapse, healthy or not-measured."""

    kind: str
    line: str


@dataclass
class Diagnosis:
    """Everything measured: scalars, arrays for the plots, a 2-D PCA of codes over latents, the verdicts."""

    codebook_size: int
    dim: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    arrays: dict[str, list[float]] = field(default_factory=dict)
    projection: dict[str, list[list[float]]] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> set[str]:
        return {v.kind for v in self.verdicts}

    def to_json(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def nearest_codes(latents: Tensor, codebook: Tensor, chunk: int = 4096) -> Tensor:
    """Index of the nearest code (Euclidean) of each row, in chunks of rows."""
    import torch

    out = [torch.cdist(latents[s:s + chunk].float(), codebook.float()).argmin(dim=1)
           for s in range(0, latents.shape[0], chunk)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def nearest_code_distances(codebook: Tensor, max_codes: int = 8192, chunk: int = 1024) -> Tensor:
    """Distance of each code to its nearest other code (for at most ``max_codes`` codes, a fixed sample)."""
    import torch

    from vqbench.metrics import sample_rows

    cb = codebook.float()
    rows = sample_rows(torch.arange(cb.shape[0])[:, None], max_codes)[:, 0]
    out = []
    for s in range(0, len(rows), chunk):
        block = rows[s:s + chunk]
        d = torch.cdist(cb[block], cb)
        d[torch.arange(len(block)), block] = math.inf
        out.append(d.min(dim=1).values)
    return torch.cat(out) if out else torch.zeros(0)


class _Reservoir:
    """A fixed-size uniform sample of rows seen in batches (random keys, keep the smallest): for plots only."""

    def __init__(self, size: int, seed: int) -> None:
        import torch

        self.size, self.g = size, torch.Generator().manual_seed(seed)
        self.rows: Tensor | None = None
        self.keys = torch.zeros(0)

    def add(self, rows: Tensor) -> None:
        import torch

        keys = torch.rand(rows.shape[0], generator=self.g)
        rows = rows.float()
        if self.rows is not None:
            keys, rows = torch.cat([self.keys, keys]), torch.cat([self.rows, rows])
        keep = keys.argsort()[: self.size]
        self.keys, self.rows = keys[keep], rows[keep]


def analyse(batches: Iterable[tuple[Tensor | None, Tensor | None, Tensor | None]], codebook: Tensor | None,
            codebook_size: int, *, dim: int | None = None, reference_dim: int | None = None,
            sample: int = 2000, seed: int = 0) -> Diagnosis:
    """Stream ``(latents (..., d) | None, indices (...) | None, reference rows | None)`` batches, then diagnose.

    Indices missing from a batch are the nearest codes of its latents. Memory: the metric's moments, plus a
    ``sample``-row reservoir of latents for the projection plot.
    """
    import torch

    from vqbench.collapse import CollapseMetrics

    if codebook is not None:
        if codebook.ndim != 2 or not codebook.is_floating_point():
            raise UserError(f"the codebook must be a float matrix (K, d), got shape {tuple(codebook.shape)} "
                            f"{codebook.dtype}: pass the code vectors")
        if not bool(torch.isfinite(codebook).all()):
            raise UserError("the codebook contains NaN or infinite values: the checkpoint is broken")
        codebook = codebook.detach().float().cpu()
        codebook_size, dim = codebook.shape[0], codebook.shape[1] if dim is None else dim
    metric = CollapseMetrics(codebook_size, dim=dim, reference_dim=reference_dim)
    reservoir = _Reservoir(sample, seed)
    seen_latents = False
    for latents, indices, reference in batches:
        if latents is not None:
            if dim is None:
                raise UserError("latents were given without a codebook: pass --codebook (or the latent width)")
            if latents.ndim < 1 or latents.shape[-1] != dim:
                where = "the codebook's" if codebook is not None else "the expected"
                raise UserError(f"latents of shape {tuple(latents.shape)} disagree with {where} dimension {dim}: "
                                "pass channel-last latents (..., d) in the codebook's space")
            latents = latents.detach().float().cpu().reshape(-1, dim)
            if not bool(torch.isfinite(latents).all()):
                raise UserError("the latents contain NaN or infinite values: check the encoder (diverged?) or file")
            seen_latents = True
            reservoir.add(latents)
        if indices is None:
            if latents is None or codebook is None:
                raise UserError("need indices, or latents and a codebook to assign them: pass --indices or --latents")
            indices = nearest_codes(latents, codebook)
        elif latents is not None and indices.numel() != latents.shape[0]:
            raise UserError(f"{indices.numel()} indices for {latents.shape[0]} latent vectors: pass matching files "
                            "(one code id per latent vector)")
        ref = None if reference is None or reference_dim is None else reference.reshape(reference.shape[0], -1)
        metric.update(indices.cpu(), latents, codebook, reference=ref)
    if float(metric.counts.sum()) == 0:
        raise UserError("no indices or latents to diagnose: the data is empty")
    ev = metric.evaluation()
    diag = Diagnosis(codebook_size, dim, dict(ev.metrics), dict(ev.arrays))
    _geometry(diag, metric, codebook, reservoir.rows if seen_latents else None)
    diag.verdicts = verdicts(diag.metrics, codebook_size, dim)
    return diag


def _geometry(diag: Diagnosis, metric: Any, codebook: Tensor | None, sample: Tensor | None) -> None:
    """Merged-code clusters, nearest-code distances and the PCA projection, into ``diag``."""
    import torch

    from vqbench.metrics import MAX_MERGE_POINTS, MERGE_TOLERANCE, Moments, cluster_labels

    m, k = diag.metrics, diag.codebook_size
    m["codebook_size"], m["dim"] = float(k), float(diag.dim) if diag.dim else math.nan
    m["dead_fraction"] = m["dead_codes"] / k
    latents = metric.moments("latent")
    m["latent_rms_radius"] = latents.rms_radius() if latents is not None else math.nan
    m["merge_radius"] = MERGE_TOLERANCE * m["latent_rms_radius"]
    ceiling = diag.dim if diag.dim else math.nan
    if math.isfinite(m.get("data_rank", math.nan)):
        ceiling = min(ceiling, m["data_rank"])
    m["rank_ceiling"] = float(ceiling)
    m["latent_rank_fraction"] = m.get("embedding_rank", math.nan) / ceiling
    m["merged_clusters"] = m["codes_in_merged_clusters"] = m["distinct_codes"] = math.nan
    if codebook is None:
        return
    if k <= MAX_MERGE_POINTS and m["merge_radius"] > 0:
        sizes = torch.bincount(torch.from_numpy(cluster_labels(codebook, m["merge_radius"])))
        m["distinct_codes"] = float(len(sizes))
        m["merged_clusters"] = float((sizes >= 2).sum())
        m["codes_in_merged_clusters"] = float(sizes[sizes >= 2].sum())
    dist = nearest_code_distances(codebook)
    diag.arrays["nearest_code_distance"] = dist.tolist()
    m["nearest_code_distance_median"] = float(dist.median()) if len(dist) else math.nan
    basis = latents if latents is not None else Moments.of(codebook)
    mean, axes = basis.principal_axes(2)
    counts = metric.counts.cpu()
    diag.projection["codes_used"] = ((codebook.double()[counts > 0] - mean) @ axes).tolist()
    diag.projection["codes_dead"] = ((codebook.double()[counts == 0] - mean) @ axes).tolist()
    if sample is not None:
        diag.projection["latents"] = ((sample.double() - mean) @ axes).tolist()


def verdicts(m: dict[str, float], k: int, dim: int | None) -> list[Verdict]:
    """The verdict lines, from the numbers only (rules in the module docstring)."""
    out: list[Verdict] = []
    dead, distinct = m.get("dead_fraction", math.nan), m.get("tokens_collapse_index", math.nan)
    if dead >= DEAD_LIMIT or distinct <= DISTINCT_LIMIT:
        line = f"tokens collapse: {100 * dead:.0f}% of codes dead"
        clusters = m.get("merged_clusters", math.nan)
        if clusters > 0:
            line += (f", {clusters:.0f} cluster{'s' if clusters != 1 else ''} of merged codes "
                     f"({m['codes_in_merged_clusters']:.0f} codes within {m['merge_radius']:.3g} of another: "
                     f"{m['distinct_codes']:.0f} distinct of {k})")
        elif clusters == 0:
            line += f", no merged codes (all {k} distinct at {m['merge_radius']:.3g})"
        out.append(Verdict("tokens-collapse", line))
    fraction = m.get("latent_rank_fraction", math.nan)
    if fraction < RANK_LIMIT:
        line = f"embeddings collapse: latent effective rank {m['embedding_rank']:.1f} of {dim}"
        if math.isfinite(m.get("data_rank", math.nan)):
            line += f" (the data's effective rank: {m['data_rank']:.1f})"
        out.append(Verdict("embeddings-collapse", line))
    if not math.isfinite(fraction):
        out.append(Verdict("not-measured", "embeddings: not measured (no latents): pass --latents or --model"))
    if not any(v.kind.endswith("collapse") for v in out):
        line = f"healthy: {100 * m['utilization']:.0f}% of codes used, perplexity {m['perplexity']:.1f} of {k}"
        if math.isfinite(distinct):
            line += f", {100 * distinct:.0f}% of codes distinct"
        if math.isfinite(fraction):
            line += f", latent effective rank {m['embedding_rank']:.1f} of {dim}"
        out.append(Verdict("healthy", line))
    return out


# -- the command ------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``vqbench diagnose`` options."""
    parser.description = __doc__.split("\n\n")[0] if __doc__ else None
    parser.add_argument("--codebook", help="code vectors (K, d), or a vector-quantize-pytorch VectorQuantize "
                                           "state dict (.pt, .npy, .npz, .safetensors)")
    parser.add_argument("--latents", help="the quantizer's inputs (..., d) (a VectorQuantize's: the module inputs)")
    parser.add_argument("--indices", help="the code ids (...) the quantizer chose (default: nearest codes)")
    parser.add_argument("--codebook-size", type=int, default=None, help="K, when only --indices are given")
    for name in ("codebook", "latents", "indices", "data"):
        parser.add_argument(f"--{name}-key", default=None, help=f"the tensor's key when the {name} file holds a dict")
    parser.add_argument("--head", type=int, default=0, help="which head's codebook (VectorQuantize with heads)")
    parser.add_argument("--cosine", action="store_true",
                        help="l2-normalise latents and codes first (VectorQuantize(use_cosine_sim=True))")
    parser.add_argument("--model", help="module:factory returning a model with quantizer_io(batch) -> "
                                        "(latents, indices) and codebook() (see the DiagnosableModel protocol)")
    parser.add_argument("--data", help="with --model: the input rows (N, ...) in a tensor file")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", default="diagnosis", help="folder for report.html and diagnosis.json")
    parser.add_argument("--board", default=None, help=f"a vqbench results folder to compare with "
                                                      f"(default: {DEFAULT_BOARD} if it exists)")
    parser.add_argument("--sample", type=int, default=2000, help="latent rows drawn in the projection plot")


def _batches_from_files(args: argparse.Namespace, diag_inputs: dict[str, str], notes: list[str]):
    import torch

    from vqbench.commands import diagnose_inputs as io

    codebook, vqp = None, None
    if args.codebook:
        raw = io.load_file(args.codebook)
        vqp = io.find_vqp(raw, args.codebook, args.codebook_key)
        if vqp is not None:
            codebook = vqp.codebook(args.head)
            diag_inputs["codebook"] = f"{args.codebook} (vector-quantize-pytorch, {vqp.prefix}_codebook.embed " \
                                      f"head {args.head} of {vqp.embed.shape[0]})"
            if vqp.initted is False:
                notes.append("the VectorQuantize's codebook was never initialised (initted=False): k-means init "
                             "runs on its first training batch")
        else:
            codebook = io.pick_tensor(raw, args.codebook_key, args.codebook, "codebook", "--codebook-key")
            diag_inputs["codebook"] = args.codebook
    latents = indices = None
    if args.latents:
        latents = io.pick_tensor(io.load_file(args.latents), args.latents_key, args.latents, "latents", "--latents-key")
        if not latents.is_floating_point():
            raise UserError(f"{args.latents}: latents must be floats, got {latents.dtype}: pass the encoder outputs")
        latents = latents.float()
        if vqp is not None:
            latents = vqp.latents(latents, args.head)
        diag_inputs["latents"] = args.latents
    if args.indices:
        indices = io.pick_tensor(io.load_file(args.indices), args.indices_key, args.indices, "indices", "--indices-key")
        if indices.is_floating_point():
            raise UserError(f"{args.indices}: indices must be integers, got {indices.dtype}: pass the code ids")
        if vqp is not None and vqp.separate_heads > 1 and indices.shape[-1] == vqp.separate_heads:
            indices = indices[..., args.head]
        diag_inputs["indices"] = args.indices
    if codebook is None and indices is None:
        raise UserError("nothing to diagnose: pass --codebook with --latents or --indices, or --model with --data")
    if args.cosine:
        codebook = None if codebook is None else torch.nn.functional.normalize(codebook.float(), dim=-1)
        latents = None if latents is None else torch.nn.functional.normalize(latents, dim=-1)
    if codebook is None and not args.codebook_size:
        raise UserError("--indices without --codebook: pass --codebook-size K")
    k = codebook.shape[0] if codebook is not None and codebook.ndim == 2 else args.codebook_size
    if latents is not None and codebook is not None and codebook.ndim == 2 and latents.shape[-1] != codebook.shape[1]:
        raise UserError(f"the codebook's dimension {codebook.shape[1]} disagrees with the latents' "
                        f"{latents.shape[-1]}: pass latents in the codebook's space (after any projection)")
    if latents is not None:
        latents = latents.reshape(-1, latents.shape[-1])
    if indices is not None:
        indices = indices.reshape(-1)
    step = args.batch_size

    def batches():
        n = latents.shape[0] if latents is not None else indices.shape[0]
        if latents is not None and indices is not None and indices.shape[0] != n:
            raise UserError(f"{indices.shape[0]} indices for {n} latent vectors: pass matching files "
                            "(one code id per latent vector)")
        for s in range(0, n, step):
            yield (None if latents is None else latents[s:s + step],
                   None if indices is None else indices[s:s + step], None)

    return batches(), codebook, k, None


def _batches_from_model(args: argparse.Namespace, diag_inputs: dict[str, str]):
    import torch

    from vqbench.commands import diagnose_inputs as io

    if not args.data:
        raise UserError("--model needs --data FILE: the input rows (N, ...) to run through it")
    model = io.build_model(args.model)
    data = io.pick_tensor(io.load_file(args.data), args.data_key, args.data, "data", "--data-key")
    if data.ndim < 1 or data.shape[0] == 0:
        raise UserError(f"{args.data} holds no rows (shape {tuple(data.shape)}): pass (N, ...) inputs")
    codebook, k = io.model_codebook(model)
    width = int(data[0].numel())
    reference_dim = width if width <= MAX_REFERENCE_WIDTH and data.is_floating_point() else None
    diag_inputs.update(model=args.model, data=f"{args.data} ({data.shape[0]} rows)")

    cosine = args.cosine
    if cosine and codebook is not None:
        codebook = torch.nn.functional.normalize(codebook, dim=-1)

    def batches():
        for latents, indices, rows in io.model_batches(model, data, args.batch_size):
            if cosine:
                latents = torch.nn.functional.normalize(latents.float(), dim=-1)
            yield latents, indices, rows.reshape(rows.shape[0], -1).float() if reference_dim else None
    return batches(), codebook, k, reference_dim


def run_diagnosis(args: argparse.Namespace) -> Diagnosis:
    """Read the inputs named by ``args`` and analyse them (no files written)."""
    if args.batch_size < 1 or args.sample < 0:
        raise UserError("--batch-size must be >= 1 and --sample >= 0")
    inputs: dict[str, str] = {}
    notes: list[str] = []
    if args.model:
        batches, codebook, k, reference_dim = _batches_from_model(args, inputs)
    else:
        batches, codebook, k, reference_dim = _batches_from_files(args, inputs, notes)
    diag = analyse(batches, codebook, k, reference_dim=reference_dim, sample=args.sample)
    diag.inputs, diag.notes = inputs, notes + diag.notes
    return diag


def main(args: argparse.Namespace) -> int:
    """``vqbench diagnose``: write ``report.html`` and ``diagnosis.json`` into ``--out``; print the verdicts."""
    from vqbench.commands.diagnose_advice import advise
    from vqbench.commands.diagnose_report import write_report

    diag = run_diagnosis(args)
    board = args.board if args.board is not None else (DEFAULT_BOARD if Path(DEFAULT_BOARD).is_dir() else None)
    advice = advise(diag, board)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out} ({exc.strerror}): pass another --out") from None
    payload = {**diag.to_json(), "advice": advice.to_json()}
    (out / "diagnosis.json").write_text(json.dumps(payload, indent=1, allow_nan=False), encoding="utf-8")
    report = write_report(diag, advice, out / "report.html")
    for v in diag.verdicts:
        print(v.line)
    for note in advice.notes:
        print(f"note: {note}")
    print(f"report: {report}  numbers: {out / 'diagnosis.json'}")
    return 0


def cli(argv: list[str] | None = None) -> int:
    """``python -m vqbench.commands.diagnose ...`` (the same as ``vqbench diagnose`` once wired in)."""
    from vqbench.commands import run_module_cli

    return run_module_cli("vqbench diagnose", __doc__.split("\n")[0], add_arguments, main, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
