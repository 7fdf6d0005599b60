"""`fastvid batch`: many questions about many videos from a CSV, resumable, optionally data-parallel.

Modules, in the order a run uses them: rows (the questions CSV) · plan (BatchConfig, the settings and fingerprint
of each row) · groups (one VideoSession per video, frames, ratio and method) · dist (data-parallel processes and
their shard files) · prefetch (the next video decoded in the background) · runner (run_batch) · output (records,
the final view, --csv-out). The journal (append, repair, resume) is fastvid_cli.journal, shared with `eval`.

The names below are this package's interface; importing it imports neither torch nor transformers.
"""

from fastvid_cli.batch.dist import DIST_TIMEOUT_S, Dist, init_dist, shard_files, shard_path
from fastvid_cli.batch.groups import Group, make_groups, split_groups
from fastvid_cli.batch.output import (
    CSV_OUT_COLUMNS,
    _report_keys,
    error_record,
    finalize,
    ok_record,
    order_records,
    write_csv_out,
)
from fastvid_cli.batch.plan import (
    BatchConfig,
    Plan,
    base_settings,
    make_plan,
    row_settings,
    validate_config,
)
from fastvid_cli.batch.prefetch import FramePrefetcher, Prefetched
from fastvid_cli.batch.rows import CSV_ERROR, MAX_FRAMES, OPTIONAL_COLUMNS, REQUIRED_COLUMNS, Row, read_questions
from fastvid_cli.batch.runner import AUTO_ANSWER_BATCH, BatchResult, RowWriter, resolve_answer_batch, run_batch
from fastvid_cli.journal import (
    FINGERPRINT_VERSION,
    Appender,
    fingerprint,
    index_records,
    is_done,
    read_records,
    record_key,
    repair_tail,
    select,
)
from fastvid_cli.runs import Progress, format_exception

__all__ = [
    "AUTO_ANSWER_BATCH", "CSV_ERROR", "CSV_OUT_COLUMNS", "DIST_TIMEOUT_S", "FINGERPRINT_VERSION", "MAX_FRAMES",
    "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "Appender", "BatchConfig", "BatchResult", "Dist",
    "FramePrefetcher", "Group", "Plan", "Prefetched", "Progress", "Row", "RowWriter", "_report_keys",
    "base_settings", "error_record", "finalize", "fingerprint", "format_exception",
    "index_records", "init_dist", "is_done", "make_groups", "make_plan", "ok_record", "order_records",
    "read_questions", "read_records", "record_key", "repair_tail", "resolve_answer_batch", "row_settings",
    "run_batch", "select", "shard_files", "shard_path", "split_groups", "validate_config", "write_csv_out",
]
