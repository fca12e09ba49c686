"""The lineage graph. Every asset is daily-partitioned, handles a single day or a whole range
(single-run backfills), writes its partition through ``compound_learning.steps`` and reports
what happened as metadata, so the UI tells the story without the logs."""

import logging
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import date, timedelta

import dagster as dg

from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.orchestration.partitions import daily_partitions
from compound_learning.orchestration.resources import StoreResource
from compound_learning.storage.retry import is_transient, with_retries

# Single-run backfills are what make a range one run; the parameter is marked beta in 1.13.
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


class _SkippedCheckStep(logging.Filter):
    """Drops Dagster's warning that a blocking check of ours "emitted no result". It logs it for
    a step skipped on a day on which nothing was ingested (``ctr_model``, after
    ``performance_data``) while deciding whether to skip the steps after it, which it then skips
    too: nothing proceeds ungated. A step of ours that runs always emits its checks (Dagster
    fails it otherwise), so the warning can mean nothing else here."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Blocking asset check '") and "emitted no result in step" in message)


logging.getLogger("dagster._core.execution.plan.active").addFilter(_SkippedCheckStep())

OWNERS = ["team:growth-data"]
SINGLE_RUN = dg.BackfillPolicy.single_run()

compound_performance_data = dg.AssetSpec(
    "compound_performance_data",
    description=(
        "Raw daily performance rows, one per (account_id, creative_id, date), loaded by "
        "`compound-learning ingest` or an upstream sync. Restated rows replace older ones."
    ),
    group_name="ingestion",
    kinds={"sql", "csv"},
    owners=OWNERS,
    partitions_def=daily_partitions,
)


def partition_days(context: dg.OpExecutionContext) -> list[date]:
    """The days of the run: one for a daily run, many for a single-run backfill."""
    window = context.partition_time_window
    start, end = window.start.date(), window.end.date()
    return [start + timedelta(days=i) for i in range((end - start).days)]


def _md_table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "_nothing to show_"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |\n" for r in rows)
    return head + body


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return "" if value is None else str(value)


# Progress of long ranges (the demo, a backfill from the CLI) for a person watching a terminal;
# the CLI sends this logger to stderr, the Dagster UI shows the step's own log lines instead.
PROGRESS = logging.getLogger("compound_learning.progress")
PROGRESS_EVERY_SECONDS = 5.0


def _figures(summary: dict, figures: list[str]) -> dict:
    out: dict = {}
    for key in figures:
        value = summary.get(key)
        if isinstance(value, bool) or value is None:
            out[key] = str(value)
        elif isinstance(value, (int, float)):
            out[key] = value
        else:
            out[key] = dg.MetadataValue.json(value)
    if summary.get("rows") == 0:
        out["note"] = "no data for this day"
    return out


def _escalating(fn: Callable[[], dict]) -> dict:
    """Run ``fn``; a transient database error that outlasted the in-step retries becomes
    Dagster's step retry, any other error fails the step at once."""
    try:
        return fn()
    except Exception as exc:
        if is_transient(exc):
            raise dg.RetryRequested(max_retries=STEP_RETRIES, seconds_to_wait=STEP_RETRY_WAIT_SECONDS) from exc
        raise


def _each_day(
    context: dg.OpExecutionContext, name: str, days: list[date], run_one: Callable[[date], dict], figures: list[str]
) -> list[dict]:
    """``run_one`` for each day in order, with progress for long ranges and a log line per day."""
    results = []
    started = last_report = time.monotonic()
    for i, day in enumerate(days, start=1):
        now = time.monotonic()
        if len(days) > 1 and (now - last_report >= PROGRESS_EVERY_SECONDS or i == len(days)):
            last_report = now
            left = (now - started) / max(i - 1, 1) * (len(days) - i + 1)
            PROGRESS.info("%s: day %d/%d (%s), about %.0f s left in this step", name, i, len(days), day, left)
        summary = _escalating(lambda day=day: run_one(day))
        if len(days) > 1:  # a one-day run's figures are its materialization's metadata: no second copy
            context.log.info(f"{day}: " + ", ".join(f"{k}={summary[k]}" for k in figures if k in summary))
        if summary.get("rows") == 0:
            context.log.warning(f"{day}: {_no_rows(summary)}")
        results.append({"day": str(day), **summary})
    return results


