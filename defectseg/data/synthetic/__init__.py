"""Embedded synthetic data: a crack classification set (stage 1) and a steel-defect segmentation set (stage 2).

Why it exists: the pipeline must run end to end on a fresh machine with no downloads, and the paper's
stage-2 set (175 hand-labelled steel photos) is not public. The two generated sets imitate the two
domains of the paper -- concrete cracks for encoder pretraining, steel-structure defects for the
decoder -- and are written in the same folder layouts as the real sets, so one reader serves both.

Design choices that matter for experiments:

* Both stages draw their cracks with the same function, :func:`~.render.crack_alpha`, so what the stage-1
  encoder learns about crack *shape* can transfer, while backgrounds and statistics differ
  (concrete vs. brushed/painted/rusty steel) so the transfer is across domains, as in the paper.
* Stage-1 clutter (stains, pores, straight formwork lines) is drawn with the same probabilities in
  both classes: the only thing separating ``Positive`` from ``Negative`` is a crack, so a classifier
  cannot succeed by counting dark pixels.
* Stage-2 masks are exact: every defect is an opacity map ``alpha``; the image is painted with that
  ``alpha`` and the mask is ``alpha >= 0.5``. Background, defects and camera effects use separate
  random streams, so the same image can be re-rendered without its defects (tests use this to check
  that the mask covers exactly what the defects changed).
* Image ``i`` is drawn from ``default_rng`` seeded by ``(seed, stage, [label,] i)``: it is the same
  whatever the set size, so a larger set extends a smaller one.
* Stage-2 photos come in two conditions (:data:`~.steel.CONDITIONS`). ``clean`` photos hold nothing but
  defects, welds and bolts, at full contrast in good light: a U-Net learns them from 123 labelled
  photos almost completely. ``field`` adds unlabelled look-alike marks, faint defects, dim
  exposures and sensor noise, as on inspection photos of real structures: a harder set where 123
  labels are not enough. Masks and defects stay those of the clean photo, so the two sets differ
  only in these conditions.
* Stage-2 defects are mixed (cracks, corrosion, pits, scratches) or one kind alone
  (:data:`~.steel.DEFECT_SETS`), as the two training sets of the paper's Table 1.

Modules: :mod:`.render` (noise, strokes, the crack model), :mod:`.concrete` (stage-1 photos), :mod:`.steel`
(stage-2 photos and their defect painters) draw pictures and touch no file; :mod:`.publish` writes the sets
(layouts, manifests, locking, ``ensure_*``) and :mod:`.cli` is ``python -m defectseg.data.synthetic``.
"""

from defectseg.data.synthetic.cli import main
from defectseg.data.synthetic.publish import (
    CLASS_DIRS,
    CRACK_CLASSIFICATION,
    CRACK_SEGMENTATION,
    MANIFEST_NAME,
    STEEL_SEGMENTATION,
    VERSION,
    ensure_crack_classification,
    ensure_crack_segmentation,
    ensure_steel_segmentation,
    generate_crack_classification,
    generate_crack_segmentation,
    generate_steel_segmentation,
    read_manifest,
)
from defectseg.data.synthetic.render import crack_alpha
from defectseg.data.synthetic.steel import CONDITIONS, DEFECT_SETS, SYNTHETIC_CLASSES

__all__ = [
    "CLASS_DIRS",
    "CONDITIONS",
    "CRACK_CLASSIFICATION",
    "CRACK_SEGMENTATION",
    "DEFECT_SETS",
    "MANIFEST_NAME",
    "STEEL_SEGMENTATION",
    "SYNTHETIC_CLASSES",
    "VERSION",
    "crack_alpha",
    "ensure_crack_classification",
    "ensure_crack_segmentation",
    "ensure_steel_segmentation",
    "generate_crack_classification",
    "generate_crack_segmentation",
    "generate_steel_segmentation",
    "main",
    "read_manifest",
]
