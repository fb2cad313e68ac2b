"""The Astra world model: transformer, FramePack history, action experts, sampler, VAEs, checkpoints."""
