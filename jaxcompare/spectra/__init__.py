"""jaxcompare.spectra (under construction)."""
__all__: list[str] = []
