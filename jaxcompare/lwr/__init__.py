"""jaxcompare.lwr (under construction)."""
__all__: list[str] = []