def _no_rows(summary: dict) -> str:
    """Why a day of ``performance_data`` has no rows, in words."""
    if summary.get("quarantined_rows"):
        return f"no valid rows for this day: all {summary['quarantined_rows']} rows given for it were quarantined"
    return "no data for this day (nothing was ingested for it)"


def _report(
    context: dg.OpExecutionContext,
    name: str,
    results: list[dict],
    figures: list[str],
    store: StoreResource,
    preview: Callable[[dict, StoreResource], str] | None = None,
) -> dict:
    """The materialization's metadata for the run's days (and an observation per day of a range)."""
    last = results[-1]
    if len(results) > 1:
        # Dagster gives every partition of a single-run range the same materialization metadata
        # (dagster-io/dagster#18123), so each day's own figures go on an observation of its own
        # partition; the materialization says it covers a range and shows the days as a table.
        for result in results:
            context.log_event(
                dg.AssetObservation(
                    asset_key=dg.AssetKey(name), partition=result["day"], metadata=_figures(result, figures)
                )
            )
    metadata: dict = {
        "days_processed": len(results),
        "first_day": results[0]["day"],
        "last_day": last["day"],
        **({"figures_below_are_for": last["day"]} if len(results) > 1 else {}),
        **_figures(last, figures),
    }
    if len(results) > 1:
        metadata["per_day"] = dg.MetadataValue.md(_md_table(results[-31:], ["day", *figures]))
    if preview:
        metadata["preview"] = dg.MetadataValue.md(preview(last, store))
    return metadata


def _materialize(
    context: dg.AssetExecutionContext, store: StoreResource, figures: list[str], *args, **kwargs
) -> dg.MaterializeResult:
    """The materialization of :func:`_run_days` (the same arguments)."""
    return _run_days(context, store, figures, *args, **kwargs)[1]


def _run_days(
    context: dg.AssetExecutionContext,
    store: StoreResource,
    figures: list[str],
    preview: Callable[[dict, StoreResource], str] | None = None,
    checks: Callable[[date], list[dg.AssetCheckResult]] | None = None,
    all_checks: Callable[[list[dict]], list[dg.AssetCheckResult]] | None = None,
) -> tuple[list[dict], dg.MaterializeResult]:
    """The step for every day of the run: each day's summary, and the materialization that reports them."""
    ctx = store.cycle_context()
    name = context.asset_key.to_user_string()
    results = _each_day(context, name, partition_days(context), lambda day: steps.run_step(ctx, name, day), figures)
    metadata = _report(context, name, results, figures, store, preview)
    check_results = checks(date.fromisoformat(results[-1]["day"])) if checks else None
    if all_checks:
        check_results = (check_results or []) + all_checks(results)
    return results, dg.MaterializeResult(metadata=metadata, check_results=check_results)


