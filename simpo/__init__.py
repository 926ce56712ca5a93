"""SimPO (Simple Preference Optimization, Meng, Xia & Chen 2024) on the current Hugging Face stack."""

import os

__version__ = "0.1.0"

# Intel MKL (torch's CPU BLAS) may take a different code path run to run unless conditional numerical
# reproducibility is on, so two identical CPU runs (or a resumed one and its uninterrupted twin) can differ in the
# last bits. MKL reads this once, at its first call: set here, before simpo imports anything that could make one.
# A value the user sets (e.g. COMPATIBLE, or OFF for speed) is kept.
os.environ.setdefault("MKL_CBWR", "AUTO")
