"""mambascope diagnostics: recorder, run format, analyzers, figures, report, CLI."""
