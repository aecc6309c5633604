"""Seeing the mesh from a terminal: `meshcore tap` and `meshcore top`, clients of a proxy's admin
API (its `/tap` stream and `/stats`)."""
