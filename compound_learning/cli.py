"""The ``compound-learning`` command. Every query command prints JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, timedelta
from pathlib import Path

from compound_learning.config import (
    API_PORT,
    DEFAULT_MIN_CONFIDENCE,
    METRICS,
    MIN_ACCOUNTS_FOR_SHARED,
    STATES,
    load_settings,
)
from compound_learning.core.contract import ContractError


def _store(must_exist: bool = True):
    """The configured store. Query commands refuse a SQLite file that does not exist yet rather
    than create an empty one (run from another folder, ``.state`` resolves elsewhere)."""
    from compound_learning.storage.database import sqlite_file
    from compound_learning.storage.store import get_store

    settings = load_settings()
    path = sqlite_file(settings.database_url)
    if must_exist and path is not None and not path.exists():
        raise ValueError(
            f"no store at {path}: nothing was ingested with this configuration (state folder "
            f"{settings.state_dir}, resolved from the current folder {Path.cwd()}). Run from the project "
            "folder, or set COMPOUND_LEARNING_STATE_DIR or COMPOUND_LEARNING_DATABASE_URL"
        )
    return get_store(settings.database_url)


def _print(obj, as_json: bool, human=None) -> None:
    if as_json or human is None:
        print(json.dumps(obj, indent=2, default=str))
    else:
        human(obj)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a YYYY-MM-DD date: {text!r}") from None


# -- commands -------------------------------------------------------------------------------
def cmd_simulate(args) -> int:
    from compound_learning.core.simulate import WorldConfig, simulate

    cfg = WorldConfig(
        days=args.days,
        accounts=args.accounts,
        creatives_per_account=args.creatives,
        seed=args.seed,
        effect_scale=args.effect_scale,
        null=args.null,
        start=args.start,
        drift=args.drift,
    )
    data, truth = simulate(cfg)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    data.to_csv(args.out, index=False)
    if args.truth:
        Path(args.truth).parent.mkdir(parents=True, exist_ok=True)
        Path(args.truth).write_text(json.dumps(truth, indent=2))
    summary = {
        "rows": len(data),
        "days": args.days,
        "accounts": args.accounts,
        "out": args.out,
        "truth": args.truth,
        "first_day": data["date"].min(),
        "last_day": data["date"].max(),
    }
    _print(
        summary,
        args.json,
        lambda s: print(
            f"wrote {s['rows']} rows ({s['first_day']}..{s['last_day']}) to {s['out']}"
            + (f", truth to {s['truth']}" if s["truth"] else "")
        ),
    )
    return 0


def cmd_ingest(args) -> int:
    from compound_learning.ingestion import ingest_file

    try:
        summary = ingest_file(args.file)
    except ContractError as exc:
        print(f"error: {exc} (nothing was written)", file=sys.stderr)
        return 2

    def human(s):
        print(
            f"{s['source']}: accepted {s['accepted']} (new {s['inserted']}, replaced {s['replaced']}, "
            f"unchanged {s['unchanged']}), rejected {s['rejected']}; batch {s['batch_id']}"
        )
        for reason, n in s["rejected_by_reason"].items():
            lines = s["rejected_lines"].get(reason, [])
            more = ", ..." if n > len(lines) else ""
            print(f"  rejected {n}: {reason} (line {', '.join(map(str, lines))}{more})")
        for warning in s.get("warnings", []):
            print(f"  warning: {warning}")
        if s["days_touched"]:
            print(f"  days touched: {s['days_touched'][0]} .. {s['days_touched'][-1]} ({len(s['days_touched'])})")

    _print(summary, args.json, human)
    return 0


def cmd_cycle(args) -> int:
    from compound_learning.orchestration.launch import run_in_process

    out = run_in_process(args.start, args.end or args.start)
    _print(
        out,
        args.json,
        lambda o: print(
            f"run {o['run_id']}: {o['status']} for {o['start']}..{o['end']} ({o['days']} days) {o['message']}"
        ),
    )
    return 0 if out["status"] == "SUCCESS" else 1


def _fmt_pattern(p: dict) -> str:
    attrs = ", ".join(f"{k}={v}" for k, v in p["attributes"].items())
    lift = "n/a" if p["lift"] is None else f"{p['lift']:+.1%}"
    ci = "" if p["ci_low"] is None else f" [{p['ci_low']:+.1%}, {p['ci_high']:+.1%}]"
    q = "" if p["q_value"] is None else " q<0.0001" if p["q_value"] < 1e-4 else f" q={p['q_value']:.2g}"
    sup = p["support"]
    line = (
        f"{p['metric']:>4}  {attrs:<40} {lift:>8}{ci:<22}{q:<11} {p['state']:<13} "
        f"{sup.get('creatives')} creatives, {sup.get('accounts')} accounts"
    )
    return line if p["state"] == "significant" else f"{line}\n      {p['reading']}"


def cmd_patterns(args) -> int:
    from compound_learning import queries

    items = queries.patterns(
        _store(),
        account_id=args.account,
        pattern_type=args.type,
        metric=args.metric,
        state=args.state,
        min_confidence=args.min_confidence,
        limit=args.limit,
    )
    _print(items, args.json, lambda xs: print("\n".join(map(_fmt_pattern, xs)) or "no patterns (run a cycle first?)"))
    return 0


def cmd_knowledge_graph(args) -> int:
    from compound_learning import queries

    graph = queries.knowledge_graph(_store(), limit=args.limit)

    def human(g):
        print(f"knowledge graph as of {g['as_of']}: {len(g['nodes'])} nodes, {len(g['relationships'])} relationships")
        for n in g["nodes"]:
            print(
                f"  {n['node_type']:<16} {n['label']:<45} "
                f"confidence={n['confidence']:.3f} importance={n['importance']:.3f}"
            )
        for r in g["relationships"]:
            print(f"  {r['source']} -[{r['type']}{'/' + r['metric'] if r['metric'] else ''}]-> {r['target']}")

    _print(graph, args.json, human)
    return 0


def cmd_insights(args) -> int:
    from compound_learning import queries

    items = queries.cross_account(_store(), limit=args.limit)

    def human(xs):
        for i in xs:
            attrs = ", ".join(f"{k}={v}" for k, v in i["attributes"].items())
            print(
                f"{i['metric']:>4}  {attrs:<40} {i['pooled_lift']:+.1%} [{i['ci_low']:+.1%}, {i['ci_high']:+.1%}] "
                f"accounts={i['n_accounts']} I2={i['i2']:.2f}"
            )
        if not xs:
            print("no insight is backed by enough accounts yet")

    _print(items, args.json, human)
    return 0


def cmd_trajectory(args) -> int:
    from compound_learning import queries

    traj = queries.trajectory(_store(), args.account)

    def human(x):
        print(f"{x['account_id']} as of {x['as_of']}: {x['summary']}")
        if x["initial_roas"] is not None:
            print(f"  ROAS first week {x['initial_roas']:.2f} -> last week {x['current_roas']:.2f}")
        print(
            f"  status: {x['learning_status']}; ongoing daily trend: {x.get('trend') or 'n/a'}"
            + (f" (projection: {x['model']})" if x["model"] else "")
        )
        for h in (30, 90, 365):
            p, ci = x[f"projected_{h}d_roas"], x[f"projected_{h}d_roas_ci"]
            if p is not None:
                print(f"  projected ROAS in {h:>3} days {p:.2f}  95% [{ci[0]:.2f}, {ci[1]:.2f}]")
        for note in x.get("projection_notes", []):
            print(f"  {note}")
        print(f"  on track for 10x (lower bound of the 365-day projection): {x['on_track_for_10x']}")

    _print(traj, args.json, human)
    return 0


def cmd_score(args) -> int:
    from compound_learning import queries

    try:
        creative = json.loads(args.creative)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--creative is not valid JSON: {exc}") from exc
    result = queries.score(_store(), args.account, creative)
    _print(result, args.json, _print_score)
    return 0


def _print_score(r: dict) -> None:
    """A score in words: what the numbers are measured against, and which CTR to use for what."""
    attrs = ", ".join(f"{k}={v}" for k, v in r["creative"].items())
    print(f"{r['account_id']} as of {r['as_of']}: {attrs}")
    print(
        f"  DNA score {r['dna_score']:.0f}: its expected {r['dna_score_metric'].upper()} as a percentage of the "
        "account's reference creative (100 = average value in every dimension, a fresh creative on an average day; "
        "not the account's first or current ROAS)"
    )
    names = {"ctr": "CTR", "cvr": "conversion rate", "roas": "ROAS"}
    for metric, p in r["predictions"].items():
        pct = metric != "roas"
        fmt = (lambda v: f"{v:.2%}") if pct else (lambda v: f"{v:.2f}")
        print(
            f"  {names[metric]:<16} {fmt(p['predicted'])} (95% {fmt(p['ci_low'])}-{fmt(p['ci_high'])}), "
            f"{p['relative_to_baseline']:.2f}x the reference {fmt(p['baseline'])}"
        )
    model = r.get("model") or {}
    if model.get("predicted_ctr") is not None:
        print(
            f"  CTR from the model v{model['model_version']}: {model['predicted_ctr']:.2%}. Use it to forecast clicks "
            "(it also knows the day of week and the creative's age and is checked on later days); the DNA's "
            "CTR above is the explainable one, built from the contributions below"
        )
    for c in r["contributions"]:
        print(f"    {c['metric']:>4}  {c['dimension']}={c['value']}  {c['lift']:+.0%}  ({c['source']} evidence)")
    for key, label in (
        ("unseen_values", "values never seen (counted as average)"),
        ("unknown_dimensions", "dimensions the DNA does not know"),
    ):
        if r.get(key):
            print(f"  {label}: {r[key]}")


def _print_recommendations(r: dict, spend_rows: int = 15) -> None:
    print(
        f"{r['account_id']} as of {r['as_of']}: launch next ({r['explore_picks']} of {len(r['launch'])} "
        "picks explore little-tested values)"
    )
    from compound_learning import queries

    notice = queries.drift_notice(r.get("drift"))
    if notice:
        print(f"  drift: {notice}")
    for p in r["launch"]:
        attrs = ", ".join(f"{k}={v}" for k, v in p["attributes"].items())
        lo, hi = p["roas_ci"]
        print(f"  {p['rank']:>2}. [{p['pick']}] {attrs}")
        print(
            f"      expected ROAS {p['expected_roas']:.2f} (95% {lo:.2f}-{hi:.2f})"
            + (f", CTR {p['expected_ctr']:.2%}" if p["expected_ctr"] is not None else "")
        )
        print(f"      why: {p['reason']}")
    print(
        f"tomorrow's spend over {len(r['spend'])} live creatives "
        f"({r['spend_exploration_share']:.0%} of it beyond the best-looking creative, to keep learning):"
    )
    for s in r["spend"][:spend_rows]:
        print(
            f"  {s['share']:>6.1%}  {s['creative_id']:<28} expected ROAS {s['expected_roas']:.2f}  "
            + (f"CTR {s['expected_ctr']:.2%}  " if s.get("expected_ctr") is not None else "")
            + f"P(best) {s['p_best']:.0%}"
        )


def cmd_recommend(args) -> int:
    from compound_learning import queries

    rec = queries.recommendations(_store(), args.account, n=args.n)
    _print(rec, args.json, _print_recommendations)
    return 0


def cmd_models(args) -> int:
    from compound_learning import model_registry, queries

    store = _store()
    if args.action == "list":
        out = queries.models(store)
    elif args.action == "promote":
        if args.version is None:
            raise ValueError("models promote needs a VERSION")
        out = model_registry.promote(store, args.version)
    else:
        out = model_registry.rollback(store)

    def human(o):
        if isinstance(o, list):
            for m in o:
                mm = m["metrics"]
                print(
                    f"v{m['version']:<4} {m['status']:<11} {m['family']:<22} as of {m['as_of']} "
                    f"log_loss={mm['log_loss']:.5f} NE={mm['normalized_entropy']:.4f} "
                    f"calib={mm['calibration_ratio']:.3f}"
                    f"  {m['reason'][:80]}"
                )
        else:
            print(json.dumps(o))

    _print(out, args.json, human)
    return 0


def _model_words(m: dict | None) -> str:
    """The champion's figures in words a marketer can use."""
    if not m:
        return "none yet (it trains once enough clicks have arrived)"
    family = {"hist_gradient_boosting": "gradient boosting", "logistic": "logistic regression"}.get(
        m.get("family"), m.get("family")
    )
    parts = [f"v{m['version']} ({family}), trained on data up to {m.get('trained_as_of')}"]
    if m.get("calibration_ratio") is not None:
        parts.append(f"predicts {m['calibration_ratio']:.2f}x the clicks that happened (1.00 = calibrated)")
    if m.get("normalized_entropy") is not None:
        gain = 1.0 - m["normalized_entropy"]
        parts.append(f"{gain:.0%} less surprised by clicks than the average CTR would be (normalized entropy)")
    if m.get("auc") is not None:
        parts.append(f"ranks a clicked impression above an unclicked one {m['auc']:.0%} of the time (AUC)")
    return "; ".join(parts)


