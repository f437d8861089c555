"""Draw docs/results/embedded_conditions.png: the same steel photos under clean and field conditions, with their (shared) masks.

python docs/results/embedded_conditions.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from defectseg.data.synthetic.steel import steel_sample

TILE, INDICES = 192, (1, 3, 9, 10, 13)


def main() -> None:
    rows = []
    for conditions in ("clean", "field"):
        rows.append([Image.fromarray(steel_sample(0, i, 256, conditions=conditions)[0]).resize((TILE, TILE), Image.Resampling.LANCZOS) for i in INDICES])
    rows.append([Image.fromarray(steel_sample(0, i, 256)[1].astype(np.uint8) * 255).resize((TILE, TILE)).convert("RGB") for i in INDICES])
    label_w = 70
    sheet = Image.new("RGB", (label_w + TILE * len(INDICES), TILE * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(zip(("clean", "field", "mask"), rows)):
        draw.text((6, r * TILE + TILE // 2 - 6), name, fill="black")
        for c, tile in enumerate(tiles):
            sheet.paste(tile, (label_w + c * TILE, r * TILE))
    out = Path(__file__).with_suffix(".png")
    sheet.save(out)
    print(out)


if __name__ == "__main__":
    main()
