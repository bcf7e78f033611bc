"""jaxcompare.trimming (under construction)."""
__all__: list[str] = []