def cmd_dashboard(args) -> int:
    from compound_learning import queries

    dash = queries.dashboard(_store(), args.account)

    def human(d):
        if d.get("trajectory"):
            tr = d["trajectory"]
            first, last = tr["initial_roas"], tr["current_roas"]
            print(f"== {d['account_id']}: ROAS {first:.2f} (first week) -> {last:.2f} (last week)")
            print(f"   {tr['summary']}")
        print("== this account's own established patterns")
        print("\n".join(map(_fmt_pattern, d["top_patterns"])) or "  none yet")
        print(f"== what holds across accounts (at least {MIN_ACCOUNTS_FOR_SHARED} accounts each, no names)")
        for i in d["cross_account_insights"]:
            attrs = ", ".join(f"{k}={v}" for k, v in i["attributes"].items())
            print(
                f"  {i['metric']:>4}  {attrs:<32} {i['pooled_lift']:+.0%} [{i['ci_low']:+.0%}, {i['ci_high']:+.0%}]"
                f"  in {i['n_accounts']} accounts"
            )
        print(f"== CTR model: {_model_words(d['model'])}")
        print("== last cycles")
        for c in d["last_cycles"]:
            seconds = "" if c["duration_seconds"] is None else f"{float(c['duration_seconds']):.0f} s"
            print(f"  {c['status']:<8} {c['partition_start']}..{c['partition_end']}  {seconds}  {c['message'][:160]}")

    _print(dash, args.json, human)
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from compound_learning.api.access import RedactKeys, load_keys
    from compound_learning.api.app import create_app

    keys = load_keys()
    loopback = args.host in ("127.0.0.1", "localhost", "::1")
    if keys is None and not loopback:
        print(
            f"error: refusing to serve on {args.host} without API keys; set COMPOUND_LEARNING_API_KEYS "
            "(key=acct,acct;admin=*) or serve on 127.0.0.1",
            file=sys.stderr,
        )
        return 2
    if keys is None:
        print(
            "no API keys configured: serving on loopback only, every local request sees every account", file=sys.stderr
        )
    else:
        print(f"{len(keys)} API key(s) configured: requests need the X-API-Key header", file=sys.stderr)
    import logging

    logging.getLogger("uvicorn.access").addFilter(RedactKeys())  # never write a key to the log
    uvicorn.run(create_app(keys=keys), host=args.host, port=args.port, log_level="info")
    return 0


