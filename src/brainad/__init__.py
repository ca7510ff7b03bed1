"""brainad: reproducible, auditable unsupervised anomaly detection in brain MRI.

Importing the package has no side effects (no logging setup, no environment loading).
"""

__version__ = "0.1.0"
