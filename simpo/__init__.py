"""SimPO (Simple Preference Optimization, Meng, Xia & Chen 2024) on the current Hugging Face stack."""

__version__ = "0.1.0"
