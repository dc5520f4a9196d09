"""Tolerances for comparing two float32 computations that run different kernel sequences: another
batch size, memory format, instruction set (AVX2, AVX-512, none) or machine.  Such results are not
bitwise equal -- MKL and oneDNN choose blocking, and with it the order of every sum, by CPU and by
tensor shape -- so the tests compare them within a bound derived from float32 rounding.  Bitwise
equality is asserted only for the same computation repeated (a rerun, a resumed run).

One float32 rounding changes a value x by at most EPS32 |x| / 2; summing n terms in another order
changes the sum by at most about n EPS32 max|term| (in practice ~sqrt(n) EPS32 |sum|: the errors
are random in sign).  Through a chain of ``ops`` dependent steps of a contracting or mildly
expanding map (an MCMC chain, a network), the differences add at most linearly: ``reordered``."""
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)   # 2^-23 = 1.19e-7, the spacing of float32 numbers at 1


def reordered(scale: float, ops: int) -> float:
    """Absolute tolerance for a float32 result of magnitude ``scale`` after ``ops`` dependent
    operations whose summation order may differ by kernel: ops * EPS32 * scale."""
    return ops * EPS32 * scale
