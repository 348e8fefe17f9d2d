"""The SAM family's network modules (image encoders, prompt encoder, mask decoder)."""
