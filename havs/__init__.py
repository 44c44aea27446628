"""havs: a high-availability controller for Linux IPVS load balancers."""

__version__ = "0.1.0"
