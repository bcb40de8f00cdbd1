"""Training: the shared loop, fine-tuning (registered methods), distillation (registered student
builders), compression (registered pruning steps) and the data-parallel launch."""
