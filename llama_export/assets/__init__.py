"""Files shipped with the package: the built-in tiny model (tiny/) and the corpus it was trained on."""
