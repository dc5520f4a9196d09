"""drl: Learning Energy-Based Models by Diffusion Recovery Likelihood (Gao et al., ICLR 2021)."""

__version__ = "0.1.0"