def cmd_reset(args) -> int:
    if not args.yes:
        what = "learning tables AND raw performance data" if args.all else "learning tables (raw data kept)"
        print(f"refusing to empty the {what} without --yes", file=sys.stderr)
        return 2
    from compound_learning.storage.artifacts import remove_artifacts

    store = _store(must_exist=False)
    models = store.registry()["artifact_path"].tolist()
    tables = store.reset(include_raw=args.all)
    removed = remove_artifacts(models) if "model_registry" in tables else 0
    _print(
        {"emptied": tables, "model_files_removed": removed},
        args.json,
        lambda o: print("emptied: " + ", ".join(o["emptied"]) + f"; model files removed: {o['model_files_removed']}"),
    )
    return 0


def cmd_demo(args) -> int:
    """Simulate, ingest, run the cycle over every day, print a short summary."""
    from compound_learning import queries
    from compound_learning.core.simulate import WorldConfig, simulate
    from compound_learning.ingestion import ingest_frame

    settings = load_settings()
    cfg = WorldConfig(days=args.days, accounts=args.accounts, seed=args.seed, start=settings.partition_start)
    data, truth = simulate(cfg)
    demo_dir = settings.state_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    data.to_csv(demo_dir / "performance.csv", index=False)
    (demo_dir / "truth.json").write_text(json.dumps(truth, indent=2))
    print(f"simulated {len(data)} rows: {args.days} days x {args.accounts} accounts -> {demo_dir / 'performance.csv'}")
    summary = ingest_frame(data, settings=settings, source=str(demo_dir / "performance.csv"))
    print(
        f"ingested: {summary['inserted']} new, {summary['replaced']} replaced, {summary['unchanged']} unchanged, "
        f"{summary['rejected']} rejected"
    )
    start = settings.partition_start
    end = start + timedelta(days=args.days - 1)
    print(f"running daily_learning_cycle over {start}..{end} as one run (this takes a few minutes)...")
    from compound_learning.orchestration.launch import run_in_process

    out = run_in_process(start, end, settings=settings)
    print(f"run {out['run_id']}: {out['status']} {out['message']}")
    if out["status"] != "SUCCESS":
        return 1
    store = _store()
    print("\nTop significant patterns (lift vs the dimension's average value, 95% interval):")
    for p in queries.patterns(store, state="significant", limit=8):
        print("  " + _fmt_pattern(p))
    account = queries.accounts(store)[0]
    traj = queries.trajectory(store, account)
    print(
        f"\nTrajectory of {account}: ROAS {traj['initial_roas']:.2f} (first week) -> {traj['current_roas']:.2f} "
        f"(last week)\n  {traj['summary']}"
    )
    for h in (30, 90):
        if traj[f"projected_{h}d_roas"] is not None:
            lo, hi = traj[f"projected_{h}d_roas_ci"]
            print(f"  projected in {h} days {traj[f'projected_{h}d_roas']:.2f} [95%: {lo:.2f}, {hi:.2f}]")
    for note in traj.get("projection_notes", []):
        print(f"  {note}")
    print(f"\nWhat {account} should do next (`compound-learning recommend {account}`):")
    _print_recommendations(queries.recommendations(store, account, n=3), spend_rows=3)
    print("\nNext: `make dev` and open http://127.0.0.1:3000 to see the lineage graph, runs and metadata.")
    return 0