def _sharded(
    name: str,
    deps: list,
    group: str,
    kinds: set[str],
    figures: list[str],
    preview: Callable[[dict, StoreResource], str] | None = None,
):
    """The asset of a sharded step (``steps.SHARDED_STEPS``).

    With one shard (the default) it is one op, like every other asset. With
    ``COMPOUND_LEARNING_SHARDS`` = n > 1 it is a graph: ``prepare`` (every day of the run), one
    ``shard`` step per part of the accounts (the executor runs them in parallel: processes,
    Celery workers), and ``combine``, which writes each day's tables in one transaction. The
    docstring of the decorated function is the asset's description either way."""
    step = steps.SHARDED_STEPS[name]
    shards = load_settings().shards

    def decorate(fn):
        if shards == 1:
            return _asset(name, deps, group, kinds)(fn)

        upstream_names = [d.key.to_user_string() for d in deps]

        @dg.op(name=f"{name}_prepare", ins={u: dg.In(dg.Nothing) for u in upstream_names}, out=dg.DynamicOut(dict))
        def prepare(context: dg.OpExecutionContext, store: StoreResource):
            """Runs the step's sequential first part for every day, then hands each shard its work."""
            ctx = store.cycle_context()
            days = partition_days(context)
            infos = {
                str(day): _escalating(lambda day=day: with_retries(lambda: step.prepare(ctx, day), name))
                for day in days
            }
            for i, shard in enumerate(step.shards(shards)):
                key = (
                    f"all_accounts_{shard.global_metrics[0]}"
                    if not shard.indices
                    else f"shard_{shard.indices[0]}_of_{shard.of}"
                )
                yield dg.DynamicOutput({"index": i, "shard": shard, "infos": infos}, mapping_key=key)

        @dg.op(name=f"{name}_shard", out=dg.Out(dict))
        def work(context: dg.OpExecutionContext, store: StoreResource, unit: dict) -> dict:
            """One shard's per-account work over every day of the run."""
            ctx = store.cycle_context()
            days = partition_days(context)
            infos = {day: unit["infos"][str(day)] for day in days}
            parts = _escalating(lambda: with_retries(lambda: step.work(ctx, days, unit["shard"], infos), name))
            return {"index": unit["index"], "infos": unit["infos"], "parts": {str(d): p for d, p in parts.items()}}

        @dg.op(name=f"{name}_combine", out=dg.Out(dg.Nothing))
        def combine(context: dg.OpExecutionContext, store: StoreResource, units: list[dict]) -> None:
            """Every shard's results of each day, combined and written in one transaction per day."""
            ctx = store.cycle_context()
            units = sorted(units, key=lambda u: u["index"])
            infos = units[0]["infos"]

            def one(day: date) -> dict:
                parts = [u["parts"][str(day)] for u in units]
                return with_retries(lambda: step.combine(ctx, day, infos[str(day)], parts), name)

            results = _each_day(context, name, partition_days(context), one, figures)
            context.add_output_metadata({**_report(context, name, results, figures, store, preview), "shards": shards})

        def compose(**upstream):
            return combine(prepare(**upstream).map(work).collect())

        return dg.graph_asset(
            compose,
            name=name,
            description=fn.__doc__,
            ins={u: dg.AssetIn(key=u, dagster_type=dg.Nothing) for u in upstream_names},
            partitions_def=daily_partitions,
            backfill_policy=SINGLE_RUN,
            group_name=group,
            kinds=kinds,
            owners=OWNERS,
        )

    return decorate


# Inside a step, transient database errors are retried with backoff (storage.retry, about 8 s in
# all); when they outlast that (a database restart), Dagster retries the step after a pause;
# any other error fails the step at once. The instance's run_retries (dagster.yaml) re-launch a
# run whose process died.
STEP_RETRIES = 2
STEP_RETRY_WAIT_SECONDS = 30


def _asset(
    name: str, deps: list, group: str, kinds: set[str], check_specs: list | None = None, output_required: bool = True
):
    return dg.asset(
        name=name,
        output_required=output_required,
        deps=deps,
        partitions_def=daily_partitions,
        backfill_policy=SINGLE_RUN,
        group_name=group,
        kinds=kinds,
        owners=OWNERS,
        check_specs=check_specs,
    )


MAX_QUARANTINE_RATE = 0.2
PERFORMANCE_CHECKS = [
    dg.AssetCheckSpec(
        "quarantine_rate",
        asset="performance_data",
        description=f"At most {MAX_QUARANTINE_RATE:.0%} of the day's rows were refused by the contract.",
    ),
    dg.AssetCheckSpec(
        "stored_rows_valid",
        asset="performance_data",
        blocking=True,
        description="Every stored row of the day satisfies the contract (clicks <= impressions, no negatives).",
    ),
]


