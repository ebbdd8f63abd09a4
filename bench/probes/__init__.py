"""One-off measurements behind figures in docs/performance.md; each module says how to run it."""