def _pct_or_none(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.0%}"


def cmd_evaluate(args) -> int:
    """The recovery benchmark over simulated worlds (null, small, large, correlated, drifting)."""
    from compound_learning.evaluation import FLAT, MEANINGFUL_LIFT, RISEN, RISING_DAYS, evaluate

    result = evaluate(args.worlds, seed=args.seed, days=args.days, accounts=args.accounts)

    def human(r):
        for w in r["worlds"]:
            print(
                f"{w['kind']:<11} seed={w['seed']} significant={w['significant']:>3} false={w['false_discoveries']} "
                f"coverage={w['coverage']:.3f} "
                f"spearman={w['spearman'] if w['spearman'] is None else round(w['spearman'], 3)} "
                f"trend={w['world_trend']} accounts_improving={w['accounts_called_improving']}/{w['accounts']}"
            )
        s = r["summary"]
        print(
            f"\nmean FDP {s['mean_fdp']:.3f} (pooled {s['pooled_fdp']:.3f}); coverage {s['coverage']:.3f}; "
            f"sign accuracy {s['sign_accuracy']}; mean Spearman {s['mean_spearman']:.3f}"
        )
        print(
            f"null worlds called improving: {s['null_worlds_called_improving']}; null-world accounts called improving: "
            f"{s['null_world_accounts_called_improving']}/{s['null_world_accounts']}; correlated null dimension "
            f"significant: {s['correlated_null_dimension_significant']}"
        )
        print(
            f"trajectory calls, against each account's true ROAS change (last two weeks over the first two, "
            f"creative luck left out), {s['worlds']} worlds + {s['rising_worlds']} rising "
            f"+ {s['sparse_worlds']} sparse:\n"
            f"  truly risen >= +{RISEN:.0%}: called improving {s['risen_called_improving']}/{s['risen_accounts']} "
            f"(median true change {_pct_or_none(s['risen_median_true_change'])}; the simulator's learning "
            f"accounts among them {s['risen_learning_called_improving']}/{s['risen_learning_accounts']})\n"
            f"  truly flat (within +-{FLAT:.0%}): called improving or declining "
            f"{s['flat_true_called_trending']}/{s['flat_true_accounts']} (binomial p = {s['flat_true_excess_p']:.2f} "
            f"against a two-sided 5%), volatile {s['flat_true_called_volatile']}\n"
            f"  called against the direction of a true change of at least {FLAT:.0%}: {s['wrong_direction']} "
            f"(of a smaller one: {s['wrong_direction_near_zero']})\n"
            f"  the simulator's learning accounts called improving {s['learning_called_improving']}/"
            f"{s['learning_accounts']}; rising-world learning accounts (+50% over {RISING_DAYS} days on top of "
            f"their attributes) {s['rising_called_improving']}/{s['rising_accounts']}; flat-by-design accounts "
            f"(random attributes) called improving or declining {s['flat_called_trending']}/{s['flat_accounts']}"
        )
        print(
            f"sparse worlds ({s['sparse_worlds']}; ten dimensions, two with effects; "
            f"{s['sparse_family_size']} tests in their families): true main effects of at least "
            f"{MEANINGFUL_LIFT:.0%} found {s['sparse_claimed_found']}/{s['sparse_true_main_effects']} as claims "
            f"({s['sparse_claimed_false']} false); on the last day's q-values, the weighted family "
            f"{s['sparse_weighted_q_found']} ({s['sparse_weighted_q_false']} false), plain BH over the same family "
            f"{s['sparse_plain_q_found']} ({s['sparse_plain_q_false']} false)"
        )
        for target, ok in s["targets"].items():
            print(f"  [{'ok' if ok else 'MISSED'}] {target}")

    _print(result, args.json, human)
    return 0 if all(result["summary"]["targets"].values()) else 1


