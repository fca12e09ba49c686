"""Benchmarks that print figures (performance is measured here, never in timed tests)."""


def processor() -> str:
    """The processor's model name: closed-loop figures can round differently on another one (a
    seed then takes another path), so a result names the processor it was measured on."""
    import platform
    from pathlib import Path

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def print_step_figures(rows_a_day: int, history_days: int, figures: dict, seconds: dict[str, list[float]]) -> None:
    """One step benchmark's result as a JSON line: its size, its ``figures`` (medians, ratio),
    every timed run's seconds and the process's peak memory (MB)."""
    import json
    import resource

    peak_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out = {"rows_a_day": rows_a_day, "history_days": history_days, **figures, "seconds": seconds, "peak_mb": peak_mb}
    print(json.dumps(out))
