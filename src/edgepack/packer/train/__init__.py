"""Training for the packer: a small numpy MLP trainer used by the quick start, the benchmarks and prune-and-retrain."""
from edgepack.packer.train.mlp import error_rate, mlp_graph, predict_mlp, train_mlp

__all__ = ["error_rate", "mlp_graph", "predict_mlp", "train_mlp"]
