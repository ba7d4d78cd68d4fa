"""Model zoo, loading (base models and LoRA adapters) and the label scorer."""
