"""Table definitions (SQLAlchemy Core). Created on start-up on SQLite and PostgreSQL.

The original six tables keep their names (compound_performance_data, learning_patterns,
knowledge_nodes, knowledge_relationships, compound_improvement_snapshots, learning_cycle_logs);
the rest hold what the compound design needs: ingestion batches and quarantine, per-day and
cumulative sufficient statistics, the DNA weights, cross-account insights and the model registry.
Every derived table is keyed by the day it describes (``as_of``/``date``) plus a natural key, so a
partition is rewritten in one transaction and re-running a day gives identical rows.

Columns that hold what a user sent are bounded by the contract (``core.contract``: ids 200
characters, attribute names 64, values 200); keys composed from them (pattern, node and insight
ids, DNA pair rows) are unbounded ``Text`` so that every input the contract accepts can be stored
on both databases.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from compound_learning.core.stats import COLLAPSED_COLUMNS

metadata = sa.MetaData()


def _metrics(nullable_optional: bool = True, as_float: bool = False) -> list[sa.Column]:
    count = sa.Float if as_float else sa.BigInteger
    return [
        sa.Column("impressions", count, nullable=False),
        sa.Column("clicks", count, nullable=False),
        sa.Column("conversions", count, nullable=nullable_optional),
        sa.Column("spend", sa.Float, nullable=False),
        sa.Column("revenue", sa.Float, nullable=nullable_optional),
    ]


performance = sa.Table(
    "compound_performance_data",
    metadata,
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("creative_id", sa.String(200), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    *_metrics(),
    # the row's attributes, stored once per distinct combination (a creative repeats its own
    # every day): a 1M-row day holds a few thousand; Store.performance_rows joins them back
    sa.Column("attribute_set_id", sa.BigInteger, nullable=False),
    sa.Column("batch_id", sa.Integer, nullable=False),  # no index: nothing looks rows up by it
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_performance_date", "date"),
)

attribute_sets = sa.Table(
    "attribute_sets",
    metadata,
    # the first 63 bits of the JSON's SHA-256 (so a row's id is known before the set is stored)
    sa.Column("attribute_set_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),  # canonical JSON (sorted keys, blanks left out)
)


def attribute_set_key(attributes_json: str) -> tuple[int, str]:
    """The id and the SHA-256 of an attribute set, from its canonical JSON."""
    digest = hashlib.sha256(attributes_json.encode()).hexdigest()
    return int(digest[:16], 16) >> 1, digest


ingest_batches = sa.Table(
    "ingest_batches",
    metadata,
    sa.Column("batch_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows_in_input", sa.Integer, nullable=False),
    sa.Column("accepted", sa.Integer, nullable=False),
    sa.Column("rejected", sa.Integer, nullable=False),
    sa.Column("inserted", sa.Integer, nullable=False),
    sa.Column("replaced", sa.Integer, nullable=False),
    sa.Column("unchanged", sa.Integer, nullable=False),
    sa.Column("days_touched", sa.Text, nullable=False),  # JSON list of YYYY-MM-DD with changed rows
    sa.Column("rejected_by_reason", sa.Text, nullable=False),  # JSON object
    sa.Column("warnings", sa.Text),  # JSON list: header names that differ from a contract column only in case
    sa.Column("sha256", sa.String(64), index=True),  # of the file read (NULL for a DataFrame)
    sa.Column("days_in_input", sa.Text),  # JSON list of the days the accepted rows gave
    sa.Column("attribute_columns", sa.Text),  # JSON list
)

quarantine = sa.Table(
    "quarantine",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", sa.Integer, nullable=False, index=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("day", sa.String(32)),  # the row's date as given, when it had one
    sa.Column("row", sa.Text, nullable=False),
    sa.Column("line", sa.BigInteger),  # the line of the file the row ended on (header = 1)
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

creative_daily_stats = sa.Table(
    "creative_daily_stats",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("creative_id", sa.String(200), primary_key=True),
    sa.Column("dow", sa.SmallInteger, nullable=False),
    sa.Column("age_days", sa.Integer, nullable=False),
    *_metrics(),
    sa.Column("attributes", sa.Text, nullable=False),
)

attribute_daily_stats = sa.Table(
    "attribute_daily_stats",
    metadata,
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("dimension", sa.String(200), primary_key=True),
    sa.Column("value", sa.String(200), primary_key=True),
    sa.Column("dimension2", sa.String(200), primary_key=True),
    sa.Column("value2", sa.String(200), primary_key=True),
    sa.Column("creatives", sa.Integer, nullable=False),
    *_metrics(),
)

creative_cumulative_stats = sa.Table(
    "creative_cumulative_stats",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("creative_id", sa.String(200), primary_key=True),
    sa.Column("dow", sa.SmallInteger, primary_key=True),
    sa.Column("age_bucket", sa.SmallInteger, primary_key=True),
    *_metrics(as_float=True),
    sa.Column("days", sa.Integer, nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("last_seen", sa.Date, nullable=False),
    # only on a creative's collapsed row (dow and age_bucket -1, ``core.stats.collapse_cells``):
    # its exposures adjusted by the global fits' terms, and its impressions' shares of each day
    # of week and age bucket
    *[sa.Column(name, sa.Float) for name in COLLAPSED_COLUMNS],
)

# One row per cumulative snapshot written since snapshots were stored as a weekly base and what
# changed since: a snapshot whose ``base`` is its own day holds every cell; any other holds, for
# each cell that ran since its base, what was added since (metrics and days: increments; attributes
# and last_seen: the latest), so that the snapshot is its base's cells plus these (``core.stats.
# add_increments``). A day then writes the week's changes instead of the whole knowledge. A
# snapshot without a row here (written before) holds every cell.
cumulative_snapshots = sa.Table(
    "cumulative_snapshots",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("base", sa.Date, nullable=False),
)

learning_patterns = sa.Table(
    "learning_patterns",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("pattern_id", sa.Text, primary_key=True),
    sa.Column("pattern_type", sa.String(200), nullable=False),
    sa.Column("account_id", sa.String(200), nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("metric", sa.String(16), nullable=False),
    sa.Column("lift", sa.Float),
    sa.Column("ci_low", sa.Float),
    sa.Column("ci_high", sa.Float),
    sa.Column("log_effect", sa.Float),
    sa.Column("std_error", sa.Float),
    sa.Column("p_value", sa.Float),
    sa.Column("q_value", sa.Float),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("streak", sa.Integer, nullable=False),
    sa.Column("support", sa.Text, nullable=False),
    sa.Column("first_seen", sa.Date, nullable=False),
    sa.Column("last_updated", sa.Date, nullable=False),
    sa.Index("ix_patterns_as_of_metric", "as_of", "metric"),
)

# The global fits' day-of-week and age-bucket terms (``EffectFit.nuisance``, against Monday and
# a fresh creative): what a creative's cells are adjusted by when they are collapsed into one row.
nuisance_terms = sa.Table(
    "nuisance_terms",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("metric", sa.String(16), primary_key=True),
    sa.Column("term", sa.String(16), primary_key=True),  # dow or age
    sa.Column("level", sa.SmallInteger, primary_key=True),
    sa.Column("log_effect", sa.Float, nullable=False),
)

account_baselines = sa.Table(
    "account_baselines",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("metric", sa.String(16), primary_key=True),
    sa.Column("log_rate", sa.Float, nullable=False),  # a fresh creative, average day, mean values
    sa.Column("std_error", sa.Float),
)

# The per-account fits' candidate rows with a digest of what they were fitted on (the account's
# cells, the fitting code and its settings): the next day reuses an account's rows when the digest
# is the same, instead of fitting it again (an account without new data, forgetting off). A cache,
# not knowledge: the learning tables are the same with or without it, so it is not compared
# between runs (its digests see sums that differ in the last bits between processes).
account_fit_cache = sa.Table(
    "account_fit_cache",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("candidates", sa.Text, nullable=False),  # JSON: the account's candidate pattern rows
)

evidence_drift = sa.Table(
    # one row per day the learning step ran the drift test (core.drift): the recent evidence's
    # level against the older evidence's, and whether the launches explore because of it
    "evidence_drift",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("metric", sa.String(16), primary_key=True),
    sa.Column("window_start", sa.Date, nullable=False),  # first day of the recent evidence
    sa.Column("window_days", sa.Integer, nullable=False),
    sa.Column("level_shift", sa.Float),  # log; None when there was nothing to test
    sa.Column("std_error", sa.Float),
    sa.Column("z", sa.Float),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("recent_creatives", sa.Integer, nullable=False),
    sa.Column("older_creatives", sa.Integer, nullable=False),
    sa.Column("exploring", sa.Boolean, nullable=False),
    sa.Column("burst_start", sa.Date),  # the latest exploration burst's first day (carried forward)
    # JSON: the dimensions learned afresh from the evidence since the burst, per metric, with their tests
    sa.Column("relearned", sa.Text),
    sa.Column("summary", sa.Text, nullable=False),
)

knowledge_nodes = sa.Table(
    "knowledge_nodes",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("node_id", sa.Text, primary_key=True),
    sa.Column("node_type", sa.String(32), nullable=False),
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("properties", sa.Text, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("importance", sa.Float, nullable=False),
)

knowledge_relationships = sa.Table(
    "knowledge_relationships",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("source_id", sa.Text, primary_key=True),
    sa.Column("target_id", sa.Text, primary_key=True),
    sa.Column("relationship_type", sa.String(32), primary_key=True),
    sa.Column("metric", sa.String(16), primary_key=True),
    sa.Column("strength", sa.Float, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("evidence", sa.Text, nullable=False),
)

creative_dna = sa.Table(
    "creative_dna",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("metric", sa.String(16), primary_key=True),
    sa.Column("dimension", sa.Text, primary_key=True),  # a dimension, or a pair of them (JSON)
    sa.Column("value", sa.Text, primary_key=True),
    sa.Column("weight", sa.Float, nullable=False),  # shrunk log multiplier vs the dimension mean
    sa.Column("weight_se", sa.Float, nullable=False),
    sa.Column("creatives", sa.Integer, nullable=False),
)

creative_recommendations = sa.Table(
    "creative_recommendations",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),  # launch | spend
    sa.Column("rank", sa.Integer, primary_key=True),
    sa.Column("creative_id", sa.String(200), nullable=False),  # "-" for a creative still to launch
    sa.Column("pick", sa.String(16), nullable=False),  # exploit | explore (launch); live (spend)
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("expected_roas", sa.Float, nullable=True),
    sa.Column("roas_ci_low", sa.Float, nullable=True),
    sa.Column("roas_ci_high", sa.Float, nullable=True),
    sa.Column("expected_ctr", sa.Float, nullable=True),
    sa.Column("share", sa.Float, nullable=True),  # of tomorrow's spend (spend rows)
    sa.Column("p_best", sa.Float, nullable=True),
    sa.Column("exploration", sa.Float, nullable=True),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("details", sa.Text, nullable=False),  # JSON: contributions, intervals, fatigue
)

cross_account_insights = sa.Table(
    "cross_account_insights",
    metadata,
    sa.Column("as_of", sa.Date, primary_key=True),
    sa.Column("insight_id", sa.Text, primary_key=True),
    sa.Column("attributes", sa.Text, nullable=False),
    sa.Column("metric", sa.String(16), nullable=False),
    sa.Column("pooled_lift", sa.Float, nullable=False),
    sa.Column("ci_low", sa.Float, nullable=False),
    sa.Column("ci_high", sa.Float, nullable=False),
    sa.Column("tau2", sa.Float, nullable=False),
    sa.Column("i2", sa.Float, nullable=False),
    sa.Column("n_accounts", sa.Integer, nullable=False),
    sa.Column("top2_share", sa.Float, nullable=False),
    sa.Column("published", sa.Boolean, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

model_registry = sa.Table(
    "model_registry",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("family", sa.String(64), nullable=False),
    sa.Column("train_start", sa.Date, nullable=False),
    sa.Column("train_end", sa.Date, nullable=False),
    sa.Column("holdout_start", sa.Date, nullable=False),
    sa.Column("holdout_end", sa.Date, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("artifact_path", sa.Text, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
)

improvement_snapshots = sa.Table(
    "compound_improvement_snapshots",
    metadata,
    sa.Column("account_id", sa.String(200), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("spend", sa.Float, nullable=False),
    sa.Column("revenue", sa.Float),
    sa.Column("roas", sa.Float),
    sa.Column("trajectory", sa.Text, nullable=False),  # JSON: fitted trajectory as of this day
)

learning_cycle_logs = sa.Table(
    "learning_cycle_logs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("job_name", sa.String(200), nullable=False),
    sa.Column("partition_start", sa.Date),
    sa.Column("partition_end", sa.Date),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("ended_at", sa.DateTime(timezone=True)),
    sa.Column("duration_seconds", sa.Float),
    sa.Column("counts", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False),
)
