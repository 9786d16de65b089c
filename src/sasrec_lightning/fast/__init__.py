"""The CPU speed parts, applied to a built model from one place; the model does not know them."""
