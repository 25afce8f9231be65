"""Stage 6: Triton Inference Server model repositories (`repository.write_repository`).

Kept import-free: the generation front end vendors modules of this package into the repository.
"""
