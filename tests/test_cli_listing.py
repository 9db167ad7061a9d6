"""`julekit datasets` and the help texts."""
from __future__ import annotations

import numpy as np

from jule_kit.cli import app


def test_datasets_lists_the_data_path(runner, tmp_path, data_dir):
    images = np.zeros((7, 1, 4, 5), dtype=np.uint8)
    np.savez(tmp_path / "tiny.npz", images=images, labels=np.array([0, 1, 2, 0, 1, 2, 0]))
    result = runner.invoke(app, ["datasets", "--data-dir", str(tmp_path)], env={"COLUMNS": "250",
                                                                              "JULEKIT_DATA": str(data_dir)})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") >= 5}
    assert "tiny" in rows and "1x4x5" in rows["tiny"] and " 7 " in rows["tiny"]
    assert "usps" in rows and "11000" in rows["usps"] and "1x16x16" in rows["usps"]
    assert "digits" in rows


def test_every_command_has_help_with_examples(runner):
    for command in ("run", "validate", "plugins", "recipes", "datasets"):
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "Example" in result.output, command
