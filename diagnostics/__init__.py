"""mambascope diagnostics: recorder, run format, analyzers, figures, report, CLI.

The public names are imported lazily, so `import diagnostics` stays cheap (the CLI's `--help`
and the Streamlit app do not pay for torch until they need it).
"""

from importlib import import_module

_EXPORTS = {
    "Recorder": "diagnostics.recorder",
    "load_run": "diagnostics.runfmt",
    "list_runs": "diagnostics.runfmt",
    "RunFormatError": "diagnostics.runfmt",
    "Run": "diagnostics.runfmt",
    "analyze": "diagnostics.analyzers",
    "compare": "diagnostics.analyzers",
    "Finding": "diagnostics.analyzers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
