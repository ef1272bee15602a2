"""The paper's section 7 on trained adapters: subspace similarity, amplification, spectra, and their plots.

Pure tensor functions here; `lorakit.analysis.report` reads adapters and writes a report (matplotlib only there).
"""

from lorakit.analysis.amplification import Amplification, amplification
from lorakit.analysis.spectrum import effective_rank, energy_rank, singular_values
from lorakit.analysis.subspace import right_singular_vectors, similarity, similarity_grid

__all__ = [
    "Amplification",
    "amplification",
    "effective_rank",
    "energy_rank",
    "right_singular_vectors",
    "similarity",
    "similarity_grid",
    "singular_values",
]
