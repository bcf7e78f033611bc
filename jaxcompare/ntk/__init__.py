"""jaxcompare.ntk (under construction)."""
__all__: list[str] = []
