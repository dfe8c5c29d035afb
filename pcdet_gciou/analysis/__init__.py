"""Analysis tools: the paper's gradient curves (Fig. 1) and the comparison of training runs' convergence curves."""
