"""julekit's built-in plugins, one module per plugin: ``plugins/<kind>/<name>.py``.

This folder installs as ``jule_kit.plugins`` (``package-dir`` in pyproject.toml), never as a
top-level ``plugins`` package, so it cannot clash with another distribution's ``plugins``.
"""
if __name__ != "jule_kit.plugins":
    # Imported as top-level `plugins` (e.g. from the repository root, where the folder sits on
    # sys.path): that would load every built-in a second time, beside the registered classes.
    raise ImportError(
        f"julekit's plugin folder was imported as {__name__!r}; import jule_kit.plugins.<kind>.<name> instead"
    )