def cmd_benchmark_model(args) -> int:
    """CTR model quality vs the oracle and training time on aggregated rows (prints JSON)."""
    from compound_learning.benchmarks.ctr_model import quality, training_time

    q = quality()
    result = {"quality": q, "training_time": training_time(args.rows)}
    print(json.dumps(result, indent=2))
    best = min((f for f in ("logistic", "hist_gradient_boosting")), key=lambda f: q[f]["log_loss"])
    ok = q[best]["ne_vs_oracle"] <= 1.03 and abs(q[best]["calibration_ratio"] - 1) <= 0.05
    print(
        f"champion family {best}: NE {q[best]['ne_vs_oracle'] - 1:+.2%} vs oracle, calibration "
        f"{q[best]['calibration_ratio']:.3f} -> {'within targets' if ok else 'MISSED targets'}",
        file=sys.stderr,
    )
    return 0 if ok else 1


def cmd_benchmark(args) -> int:
    """Benchmarks that print figures: ``closed-loop`` (does acting on the knowledge pay?)."""
    from compound_learning.benchmarks import closed_loop

    argv = [*args.rest]
    if args.json:
        argv.append("--json")
    return closed_loop.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="compound-learning", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, fn, help_text):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(fn=fn)
        return p

    p = add("simulate", cmd_simulate, "write a simulated world (CSV) and its ground truth (JSON)")
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--creatives", type=int, default=30, help="creatives per account")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effect-scale", type=float, default=1.0)
    p.add_argument("--null", action="store_true", help="no attribute effects at all")
    p.add_argument("--drift", action="store_true", help="the template effect flips halfway")
    p.add_argument("--start", type=_date, default=date(2024, 1, 1))
    p.add_argument("--out", required=True)
    p.add_argument("--truth")

    p = add("ingest", cmd_ingest, "load a CSV of daily performance rows (upsert by account, creative, date)")
    p.add_argument("file")

    p = add("cycle", cmd_cycle, "run daily_learning_cycle for a day or a range (one run)")
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date)

    p = add("patterns", cmd_patterns, "list the latest patterns")
    p.add_argument("--account")
    p.add_argument("--type", help="an attribute dimension, or 'interaction'")
    p.add_argument("--metric", choices=METRICS)
    p.add_argument("--state", choices=STATES)
    p.add_argument("--min-confidence", type=float, default=DEFAULT_MIN_CONFIDENCE)
    p.add_argument("--limit", type=int, default=50)

    p = add("knowledge-graph", cmd_knowledge_graph, "the latest knowledge graph")
    p.add_argument("--limit", type=int, default=50)

    p = add("insights", cmd_insights, f"cross-account insights (anonymized, >= {MIN_ACCOUNTS_FOR_SHARED} accounts)")
    p.add_argument("--limit", type=int, default=50)

    p = add("trajectory", cmd_trajectory, "an account's improvement trajectory")
    p.add_argument("account")

    p = add("score", cmd_score, "score a new creative for an account with the creative DNA")
    p.add_argument("--account", required=True)
    p.add_argument("--creative", required=True, help='JSON object, e.g. {"hook_type": "question"}')

    p = add("recommend", cmd_recommend, "what an account should launch next and how to split its spend")
    p.add_argument("account")
    p.add_argument("--n", type=int, default=5, help="how many launch picks to show")

    p = add("benchmark", cmd_benchmark, "run a benchmark: closed-loop [--days --seeds --effect-scale --world ...]")
    p.add_argument("which", choices=["closed-loop"])
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options (see --help after its name)")

    p = add("models", cmd_models, "the CTR model registry: list, promote VERSION, rollback")
    p.add_argument("action", choices=["list", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=int)

    p = add("dashboard", cmd_dashboard, "a text dashboard")
    p.add_argument("--account")

    p = add("serve", cmd_serve, "the HTTP API (and HTML dashboards) with uvicorn")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=API_PORT)

    p = add("reset", cmd_reset, "empty the learning tables (raw data only with --all)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--yes", action="store_true")

    p = add("evaluate", cmd_evaluate, "recovery benchmark: learn on simulated worlds and score against the truth")
    p.add_argument("--worlds", type=int, default=10)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--days", type=int, default=45)
    p.add_argument("--accounts", type=int, default=12)

    p = add("benchmark-model", cmd_benchmark_model, "CTR model quality vs the oracle and training time")
    p.add_argument("--rows", type=int, default=1_000_000, help="aggregated rows for the timing run")

    p = add("demo", cmd_demo, "simulate, ingest and learn over every day, then summarize")
    p.add_argument("--days", type=int, default=60)
    p.add_argument("--accounts", type=int, default=20)
    p.add_argument("--seed", type=int, default=7)
    return parser


def _show_progress() -> None:
    """Long commands (demo, cycle over a range) report their progress on stderr."""
    import logging

    progress = logging.getLogger("compound_learning.progress")
    if not progress.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("  %(message)s"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False


def main(argv: list[str] | None = None) -> int:
    from compound_learning.storage.artifacts import ArtifactError

    args = build_parser().parse_args(argv)
    _show_progress()
    try:
        return args.fn(args)
    except (ValueError, LookupError, ArtifactError) as exc:  # bad input, unknown ids, untrusted models
        message = exc.args[0] if isinstance(exc, LookupError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
