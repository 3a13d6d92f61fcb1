"""SAE baselines: trainers that eat an iterator of activation tensors, the per-world sweep, and the thesis table.

`train_sae(batches, spec, cfg, seed)` trains one SAE (ReLU + L1, TopK, BatchTopK or Matryoshka);
`run_baselines(cfg, run_dir, logger)` runs the sweep on a target run and writes the table;
`thesis_table({name: Entry(units, fve, l0)}, truth, size_attribute)` scores any dictionaries side by side.
"""
