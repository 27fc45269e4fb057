"""`make demo`: compile the bundled digits CNNs, ViT and squeeze-excitation CNN and run them on
both backends (no training)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import digits_cnn  # noqa: E402

if __name__ == "__main__":
    rows = digits_cnn.main(["--pretrained", "--transformers", "--lava", "360"])
    ok = all(r["cpu_equals_reference"] and r.get("lava_equals_cpu", True) for r in rows)
    print("bit-exact: integer reference == sim.cpu == sim.lava" if ok else
          "MISMATCH between backends (see the table)")
    sys.exit(0 if ok else 1)
