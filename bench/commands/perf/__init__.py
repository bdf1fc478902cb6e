"""``vqbench perf``: speed and memory of the quantizers, next to vector-quantize-pytorch and ``torch.mm``.

Three measures, one row each per cell (``vqbench.store.PERF_SCHEMA``, one Parquet file per invocation):

* ``forward_backward``: one training-mode forward of a quantizer on ``N`` random vectors ``z`` (N, dim) plus the
  backward of ``loss + sum(z_q * g)`` (``g`` a fixed random upstream gradient), for vqbench's registered method
  and, on the same inputs, vector-quantize-pytorch's equivalent (:func:`vqp_equivalent`).
  ``time_ms`` is the median over at least ``repeats`` timed calls (more for short cells, until they add up to
  ``min_time_s``) after ``warmup`` untimed ones (the first call is in the note when it is a one-off cost such as
  k-means initialisation). A compared pair whose calls take at most ``INTERLEAVE_MAX_MS`` is then re-timed with
  the two implementations' calls alternating in one process (:func:`time_interleaved`), so that both see the same
  background load; the note keeps the time measured alone. The vqbench row's note carries the ratio
  ``time(vqbench) / time(vector-quantize-pytorch)`` and the same for memory (below 1: vqbench is better).
* ``nearest_code_search``: :func:`vqbench.methods.base.nearest_code` on (N, dim) x (K, dim); ``gflops`` is the achieved
  rate of its ``2 N K dim`` multiply-adds.
* ``matmul``: ``torch.mm`` on the same shapes, the faster of two tilings into a reused output buffer (row blocks
  whose output is at most 1 GiB, so K = 2^20 fits, and the search's own blocks,
  :func:`vqbench.methods.base.search_block`): the practical limit of the search. The search row's note says which
  fraction of that rate it achieves.

On CPU the measuring processes keep freed memory for reuse (:func:`keep_freed_memory`), as PyTorch's caching
allocator does on GPUs: otherwise page faults that depend on the allocation history move millisecond cells by up
to 2x between two runs.

Peak memory (``peak_memory_mb``) is everything the cell holds at its peak: inputs, module, activations, gradients.
On CUDA it is ``torch.cuda.max_memory_allocated`` above what was allocated before the cell. On CPU each cell runs
in a fresh subprocess (isolation also protects the machine) and the peak is the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` after the imports) minus its resident set before the cell
built anything: allocations torch makes outside Python (which ``tracemalloc`` cannot see) are counted.

Cells that cannot fit are not attempted: :func:`predict_bytes` estimates a cell's peak (e.g. the N x K one-hot
and distance matrices of vector-quantize-pytorch: 64 GiB each for N = 16384, K = 2^20) and a cell above the memory
cap (default 20 GiB) gets an ``out_of_memory`` row saying so. As a second guard, a CPU subprocess runs under an
address-space limit of cap + slack, so a wrong estimate ends as an ``out_of_memory`` row, not a swapping machine.
A method that is not registered (or has no vector-quantize-pytorch equivalent) gets an ``unsupported`` row; any
other failure an ``error`` row with the message; nothing stops the table.

The package's modules: :mod:`.plan` (cells, :class:`PerfConfig`, memory prediction), :mod:`.adapters` (the two
implementations, one vector-quantize-pytorch adapter per method), :mod:`.timing` and :mod:`.measure` (one cell in
this process), :mod:`.isolate` (one cell in a worker process), :mod:`.run` (the table), :mod:`.report` (lines and
tables), :mod:`.cli` (options). They import only the standard library at import time (the CLI builds its parser
cheaply; the tables need only pandas); torch, the methods and vector-quantize-pytorch are imported where a cell
is measured.
"""

from vqbench.commands.perf.adapters import VQP_ADAPTERS, build_vqbench, build_vqp, vqp_equivalent
from vqbench.commands.perf.cli import add_perf_arguments, cmd_perf, config_from_args, int_list, main, str_list
from vqbench.commands.perf.isolate import measure_cell_isolated, time_interleaved_isolated
from vqbench.commands.perf.measure import keep_freed_memory, measure_cell
from vqbench.commands.perf.plan import (
    DEFAULT_CELL_TIMEOUT_S,
    DEFAULT_MEMORY_CAP_GIB,
    DEFAULT_REPEATS,
    DIMS,
    GIB,
    INTERLEAVE_MAX_MS,
    MAIN_METHODS,
    MAX_TIMED_CALLS,
    MIN_TIMED_S,
    N_VECTORS,
    SIZES,
    VQP,
    Cell,
    PerfConfig,
    Unsupported,
    cell_params,
    fsq_levels,
    plan_cells,
    predict_bytes,
)
from vqbench.commands.perf.report import annotate_ratios, format_row, ratio_table, search_table, summary_text
from vqbench.commands.perf.run import new_perf_id, perf_row, run_perf, versions
from vqbench.commands.perf.timing import time_interleaved

__all__ = [
    "DEFAULT_CELL_TIMEOUT_S", "DEFAULT_MEMORY_CAP_GIB", "DEFAULT_REPEATS", "DIMS", "GIB", "INTERLEAVE_MAX_MS",
    "MAIN_METHODS", "MAX_TIMED_CALLS", "MIN_TIMED_S", "N_VECTORS", "SIZES", "VQP", "VQP_ADAPTERS", "Cell",
    "PerfConfig", "Unsupported", "add_perf_arguments", "annotate_ratios", "build_vqbench", "build_vqp", "cell_params",
    "cmd_perf", "config_from_args", "format_row", "fsq_levels", "int_list", "keep_freed_memory", "main",
    "measure_cell", "measure_cell_isolated", "new_perf_id", "perf_row", "plan_cells", "predict_bytes", "ratio_table",
    "run_perf", "search_table", "str_list", "summary_text", "time_interleaved", "time_interleaved_isolated",
    "versions", "vqp_equivalent",
]
