"""jaxcompare.surrogate (under construction)."""
__all__: list[str] = []
