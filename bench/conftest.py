"""pytest-benchmark prints ns/op next to its table."""


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if not session or not session.benchmarks:
        return
    terminalreporter.write_sep("-", "per operation")
    for bench in session.benchmarks:
        ns = bench.extra_info.get("ns_per_op")
        if ns is not None:
            terminalreporter.write_line(f"{bench.name:<45} {ns:>10.1f} ns/op")
