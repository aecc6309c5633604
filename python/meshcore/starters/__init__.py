"""Commented starter configs that `meshcore config init KIND` writes."""
