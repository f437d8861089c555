"""Check a data set before training on it: counts, sizes, modes, mask values, unpaired files, duplicates.

    python -m defectseg.check_data dataset=folder_seg dataset.root=/data/steel_defects
    python -m defectseg.check_data dataset=folder_cls dataset.root=/data/concrete_cracks

Prints a summary, writes ``data_check.json`` and ``data_check.txt`` into the run directory,
and exits 2 when training would stop on the data (unless ``dataset.on_error=skip``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from defectseg.config import validate_config
from defectseg.config.entry import entry_point
from defectseg.data.validation import check_dataset, format_report
from defectseg.utils.errors import UserError
from defectseg.utils.io import atomic_write_json, atomic_write_text
from defectseg.utils.naming import register_resolvers

log = logging.getLogger(__name__)
register_resolvers()


def run_check_data(cfg: DictConfig) -> dict[str, Any]:
    validate_config(cfg, "check_data")
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    report = check_dataset(datamodule)
    output_dir = Path(cfg.paths.output_dir)
    report["report"] = str(output_dir / "data_check.json")
    atomic_write_json(output_dir / "data_check.json", report)
    text = format_report(report) + f"\n  report: {report['report']}"
    atomic_write_text(output_dir / "data_check.txt", text + "\n")
    print(text, flush=True)
    if not report["trainable"]:
        raise UserError(
            f"{len(report['errors'])} error(s) in {report['samples_with_errors']} sample(s) of {report['root']}: "
            "training would stop; "
            "fix the files listed above, or leave those samples out with dataset.on_error=skip"
        )
    return report


@entry_point("check_data")
def main(cfg: DictConfig) -> None:
    run_check_data(cfg)


if __name__ == "__main__":
    main()
