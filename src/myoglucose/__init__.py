"""myoglucose: Bayesian inference for a multi-scale ODE model of skeletal-muscle glucose uptake."""

__version__ = "0.1.0"
