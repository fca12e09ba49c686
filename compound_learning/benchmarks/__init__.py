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
