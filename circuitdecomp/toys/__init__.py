"""The SPD paper's toy models: the decomposition's proof bench (TMS, ±identity, residual MLP)."""
