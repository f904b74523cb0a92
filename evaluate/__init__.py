"""evaluate/: metrics, result tables, plots, and scoring a new video with a trained run.

Reads run folders (docs/ARCHITECTURE.md, "Run folder"); never re-trains.

    python -m evaluate table RUNS... [--csv out.csv] [--latex out.tex] [--no-reference] [--n-boot 1000]
    python -m evaluate plots RUN_DIR...
    python -m evaluate report RUNS_ROOT        # what `make eval` runs: RUNS_ROOT/results.{md,tex,csv}, figures
    python -m evaluate score VIDEO --run RUN_DIR [--model selected|final] [--difficulty D] [--voters M] [--json]

Modules: metrics, runs, tables (long table), compact (the default table), latex, names, figures, plots,
outputs, published, score, score_inputs (docs/ARCHITECTURE.md, "evaluate/").

Decisions (details in each module's docstring):
- metrics: Spearman with average ranks for ties; undefined (constant side, n < 2) -> NaN, never 0.
  RL2 is a fraction (x100 only when shown); NaN when the true scores have no range. Fisher-z mean clips
  |rho| to 1 - 1e-7 and *propagates* NaN by default (``nan_policy="omit"`` ignores them with a warning).
- CIs: percentile bootstrap over test videos (seeded, ``n_boot`` draws). Several seeds: each draw
  resamples the videos once and applies it to every seed (paired), statistic = mean of the seeds' rho,
  so the CI is the test-set uncertainty of the reported mean and the seed spread is its own column.
  Average rows: bootstrap stratified by class/fold, Fisher-z combined per draw.
- tables: rows per (experiment, dataset, class-or-fold, head[+tag], protocol) with protocols
  "val-selected", "final-epoch" and "best-epoch-on-test (selected on test!)"; AQA-7 and JIGSAWS
  average rows by Fisher z (RL2 arithmetic); the compact table shows the published numbers of the same
  method and dataset in their own labelled columns with the source named;
  incomplete runs listed as skipped; rho from summary.json is checked against predictions.csv.
- score: T frames spread evenly over the clip by default (``--sampling first`` for the first T); the
  backbone's weights sha256 must equal the cache's; exemplars from the run's training pool (split.json).
"""
