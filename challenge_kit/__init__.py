"""ddkit: M-DATM dataset distillation packaged around the ECCV 2024 DD challenge contract."""

__version__ = "0.1.0"


def installed_version() -> str:
    """The version pip installed (the wheel's, or the checkout's for an editable install), else this source's."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ddkit")
    except PackageNotFoundError:  # a source tree on PYTHONPATH, not installed
        return __version__
