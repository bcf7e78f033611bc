"""jaxcompare.embed (under construction)."""
__all__: list[str] = []
