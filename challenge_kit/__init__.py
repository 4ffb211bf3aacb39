"""ddkit: M-DATM dataset distillation packaged around the ECCV 2024 DD challenge contract."""

__version__ = "0.1.0"
