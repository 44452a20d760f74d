"""dabnet_lib: DABNet (Li & Kim, BMVC 2019) model, data, training, evaluation and profiling."""

__version__ = "0.1.0"