def _day_checks(
    results: list[dict], specs: list[tuple[str, Callable[[dict], bool], str, dict]]
) -> list[dg.AssetCheckResult]:
    """One check result per spec over every day of the run: it fails if any day fails."""
    out = []
    for name, ok, severity, _ in specs:
        failing = [r["day"] for r in results if not ok(r)]
        out.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not failing,
                severity=dg.AssetCheckSeverity(severity),
                metadata={"days_checked": len(results), "failing_days": ", ".join(failing[:31]) or "none"},
            )
        )
    return out


@_asset(
    "performance_data",
    [compound_performance_data],
    "ingestion",
    {"python", "sql"},
    PERFORMANCE_CHECKS,
    output_required=False,
)
def performance_data(
    context: dg.AssetExecutionContext, store: StoreResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The validated slice of one day: row, account and creative counts, totals, the rows
    quarantined for that day with the data version (newest ingestion batch) it was built from.
    Checks: the quarantine rate, and that every stored row satisfies the contract.

    A run for days on which nothing was ingested (no row stored, none quarantined) has no slice:
    the asset is not materialized and the steps after it are skipped (the knowledge stays the
    last day's; a later day rolls the evidence forward over the gap). They run when data for
    those days arrives (``new_data_sensor``). The checks still report, vacuously passed."""
    results, materialization = _run_days(
        context,
        store,
        [
            "rows",
            "quarantined_rows",
            "quarantine_rate",
            "accounts",
            "creatives",
            "impressions",
            "clicks",
            "spend",
            "data_version",
            "invariant_violations",
        ],
        all_checks=lambda results: _day_checks(
            results,
            [
                ("quarantine_rate", lambda r: r["quarantine_rate"] <= MAX_QUARANTINE_RATE, "WARN", {}),
                ("stored_rows_valid", lambda r: r["invariant_violations"] == 0, "ERROR", {}),
            ],
        ),
    )
    if steps.nothing_ingested(results):  # each day's warning above says so; Dagster logs the skips
        yield from materialization.check_results
        return
    yield materialization


@_asset(
    "daily_stats",
    [performance_data],
    "statistics",
    {"python", "pandas", "sql"},
    [
        dg.AssetCheckSpec(
            "rows_match_source",
            asset="daily_stats",
            blocking=True,
            description="One per-creative row for every source row of the day.",
        )
    ],
)
def daily_stats(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Additive sufficient statistics of one day: per creative (with its attributes, day of week
    and age) and per account x attribute value and pairs of values. A restated day drops the
    cumulative snapshots after it so the knowledge is rebuilt from correct evidence."""
    return _materialize(
        context,
        store,
        ["source_rows", "creatives", "attribute_rows", "pair_rows", "impressions", "clicks", "changed_since_last_run"],
        all_checks=lambda results: _day_checks(
            results, [("rows_match_source", lambda r: r["creatives"] == r["source_rows"], "ERROR", {})]
        ),
    )


def _patterns_preview(summary: dict, store: StoreResource) -> str:
    rows = [
        {
            "metric": p["metric"],
            "attributes": p["attributes"],
            "lift": p["lift"],
            "95% CI": f"[{p['ci_low']:+.1%}, {p['ci_high']:+.1%}]",
            "q": p["q_value"],
            "state": p["state"],
        }
        for p in summary.get("top_patterns", [])
    ]
    drift = f"**Drift**: {summary['drift']}\n\n" if summary.get("drift") else ""
    return (
        drift
        + "**Top global patterns** (lift vs the dimension's average value)\n\n"
        + _md_table(rows, ["metric", "attributes", "lift", "95% CI", "q", "state"])
    )


LEARNING_FIGURES = [
    "patterns",
    "global_patterns",
    "significant_global_patterns",
    "states_global",
    "creatives",
    "accounts",
    "cumulative_cells",
    "creatives_collapsed",
    "days_rolled_forward",
    "drift_z",
    "exploring",
]


@_sharded(
    "learning_patterns", [daily_stats], "learning", {"python", "numpy", "sql"}, LEARNING_FIGURES, _patterns_preview
)
def learning_patterns(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Cumulative evidence up to the day (yesterday's knowledge + today's statistics, optional
    forgetting) -> adjusted effects of every attribute value and supported pair on CTR, CVR and
    ROAS, with creative-clustered 95% intervals, BH q-values, confidence and state; global and
    per account. Also the drift test: the last two weeks' ROAS level against the older evidence's,
    net of the creatives' attributes; a significant drop starts an exploration burst."""
    return _materialize(context, store, LEARNING_FIGURES, _patterns_preview)


@_asset("knowledge_graph", [learning_patterns], "learning", {"python", "sql"})
def knowledge_graph(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Nodes (attribute values, metrics, patterns) and typed relationships (improves, hurts,
    synergy, antagonism, co_occurs, contradicts, describes) with posterior confidence; one
    snapshot per day, so each node's history shows knowledge accumulating."""
    return _materialize(context, store, ["nodes", "relationships", "relationships_by_type", "mean_value_confidence"])


@_asset("cross_account_insights", [learning_patterns], "learning", {"python", "sql"})
def cross_account_insights(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Effects that hold across accounts (random-effects pooling), published only when at least
    MIN_ACCOUNTS_FOR_SHARED (5) accounts contribute and no two dominate; relative lifts only, never an account id."""
    return _materialize(context, store, ["candidates", "published", "withheld"])


def _model_preview(summary: dict, store: StoreResource) -> str:
    if summary.get("version") is None:
        return f"**{summary.get('action')}**: {summary.get('reason')}"
    rows = summary.get("reliability", [])
    accounts = [{"account_id": a, **m} for a, m in sorted(summary.get("per_account", {}).items())][:30]
    trained = not str(summary["action"]).startswith("skipped")
    model = f"v{summary['version']} ({summary['family']})"
    headline = (
        f"**{summary['action']}** {model}: {summary['reason']}"
        if trained
        else f"**{summary['action']}** ({summary['reason']}); serving champion {model}, its figures below"
    )
    return (
        headline + "\n\n"
        "Reliability on the holdout (by predicted CTR decile)\n\n"
        + _md_table(rows, ["predicted_ctr", "observed_ctr", "impressions"])
        + "\n\nPer account on the holdout\n\n"
        + _md_table(accounts, ["account_id", "log_loss", "calibration_ratio", "clicks", "impressions"])
    )


CHAMPION_CHECK = dg.AssetCheckSpec(
    "champion_usable",
    asset="ctr_model",
    blocking=True,
    description="A champion exists, its artifact verifies (SHA-256) and it is calibrated.",
)


@_asset("ctr_model", [daily_stats], "model", {"python", "scikitlearn"}, [CHAMPION_CHECK])
def ctr_model(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """The CTR model, retrained when enough new clicks arrived (or the champion is too old):
    logistic regression and gradient boosting compared on a later window; the winner becomes
    champion only if it beats the current one (paired bootstrap) and is calibrated. The blocking
    check stops the cycle when the champion is missing, unreadable or uncalibrated."""
    from compound_learning import model_registry  # scikit-learn loads only in the model's step

    ctx = store.cycle_context()

    def check(day: date) -> list[dg.AssetCheckResult]:
        result = model_registry.check_champion(ctx.store, day, ctx.cfg)
        return [
            dg.AssetCheckResult(
                check_name="champion_usable",
                passed=result["passed"],
                severity=dg.AssetCheckSeverity(result["severity"]),
                metadata={k: v for k, v in result.items() if k not in ("passed", "severity")},
            )
        ]

    return _materialize(
        context,
        store,
        [
            "action",
            "reason",
            "new_clicks",
            "version",
            "family",
            "train_inputs",
            "train_inputs_used",
            "log_loss",
            "normalized_entropy",
            "auc",
            "calibration_ratio",
            "brier",
        ],
        _model_preview,
        check,
    )


@_asset("creative_dna", [learning_patterns, ctr_model], "learning", {"python", "sql"})
def creative_dna(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Explainable scoring weights for new creatives: shrunk (empirical-Bayes) log multipliers of
    every attribute value, globally and per account (partially pooled), plus account baselines."""
    return _materialize(context, store, ["weights", "global_weights", "accounts"])


def _recommendations_preview(summary: dict, store: StoreResource) -> str:
    burst = (
        " during an exploration burst after a drop, see learning_patterns' drift"
        if summary.get("exploration_burst")
        else ""
    )
    return (
        f"**Next launch per account** ({summary.get('explore_share', 0):.0%} of picks explore{burst}; "
        f"fatigue {summary.get('fatigue_per_100k_impressions', 0):+.3f} log CTR per 100k impressions)\n\n"
        + _md_table(
            summary.get("top_picks", []),
            ["account_id", "next_launch", "expected_roas", "roas_95", "explore_picks", "spend_exploration"],
        )
    )


RECOMMENDATION_FIGURES = [
    "accounts",
    "launch_picks",
    "explore_picks",
    "exploration_burst",
    "live_creatives",
    "fatigue_per_100k_impressions",
]


@_sharded(
    "creative_recommendations",
    [creative_dna, learning_patterns],
    "decisions",
    {"python", "sql"},
    RECOMMENDATION_FIGURES,
    _recommendations_preview,
)
def creative_recommendations(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """What each account should do next: the attribute combinations to launch (best posterior
    mean, and a configured share of Thompson-sampled explore picks) with expected ROAS and CTR,
    intervals and reasons; and tomorrow's spend split over its live creatives (probability of
    being best, an even floor, learned fatigue), with the share that is exploration."""
    return _materialize(context, store, RECOMMENDATION_FIGURES, _recommendations_preview)


TRAJECTORY_FIGURES = ["accounts", "learning_status", "median_roas", "median_roas_multiple"]


def _trajectory_preview(summary: dict, store: StoreResource) -> str:
    """The largest account's ROAS trajectory as an inline image, plus every account's status."""
    account = summary.get("largest_account")
    if not account:
        return "_no account had spend on this day_"
    from compound_learning import charts, queries  # matplotlib: only when there is a chart to draw

    s = store.store()
    traj = queries.trajectory(s, account)
    png = charts.trajectory_chart(queries.roas_series(s, account), traj)
    rows = summary.get("statuses", [])
    return (
        f"**{account}** (largest spend): {traj['learning_status']}\n\n![trajectory]({charts.data_uri(png)})\n\n"
        + _md_table(rows, ["account_id", "learning_status", "initial_roas", "current_roas", "daily_improvement_rate"])
    )


@_sharded(
    "improvement_snapshots",
    [daily_stats, creative_dna],
    "trajectory",
    {"python", "statsmodels", "sql"},
    TRAJECTORY_FIGURES,
    _trajectory_preview,
)
def improvement_snapshots(context: dg.AssetExecutionContext, store: StoreResource) -> dg.MaterializeResult:
    """Per account: the day's ROAS and its trajectory (compound vs saturating growth, HAC
    intervals, projections at 30/90/365 days, learning status). The day's DNA tells a change in
    the attribute mix from creative luck in the first-vs-last change."""
    return _materialize(context, store, TRAJECTORY_FIGURES, _trajectory_preview)


CYCLE_ASSETS = [
    performance_data,
    daily_stats,
    learning_patterns,
    knowledge_graph,
    creative_dna,
    creative_recommendations,
    cross_account_insights,
    ctr_model,
    improvement_snapshots,
]
